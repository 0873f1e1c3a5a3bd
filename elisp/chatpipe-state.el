;;; chatpipe-state.el --- Chats saved to files with their settings -*- lexical-binding: t; -*-

;; Copyright (C) 2025 chatpipe developers

;; Author: chatpipe developers
;; Keywords: comm, tools

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

;; A chat saved to a file comes back with its settings.  Saving a
;; buffer in `chatpipe-mode' writes them into it first:
;;
;; - in Markdown, text and other buffers, as file-local variables at
;;   the end of the file: `chatpipe-template', `chatpipe-model',
;;   `chatpipe-temperature', `chatpipe-max-tokens', `chatpipe-system',
;;   `chatpipe-template-vars' and `chatpipe-tools' (the ones set), and
;;   "eval: (chatpipe-mode 1)", which Emacs deems safe (it asks nothing);
;; - in Org buffers, as properties of the file (a property drawer at
;;   its top): CHATPIPE_TEMPLATE, CHATPIPE_MODEL, CHATPIPE_TEMPERATURE,
;;   CHATPIPE_MAX_TOKENS, CHATPIPE_SYSTEM (line breaks as \n),
;;   CHATPIPE_VARS and CHATPIPE_TOOLS, and "eval: (chatpipe-mode 1)" in
;;   its Local Variables.
;;
;; What a file gives back is data, never code: property values are
;; parsed by `chatpipe--parse-property-data', which knows strings,
;; lists and pairs and nothing of the Lisp reader's other syntax, and
;; local variables are checked by chatpipe-chat-settings.el.  The settings
;; that choose where requests go (a template file, template
;; variables) or what runs (tools) are applied only with the user's
;; consent, asked once per file (see `chatpipe--file-settings-consent');
;; a chat saved with settings the user chose is remembered as allowed.
;;
;; Visiting the file turns `chatpipe-mode' on again (the eval entry; a
;; "mode: chatpipe" entry would be taken for the major mode), which in
;; Org reads the properties back.  The Local Variables block is no part
;; of the chat: see `chatpipe--chat-end'.
;;
;; When the major mode of a chat changes, for example when C-x C-w
;; saves a Markdown chat as chat.org, `chatpipe-mode' stays on and the
;; role headings, reasoning blocks and tool blocks are converted to the
;; new style, so that "###" and "*" turns never mix.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-turns)
(require 'chatpipe-reasoning)
(require 'chatpipe-chat-settings)
(require 'chatpipe-chat)

(defvar chatpipe-mode)
(declare-function chatpipe-mode "chatpipe")
(declare-function org-at-heading-p "org")
(declare-function org-entry-get "org")
(declare-function org-entry-put "org")
(declare-function org-entry-delete "org")
(declare-function markdown-mode "markdown-mode")

(defconst chatpipe--state-properties
  '((chatpipe-template . "CHATPIPE_TEMPLATE")
    (chatpipe-model . "CHATPIPE_MODEL")
    (chatpipe-temperature . "CHATPIPE_TEMPERATURE")
    (chatpipe-max-tokens . "CHATPIPE_MAX_TOKENS")
    (chatpipe-system . "CHATPIPE_SYSTEM")
    (chatpipe-template-vars . "CHATPIPE_VARS")
    (chatpipe-tools . "CHATPIPE_TOOLS")
    (chatpipe-context . "CHATPIPE_CONTEXT"))
  "The settings saved with a chat: (VARIABLE . ORG-PROPERTY).")

(defvar-local chatpipe--org-style nil
  "Non-nil if the chat's headings are Org's, when `chatpipe-mode' was on.")

(defvar-local chatpipe--dedicated nil
  "Non-nil in a chat buffer made by the command `chatpipe'.")

;; A chat stays a chat when its major mode changes.
(dolist (var '(chatpipe--org-style chatpipe--dedicated chatpipe--job
               chatpipe--reasoning-buffer))
  (put var 'permanent-local t))

;;;; Saving

(defun chatpipe--state-value (var)
  "Return the value of the setting VAR to save, or nil if it is not set."
  (if (eq var 'chatpipe-template)
      (chatpipe--current-template)
    (symbol-value var)))

(defun chatpipe--property-string (var value)
  "Return VALUE, the value of the setting VAR, as an Org property value."
  (cond ((eq var 'chatpipe-system)
         (replace-regexp-in-string
          "\n" "\\\\n" (replace-regexp-in-string "\\\\" "\\\\\\\\" value)))
        ((memq var '(chatpipe-template-vars chatpipe-tools chatpipe-context))
         (let ((print-escape-newlines t)) (prin1-to-string value)))
        ((numberp value) (number-to-string value))
        (t value)))

(defun chatpipe--parse-property-data (text)
  "Parse TEXT, a list written by `chatpipe--property-string', as data.
TEXT is Lisp's printed form of strings, the symbols nil and `none',
lists and dotted pairs, as `chatpipe-template-vars' and
`chatpipe-tools' are saved.  Nothing else of the Lisp reader's
syntax is known (no #, no quote, no other symbol), so that the
value is finite, has no text properties, and nests at most as
deeply as `chatpipe--file-value-limits' says.  Return (t . VALUE),
or nil if TEXT is not such a value."
  (let ((pos 0)
        (len (length text))
        (depth 0)
        (budget (plist-get chatpipe--file-value-limits :items))
        (case-fold-search nil))
    (cl-labels
        ((fail () (throw 'chatpipe--bad-data nil))
         (at (regexp) (and (string-match regexp text pos)
                           (= (match-beginning 0) pos)))
         (skip () (when (at "[ \t]+") (setq pos (match-end 0))))
         (spend () (when (< (cl-decf budget) 0) (fail)))
         (value ()
           (skip)
           (spend)
           (cond ((>= pos len) (fail))
                 ((eq (aref text pos) ?\()
                  (setq pos (1+ pos))
                  (when (> (setq depth (1+ depth))
                           (plist-get chatpipe--file-value-limits :depth))
                    (fail))
                  (prog1 (items) (setq depth (1- depth))))
                 ((at "\"\\(?:[^\"\\\\]\\|\\\\.\\)*\"")
                  (let ((token (match-string 0 text)))
                    (setq pos (match-end 0))
                    (when (> (length token)
                             (+ 2 (* 2 (plist-get chatpipe--file-value-limits
                                                  :chars))))
                      (fail))
                    (substring-no-properties (car (read-from-string token)))))
                 ((at "\\(none\\|nil\\)\\(?:[ \t()]\\|\\'\\)")
                  (setq pos (match-end 1))
                  (if (equal (match-string 1 text) "none") 'none nil))
                 (t (fail))))
         (items ()
           (let ((list nil) (tail nil))
             (skip)
             (while (not (and (< pos len) (eq (aref text pos) ?\))))
               (cond ((>= pos len) (fail))
                     ((and list (at "\\.[ \t]"))
                      (setq pos (match-end 0))
                      (setq tail (value))
                      (skip)
                      (unless (and (< pos len) (eq (aref text pos) ?\)))
                        (fail)))
                     (t (push (value) list) (skip))))
             (setq pos (1+ pos))
             (setq list (nreverse list))
             (when tail (setcdr (last list) tail))
             list)))
      (catch 'chatpipe--bad-data
        (let ((value (value)))
          (skip)
          (and (= pos len) (cons t value)))))))

(defun chatpipe--property-value (var text)
  "Return the value of the setting VAR saved as the Org property TEXT.
Return nil if TEXT is no valid value of VAR (see the function
`chatpipe--file-setting'): too long, of the wrong type, or not data
\(see `chatpipe--parse-property-data')."
  (let ((value
         (and (stringp text)
              (<= (length text)
                  (* 2 (plist-get chatpipe--file-value-limits :chars)))
              (pcase var
                ('chatpipe-system
                 (replace-regexp-in-string
                  "\\\\\\(.\\)" (lambda (m) (if (equal (match-string 1 m) "n")
                                               "\n" (match-string 1 m)))
                  text t t))
                ((or 'chatpipe-template-vars 'chatpipe-tools 'chatpipe-context)
                 (cdr (chatpipe--parse-property-data text)))
                ((or 'chatpipe-temperature 'chatpipe-max-tokens)
                 (and (string-match-p "\\`[0-9]*\\.?[0-9]+\\'" text)
                      (string-to-number text)))
                (_ text)))))
    (and value (cdr (chatpipe--file-setting var value)))))

(defun chatpipe--save-org-state ()
  "Write the chat's settings as properties of the Org file."
  (goto-char (point-min))
  (when (org-at-heading-p)
    (insert "\n"))
  (pcase-dolist (`(,var . ,property) chatpipe--state-properties)
    (let ((value (chatpipe--state-value var)))
      (if value
          (org-entry-put (point-min) property
                         (chatpipe--property-string var value))
        (org-entry-delete (point-min) property)))))

(defun chatpipe--save-local-variables ()
  "Write the chat's settings as file-local variables."
  (let ((print-escape-newlines t))
    (pcase-dolist (`(,var . ,_) chatpipe--state-properties)
      (let ((value (chatpipe--state-value var)))
        (cond (value (add-file-local-variable var value))
              ((chatpipe--local-variables-block)
               (delete-file-local-variable var)))))))

(defconst chatpipe--mode-form '(chatpipe-mode 1)
  "The form that turns `chatpipe-mode' on in a saved chat's Local Variables.")

(defun chatpipe--mode-variable-p ()
  "Return non-nil if the file's Local Variables turn `chatpipe-mode' on.
The block is the one `add-file-local-variable' writes to, wherever it
is (see `chatpipe--local-variables-block'), so that saving never adds
a second entry to it."
  (let ((block (chatpipe--local-variables-block)))
    (and block
         (save-excursion
           (goto-char (nth 0 block))
           (search-forward (format "eval: %S" chatpipe--mode-form)
                           (nth 1 block) t)))))

(defun chatpipe--saved-risky-settings ()
  "Return the settings saved with this chat that need consent from a file.
An alist of (VAR . VALUE); see `chatpipe--risky-setting-p'."
  (let ((settings nil))
    (pcase-dolist (`(,var . ,_) chatpipe--state-properties)
      (let ((value (chatpipe--state-value var)))
        (when (chatpipe--risky-setting-p var value)
          (push (cons var value) settings))))
    (nreverse settings)))

(defun chatpipe--approve-saved-settings ()
  "Remember the settings this chat is saved with as allowed for its file.
They are the user's: chosen in this Emacs, or allowed from the
file.  Settings allowed once only (see `chatpipe--once-hash') are
not remembered.  See `chatpipe--approve-file-settings'."
  (let ((settings (chatpipe--saved-risky-settings))
        (file (chatpipe--file-key)))
    (when (and settings file
               (not (equal chatpipe--once-hash
                           (chatpipe--settings-hash settings))))
      (chatpipe--approve-file-settings file settings))))

(defun chatpipe-save-state ()
  "Write this chat's settings into the buffer, to be saved with it.
They are its template, model, parameters, system prompt, template
variables and tools, as file-local variables or, in Org buffers, as
properties of the file; and an \"eval: (chatpipe-mode 1)\" local
variable that turns `chatpipe-mode' on when the file is visited.  Saving a
buffer in `chatpipe-mode' calls this.  The settings that need consent
when a file gives them (a template file, template variables, tools)
are remembered as allowed for this file: they are the user's (see
`chatpipe--approve-saved-settings').  See the commentary of
chatpipe-state.el.  Return nil."
  (interactive)
  (when enable-local-variables
    (save-excursion
      (save-restriction
        (widen)
        (chatpipe--ensure-page-break)
        (if (derived-mode-p 'org-mode)
            (chatpipe--save-org-state)
          (chatpipe--save-local-variables))
        (unless (chatpipe--mode-variable-p)
          (add-file-local-variable 'eval chatpipe--mode-form))))
    (chatpipe--approve-saved-settings))
  nil)

(defun chatpipe--take-text-after-block (end)
  "Move the text after the chat's Local Variables block to before it.
END is the end of the text to send; do nothing unless it is past the
start of the block (see `chatpipe--settings-block').  That is text
typed at the end of a saved chat's file (after \\[end-of-buffer]):
it belongs to the chat, not to the block, which ends the file.  It
goes after the chat's last turn: added to it if it is the user's,
else under a new user heading.  Point, if it was past the start of
the block, moves with the text.  Return the new position of END:
the end of the chat sent when it was past all the text."
  (let* ((block (chatpipe--settings-block))
         (text-beg (and block (> end (car block))
                        (save-excursion (goto-char (nth 1 block))
                                        (skip-chars-forward " \t\n")
                                        (point))))
         (text-end (and text-beg (save-excursion (goto-char (point-max))
                                                 (skip-chars-backward " \t\n")
                                                 (point)))))
    (if (not (and text-beg (< text-beg text-end)))
        end
      (let* ((text (buffer-substring-no-properties text-beg text-end))
             (offset (lambda (pos) (max 0 (min (- pos text-beg) (length text)))))
             (end-offset (funcall offset end))
             (point-offset (and (> (point) (car block)) (funcall offset (point))))
             (last (car (last (chatpipe-turns))))
             (orig (point-marker))
             (start (copy-marker (car block))))
        (delete-region (nth 1 block) (point-max))
        (goto-char start)
        (skip-chars-backward " \t\n")
        (delete-region (point) start)
        (cond ((bobp))
              ((memq (car last) '(nil user)) (insert "\n\n"))
              (t (insert "\n\n" (chatpipe--heading 'user) "\n\n")))
        (let ((pos (point)))
          (insert text "\n\n")
          (goto-char (if point-offset (+ pos point-offset) orig))
          (set-marker start nil)
          (set-marker orig nil)
          (+ pos end-offset))))))

(defun chatpipe--restore-org-state ()
  "Set the chat's settings that are not set yet from the Org file's properties.
Each is read as data (see `chatpipe--property-value'); one that is
not valid is ignored, with a warning.  Those that choose where
requests go or what runs (see `chatpipe--risky-setting-p') are set
only with the user's consent (see `chatpipe--file-settings-consent');
else they are kept in `chatpipe--withheld-settings'."
  (when (derived-mode-p 'org-mode)
    (let ((settings nil))
      (save-excursion
        (save-restriction
          (widen)
          (pcase-dolist (`(,var . ,property) chatpipe--state-properties)
            (let ((text (and (null (symbol-value var))
                             (org-entry-get (point-min) property))))
              (when text
                (let ((value (chatpipe--property-value var text)))
                  (if value
                      (push (cons var value) settings)
                    (display-warning
                     'chatpipe (format "%s: ignored the property %s: not a valid value" (buffer-name) property)))))))))
      (setq settings (nreverse settings))
      (let ((risky (cl-remove-if-not
                    (lambda (s) (chatpipe--risky-setting-p (car s) (cdr s)))
                    settings)))
        (when (and risky (not (chatpipe--file-settings-consent
                               (chatpipe--file-key) risky)))
          (setq settings (cl-set-difference settings risky :test #'eq))
          (dolist (s risky)
            (unless (member s chatpipe--withheld-settings)
              (push s chatpipe--withheld-settings)))))
      (pcase-dolist (`(,var . ,value) settings)
        (set (make-local-variable var) value)))))

;;;; A new major mode

(defun chatpipe--convert-reasoning-line (from to)
  "Escape the reasoning line at point the TO way instead of the FROM way.
FROM and TO are escapes as `chatpipe--reasoning-escape' returns."
  (when (looking-at (concat (regexp-quote (cdr from)) "\\(?:" (car from) "\\)"))
    (delete-char (length (cdr from))))
  (when (looking-at (car to))
    (insert (cdr to))))

(defun chatpipe--convert-chat (from-org to-org)
  "Convert the chat's headings, reasoning and tool blocks to another style.
They are in Org's style (`chatpipe-org-headings') if FROM-ORG is
non-nil, else in the other one (`chatpipe-headings'); make them
Org's if TO-ORG is non-nil, else the other."
  (let* ((from (if from-org chatpipe-org-headings chatpipe-headings))
         (to (if to-org chatpipe-org-headings chatpipe-headings))
         (from-block (if from-org chatpipe-org-reasoning-delimiters
                       chatpipe-reasoning-delimiters))
         (to-block (if to-org chatpipe-org-reasoning-delimiters
                     chatpipe-reasoning-delimiters))
         (from-escape (chatpipe--reasoning-escape-for from-org))
         (to-escape (chatpipe--reasoning-escape-for to-org))
         (regexp (concat "^\\(?:" (regexp-opt (mapcar #'cdr from) t)
                         "\\|\\(" (regexp-quote (car from-block)) "\\)\\)[ \t]*$"
                         "\\|^\\(" (regexp-quote
                                    (car (chatpipe--tool-syntax from-org)))
                         "\\)"))
         (case-fold-search nil))
    (save-excursion
      (save-restriction
        (widen)
        (let ((end (copy-marker (chatpipe--chat-end))))
          (goto-char (point-min))
          (while (re-search-forward regexp end t)
            (cond
             ((match-beginning 1)
              (replace-match (alist-get (car (rassoc (match-string 1) from)) to)
                             t t nil 1))
             ((match-beginning 3)
              (unless (chatpipe--convert-tool-block (match-beginning 0)
                                                    from-org to-org end)
                (goto-char (match-end 0))))
             (t
              (let ((open (copy-marker (match-beginning 2)))
                    (open-end (match-end 2))
                    (close (save-excursion
                             (and (re-search-forward
                                   (chatpipe--line-regexp (cdr from-block)) end t)
                                  (copy-marker (match-beginning 0))))))
                (when close
                  (delete-region open open-end)
                  (goto-char open)
                  (insert (car to-block))
                  (forward-line 1)
                  (while (< (point) close)
                    (chatpipe--convert-reasoning-line from-escape to-escape)
                    (forward-line 1))
                  (goto-char close)
                  (looking-at (regexp-quote (cdr from-block)))
                  (replace-match (cdr to-block) t t)
                  (set-marker close nil))
                (set-marker open nil)))))
          (set-marker end nil)
          (when (and to-org (not from-org))
            (chatpipe--break-assistant-turns)))))))

(defun chatpipe--after-major-mode-change ()
  "Turn `chatpipe-mode' on again after the buffer's major mode changed.
Convert the chat's headings and reasoning blocks if the new mode
wants another style (Org's or the other).  A chat that lands in
`fundamental-mode', as when \\[write-file] gives it a name no mode is
for (chat.md without markdown-mode), goes on in `markdown-mode' if
it is there, else `text-mode', as new chats do; unless the user
asked for `fundamental-mode' itself."
  (unless chatpipe-mode
    (if (and (eq major-mode 'fundamental-mode)
             (not (eq this-command 'fundamental-mode)))
        ;; This hook runs again, in the new mode.
        (if (fboundp 'markdown-mode) (markdown-mode) (text-mode))
      (let ((org (and (derived-mode-p 'org-mode) t)))
        (unless (eq org chatpipe--org-style)
          (with-demoted-errors "chatpipe: cannot convert the chat: %S"
            (chatpipe--convert-chat chatpipe--org-style org)))
        (chatpipe-mode 1)))))
(put 'chatpipe--after-major-mode-change 'permanent-local-hook t)

;;;; Turning the mode on and off

(defun chatpipe--state-enable ()
  "Set up saving and restoring for `chatpipe-mode' in this buffer.
In Org buffers, take the settings not set yet from the file's
properties."
  (setq chatpipe--org-style (and (derived-mode-p 'org-mode) t))
  (chatpipe--restore-org-state)
  (add-hook 'before-save-hook #'chatpipe-save-state nil t)
  (add-hook 'after-change-major-mode-hook
            #'chatpipe--after-major-mode-change nil t))

(defun chatpipe--state-disable ()
  "Undo `chatpipe--state-enable' in this buffer."
  (remove-hook 'before-save-hook #'chatpipe-save-state t)
  (remove-hook 'after-change-major-mode-hook
               #'chatpipe--after-major-mode-change t))

(provide 'chatpipe-state)
;;; chatpipe-state.el ends here
