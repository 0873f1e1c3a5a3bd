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
;; a prefix argument, choose the template).  Type a question under the
;; "### User" heading and press C-c C-c: the answer streams in under an
;; "### Assistant" heading.  C-c C-k stops it; M-x chatpipe-retry asks
;; again.  The chat is plain text: save it to a file, reopen it later,
;; turn on `chatpipe-mode' (or put "mode: chatpipe" in its local
;; variables) and go on; earlier turns may be edited before sending.
;; `chatpipe-mode' works in any text buffer, Markdown or Org (Org buffers
;; use "* User" headings), so a chat can live in a notes file.
;;
;; The model's reasoning, if it sends any, comes before the answer in a
;; folded block (TAB on its first line or M-x chatpipe-toggle-reasoning
;; unfolds it), or in a buffer of its own (M-x chatpipe-show-reasoning),
;; or nowhere: see `chatpipe-reasoning-display'.  It is never sent back.
;; Tool calls are shown after the answer, one line each.
;;
;; Other commands: `chatpipe-select-template', `chatpipe-set-model',
;; `chatpipe-edit-template', `chatpipe-send-region' (the region and an
;; instruction, from any buffer) and the menu `chatpipe-menu'.
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
;; The files: chatpipe-backend.el (the backend command, its templates,
;; API keys), chatpipe-process.el (backend processes and their events),
;; chatpipe-turns.el (headings, turns, messages), chatpipe-reasoning.el
;; (reasoning blocks and buffers), chatpipe-status.el (chat settings,
;; header line), chatpipe-chat.el (streaming answers into buffers),
;; chatpipe-templates.el (choosing and editing templates) and this one
;; (the modes, commands and menu).

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'transient)
(require 'chatpipe-backend)
(require 'chatpipe-process)
(require 'chatpipe-turns)
(require 'chatpipe-reasoning)
(require 'chatpipe-status)
(require 'chatpipe-chat)
(require 'chatpipe-templates)

;;;; Customization

(defcustom chatpipe-major-mode nil
  "The major mode of new chat buffers.
When nil, use `markdown-mode' if it is installed, else `text-mode'."
  :type '(choice (const :tag "Markdown or text" nil) function)
  :group 'chatpipe)

(defcustom chatpipe-buffer-name-format "*chatpipe: %s*"
  "Format of the names of chat buffers; %s is the template."
  :type 'string
  :group 'chatpipe)

;;;; Variables

(defvar chatpipe-instruction-history nil
  "Minibuffer history of instructions for `chatpipe-send-region'.")

(defvar-local chatpipe--saved-header-line nil
  "The header line of the buffer before `chatpipe-mode' was turned on.")

(defvar-local chatpipe--font-lock-keywords nil
  "The font-lock keywords added by `chatpipe-mode'.")

(defconst chatpipe--header-line-format '(:eval (chatpipe-header-line))
  "The header line of chat buffers.")

;;;; Mode

(defun chatpipe--reasoning-tab-filter (command)
  "Return COMMAND if point is on the first line of a reasoning block.
Else return nil, so that TAB does what it does without
`chatpipe-mode'."
  (and (save-excursion
         (beginning-of-line)
         (let ((case-fold-search nil))
           (looking-at (chatpipe--line-regexp
                        (car (chatpipe--reasoning-delimiters))))))
       command))

(defvar chatpipe-mode-map
  (let ((map (make-sparse-keymap))
        (tab '(menu-item "" chatpipe-toggle-reasoning
                         :filter chatpipe--reasoning-tab-filter)))
    (define-key map (kbd "C-c C-c") #'chatpipe-send)
    (define-key map (kbd "C-c C-k") #'chatpipe-abort)
    (define-key map (kbd "TAB") tab)
    (define-key map [tab] tab)
    map)
  "Keymap of `chatpipe-mode'.
TAB on the first line of a reasoning block folds or unfolds it.")

;;;###autoload
(define-minor-mode chatpipe-mode
  "Minor mode for chats with language models in any text buffer.
The chat's turns are separated by role headings (see
`chatpipe-headings' and `chatpipe-org-headings').  The header line
shows the template, the model and the status of the last answer.
Turning the mode on folds the reasoning blocks of the buffer (see
`chatpipe-reasoning-display'); turning it off unfolds them.

\\{chatpipe-mode-map}"
  :lighter " Chatpipe"
  :group 'chatpipe
  (if chatpipe-mode
      (progn
        (unless (equal header-line-format chatpipe--header-line-format)
          (setq chatpipe--saved-header-line header-line-format)
          (setq-local header-line-format chatpipe--header-line-format))
        (add-hook 'kill-buffer-hook #'chatpipe--kill-buffer nil t)
        (setq chatpipe--font-lock-keywords
              `((,(chatpipe--heading-regexp) 0 'chatpipe-heading)))
        (font-lock-add-keywords nil chatpipe--font-lock-keywords 'append)
        (font-lock-flush)
        (save-restriction
          (widen)
          (dolist (block (chatpipe-reasoning-blocks))
            (chatpipe-hide-reasoning block t))))
    (when (equal header-line-format chatpipe--header-line-format)
      (setq-local header-line-format chatpipe--saved-header-line))
    (remove-hook 'kill-buffer-hook #'chatpipe--kill-buffer t)
    (font-lock-remove-keywords nil chatpipe--font-lock-keywords)
    (font-lock-flush)
    (save-restriction
      (widen)
      (remove-overlays (point-min) (point-max) 'chatpipe-reasoning t))
    (remove-from-invisibility-spec '(chatpipe-reasoning . t))))

;;;; Chat settings

;;;###autoload
(defun chatpipe-select-template (template)
  "Use TEMPLATE, a template name or file, for the chat in this buffer.
Interactively, complete over `chatpipe templates list'.  Outside a
chat buffer, set `chatpipe-default-template' for this session.
Return TEMPLATE."
  (interactive (list (chatpipe-read-template
                      "Template" (and chatpipe-mode
                                      (chatpipe--current-template)))))
  (if chatpipe-mode
      (progn (setq chatpipe-template template)
             (setq chatpipe--model-seen nil)
             (force-mode-line-update))
    (setq chatpipe-default-template template))
  (message "chatpipe: template %s" template)
  template)

;;;###autoload
(defun chatpipe-set-model (model)
  "Use MODEL instead of the template's model in this chat buffer.
An empty MODEL goes back to the template's.  Return MODEL or nil."
  (interactive (list (read-string
                      (format-prompt "Model (empty: the template's)"
                                     chatpipe-model)
                      nil nil chatpipe-model)))
  (unless chatpipe-mode (chatpipe-mode 1))
  (setq chatpipe-model (and model (not (string-empty-p model)) model))
  (force-mode-line-update)
  chatpipe-model)

;;;; Sending

(defun chatpipe-send-turns (&optional beg end)
  "Send the chat between BEG and END and stream the answer after it.
BEG and END default to the whole buffer.  If the text has no role
heading, it is the user's question and a user heading is inserted
before it.  The answer goes after END, under an assistant heading.
Return the new job."
  (let* ((beg (copy-marker (or beg (point-min))))
         (end (copy-marker (or end (point-max))))
         (messages (chatpipe-messages beg end))
         (headless (null (chatpipe-turns beg end))))
    (when headless
      (let ((text (string-trim (buffer-substring-no-properties beg end))))
        (setq messages (unless (string-empty-p text)
                         (list (cons "user" text))))))
    (unwind-protect
        (chatpipe--start messages (chatpipe--send-preparer beg end headless))
      (set-marker beg nil)
      (set-marker end nil))))

(defun chatpipe--send-preparer (beg end headless)
  "Return a function to make room for an answer after END.
BEG and END are markers around the chat sent.  If HEADLESS, the
text has no heading: insert a user heading at BEG.  The function
returns the position of the answer; see `chatpipe--start'."
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

(defun chatpipe--chat-buffer (template)
  "Return the chat buffer of TEMPLATE, made ready if new."
  (let* ((name (format chatpipe-buffer-name-format template))
         (buffer (get-buffer name)))
    (or buffer
        (with-current-buffer (generate-new-buffer name)
          (chatpipe--new-buffer-mode)
          (visual-line-mode 1)
          (setq chatpipe-template template)
          (chatpipe-mode 1)
          (insert (chatpipe--heading 'user) "\n\n")
          (current-buffer)))))

;;;###autoload
(defun chatpipe (&optional template)
  "Open a chat buffer for TEMPLATE and return it.
TEMPLATE defaults to `chatpipe-default-template'; interactively,
with a prefix argument, choose it.  If the template's chat buffer
exists, switch to it; else make one with an empty user turn."
  (interactive (list (and current-prefix-arg
                          (chatpipe-read-template
                           "Template" chatpipe-default-template))))
  (let ((buffer (chatpipe--chat-buffer
                 (or template chatpipe-default-template))))
    (pop-to-buffer buffer)
    buffer))

;;;###autoload
(defun chatpipe-send (&optional beg end)
  "Send the chat in this buffer and stream the answer into it.
Send the text between BEG and END, by default the whole buffer;
interactively, the region if it is active.  The turns are turned
into messages; the answer goes after them, under an assistant
heading, and ends with a user heading for the next question.
Point moves along with the answer only if it is at the end.
Turn on `chatpipe-mode' if it is off.  Return the new job."
  (interactive (if (use-region-p)
                   (list (region-beginning) (region-end))
                 (list nil nil)))
  (unless chatpipe-mode (chatpipe-mode 1))
  (deactivate-mark)
  (chatpipe-send-turns beg end))

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
(defun chatpipe-toggle-reasoning (&optional all)
  "Fold or unfold the reasoning block at point.
Point may be anywhere in the block, its first line included.  With
a prefix argument ALL, or when point is in no block, unfold all the
blocks of the buffer if one of them is folded, else fold them all.
Return non-nil if the block (or the blocks) are now folded."
  (interactive "P")
  (let ((block (and (not all) (chatpipe-reasoning-block-at (point)))))
    (if block
        (chatpipe-hide-reasoning block (not (chatpipe-reasoning-hidden-p block)))
      (let* ((blocks (or (save-restriction
                           (widen)
                           (chatpipe-reasoning-blocks))
                         (user-error "No reasoning block in this buffer")))
             (hide (not (cl-some #'chatpipe-reasoning-hidden-p blocks))))
        (dolist (block blocks)
          (chatpipe-hide-reasoning block hide))
        hide))))

;;;###autoload
(defun chatpipe-show-reasoning ()
  "Display the buffer with the reasoning of this chat's last answer.
There is one when `chatpipe-reasoning-display' is `buffer'.  Return
its window."
  (interactive)
  (let ((buffer (chatpipe--reasoning-buffer-of (current-buffer))))
    (unless buffer
      (user-error "No reasoning buffer for this chat%s"
                  (if (eq chatpipe-reasoning-display 'buffer)
                      ""
                    " (see `chatpipe-reasoning-display')")))
    (display-buffer buffer)))

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

;;;; Menu

;;;###autoload (autoload 'chatpipe-menu "chatpipe" nil t)
(transient-define-prefix chatpipe-menu ()
  "Show a menu of chatpipe commands: chat, template, model and backend."
  [["Chat"
    ("c" "Send" chatpipe-send)
    ("k" "Abort" chatpipe-abort)
    ("r" "Retry last answer" chatpipe-retry)
    ("R" "Send region with instruction" chatpipe-send-region)
    ("n" "Open chat buffer" chatpipe)]
   ["Reasoning"
    ("v" "Fold or unfold" chatpipe-toggle-reasoning)
    ("V" "Show reasoning buffer" chatpipe-show-reasoning)]
   ["Template"
    ("t" "Select template" chatpipe-select-template)
    ("m" "Set model" chatpipe-set-model)
    ("e" "Edit template" chatpipe-edit-template)
    ("S" "Stop the backend process" chatpipe-serve-stop)]])

(provide 'chatpipe)
;;; chatpipe.el ends here

