;;; chatpipe-rewrite-input.el --- What a rewrite of chatpipe is asked with -*- lexical-binding: t; -*-

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

;; What `chatpipe-rewrite' (chatpipe-rewrite.el) asks with: the text
;; (the region, else the defun around point in a programming mode,
;; else the paragraph at point), the instruction (read with a history;
;; the names of `chatpipe-directives' complete), the buffer's language,
;; and the lines around the text, which the model reads but does not
;; rewrite.

;;; Code:

(require 'subr-x)
(require 'thingatpt)
(require 'chatpipe-chat-settings)

(defgroup chatpipe-rewrite nil
  "Rewriting text in place with chatpipe."
  :group 'chatpipe)

(defcustom chatpipe-rewrite-context-lines 20
  "How many lines before and after the text go with a rewrite, as context."
  :type 'natnum)

(defcustom chatpipe-rewrite-context-chars 4000
  "The most characters of context before, and after, the text of a rewrite."
  :type 'natnum)

(defvar chatpipe-rewrite-history nil
  "The instructions given to `chatpipe-rewrite', newest first.")

(defun chatpipe--rewrite-bounds ()
  "Return what `chatpipe-rewrite' rewrites, (BEG . END) positions.
That is the active region, else the defun at point in a
programming mode, else the paragraph at point.  Signal a
`user-error' if it is empty."
  (let ((bounds (cond ((use-region-p) (cons (region-beginning) (region-end)))
                      ;; Nil outside a defun.
                      ((and (derived-mode-p 'prog-mode)
                            (bounds-of-thing-at-point 'defun)))
                      (t (save-excursion
                           (let ((end (progn (forward-paragraph) (point))))
                             (backward-paragraph)
                             (skip-chars-forward "\n" end)
                             (cons (point) end)))))))
    (when (string-blank-p (buffer-substring (car bounds) (cdr bounds)))
      (user-error "Nothing to rewrite here"))
    bounds))

(defun chatpipe--rewrite-read-instruction (prompt)
  "Read an instruction with PROMPT, a string; return its text.
The history is `chatpipe-rewrite-history'; the names of
`chatpipe-directives' complete, and one chosen gives its text.
Signal a `user-error' for a blank instruction."
  (let ((answer (completing-read prompt (mapcar #'car chatpipe-directives)
                                 nil nil nil 'chatpipe-rewrite-history)))
    (when (string-blank-p answer)
      (user-error "No instruction: nothing rewritten"))
    (or (cdr (assoc answer chatpipe-directives)) answer)))

(defun chatpipe--rewrite-language ()
  "Return the language of the current buffer for a rewrite, or nil.
It is the name of a programming mode without -mode or -ts-mode,
such as \"python\"; other modes have none."
  (and (derived-mode-p 'prog-mode)
       (replace-regexp-in-string "\\(-ts\\)?-mode\\'" ""
                                 (symbol-name major-mode))))

(defun chatpipe--rewrite-context (beg end)
  "Return the lines around BEG..END as (BEFORE . AFTER) strings.
Each is at most `chatpipe-rewrite-context-lines' lines and
`chatpipe-rewrite-context-chars' characters, the nearest ones."
  (save-excursion
    (let* ((from (progn (goto-char beg)
                        (line-beginning-position
                         (- 1 chatpipe-rewrite-context-lines))))
           (to (progn (goto-char end)
                      (line-end-position chatpipe-rewrite-context-lines))))
      (cons (buffer-substring-no-properties
             (max from (- beg chatpipe-rewrite-context-chars)) beg)
            (buffer-substring-no-properties
             end (min to (+ end chatpipe-rewrite-context-chars)))))))

(provide 'chatpipe-rewrite-input)
;;; chatpipe-rewrite-input.el ends here
