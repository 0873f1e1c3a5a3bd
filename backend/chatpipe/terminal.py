"""Tool calls confirmed on the terminal, for ``chatpipe send --tools``.

:class:`TerminalAsker` asks on the controlling terminal (``/dev/tty``), not
on stdin or stdout, so that piped input and output stay the chat's: the
whole arguments, pretty-printed, then ``run get_current_time of mcp:time?
[y]es, [a]lways for get_current_time of mcp:time in this run, [n]o``
(what is shown goes through :func:`chatpipe.tooltext.shown`: no bidi control
or control character of the model's or the server's reaches the
terminal).  "Always" holds for that tool of that server until the
command ends.  A "no" asks for a reason, which goes back to the model.
``--yes`` approves every call; without a terminal (and without
``--yes``) every call is denied, with a reason that says so.
"""

from __future__ import annotations

from typing import Any

from chatpipe import protocol, redaction, tools, tooltext
from chatpipe.protocol import Output

#: The terminal asked.
TTY = "/dev/tty"

#: The reason a call is denied when there is no terminal to ask on.
NO_TTY = ("chatpipe had no terminal to ask the user for confirmation "
          "(`chatpipe send --yes` runs tool calls without asking)")


class TerminalAsker(tools.Asker):
    """Confirms tool calls on the terminal; see the module docstring.

    Args:
        output: the command's output, whose secrets are redacted from the
            prompts.
        yes: approve every call without asking (``--yes``).
        tty: the terminal's device file.
    """

    scope = "in this run"

    def __init__(self, output: Output, yes: bool = False, tty: str = TTY) -> None:
        super().__init__()
        self.output = output
        self.yes = yes
        self.tty = tty

    def confirm(self, call: tools.ToolCall, tool: tools.Tool, control: Any) -> tuple[str, str]:
        """Ask on the terminal whether CALL of TOOL may run: ``(decision,
        reason)`` as :meth:`chatpipe.tools.Asker.confirm`.  End of input
        on the terminal is a "no"."""
        if self.yes:
            return "once", ""
        try:
            reader = open(self.tty, "rb")
        except OSError:
            return "deny", NO_TTY
        with reader, open(self.tty, "wb", buffering=0) as writer:
            def ask(text: str) -> str:
                text = protocol.plain(redaction.redact(text, self.output.secrets))
                writer.write(text.encode("utf-8", protocol.ENCODE_ERRORS))
                return reader.readline().decode("utf-8", "replace").strip()

            answer = ask(question(call, tool, self.scope)).lower()
            if answer in ("y", "yes"):
                return "once", ""
            if answer in ("a", "always"):
                return "always", ""
            return "deny", ask("chatpipe: why not (sent to the model; may be empty)? ")


def question(call: tools.ToolCall, tool: tools.Tool, scope: str) -> str:
    """The question that asks whether CALL of TOOL may run, with the whole
    arguments, pretty-printed; "always" holds for SCOPE (e.g. ``in this
    run``).  Everything that comes from the model or the server is passed
    through :func:`chatpipe.tooltext.shown`."""
    what = f"{tooltext.shown(tool.name, False)} of {tooltext.shown(tool.source, False)}"
    offered = (f" (offered to the model as {tooltext.shown(call.name, False)})"
               if call.name != tool.name else "")
    return (f"\nchatpipe: the model asks to run {what}{offered} with these arguments:\n"
            f"{tooltext.shown_arguments(call.arguments)}\n"
            f"chatpipe: run {what}? [y]es, [a]lways for {what} {scope}, [n]o: ")
