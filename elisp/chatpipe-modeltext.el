;;; chatpipe-modeltext.el --- Text from the model or a tool never becomes structure -*- lexical-binding: t; -*-

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

;; Text from the model or a tool is data: inserted into a chat buffer,
;; it must never be read back as the file's settings, as Org code that
;; runs, or as a tool block that chatpipe wrote.  Each construct that
;; would be is broken where it is inserted, by a zero width space
;; (U+200B, the character Org's manual gives to escape its syntax)
;; before its last character: "Local Variables\u200B:" is no Local
;; Variables block, "src\u200B_sh[...]{...}" no inline source block.
;; The text looks the same, and the breaks are taken out again when
;; the chat is sent (`chatpipe--restore-model-text'), so the model and
;; the tools get back exactly what they wrote.
;;
;; A saved chat keeps its settings in a Local Variables block at the
;; end of its file, after a page break (see `chatpipe--page-break'):
;; Emacs reads only the block after the last page break, and the
;; model's text has none, so the block it reads is chatpipe's.  This
;; file has the breaks, and finds that block.

;;; Code:

(require 'cl-lib)
(require 'subr-x)

;;;; The Local Variables block of a saved chat

(defconst chatpipe--page-break "\f"
  "The line before a saved chat's Local Variables block: a page break.
Emacs looks for a file's Local Variables only after its last page
break (a form feed at the start of a line), so that a block in the
chat's text is never read: chatpipe's block comes last, and the
model's text never has a page break (see `chatpipe--breaks').")

(defun chatpipe--page-break-before (pos)
  "Return the start of the page break line just before POS, or nil.
POS is the beginning of a line; only blank lines may be between it
and the page break line (see `chatpipe--page-break')."
  (save-excursion
    (goto-char pos)
    (skip-chars-backward " \t\n")
    (and (eq (char-before) ?\f)
         (progn (backward-char) (bolp))
         (point))))

(defun chatpipe--local-variables-block (&optional last)
  "Return the file's Local Variables block as a list (START END), or nil.
It is looked for where `hack-local-variables' and
`add-file-local-variable' look: the first \"Local Variables:\" in the
last 3000 characters, after the last page break (a form feed at the
start of a line); with LAST non-nil, the last \"Local Variables:\"
in those characters instead, wherever the page breaks are.  It
counts only if it is whole: each of its lines has the prefix and
suffix of its first line, and the last is \"End:\".  START is the
beginning of the page break line before it (see
`chatpipe--page-break'), or if there is none of its first line;
END the beginning of the line after its last (or the end of the
buffer).  Text may follow it."
  (save-excursion
    (save-restriction
      (widen)
      (goto-char (point-max))
      (let ((limit (max (- (point-max) 3000) (point-min)))
            (case-fold-search t))
        (if (not last)
            (search-backward "\n\^L" limit 'move)
          (when (search-backward "Local Variables:" limit t)
            (forward-line 0)))
        (when (re-search-forward "^\\(.*\\)Local Variables:\\(.*\\)$" nil t)
          (let* ((start (match-beginning 0))
                 (prefix (regexp-quote (match-string-no-properties 1)))
                 (suffix (regexp-quote (string-trim-right
                                        (match-string-no-properties 2)))))
            (forward-line 1)
            (while (and (not (eobp))
                        (looking-at (concat prefix ".*" suffix "[ \t]*$"))
                        (not (looking-at (concat prefix "[ \t]*End:"))))
              (forward-line 1))
            (when (looking-at (concat prefix "[ \t]*End:[ \t]*" suffix "[ \t]*$"))
              (forward-line 1)
              (list (or (chatpipe--page-break-before start) start)
                    (point)))))))))

(defun chatpipe--ensure-page-break ()
  "Put a page break line before the chat's Local Variables block.
Emacs then reads only chatpipe's block, the last of the file, never
one in the chat's text (see `chatpipe--page-break').  If the file
has no block yet, put the page break at its end, where
`add-file-local-variable' will write the block; if its last block
has none before it (a chat saved by an older chatpipe), put one
before that block.  Saving a chat calls this first.  Return nil."
  (save-excursion
    (save-restriction
      (widen)
      (let ((block (chatpipe--local-variables-block t)))
        (cond ((null block)
               (goto-char (point-max))
               (unless (or (bobp) (bolp)) (insert "\n"))
               (insert "\n" chatpipe--page-break))
              ((progn (goto-char (car block))
                      (looking-at-p (regexp-quote chatpipe--page-break))))
              (t (insert chatpipe--page-break "\n"))))))
  nil)

;;;; Breaking constructs

(defconst chatpipe--break-char (string #x200b)
  "The character that breaks a construct in model text: a zero width space.")

(defconst chatpipe--breaks
  '(;; Emacs reads the first Local Variables line after the last
    ;; page break (a form feed at the start of a line) as the file's
    ;; settings.
    (file "Local Variables" ":")
    (file "" "\f")
    ;; The first lines of tool blocks (see chatpipe-toolblocks.el).
    (file "^<details><summary>Tool call" " ")
    (file "^#\\+begin_too" "l")
    ;; Org: keyword and block lines (#+begin_src, #+call, #+header,
    ;; #+property, #+setupfile, #+include, #+bind, #+tblfm...) and
    ;; property drawers, whose header arguments run code.
    (org-line "^[ \t]*#" "\\+")
    (org-line "^[ \t]*:properties" ":")
    ;; Org: inline source blocks and calls, elisp: and shell: links,
    ;; macros.
    (org "src" "_")
    (org "call" "_")
    (org "elisp" ":")
    (org "shell" ":")
    (org "{{" "{"))
  "The constructs broken in model text: a list of (KIND HEAD LAST).
HEAD and LAST are regexps, matched without regard to case: the
construct is HEAD followed by LAST, one character, before which
`chatpipe--break-char' goes.  KIND says where it is broken: `file'
in all model text, `org' in Org buffers, `org-line' in Org buffers
where lines of model text are not escaped otherwise (answers, but
not the bodies of reasoning and tool blocks, whose \"#+\" lines get
a comma).")

(defvar chatpipe--breaks-regexps (make-hash-table :test 'equal)
  "The regexps made by `chatpipe--breaks-regexp', by its arguments.")

(defun chatpipe--breaks-regexp (kinds &optional broken)
  "Return the regexp of the constructs of KINDS.
KINDS is a list of symbols, the kinds of `chatpipe--breaks', and of
constructs of their own, lists (HEAD LAST) as in `chatpipe--breaks'
\(such as the chat's role headings, see `chatpipe--heading-breaks').
With BROKEN non-nil, match them broken, `chatpipe--break-char'
before their last character."
  (let ((key (cons broken kinds)))
    (or (gethash key chatpipe--breaks-regexps)
        (puthash key
                 (mapconcat (lambda (entry)
                              (concat "\\(?:" (nth 0 entry) "\\)"
                                      (if broken chatpipe--break-char "")
                                      "\\(?:" (nth 1 entry) "\\)"))
                            (append (mapcar #'cdr
                                            (cl-remove-if-not
                                             (lambda (entry) (memq (car entry) kinds))
                                             chatpipe--breaks))
                                    (cl-remove-if-not #'consp kinds))
                            "\\|")
                 chatpipe--breaks-regexps))))

(defun chatpipe--break-string (text kinds &optional context)
  "Return TEXT, model text, with its constructs of KINDS broken.
KINDS is as for `chatpipe--breaks-regexp'.  CONTEXT is the text that
comes before TEXT on its line (default: none, TEXT starts a line):
a construct that starts in it and ends in TEXT is broken too."
  (let* ((context (or context ""))
         (all (concat context text))
         (regexp (chatpipe--breaks-regexp kinds))
         (case-fold-search t)
         (pos (length context))
         (start 0)
         pieces)
    (while (and (< start (length all)) (string-match regexp all start))
      (let ((at (1- (match-end 0))))
        (when (>= at pos)
          (push (substring all pos at) pieces)
          (push chatpipe--break-char pieces)
          (setq pos at))
        (setq start (max (1+ start) (match-end 0)))))
    (if pieces
        (apply #'concat (nreverse (cons (substring all pos) pieces)))
      text)))

(defun chatpipe--restore-model-text (text &optional more)
  "Return TEXT with the breaks of `chatpipe--break-string' taken out.
That gives back the model's or the tool's text as it was written.
MORE are constructs of their own that were broken too, lists (HEAD
LAST) as in `chatpipe--breaks-regexp'."
  (if (not (string-search chatpipe--break-char text))
      text
    (let ((regexp (chatpipe--breaks-regexp (append '(file org org-line) more)
                                           t))
          (case-fold-search t)
          (start 0)
          pieces)
      (while (string-match regexp text start)
        (let ((at (- (match-end 0) 2)))
          (push (substring text start at) pieces)
          (setq start (1+ at))))
      (apply #'concat (nreverse (cons (substring text start) pieces))))))

(defconst chatpipe--break-lookback 64
  "How far back on its line a construct in model text is looked for.
A construct that starts that far before newly inserted text, or
after only white space on its line, and ends in it is broken.")

(defun chatpipe--break-region (beg end kinds)
  "Break the constructs of KINDS in the model's text from BEG to END.
The text was just inserted: each construct of KINDS (see
`chatpipe--breaks-regexp') that ends in it
gets `chatpipe--break-char' before its last character, so that it
is text: a Local Variables block or a page break that Emacs would
read as the file's settings, a tool block's first line, Org
constructs that run code.  A construct that starts before BEG on
its line, in text inserted before, is broken too (text streams in
pieces cut anywhere).  The breaks are taken out again when the
chat is sent (see `chatpipe--restore-model-text'): the model gets
its own text back.  Return the end of the text, after the breaks."
  (let ((end (copy-marker end t))
        (regexp (chatpipe--breaks-regexp kinds))
        (case-fold-search t))
    (save-excursion
      (goto-char beg)
      (let ((bol (line-beginning-position)))
        (goto-char (if (save-excursion (skip-chars-backward " \t" bol) (bolp))
                       bol
                     (max bol (- beg chatpipe--break-lookback)))))
      (while (re-search-forward regexp end t)
        (when (> (match-end 0) beg)
          (goto-char (1- (match-end 0)))
          (insert chatpipe--break-char)
          (forward-char 1))))
    (prog1 (marker-position end) (set-marker end nil))))

(provide 'chatpipe-modeltext)
;;; chatpipe-modeltext.el ends here
