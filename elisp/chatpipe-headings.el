;;; chatpipe-headings.el --- The role headings of chats for chatpipe -*- lexical-binding: t; -*-


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

;; A chat's turns start at role headings, one line each, such as
;; "### User" and "### Assistant" (`chatpipe-headings'), or "* User"
;; and "* Assistant" in Org buffers (`chatpipe-org-headings').  This
;; file holds them, their face, the regexp that finds them, and the
;; form in which they are broken in text from the model or a tool (see
;; `chatpipe--heading-breaks'), so that such text never starts a turn.

;;; Code:

(require 'cl-lib)

(defcustom chatpipe-headings
  '((system . "### System")
    (user . "### User")
    (assistant . "### Assistant"))
  "The role headings of chats in buffers other than Org buffers.
An alist of (ROLE . HEADING): a line that is exactly HEADING (but
for trailing spaces) starts a turn of ROLE."
  :type '(alist :key-type (choice (const system) (const user)
                                  (const assistant))
                :value-type string)
  :group 'chatpipe)

(defcustom chatpipe-org-headings
  '((system . "* System")
    (user . "* User")
    (assistant . "* Assistant"))
  "The role headings of chats in Org buffers; see `chatpipe-headings'."
  :type '(alist :key-type (choice (const system) (const user)
                                  (const assistant))
                :value-type string)
  :group 'chatpipe)

(defface chatpipe-heading
  '((t :inherit bold))
  "Face of role headings in chat buffers that do not fontify them."
  :group 'chatpipe)

;;;; Headings

(defun chatpipe--role-headings ()
  "Return the role headings of the current buffer, an alist.
Each element is (ROLE . HEADING)."
  (if (derived-mode-p 'org-mode) chatpipe-org-headings chatpipe-headings))

(defun chatpipe--heading (role)
  "Return the heading line for ROLE in the current buffer."
  (alist-get role (chatpipe--role-headings)))

(defun chatpipe--heading-regexp ()
  "Return a regexp matching a whole heading line; group 1 is the heading."
  (concat "^" (regexp-opt (mapcar #'cdr (chatpipe--role-headings)) t) "[ \t]*$"))

(defun chatpipe--heading-breaks ()
  "Return the role headings as constructs to break in model text.
They are lists (HEAD LAST), as `chatpipe--breaks-regexp' takes, of
the headings of both styles (`chatpipe-headings' and
`chatpipe-org-headings'): a line of an answer that starts as one
would start a turn, or would once the chat is converted to the
other style, and is broken as the model's other constructs are."
  (mapcar (lambda (heading)
            (list (concat "^" (regexp-quote (substring heading 0 -1)))
                  (regexp-quote (substring heading -1))))
          (delete-dups (cl-remove-if-not
                        (lambda (heading) (> (length heading) 0))
                        (mapcar #'cdr (append chatpipe-headings
                                              chatpipe-org-headings))))))

(provide 'chatpipe-headings)
;;; chatpipe-headings.el ends here
