"""Tool calls confirmed on the terminal, for ``chatpipe send --tools``.

:class:`TerminalAsker` asks on the controlling terminal (``/dev/tty``), not
on stdin or stdout, so that piped input and output stay the chat's: ``run
get_current_time({"timezone": "UTC"}) from mcp:time? [y]es, [a]lways, [n]o``;
a "no" asks for a reason, which goes back to the model.  ``--yes``
approves every call; without a terminal (and without ``--yes``) every call
is denied, with a reason that says so.
"""

from __future__ import annotations

from typing import Any

from chatpipe import protocol, redaction, tools
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

            answer = ask(f"\nchatpipe: run {tool.name}({call.arguments}) from {tool.source}? "
                         "[y]es, [a]lways for this tool, [n]o: ").lower()
            if answer in ("y", "yes"):
                return "once", ""
            if answer in ("a", "always"):
                return "always", ""
            return "deny", ask("chatpipe: why not (sent to the model; may be empty)? ")
