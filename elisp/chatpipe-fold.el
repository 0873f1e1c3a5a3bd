;;; chatpipe-fold.el --- Folding reasoning and tool blocks for chatpipe -*- lexical-binding: t; -*-


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

;; Reasoning blocks (chatpipe-reasoning.el) and tool blocks
;; (chatpipe-toolblocks.el, chatpipe-insert.el) fold the same way: an
;; overlay covers the block but for its first line, and hides it with
;; an `invisible' property of the block's KIND, a symbol
;; (`chatpipe-reasoning' or `chatpipe-tool') that is also the overlay's
;; property and its face.  A block is a list (START BODY-START
;; BLOCK-END) of buffer positions, as `chatpipe-reasoning-blocks' and
;; `chatpipe-tool-blocks' return.  This file makes, folds, unfolds and
;; removes those overlays, and finds the kind of the block whose first
;; line is at point (where TAB folds it).

;;; Code:

(require 'cl-lib)
(require 'chatpipe-turns)
(require 'chatpipe-toolblocks)

(defun chatpipe--fold-overlay (block kind)
  "Return the overlay that folds BLOCK of KIND, making it if needed.
BLOCK is a list (START BODY-START BLOCK-END) as
`chatpipe-reasoning-blocks' returns.  The overlay covers the block
but for its first line, and is new if there was none; a new overlay
does not hide the block.  Searching with isearch unfolds it."
  (let ((beg (nth 1 block))
        (end (nth 2 block))
        (ov (cl-find-if (lambda (ov) (overlay-get ov kind))
                        (overlays-in (nth 1 block) (nth 2 block)))))
    (if ov
        (unless (and (= (overlay-start ov) beg) (= (overlay-end ov) end))
          (move-overlay ov beg end))
      (setq ov (make-overlay beg end))
      (overlay-put ov kind t)
      (overlay-put ov 'evaporate t)
      (overlay-put ov 'face kind)
      (overlay-put ov 'isearch-open-invisible #'chatpipe--show-overlay))
    (unless (and (listp buffer-invisibility-spec)
                 (assq kind buffer-invisibility-spec))
      (add-to-invisibility-spec (cons kind t)))
    ov))

(defun chatpipe--show-overlay (overlay)
  "Unfold the block folded by OVERLAY."
  (overlay-put overlay 'invisible nil))

(defun chatpipe--folded-p (block kind)
  "Return non-nil if BLOCK of KIND is folded; see `chatpipe--fold-overlay'."
  (cl-some (lambda (ov) (and (overlay-get ov kind) (overlay-get ov 'invisible)))
           (overlays-in (nth 1 block) (nth 2 block))))

(defun chatpipe--fold (block kind hide)
  "Fold BLOCK of KIND if HIDE is non-nil, else unfold it; return HIDE.
Only its first line shows when it is folded; see
`chatpipe--fold-overlay'."
  (overlay-put (chatpipe--fold-overlay block kind) 'invisible (and hide kind))
  hide)

(defun chatpipe--unfold-all (kind)
  "Remove the overlays that fold the blocks of KIND in this buffer."
  (save-restriction
    (widen)
    (remove-overlays (point-min) (point-max) kind t))
  (remove-from-invisibility-spec (cons kind t)))

(defun chatpipe--toggle-folds (kind block all-blocks what)
  "Fold or unfold BLOCK of KIND; without BLOCK, all of ALL-BLOCKS.
ALL-BLOCKS is a function that returns the blocks of the buffer.
Without BLOCK, unfold them all if one of them is folded, else fold
them all; signal a `user-error' saying that there is no WHAT if
there is none.  Return non-nil if the block (or the blocks) are now
folded."
  (if block
      (chatpipe--fold block kind (not (chatpipe--folded-p block kind)))
    (let* ((blocks (or (save-restriction (widen) (funcall all-blocks))
                       (user-error "No %s in this buffer" what)))
           (hide (not (cl-some (lambda (b) (chatpipe--folded-p b kind))
                               blocks))))
      (dolist (block blocks)
        (chatpipe--fold block kind hide))
      hide)))

(defun chatpipe--fold-kind-at-line ()
  "Return the kind of the block whose first line is at point, or nil.
That is `chatpipe-reasoning' on the first line of a reasoning block
and `chatpipe-tool' on that of a tool block; see `chatpipe--fold'."
  (save-excursion
    (beginning-of-line)
    (let ((case-fold-search nil))
      (cond ((looking-at (chatpipe--line-regexp
                          (car (chatpipe--reasoning-delimiters))))
             'chatpipe-reasoning)
            ((looking-at (chatpipe--tool-begin-regexp (chatpipe--tool-org-p)))
             'chatpipe-tool)))))

(defun chatpipe--fold-all (fold)
  "Fold all the reasoning and tool blocks of this buffer if FOLD is non-nil.
Else remove the overlays that fold them, so that they all show."
  (if fold
      (save-restriction
        (widen)
        (dolist (block (chatpipe-reasoning-blocks))
          (chatpipe--fold block 'chatpipe-reasoning t))
        (dolist (block (chatpipe-tool-blocks))
          (chatpipe--fold block 'chatpipe-tool t)))
    (chatpipe--unfold-all 'chatpipe-reasoning)
    (chatpipe--unfold-all 'chatpipe-tool)))

(provide 'chatpipe-fold)
;;; chatpipe-fold.el ends here
