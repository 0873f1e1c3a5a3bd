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

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'transient)
(require 'chatpipe-process)
(require 'chatpipe-chat)

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

(defface chatpipe-template-error
  '((t :underline (:style wave :color "Red1")))
  "Face of the problems found in a template file."
  :group 'chatpipe)

;;;; Variables

(defvar chatpipe-template-history nil
  "Minibuffer history of template names.")

(defvar chatpipe-instruction-history nil
  "Minibuffer history of instructions for `chatpipe-send-region'.")

(defvar-local chatpipe--saved-header-line nil
  "The header line of the buffer before `chatpipe-mode' was turned on.")

(defvar-local chatpipe--font-lock-keywords nil
  "The font-lock keywords added by `chatpipe-mode'.")

(defvar-local chatpipe-template-errors nil
  "The problems found when the template file was last saved.
A list of (LINE COLUMN MESSAGE).")

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

;;;; Templates

(defun chatpipe-templates ()
  "Return the known templates, from `chatpipe templates list --json'.
Each is a plist with :name, :source (\"user\" or \"bundled\"),
:path, and :api, :url, :model and :description, or :error for a
broken file."
  (pcase (chatpipe-call "templates" "list" "--json")
    (`(0 . ,out) (json-parse-string out :object-type 'plist
                                    :array-type 'list
                                    :null-object nil :false-object nil))
    (`(,code . ,out)
     (signal 'chatpipe-backend-failed
             (list (format "chatpipe templates list exited with %s: %s"
                           code (string-trim out)))))))

(defun chatpipe-read-template (prompt &optional default)
  "Read a template name in the minibuffer with PROMPT, and return it.
Complete over the known templates; DEFAULT is the default.  A .json
file name is accepted too."
  (let* ((entries (chatpipe-templates))
         (width (cl-loop for e in entries
                         maximize (length (plist-get e :name))))
         (completion-extra-properties
          (list :annotation-function
                (lambda (name)
                  (let ((entry (cl-find name entries
                                        :key (lambda (e) (plist-get e :name))
                                        :test #'equal)))
                    (when entry
                      (format "%s  %-8s %s"
                              (make-string (max 0 (- width (length name))) ?\s)
                              (plist-get entry :source)
                              (if (plist-get entry :error)
                                  (concat "error: " (plist-get entry :error))
                                (or (plist-get entry :description)
                                    (plist-get entry :url) "")))))))))
    (completing-read (format-prompt prompt default)
                     (mapcar (lambda (e) (plist-get e :name)) entries)
                     nil 'confirm nil 'chatpipe-template-history default)))

(defun chatpipe--current-template ()
  "Return the template of the current buffer."
  (or chatpipe-template chatpipe-default-template))

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

(defun chatpipe--template-entry (template)
  "Return the `chatpipe-templates' entry named TEMPLATE, or nil."
  (cl-find template (chatpipe-templates)
           :key (lambda (e) (plist-get e :name)) :test #'equal))

;;;###autoload
(defun chatpipe-edit-template (template)
  "Visit the file of TEMPLATE, a template name or file, to edit it.
A bundled template is first copied to the user's template folder
\(`chatpipe templates dir'), which then takes precedence.  Saving
the file checks it with `chatpipe templates check' and shows the
problems at their line.  Return the file's buffer."
  (interactive (list (chatpipe-read-template
                      "Edit template" (and chatpipe-mode
                                           (chatpipe--current-template)))))
  (let* ((entry (and (not (string-suffix-p ".json" template))
                     (chatpipe--template-entry template)))
         (file (cond ((null entry) (expand-file-name template))
                     ((equal (plist-get entry :source) "bundled")
                      (chatpipe--copy-bundled-template entry))
                     (t (plist-get entry :path)))))
    (unless (or entry (file-exists-p file))
      (user-error "No template named %s" template))
    (let ((buffer (find-file file)))
      (with-current-buffer buffer
        (chatpipe-template-mode 1)
        (when (plist-get entry :error)
          (chatpipe-template-check)))
      buffer)))

(defun chatpipe--copy-bundled-template (entry)
  "Copy the bundled template ENTRY to the user's folder; return the copy."
  (let* ((dir (pcase (chatpipe-call "templates" "dir")
                (`(0 . ,out) (string-trim out))
                (_ (error "Cannot find the user's template folder"))))
         (file (expand-file-name (concat (plist-get entry :name) ".json")
                                 dir)))
    (unless (file-exists-p file)
      (make-directory dir t)
      (copy-file (plist-get entry :path) file)
      (set-file-modes file #o644)
      (message "chatpipe: copied the bundled template to %s" file))
    file))

(defun chatpipe-template-check ()
  "Check the template file of this buffer with `chatpipe templates check'.
Underline each problem at its line and column, show the first in
the echo area, and return them as a list of (LINE COLUMN MESSAGE)."
  (interactive)
  (let* ((file (or buffer-file-name (user-error "Buffer has no file")))
         (result (chatpipe-call "templates" "check" file))
         (errors nil))
    (dolist (line (split-string (cdr result) "\n" t))
      (when (string-match "\\`.*?:\\([0-9]+\\):\\([0-9]+\\): \\(.*\\)\\'"
                          line)
        (push (list (string-to-number (match-string 1 line))
                    (string-to-number (match-string 2 line))
                    (match-string 3 line))
              errors)))
    (setq errors (nreverse errors))
    (when (and (/= (car result) 0) (null errors))
      (setq errors (list (list 1 1 (string-trim (cdr result))))))
    (remove-overlays nil nil 'chatpipe-template-error t)
    (dolist (err errors)
      (save-excursion
        (save-restriction
          (widen)
          (goto-char (point-min))
          (forward-line (1- (nth 0 err)))
          (let* ((bol (point))
                 (start (min (+ bol (max 0 (1- (nth 1 err))))
                             (line-end-position)))
                 (end (line-end-position))
                 (ov (make-overlay (if (< start end) start bol)
                                   (max end (min (1+ bol) (point-max))))))
            (overlay-put ov 'chatpipe-template-error t)
            (overlay-put ov 'face 'chatpipe-template-error)
            (overlay-put ov 'help-echo (nth 2 err))))))
    (setq chatpipe-template-errors errors)
    (if errors
        (message "%s:%d:%d: %s" (file-name-nondirectory file)
                 (nth 0 (car errors)) (nth 1 (car errors))
                 (nth 2 (car errors)))
      (message "chatpipe: template %s is valid"
               (file-name-nondirectory file)))
    errors))

;;;###autoload
(define-minor-mode chatpipe-template-mode
  "Minor mode for editing chatpipe template files.
Saving the file checks it with `chatpipe templates check' and
underlines the problems found; see `chatpipe-template-check'."
  :lighter " Template"
  :group 'chatpipe
  (if chatpipe-template-mode
      (add-hook 'after-save-hook #'chatpipe-template-check nil t)
    (remove-hook 'after-save-hook #'chatpipe-template-check t)
    (remove-overlays nil nil 'chatpipe-template-error t)))

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
