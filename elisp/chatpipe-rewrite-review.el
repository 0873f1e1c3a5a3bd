;;; chatpipe-rewrite-review.el --- Diffs, hunks, ediff and merges of rewrites -*- lexical-binding: t; -*-

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

;; Reviewing a rewrite (chatpipe-rewrite.el) before it replaces the
;; text: what its overlay shows (the proposal, the original, or a
;; word-level diff), the proposal in a buffer to scroll through, moving
;; from one rewrite to the next, a `diff-mode' buffer,
;; ediff (the merge buffer's text, with the choices made there, is the
;; new proposal), accepting hunk by hunk, and a merge that puts the
;; changes in the buffer between conflict markers for `smerge-mode'.
;;
;; The diffs are GNU diff's (`diff-command'), run on one token per
;; line (words for the overlay, lines for hunks) in temporary files:
;; the texts never go on a command line, and a file's content cannot
;; be taken for a diff option.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'diff)
(require 'ediff)
(require 'smerge-mode)
(require 'chatpipe-rewrite)

;;;; Showing a rewrite

(defun chatpipe-rewrite-toggle-diff (rewrite)
  "Show the word-level diff over REWRITE's text, or the proposal again."
  (interactive (list (chatpipe--rewrite-at-point)))
  (setf (chatpipe--rewrite-show rewrite)
        (if (eq (chatpipe--rewrite-show rewrite) 'diff) 'new 'diff))
  (chatpipe--rewrite-redisplay rewrite))

(defun chatpipe-rewrite-toggle-original (rewrite)
  "Show the original text of REWRITE, or the proposal again."
  (interactive (list (chatpipe--rewrite-at-point)))
  (setf (chatpipe--rewrite-show rewrite)
        (if (eq (chatpipe--rewrite-show rewrite) 'old) 'new 'old))
  (chatpipe--rewrite-redisplay rewrite))

(defvar chatpipe-rewrite-view-mode-map
  (let ((map (make-sparse-keymap)))
    (set-keymap-parent map (make-composed-keymap chatpipe-rewrite-map
                                                 special-mode-map))
    map)
  "Keys of a buffer that shows a rewrite: those of `chatpipe-rewrite-map'.")

(define-derived-mode chatpipe-rewrite-view-mode special-mode "Rewrite"
  "Major mode of a buffer that shows a rewrite's proposal.
The buffer follows the proposal as it streams, and scrolls as any
buffer does; the keys of the rewrite's overlay act on it here too:
\{chatpipe-rewrite-view-mode-map}"
  (setq header-line-format
        '(:eval (and chatpipe--rewrite-viewed
                     (concat (chatpipe--rewrite-status chatpipe--rewrite-viewed)
                             "  " chatpipe--rewrite-help)))))

(defun chatpipe--rewrite-fill-view (rewrite)
  "Put the text of REWRITE's overlay in its view buffer.
Text added at the end of the proposal is added at the end of the
buffer, so that point and scrolling stay; other changes replace the
whole text."
  (with-current-buffer (chatpipe--rewrite-view rewrite)
    (let ((inhibit-read-only t)
          (new (or (chatpipe--rewrite-display rewrite)
                   (chatpipe--rewrite-live-text rewrite)))
          (old (buffer-substring-no-properties (point-min) (point-max))))
      (if (string-prefix-p old (substring-no-properties new))
          (save-excursion
            (goto-char (point-max))
            (insert (substring new (length old))))
        (let ((pos (point)))
          (erase-buffer)
          (insert new)
          (goto-char (min pos (point-max))))))))

(defun chatpipe-rewrite-view (rewrite)
  "Show REWRITE's proposal in a buffer of its own, to scroll through.
REWRITE defaults to the one at point.  The buffer follows the
proposal as it streams; see `chatpipe-rewrite-view-mode'.  Return
the buffer."
  (interactive (list (chatpipe--rewrite-at-point)))
  (unless (buffer-live-p (chatpipe--rewrite-view rewrite))
    (setf (chatpipe--rewrite-view rewrite)
          (generate-new-buffer
           (format "*chatpipe rewrite: %s*"
                   (buffer-name (chatpipe--rewrite-buffer rewrite)))))
    (with-current-buffer (chatpipe--rewrite-view rewrite)
      (chatpipe-rewrite-view-mode)
      (setq chatpipe--rewrite-viewed rewrite)))
  (chatpipe--rewrite-fill-view rewrite)
  (display-buffer (chatpipe--rewrite-view rewrite))
  (chatpipe--rewrite-view rewrite))

(defun chatpipe--rewrite-move (forward)
  "Move to the next rewrite's start if FORWARD, else to the previous one's."
  (let* ((starts (sort (mapcar (lambda (rewrite)
                                 (overlay-start (chatpipe--rewrite-overlay rewrite)))
                               chatpipe--rewrites)
                       #'<))
         (target (if forward
                     (cl-find-if (lambda (pos) (> pos (point))) starts)
                   (cl-find-if (lambda (pos) (< pos (point))) (reverse starts)))))
    (if target
        (goto-char target)
      (user-error "No %s rewrite" (if forward "next" "previous")))))

(defun chatpipe-rewrite-next ()
  "Move to the start of the next rewrite of this buffer."
  (interactive)
  (chatpipe--rewrite-move t))

(defun chatpipe-rewrite-previous ()
  "Move to the start of the previous rewrite of this buffer."
  (interactive)
  (chatpipe--rewrite-move nil))

;;;; Diffs

(defun chatpipe--rewrite-tokens (text unit)
  "Return TEXT cut into tokens, a list of strings that join to TEXT.
UNIT `lines' gives lines with their newline (the last one may have
none); `words' gives runs of word characters, runs of blanks,
newlines and single other characters."
  (let ((regexp (if (eq unit 'lines)
                    "[^\n]*\n\\|[^\n]+\\'"
                  "[[:alnum:]_]+\\|[ \t]+\\|\n\\|."))
        (start 0)
        tokens)
    (while (and (< start (length text))
                (string-match regexp text start))
      (push (match-string 0 text) tokens)
      (setq start (match-end 0)))
    (nreverse tokens)))

(defun chatpipe--rewrite-write-tokens (tokens file)
  "Write TOKENS, strings, to FILE one a line, their newline left out."
  (with-temp-file file
    (set-buffer-multibyte t)
    (setq buffer-file-coding-system 'utf-8-unix)
    (dolist (token tokens)
      (insert (string-remove-suffix "\n" token) "\n"))))

(defun chatpipe--rewrite-diff-segments (old new unit)
  "Return the differences from the text OLD to the text NEW.
UNIT is `lines' or `words' (see `chatpipe--rewrite-tokens').  The
value is a list of segments in order, (same TEXT) or (change
OLD-TEXT NEW-TEXT); the new side's texts join to NEW, the old
side's to OLD.  Signal an error if diff fails."
  (let* ((old-tokens (vconcat (chatpipe--rewrite-tokens old unit)))
         (new-tokens (vconcat (chatpipe--rewrite-tokens new unit)))
         (default-directory temporary-file-directory)
         (old-file (make-temp-file "chatpipe-rewrite-old"))
         (new-file (make-temp-file "chatpipe-rewrite-new"))
         (i 0) (j 0) segments)
    (unwind-protect
        (let ((coding-system-for-write 'utf-8-unix)
              (marks
               (progn
                 (chatpipe--rewrite-write-tokens (append old-tokens nil) old-file)
                 (chatpipe--rewrite-write-tokens (append new-tokens nil) new-file)
                 (with-temp-buffer
                   (let ((status (call-process
                                  diff-command nil t nil "-a"
                                  "--old-line-format=-" "--new-line-format=+"
                                  "--unchanged-line-format==" "--" old-file new-file)))
                     (unless (memq status '(0 1))
                       (error "Diff failed (%s): %s" status (buffer-string))))
                   (buffer-string)))))
          (dolist (mark (append marks nil))
            (let* ((old-token (and (memq mark '(?= ?-)) (aref old-tokens i)))
                   (new-token (and (memq mark '(?= ?+)) (aref new-tokens j)))
                   ;; A last line without its newline is the same line
                   ;; for diff, not for us.
                   (same (and (eq mark ?=) (equal old-token new-token))))
              (when old-token (setq i (1+ i)))
              (when new-token (setq j (1+ j)))
              (let ((last (car segments)))
                (cond ((and same (eq (car last) 'same))
                       (setcar (cdr last) (concat (cadr last) new-token)))
                      (same (push (list 'same new-token) segments))
                      ((eq (car last) 'change)
                       (setcar (cdr last) (concat (cadr last) old-token))
                       (setcar (cddr last) (concat (nth 2 last) new-token)))
                      (t (push (list 'change (or old-token "") (or new-token ""))
                               segments)))))))
      (delete-file old-file)
      (delete-file new-file))
    (nreverse segments)))

(defun chatpipe--rewrite-word-diff (old new)
  "Return NEW shown as a word-level diff from OLD, a string.
Words taken away keep face `diff-refine-removed', words added get
`diff-refine-added'."
  (mapconcat (lambda (segment)
               (pcase segment
                 (`(same ,text) text)
                 (`(change ,from ,to)
                  (concat (propertize from 'face 'diff-refine-removed)
                          (propertize to 'face 'diff-refine-added)))))
             (chatpipe--rewrite-diff-segments old new 'words)
             ""))

(defun chatpipe--rewrite-text-buffer (name text)
  "Return a new buffer NAME holding TEXT, a string."
  (let ((buffer (generate-new-buffer name)))
    (with-current-buffer buffer (insert text))
    buffer))

(defun chatpipe--rewrite-show-diff (old new)
  "Show the diff from the text OLD to the text NEW in a `diff-mode' buffer.
Return the buffer, *chatpipe rewrite diff*, whose hunks are refined
word by word as `diff-refine' says."
  (let ((old-buffer (chatpipe--rewrite-text-buffer " *chatpipe rewrite old*" old))
        (new-buffer (chatpipe--rewrite-text-buffer " *chatpipe rewrite new*" new))
        (default-directory temporary-file-directory))
    (unwind-protect
        (let ((buffer (diff-no-select old-buffer new-buffer nil t
                                      (get-buffer-create
                                       "*chatpipe rewrite diff*"))))
          (display-buffer buffer)
          buffer)
      (kill-buffer old-buffer)
      (kill-buffer new-buffer))))

(defun chatpipe-rewrite-diff (rewrite)
  "Show the diff from REWRITE's text to its proposal in a `diff-mode' buffer.
REWRITE defaults to the one at point; its text is the buffer's, now."
  (interactive (list (chatpipe--rewrite-at-point)))
  (chatpipe--rewrite-show-diff (chatpipe--rewrite-live-text rewrite)
                               (chatpipe--rewrite-text rewrite)))

;;;; Hunk by hunk

(defun chatpipe--rewrite-ask-hunk (old new)
  "Show the change from OLD to NEW, strings; return non-nil to take it."
  (with-current-buffer (get-buffer-create "*chatpipe rewrite hunk*")
    (let ((inhibit-read-only t))
      (erase-buffer)
      (insert (chatpipe--rewrite-word-diff old new)))
    (goto-char (point-min))
    (special-mode)
    (display-buffer (current-buffer)))
  (y-or-n-p "Take this change? "))

(defun chatpipe-rewrite-accept-hunks (rewrite &optional choose)
  "Accept the proposal of REWRITE one hunk at a time.
REWRITE defaults to the one at point.  CHOOSE is called with each
changed hunk's old and new text (whole lines) and returns non-nil
to take the new one; interactively, it shows the hunk and asks.
The text with the hunks taken then replaces the original, as
`chatpipe-rewrite-accept' does."
  (interactive (list (chatpipe--rewrite-at-point)))
  (chatpipe--rewrite-check-ready rewrite)
  (let ((choose (or choose #'chatpipe--rewrite-ask-hunk)))
    (chatpipe--rewrite-apply
     rewrite
     (mapconcat (lambda (segment)
                  (pcase segment
                    (`(same ,text) text)
                    (`(change ,old ,new) (if (funcall choose old new) new old))))
                (chatpipe--rewrite-diff-segments
                 (chatpipe--rewrite-original rewrite)
                 (chatpipe--rewrite-text rewrite) 'lines)
                ""))))

;;;; Merge with conflict markers

(defun chatpipe--rewrite-conflicts (old new)
  "Return NEW with each change from OLD between conflict markers.
The original lines come first (\"<<<<<<< original\"), then the
rewrite's (\">>>>>>> rewrite\"), as `smerge-mode' reads them."
  (let ((line (lambda (text)
                (if (or (string-empty-p text) (string-suffix-p "\n" text))
                    text
                  (concat text "\n")))))
    (mapconcat (lambda (segment)
                 (pcase segment
                   (`(same ,text) text)
                   (`(change ,from ,to)
                    (concat "<<<<<<< original\n" (funcall line from)
                            "=======\n" (funcall line to)
                            ">>>>>>> rewrite\n"))))
               (chatpipe--rewrite-diff-segments old new 'lines)
               "")))

(defun chatpipe-rewrite-merge (rewrite)
  "Put the hunks of REWRITE in the buffer between conflict markers.
REWRITE defaults to the one at point.  Each changed hunk shows the
original lines and the rewrite's, and `smerge-mode' is turned on to
keep one side or both.  It is one undo step, refused as
`chatpipe-rewrite-accept' is when the text was edited."
  (interactive (list (chatpipe--rewrite-at-point)))
  (chatpipe--rewrite-check-ready rewrite)
  (let ((start (overlay-start (chatpipe--rewrite-overlay rewrite))))
    (chatpipe--rewrite-apply
     rewrite (chatpipe--rewrite-conflicts (chatpipe--rewrite-original rewrite)
                                          (chatpipe--rewrite-text rewrite)))
    (smerge-mode 1)
    (goto-char start)
    (ignore-errors (smerge-next))))

;;;; Ediff

(defun chatpipe--rewrite-ediff-done (rewrite merged)
  "Make the text of the buffer MERGED REWRITE's proposal, ready to accept."
  (when (buffer-live-p merged)
    (setf (chatpipe--rewrite-text rewrite)
          (with-current-buffer merged
            (buffer-substring-no-properties (point-min) (point-max)))
          (chatpipe--rewrite-show rewrite) 'new)
    (chatpipe--rewrite-redisplay rewrite)
    (message "%s" (substitute-command-keys
                   "The rewrite is what ediff merged: \
\\<chatpipe-rewrite-map>\\[chatpipe-rewrite-accept] on it accepts it"))))

(defun chatpipe-rewrite-ediff (rewrite)
  "Merge the original text and REWRITE's proposal with ediff.
REWRITE defaults to the one at point.  The merge buffer starts
with the rewrite's side of each difference; when ediff quits, its
text, with the choices made there, becomes the proposal, which
\\<chatpipe-rewrite-map>\\[chatpipe-rewrite-accept] then accepts.  Return the ediff control buffer."
  (interactive (list (chatpipe--rewrite-at-point)))
  (chatpipe--rewrite-check-ready rewrite)
  (let ((old (chatpipe--rewrite-text-buffer "*chatpipe rewrite original*"
                                            (chatpipe--rewrite-original rewrite)))
        (new (chatpipe--rewrite-text-buffer "*chatpipe rewrite proposal*"
                                            (chatpipe--rewrite-text rewrite)))
        (ediff-default-variant 'default-B)
        (default-directory temporary-file-directory))
    (ediff-merge-buffers
     old new
     (list (lambda ()
             (let ((merged ediff-buffer-C))
               ;; The text is not saved anywhere, not even auto-saved.
               (with-current-buffer merged
                 (auto-save-mode -1)
                 (setq buffer-offer-save nil))
               (add-hook 'ediff-quit-hook
                         (lambda () (chatpipe--rewrite-ediff-done rewrite merged))
                         nil t)
               ;; After `ediff-cleanup-mess', the global hook.
               (add-hook 'ediff-quit-hook
                         (lambda ()
                           (dolist (buffer (list old new merged))
                             (when (buffer-live-p buffer)
                               (with-current-buffer buffer
                                 (set-buffer-modified-p nil))
                               (kill-buffer buffer))))
                         t t)))))))

(provide 'chatpipe-rewrite-review)
;;; chatpipe-rewrite-review.el ends here
