;;; chatpipe-templates.el --- Choosing and editing chatpipe templates -*- lexical-binding: t; -*-

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

;; Reading a template name with completion over the templates the
;; backend knows (`chatpipe-templates'), and editing template files:
;; `chatpipe-edit-template' visits one (a bundled template is first
;; copied to the user's folder) in `chatpipe-template-mode', where saving
;; checks the file with `chatpipe templates check' and shows its problems
;; at their line, and makes Emacs ask the backend about its templates
;; again.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-backend)
(require 'chatpipe-chat-settings)

(defvar chatpipe-mode)

(defface chatpipe-template-error
  '((t :underline (:style wave :color "Red1")))
  "Face of the problems found in a template file."
  :group 'chatpipe)

(defvar chatpipe-template-history nil
  "Minibuffer history of template names.")

(defvar-local chatpipe-template-errors nil
  "The problems found when the template file was last saved.
A list of (LINE COLUMN MESSAGE).")

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

;;;###autoload
(defun chatpipe-edit-template (template)
  "Visit the file of TEMPLATE, a template name or file, to edit it.
A bundled template is first copied to the user's template folder
\(`chatpipe templates dir'), which then takes precedence.  Saving
the file checks it with `chatpipe templates check' and shows the
problems at their line.  Return the file's buffer.  Signal a
`user-error' if TEMPLATE resolves to no file."
  (interactive (list (chatpipe-read-template
                      "Edit template" (and chatpipe-mode
                                           (chatpipe--current-template)))))
  (let* ((entry (or (chatpipe-template-info template)
                    (user-error "No template named %s" template)))
         (file (if (equal (plist-get entry :source) "bundled")
                   (chatpipe--copy-bundled-template entry)
                 (plist-get entry :path))))
    (let ((buffer (find-file file)))
      (with-current-buffer buffer
        (chatpipe-template-mode 1)
        (when (plist-get entry :error)
          (chatpipe-template-check)))
      buffer)))

(defun chatpipe--copy-bundled-template (entry)
  "Copy the bundled template ENTRY to the user's folder; return the copy."
  (let* ((dir (chatpipe--user-template-dir))
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
the echo area, and return them as a list of (LINE COLUMN MESSAGE).
Warnings (such as streaming being off) are shown, not returned."
  (interactive)
  (let* ((file (or buffer-file-name (user-error "Buffer has no file")))
         (result (chatpipe-call "templates" "check" (expand-file-name file)))
         (errors nil)
         (warnings nil))
    (dolist (line (split-string (cdr result) "\n" t))
      (when (string-match "\\`.*?:\\([0-9]+\\):\\([0-9]+\\): \\(.*\\)\\'"
                          line)
        (if (string-prefix-p "warning: " (match-string 3 line))
            (push (match-string 3 line) warnings)
          (push (list (string-to-number (match-string 1 line))
                      (string-to-number (match-string 2 line))
                      (match-string 3 line))
                errors))))
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
      (message "chatpipe: template %s is valid%s"
               (file-name-nondirectory file)
               (if warnings (concat " (" (string-join warnings "; ") ")") "")))
    errors))

;;;###autoload
(define-minor-mode chatpipe-template-mode
  "Minor mode for editing chatpipe template files.
Saving the file checks it with `chatpipe templates check' and
underlines the problems found (see `chatpipe-template-check'), and
makes Emacs ask the backend about its templates again (see
`chatpipe-templates-refresh')."
  :lighter " Template"
  :group 'chatpipe
  (if chatpipe-template-mode
      (progn
        (add-hook 'after-save-hook #'chatpipe-templates-refresh nil t)
        (add-hook 'after-save-hook #'chatpipe-template-check nil t))
    (remove-hook 'after-save-hook #'chatpipe-templates-refresh t)
    (remove-hook 'after-save-hook #'chatpipe-template-check t)
    (remove-overlays nil nil 'chatpipe-template-error t)))

(provide 'chatpipe-templates)
;;; chatpipe-templates.el ends here
