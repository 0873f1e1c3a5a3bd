;;; chatpipe.el --- Stream LLM chats into any text buffer -*- lexical-binding: t; -*-

;; Copyright (C) 2025 chatpipe developers

;; Author: chatpipe developers
;; Version: 0.1.0
;; Package-Requires: ((emacs "28.1"))
;; Keywords: comm, tools
;; URL: https://github.com/chatpipe/chatpipe

;; This file is not part of GNU Emacs.

;; This program is free software: you can redistribute it and/or modify
;; it under the terms of the GNU General Public License as published by
;; the Free Software Foundation, either version 3 of the License, or
;; (at your option) any later version.

;; This program is distributed in the hope that it will be useful,
;; but WITHOUT ANY WARRANTY; without even the implied warranty of
;; MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
;; GNU General Public License for more details.

;; You should have received a copy of the GNU General Public License
;; along with this program.  If not, see <https://www.gnu.org/licenses/>.

;;; Commentary:

;; Chat with language models, local or remote, in Emacs buffers, through
;; the `chatpipe' command line backend (a Python package) and its request
;; templates.
;;
;; M-x chatpipe opens a chat buffer for `chatpipe-default-template' (with
;; a prefix argument, a new one, for the template you choose).  Type a
;; question under the "### User" heading and press C-c RET: the chat up
;; to point is sent, and the answer streams in under an "### Assistant"
;; heading.  In Org buffers, where Org binds C-c RET, C-c C-c sends
;; wherever Org has nothing else to do with it.  C-u C-c RET opens the
;; menu (abort, retry, model, temperature, token limit, system prompt).
;; The chat is plain text: save it to a file (it keeps its settings),
;; reopen it later and go on; earlier turns may be edited before
;; sending.  `chatpipe-mode' works in any text buffer, Markdown or Org
;; (Org buffers use "* User" headings), so a chat can live in a notes
;; file.
;;
;; The model's reasoning, if it sends any, comes before the answer in a
;; folded block (TAB on its first line or M-x chatpipe-toggle-reasoning
;; unfolds it), or in a buffer of its own (M-x chatpipe-show-reasoning),
;; or nowhere: see `chatpipe-reasoning-display'.  It is never sent back.
;;
;; Tools: define tools in Emacs Lisp with `chatpipe-define-tool', and
;; let a chat offer them, or the tools of the MCP servers of the
;; backend's mcp.json, with M-x chatpipe-set-tools (or
;; `chatpipe-default-tools' for all chats).  When the model calls one,
;; chatpipe asks first where needed (MCP tools, tools defined with
;; :confirm), runs it, shows the call and its result in a folded block
;; (TAB on its first line unfolds it) and streams the model's next
;; answer below; a saved chat keeps the blocks and sends them again.
;; A chat without tools shows the model's tool calls after the answer,
;; one line each.
;;
;; Other commands: `chatpipe-select-template', `chatpipe-set-model',
;; `chatpipe-set-temperature', `chatpipe-set-max-tokens',
;; `chatpipe-set-system-prompt', `chatpipe-set-tools',
;; `chatpipe-toggle-tool-result', `chatpipe-edit-template',
;; `chatpipe-send-region' (the region and an instruction, from any
;; buffer), `chatpipe-context-toggle' and `chatpipe-context-list' (the
;; files, buffers and regions a question is about), `chatpipe-attach'
;; (an image or PDF), `chatpipe-rewrite' (rewrite the region in place,
;; reviewed as a diff) and the menu `chatpipe-menu'.
;;
;; The backend is found on `exec-path', or set `chatpipe-command' or
;; `chatpipe-python-venv'.  All chats share one long-lived `chatpipe
;; serve' process, started on first use, which keeps HTTP connections
;; warm; M-x chatpipe-serve-stop stops it (the next answer starts it
;; again), and `chatpipe-backend-mode' `send' starts a process per
;; answer instead.  API keys come from the environment or from
;; `auth-source' (host: the template's URL host, user "apikey"), and are
;; passed to the backend with each request or in its environment, never
;; on a command line.
;;
;; The files: each says in its Commentary what it holds, and
;; `chatpipe-test-files' (tests/elisp/chatpipe-package-test.el) lists
;; them in the order they depend on each other.  This one holds the
;; mode and the chat commands.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-backend)
(require 'chatpipe-process)
(require 'chatpipe-headings)
(require 'chatpipe-turns)
(require 'chatpipe-toolblocks)
(require 'chatpipe-fold)
(require 'chatpipe-reasoning)
(require 'chatpipe-chat-settings)
(require 'chatpipe-header)
(require 'chatpipe-context)
(require 'chatpipe-media)
(require 'chatpipe-prestart)
(require 'chatpipe-insert)
(require 'chatpipe-tools)
(require 'chatpipe-chat)
(require 'chatpipe-templates)
(require 'chatpipe-state)
(require 'chatpipe-settings)
(require 'chatpipe-rewrite)

(autoload 'chatpipe-install-backend "chatpipe-install" nil t)

;;;; Customization

(defcustom chatpipe-major-mode nil
  "The major mode of new chat buffers.
When nil, use `markdown-mode' if it is installed, else `text-mode'."
  :type '(choice (const :tag "Markdown or text" nil) function)
  :group 'chatpipe)

;;;; Variables

(defvar chatpipe-instruction-history nil
  "Minibuffer history of instructions for `chatpipe-send-region'.")

(defvar chatpipe-mode)

(defvar-local chatpipe--saved-header-line nil
  "The header line of the buffer before `chatpipe-mode' was turned on.")

(defvar-local chatpipe--font-lock-keywords nil
  "The font-lock keywords added by `chatpipe-mode'.")

(defconst chatpipe--header-line-format '(:eval (chatpipe-header-line))
  "The header line of chat buffers.")

;;;; Mode

(defun chatpipe--fold-tab-filter (_command)
  "Return the command that folds the block whose first line is at point.
That is `chatpipe-toggle-reasoning' on the first line of a reasoning
block, `chatpipe-toggle-tool-result' on that of a tool block, else
nil, so that TAB does what it does without `chatpipe-mode'."
  (pcase (chatpipe--fold-kind-at-line)
    ('chatpipe-reasoning #'chatpipe-toggle-reasoning)
    ('chatpipe-tool #'chatpipe-toggle-tool-result)))

(defun chatpipe--major-mode-binds-p (key)
  "Return non-nil if the buffer's major mode (its local map) binds KEY."
  (let ((binding (and (current-local-map) (lookup-key (current-local-map) key))))
    (and binding (not (numberp binding)))))

(defun chatpipe--send-key-filter (command)
  "Return COMMAND unless the major mode binds `C-c RET' itself."
  (unless (chatpipe--major-mode-binds-p (kbd "C-c RET")) command))

(defvar chatpipe-mode-map
  (let ((map (make-sparse-keymap))
        (tab '(menu-item "" chatpipe-toggle-reasoning
                         :filter chatpipe--fold-tab-filter)))
    (define-key map (kbd "C-c RET")
      '(menu-item "" chatpipe-send :filter chatpipe--send-key-filter))
    (define-key map (kbd "TAB") tab)
    (define-key map [tab] tab)
    map)
  "Keymap of `chatpipe-mode'.
`C-c RET' sends, unless the major mode binds it (as Org does);
TAB on the first line of a reasoning or tool block folds or unfolds it.")

(defun chatpipe--org-ctrl-c-ctrl-c ()
  "Run `chatpipe-send' for Org's key (C-c C-c) where Org has no other use.
A function of `org-ctrl-c-ctrl-c-final-hook': Org calls it only
when `org-ctrl-c-ctrl-c' does nothing else at point (not on a
checkbox, a table, a timestamp, a heading...).  Return non-nil if
it sent."
  (when chatpipe-mode
    (call-interactively #'chatpipe-send)
    t))

;;;###autoload
(define-minor-mode chatpipe-mode
  "Minor mode for chats with language models in any text buffer.
The chat's turns are separated by role headings (see
`chatpipe-headings' and `chatpipe-org-headings').  The header line
shows the template, the model, the parameters and system prompt set
for the chat, and the status of the last answer.

Keys, which never shadow the major mode's:

`C-c RET' runs `chatpipe-send': it sends the chat up to point (or
the region); with \\[universal-argument], or while an answer
streams, it opens `chatpipe-menu' (abort, retry, model,
temperature...).  Where the major mode binds `C-c RET' itself, as
Org does, the key stays the major mode's.

In Org buffers, Org's key for `org-ctrl-c-ctrl-c' (C-c C-c) runs
`chatpipe-send' wherever Org has nothing else to do with it (not on
a checkbox, a table, a heading...).

`TAB' on the first line of a reasoning block or a tool block folds
or unfolds it.

Turning the mode on folds the reasoning blocks (see
`chatpipe-reasoning-display') and the tool blocks of the buffer;
turning it off unfolds them.  Links to images and PDFs in questions
are noted with whether they will be sent (see
`chatpipe-media-annotate-mode').  Saving
the buffer saves the chat's settings with it (see
`chatpipe-save-state'), and the mode stays on when the major mode
changes, the headings converted to its style."
  :lighter " Chatpipe"
  :group 'chatpipe
  (if chatpipe-mode
      (progn
        (unless (equal header-line-format chatpipe--header-line-format)
          (setq chatpipe--saved-header-line header-line-format)
          (setq-local header-line-format chatpipe--header-line-format))
        (add-hook 'kill-buffer-hook #'chatpipe--kill-buffer nil t)
        (add-hook 'org-ctrl-c-ctrl-c-final-hook #'chatpipe--org-ctrl-c-ctrl-c
                  nil t)
        (chatpipe--state-enable)
        (chatpipe--prestart-soon)
        (setq chatpipe--font-lock-keywords
              `((,(chatpipe--heading-regexp) 0 'chatpipe-heading)))
        (font-lock-add-keywords nil chatpipe--font-lock-keywords 'append)
        (font-lock-flush)
        (chatpipe--fold-all t)
        (chatpipe-media-annotate-mode 1))
    (chatpipe-media-annotate-mode -1)
    (when (equal header-line-format chatpipe--header-line-format)
      (setq-local header-line-format chatpipe--saved-header-line))
    (remove-hook 'kill-buffer-hook #'chatpipe--kill-buffer t)
    (remove-hook 'org-ctrl-c-ctrl-c-final-hook #'chatpipe--org-ctrl-c-ctrl-c t)
    (chatpipe--state-disable)
    (font-lock-remove-keywords nil chatpipe--font-lock-keywords)
    (font-lock-flush)
    (chatpipe--fold-all nil)))

;;;; Sending

(defun chatpipe-send-turns (&optional beg end)
  "Send the chat between BEG and END and stream the answer after it.
BEG and END default to the whole chat (see `chatpipe--chat-end').
If the text has no role heading, it is the user's question and a
user heading is inserted before it.  The answer goes after END,
under an assistant heading.  A saved chat's Local Variables block
is never sent: the chat ends before it, the answer goes before it,
and text after it goes before it when END is past its start (see
`chatpipe--take-text-after-block').  Return the new job."
  (chatpipe--check-idle)
  (let* ((inhibit-read-only t)
         (moved (chatpipe--take-text-after-block (or end (point-max)))))
    (when end (setq end moved)))
  (let* ((chat-end (chatpipe--chat-end))
         (beg (copy-marker (min (or beg (point-min)) chat-end)))
         (end (copy-marker (min (or end chat-end) chat-end)))
         (messages (chatpipe-messages beg end))
         (headless (null (chatpipe-turns beg end))))
    (when headless
      (set-marker beg (chatpipe--question-start beg end))
      (let ((text (string-trim (buffer-substring-no-properties beg end))))
        (setq messages (unless (string-empty-p text)
                         (chatpipe-media-messages (list (cons "user" text)))))))
    (unwind-protect
        (chatpipe--start messages (chatpipe--send-preparer beg end headless))
      (set-marker beg nil)
      (set-marker end nil))))

(defun chatpipe--send-preparer (beg end headless)
  "Return a function to make room for an answer after END.
BEG and END are markers around the chat sent.  If HEADLESS, the
text has no heading: insert a user heading at BEG.  Text after END
that is not a turn of its own becomes one (a user turn).  The
function returns the position of the answer; see `chatpipe--start'."
  (lambda ()
    (let* ((text-end (save-excursion
                       (goto-char end)
                       (skip-chars-backward " \t\n" beg)
                       (point)))
           (follow (<= text-end (point) end))
           (orig (point-marker)))
      (when headless
        (save-excursion
          (goto-char beg)
          (skip-chars-forward " \t\n" end)
          (insert (chatpipe--heading 'user) "\n\n")))
      (chatpipe--separate-rest end)
      (goto-char end)
      (skip-chars-backward " \t\n" beg)
      (delete-region (point) end)
      (chatpipe--ensure-blank-line)
      (insert (chatpipe--heading 'assistant) "\n\n")
      (prog1 (point)
        (unless follow (goto-char orig))
        (set-marker orig nil)))))

(defun chatpipe-retry-last ()
  "Send the chat again without its last answer, and stream a new one.
The text of the last assistant turn is replaced by the new answer.
Return the new job."
  (let* ((turns (chatpipe-turns))
         (turn (car (last (cl-remove-if-not
                           (lambda (turn) (eq (car turn) 'assistant))
                           turns)))))
    (unless turn
      (user-error "No answer to retry: there is no \"%s\" heading"
                  (chatpipe--heading 'assistant)))
    (chatpipe--start
     (chatpipe-messages (point-min) (nth 1 turn))
     (lambda ()
       (let ((start (nth 2 turn))
             (end (nth 3 turn))
             (follow (<= (nth 1 turn) (point) (nth 3 turn)))
             (orig (point-marker)))
         (delete-region start end)
         (goto-char start)
         (unless (bolp) (insert "\n"))
         (insert "\n")
         (prog1 (point)
           (unless (eobp)
             (insert "\n\n")
             (forward-char -2))
           (unless follow (goto-char orig))
           (set-marker orig nil)))))))

;;;; Commands

(defun chatpipe--new-buffer-mode ()
  "Turn on the major mode of new chat buffers."
  (funcall (or chatpipe-major-mode
               (if (fboundp 'markdown-mode) 'markdown-mode 'text-mode))))

(defun chatpipe--idle-chat-p (buffer template)
  "Return non-nil if BUFFER is an idle chat of TEMPLATE made by `chatpipe'."
  (with-current-buffer buffer
    (and chatpipe--dedicated chatpipe-mode (not buffer-file-name)
         (equal (chatpipe--current-template) template)
         (not (chatpipe-busy-p)))))

(defun chatpipe--chat-buffer (template &optional new)
  "Return a chat buffer of TEMPLATE, made ready if new.
That is the one used last that no answer is streaming into, or a
new one, named after `chatpipe-buffer-name-format' (\"*chatpipe:
local*\", \"*chatpipe: local*<2>\"...).  With NEW, a new one."
  (or (and (not new)
           (cl-find-if (lambda (buffer) (chatpipe--idle-chat-p buffer template))
                       (buffer-list)))
      (with-current-buffer (generate-new-buffer
                            (format chatpipe-buffer-name-format template))
        (chatpipe--new-buffer-mode)
        (visual-line-mode 1)
        (setq chatpipe-template template)
        (setq chatpipe--dedicated t)
        (chatpipe-mode 1)
        (insert (chatpipe--heading 'user) "\n\n")
        (current-buffer))))

;;;###autoload
(defun chatpipe (&optional template new)
  "Open a chat buffer for TEMPLATE and return it.
TEMPLATE defaults to `chatpipe-default-template'.  Switch to the
template's chat buffer used last; if there is none, or if an answer
is streaming into it, or with NEW, make a new one with an empty user
turn (\"*chatpipe: local*<2>\" for a second chat of `local').
Interactively, with a prefix argument, choose the template and make
a new buffer."
  (interactive (and current-prefix-arg
                    (list (chatpipe-read-template
                           "Template" chatpipe-default-template)
                          t)))
  (let ((buffer (chatpipe--chat-buffer
                 (or template chatpipe-default-template) new)))
    (pop-to-buffer buffer)
    buffer))

;;;###autoload
(defun chatpipe-new (template)
  "Open a new chat buffer for TEMPLATE and return it.
Interactively, choose the template; the default is this chat's."
  (interactive (list (chatpipe-read-template
                      "Template" (if chatpipe-mode (chatpipe--current-template)
                                   chatpipe-default-template))))
  (chatpipe template t))

;;;###autoload
(defun chatpipe-send (&optional beg end menu)
  "Send the chat up to point and stream the answer into the buffer.
Send the turns between BEG and END: by default from the start of
the buffer to point (interactively, the region if it is active);
text after point stays out.  The answer goes at point, under an
assistant heading.  At the end of the chat a user heading follows
it for the next question; text after point stays after the answer,
under a user heading if it had none.  Point moves along with the
answer if it was at the end of the text sent.  Text without
headings is the question: a user heading is inserted before it.

The chat's settings go with it (see `chatpipe-menu'); a system
turn in the chat wins over the system prompt of
`chatpipe-set-system-prompt'.  Interactively, with a prefix
argument or while an answer streams into the buffer (MENU
non-nil), open `chatpipe-menu' instead.  Turn on `chatpipe-mode'
if it is off.  Return the new job."
  (interactive (list (if (use-region-p) (region-beginning) (point-min))
                     (if (use-region-p) (region-end) (point))
                     (or current-prefix-arg (chatpipe-busy-p))))
  (if menu
      (let ((current-prefix-arg nil))
        (call-interactively #'chatpipe-menu))
    (unless chatpipe-mode (chatpipe-mode 1))
    (deactivate-mark)
    (chatpipe-send-turns (or beg (point-min)) (or end (point)))))

;;;###autoload
(defun chatpipe-abort (&optional buffer)
  "Stop the answer streaming into BUFFER (default: the current buffer).
The partial answer stays, marked as aborted.  Return non-nil if
there was an answer to stop."
  (interactive)
  (or (chatpipe-abort-job buffer)
      (progn (when (called-interactively-p 'any)
               (message "chatpipe: no answer is streaming here"))
             nil)))

;;;###autoload
(defun chatpipe-retry ()
  "Replace the last answer of this chat with a new one.
Send the chat up to the last assistant heading again and stream
the new answer in place of the old.  Return the new job."
  (interactive)
  (unless chatpipe-mode (chatpipe-mode 1))
  (chatpipe-retry-last))

(defun chatpipe--region-text (beg end)
  "Return the text between BEG and END for a question.
In a programming mode it is a fenced code block."
  (let ((text (string-trim-right (buffer-substring-no-properties beg end))))
    (if (derived-mode-p 'prog-mode)
        (format "```%s\n%s\n```"
                (string-remove-suffix "-mode" (symbol-name major-mode))
                text)
      text)))

;;;###autoload
(defun chatpipe-send-region (beg end instruction &optional template)
  "Ask about the text between BEG and END, with INSTRUCTION.
The question (INSTRUCTION, a blank line, then the text) is added
to the chat buffer of TEMPLATE (default: `chatpipe-default-template'),
which is shown, and sent; the answer streams there.
Interactively, use the region; with a prefix argument, choose the
template.  Return the chat buffer."
  (interactive
   (if (use-region-p)
       (list (region-beginning) (region-end)
             (read-string "Instruction: " nil 'chatpipe-instruction-history)
             (and current-prefix-arg
                  (chatpipe-read-template "Template"
                                          chatpipe-default-template)))
     (user-error "No region: mark the text to send first")))
  (let* ((question (string-join
                    (delq nil (list (and (not (string-blank-p instruction))
                                         (string-trim instruction))
                                    (chatpipe--region-text beg end)))
                    "\n\n"))
         (buffer (chatpipe--chat-buffer
                  (or template chatpipe-default-template))))
    (deactivate-mark)
    (with-current-buffer buffer
      (chatpipe--check-idle)
      (let ((last (car (last (chatpipe-turns)))))
        (goto-char (point-max))
        (unless (and last (eq (car last) 'user)
                     (string-empty-p (chatpipe--turn-text last)))
          (skip-chars-backward " \t\n")
          (delete-region (point) (point-max))
          (chatpipe--ensure-blank-line)
          (insert (chatpipe--heading 'user) "\n\n"))
        (goto-char (point-max))
        (insert question)
        (chatpipe-send-turns)))
    (display-buffer buffer)
    buffer))

(provide 'chatpipe)
;;; chatpipe.el ends here

