;;; chatpipe-reasoning.el --- Reasoning blocks and buffers for chatpipe -*- lexical-binding: t; -*-

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

;; The model's reasoning goes where `chatpipe-reasoning-display' says:
;; by default into a folded block at the start of the answer, between
;; the lines of `chatpipe-reasoning-delimiters' (Org buffers:
;; `chatpipe-org-reasoning-delimiters'), or into a buffer of its own.
;; This file folds and unfolds the blocks (with the overlays of
;; chatpipe-fold.el, as tool blocks), opens a new block, escapes the
;; lines of reasoning that would look like the block's own lines, and
;; makes the reasoning buffers; and has the commands
;; `chatpipe-toggle-reasoning' and `chatpipe-show-reasoning'.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-turns)
(require 'chatpipe-fold)

;;;; Customization

(defcustom chatpipe-reasoning-display 'fold
  "Where the model's reasoning (its \"thinking\") is shown.
`fold': in the chat buffer, in a block before the answer, between
  the lines of `chatpipe-reasoning-delimiters' (in Org buffers,
  `chatpipe-org-reasoning-delimiters').  The block is folded;
  \\[chatpipe-toggle-reasoning], or TAB on its first line, unfolds it.
`buffer': in a buffer of its own, \"*chatpipe-reasoning: CHAT*\",
  which \\[chatpipe-show-reasoning] displays; it holds the reasoning
  of the last answer.
nil: nowhere; the reasoning is dropped.
Reasoning is never sent back to the model."
  :type '(choice (const :tag "Folded block before the answer" fold)
                 (const :tag "Buffer of its own" buffer)
                 (const :tag "Drop it" nil))
  :safe (lambda (value) (memq value '(fold buffer nil)))
  :group 'chatpipe)

(defface chatpipe-reasoning
  '((t :inherit shadow))
  "Face of the reasoning in an unfolded reasoning block."
  :group 'chatpipe)

(defvar-local chatpipe--reasoning-buffer nil
  "The buffer that shows this chat's reasoning, or nil.")

;;;; Folding

(defun chatpipe-reasoning-hidden-p (block)
  "Return non-nil if the reasoning BLOCK is folded.
BLOCK is as for `chatpipe-reasoning-blocks'."
  (chatpipe--folded-p block 'chatpipe-reasoning))

(defun chatpipe-hide-reasoning (block hide)
  "Fold the reasoning BLOCK if HIDE is non-nil, else unfold it.
BLOCK is as for `chatpipe-reasoning-blocks'.  Only its first line
shows when it is folded.  Return HIDE."
  (chatpipe--fold block 'chatpipe-reasoning hide))

(defun chatpipe--open-reasoning-block (pos)
  "Insert an empty, folded reasoning block at POS; move point after it.
Return a cons (INSIDE . CHECK) of new markers at the place in the
block where the reasoning goes: INSIDE, of insertion type t, to
insert the reasoning at, and CHECK for `chatpipe--escape-reasoning'."
  (let* ((delimiters (chatpipe--reasoning-delimiters))
         (org (derived-mode-p 'org-mode))
         (padding (if org "\n" "\n\n"))
         body inside)
    (goto-char pos)
    (insert (car delimiters))
    (setq body (point))
    (insert padding)
    (setq inside (point))
    (insert padding (cdr delimiters))
    (chatpipe-hide-reasoning (list nil body (point)) t)
    (insert "\n\n")
    (cons (copy-marker inside t) (copy-marker inside))))

;;;; Escaping

(defun chatpipe--reasoning-escape ()
  "Return how reasoning lines are escaped in the current buffer.
The value is a cons (REGEXP . PREFIX): a line of reasoning at whose
start REGEXP matches gets PREFIX in front.  In Org buffers, those
are lines that Org would take for headlines or block lines, such as
the block's own last line, and the prefix is a comma, as in Org's
source blocks.  In other buffers, they are the lines that look like
the block's first or last line, and the prefix is a backslash,
which keeps Markdown from taking them for HTML."
  (chatpipe--reasoning-escape-for (derived-mode-p 'org-mode)))

(defun chatpipe--reasoning-escape-for (org)
  "Return how reasoning lines are escaped in Org buffers if ORG, else in others.
See `chatpipe--reasoning-escape'."
  (if org
      '("\\*+\\(?:[ \t]\\|$\\)\\|[ \t]*#\\+" . ",")
    (let ((delimiters chatpipe-reasoning-delimiters))
      (cons (concat "\\(?:" (regexp-quote (car delimiters)) "\\|"
                    (regexp-quote (cdr delimiters)) "\\)[ \t]*$")
            "\\"))))

(defun chatpipe--escape-reasoning (end check from &optional final)
  "Escape the lines of reasoning that its newest text completed.
END is the end of the reasoning so far, FROM where its newest text
starts, and CHECK a marker at the start of the first line not
looked at yet, which moves on.  A line is looked at once, when the
newline that ends it arrives, or when FINAL is non-nil (at the end
of the answer).  Point moves.  See `chatpipe--reasoning-escape'."
  (let ((escape (chatpipe--reasoning-escape))
        (case-fold-search nil))
    (cl-flet ((escape-line ()
                (save-excursion
                  (goto-char check)
                  (when (looking-at (car escape))
                    (insert (cdr escape))))))
      (goto-char from)
      (while (search-forward "\n" end t)
        (escape-line)
        (set-marker check (point)))
      (when (and final (< check end))
        (escape-line)
        (set-marker check end)))))

;;;; Reasoning buffers

(define-derived-mode chatpipe-reasoning-mode special-mode "Chatpipe-Reasoning"
  "Major mode of the buffers that show the reasoning of a chat's answer.
The reasoning streams in here when `chatpipe-reasoning-display' is
`buffer'; each new answer of the chat starts the buffer afresh."
  (setq buffer-undo-list t)
  (visual-line-mode 1))

(defun chatpipe--reasoning-buffer-of (chat &optional create)
  "Return the reasoning buffer of the chat buffer CHAT, or nil.
With CREATE non-nil, make it if there is none."
  (with-current-buffer chat
    (if (buffer-live-p chatpipe--reasoning-buffer)
        chatpipe--reasoning-buffer
      (when create
        (let ((buffer (get-buffer-create
                       (format "*chatpipe-reasoning: %s*" (buffer-name)))))
          (with-current-buffer buffer
            (unless (derived-mode-p 'chatpipe-reasoning-mode)
              (chatpipe-reasoning-mode)))
          (setq chatpipe--reasoning-buffer buffer))))))

(defun chatpipe--clear-reasoning-buffer ()
  "Empty the reasoning buffer of the current chat buffer, if it has one."
  (let ((buffer (chatpipe--reasoning-buffer-of (current-buffer))))
    (when buffer
      (with-current-buffer buffer
        (let ((inhibit-read-only t))
          (erase-buffer))))))

;;;; Commands

;;;###autoload
(defun chatpipe-toggle-reasoning (&optional all)
  "Fold or unfold the reasoning block at point.
Point may be anywhere in the block, its first line included.  With
a prefix argument ALL, or when point is in no block, unfold all the
blocks of the buffer if one of them is folded, else fold them all.
Return non-nil if the block (or the blocks) are now folded."
  (interactive "P")
  (chatpipe--toggle-folds 'chatpipe-reasoning
                          (and (not all) (chatpipe-reasoning-block-at (point)))
                          #'chatpipe-reasoning-blocks "reasoning block"))

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

(provide 'chatpipe-reasoning)
;;; chatpipe-reasoning.el ends here
