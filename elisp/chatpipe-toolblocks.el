;;; chatpipe-toolblocks.el --- Tool calls and results as text in chat buffers -*- lexical-binding: t; -*-

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

;; A tool call that the model made, and its result, are a block of
;; text in the assistant's turn, so that a saved chat keeps them and
;; sends them again when it goes on.  In Markdown and text buffers the
;; block is an HTML details element, which Markdown viewers show
;; folded, its summary line the call:
;;
;;   <details><summary>Tool call get_weather {"city": "Paris"} (call_1)</summary>
;;
;;   18 C, sunny
;;
;;   </details>
;;
;; In Org buffers it is a special block, the call on its first line:
;;
;;   #+begin_tool get_weather {"city": "Paris"} (call_1)
;;   18 C, sunny
;;   #+end_tool
;;
;; The first line holds the tool's name, the arguments the model gave
;; (a JSON text; its line breaks, which are JSON white space, become
;; spaces), and in parentheses the call's id, then ", error" for a
;; result that is an error, ", denied" for a call the user denied, ",
;; no result" for a call that got no result (an aborted answer: such a
;; call is never sent), and ", signature SIG" for the opaque token some
;; providers want back with the call (Gemini's).  The block's body is
;; the result.  Lines of the result that would look like the block's
;; own lines or a role heading are escaped: in Org, as Org escapes
;; source blocks (a comma before lines that start with "*" or "#+", and
;; before such lines that have commas already); elsewhere, with a
;; backslash before lines that start with "<details>" or "</details>"
;; or are a role heading (and before such lines that have backslashes
;; already), so that unescaping gives the result back exactly.
;;
;; This file makes and reads the blocks; chatpipe-turns.el makes
;; messages of them, chatpipe-insert.el inserts them as an answer
;; streams, and chatpipe-state.el converts them when a chat changes
;; from Markdown to Org or back.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-modeltext)
(require 'chatpipe-headings)

(defconst chatpipe--tool-block-syntax
  '((nil "<details><summary>Tool call " "</summary>" "</details>" "\n")
    (t "#+begin_tool " "" "#+end_tool" ""))
  "The lines of tool blocks: (ORG PREFIX SUFFIX END PADDING).
ORG is t for Org buffers and nil for others.  The first line is
PREFIX, the call, SUFFIX; the last line is END; PADDING is what
goes between the first line's newline and the result, and after
the result's newline (a blank line in Markdown).")

(defun chatpipe--tool-syntax (org)
  "Return the tool block syntax (PREFIX SUFFIX END PADDING) for ORG.
ORG non-nil means Org buffers; see `chatpipe--tool-block-syntax'."
  (cdr (assq (and org t) chatpipe--tool-block-syntax)))

(defun chatpipe--tool-org-p ()
  "Return t if the current buffer has Org's tool blocks, else nil."
  (and (derived-mode-p 'org-mode) t))

;;;; The first line

(defconst chatpipe--tool-flags
  '((error . "error") (denied . "denied") (pending . "no result"))
  "The flags of a tool call's first line: (FLAG . TEXT).
`error': its result is an error; `denied': the user denied it (an
error too); `pending': it has no result.")

(defun chatpipe--tool-line-arguments (arguments)
  "Return ARGUMENTS, a JSON text, for the first line of a tool block.
Line breaks (JSON white space) become spaces."
  (replace-regexp-in-string "[\r\n]" " " (or arguments "")))

(defun chatpipe--tool-meta (call)
  "Return the parenthesized end of the first line of CALL's block.
CALL is a plist with :id, :flag and :signature; see
`chatpipe--tool-flags'."
  (concat " (" (plist-get call :id)
          (let ((flag (plist-get call :flag)))
            (if flag (concat ", " (alist-get flag chatpipe--tool-flags)) ""))
          (let ((signature (plist-get call :signature)))
            (if signature (concat ", signature " signature) ""))
          ")"))

(defun chatpipe--tool-begin-line (org call)
  "Return the first line of the block of CALL, without newline.
ORG non-nil means Org's style.  CALL is a plist with :name,
:arguments (a JSON text), :id, :flag and :signature.  The
constructs in the arguments, the id and the signature that would
be structure (a Local Variables line, a page break) are broken:
see `chatpipe--break-string'; `chatpipe--tool-parse-line' takes
the breaks out."
  (pcase-let ((`(,prefix ,suffix . ,_) (chatpipe--tool-syntax org))
              (arguments (chatpipe--tool-line-arguments
                          (plist-get call :arguments))))
    (concat prefix (plist-get call :name)
            (chatpipe--break-string
             (concat (if (string-empty-p arguments) "" (concat " " arguments))
                     (chatpipe--tool-meta call))
             '(file) "x")
            suffix)))

(defun chatpipe--tool-begin-regexp (org)
  "Return a regexp matching the first line of a tool block.
ORG non-nil means Org's style.  Group 1 is the tool's name, group 2
the arguments (if any), group 3 the id and group 4 the flags, each
after \", \"."
  (pcase-let ((`(,prefix ,suffix . ,_) (chatpipe--tool-syntax org)))
    (concat "^" (regexp-quote prefix) "\\([^ \t\n]+\\)\\(?: \\(.*\\)\\)? ("
            "\\([^ ,()\n]+\\)\\(\\(?:, [^,()\n]*\\)*\\))"
            (regexp-quote suffix) "[ \t]*$")))

(defun chatpipe--tool-parse-line ()
  "Return the call on the first line of a tool block, just matched.
The match data are those of `chatpipe--tool-begin-regexp'.  The
value is a plist with :name, :arguments, :id, :flag (see
`chatpipe--tool-flags') and :signature."
  (let ((call (list :name (match-string-no-properties 1)
                    :arguments (chatpipe--restore-model-text
                                (or (match-string-no-properties 2) ""))
                    :id (chatpipe--restore-model-text
                         (match-string-no-properties 3))))
        (flags (or (match-string-no-properties 4) ""))
        flag signature)
    (dolist (item (split-string flags ", " t))
      (if (string-prefix-p "signature " item)
          (setq signature (chatpipe--restore-model-text
                           (substring item (length "signature "))))
        (setq flag (or (car (rassoc item chatpipe--tool-flags)) flag))))
    (append call (list :flag flag :signature signature))))

;;;; Escaping

(defun chatpipe--tool-escapable (org)
  "Return a regexp for the text after the escapes of a result line.
A result line whose text after its escape characters (and, in Org,
leading spaces) matches is escaped.  ORG non-nil means Org's style."
  (if org
      "\\*\\|#\\+"
    (concat "</?details>\\|"
            (regexp-opt (mapcar #'cdr chatpipe-headings)) "[ \t]*$")))

(defun chatpipe--tool-escape (text org)
  "Return TEXT, a tool's result, escaped for a tool block.
ORG non-nil means Org's style; see the commentary of
chatpipe-toolblocks.el."
  (let ((case-fold-search nil)
        (regexp (if org
                    (concat "^[ \t]*\\(,*\\(?:" (chatpipe--tool-escapable t)
                            "\\)\\)")
                  (concat "^\\(\\\\*\\(?:" (chatpipe--tool-escapable nil)
                          "\\)\\)"))))
    (replace-regexp-in-string regexp (if org ",\\1" "\\\\\\1") text t nil 1)))

(defun chatpipe--tool-unescape (text org)
  "Return TEXT, the body of a tool block, with its escapes removed.
ORG non-nil means Org's style.  The inverse of `chatpipe--tool-escape'."
  (let ((case-fold-search nil)
        (regexp (if org
                    (concat "^[ \t]*,*\\(,\\)\\(?:" (chatpipe--tool-escapable t)
                            "\\)")
                  (concat "^\\(\\\\\\)\\\\*\\(?:" (chatpipe--tool-escapable nil)
                          "\\)"))))
    (replace-regexp-in-string regexp "" text t t 1)))

;;;; Blocks

(defun chatpipe--tool-block-string (org call)
  "Return the tool block of CALL as text, without a final newline.
ORG non-nil means Org's style.  CALL is a plist as for
`chatpipe--tool-begin-line', and :content, the result (a string or
nil).  The result is escaped (see `chatpipe--tool-escape'), and its
constructs that would be structure are broken (see
`chatpipe--break-string'): a Local Variables line, a page break, a
tool block's first line, and in Org the constructs that run code;
`chatpipe-tool-block-data' gives the result back as it was."
  (pcase-let ((`(,_ ,_ ,end ,padding) (chatpipe--tool-syntax org))
              (content (or (plist-get call :content) "")))
    (concat (chatpipe--tool-begin-line org call) "\n" padding
            (if (string-empty-p content)
                ""
              (concat (chatpipe--break-string
                       (chatpipe--tool-escape content org)
                       (if org '(file org) '(file)))
                      "\n" padding))
            end)))

(defun chatpipe--tool-block-from (start body end org)
  "Return the tool block with the first line from START to BODY.
Look for its last line between BODY and END, in ORG's style (Org's
if non-nil).  Return the block as a list (START BODY BLOCK-END),
BLOCK-END the end of its last line, and move point there; if there
is no last line, return nil and move point to BODY."
  (goto-char body)
  (let ((case-fold-search nil))
    (when (re-search-forward
           (concat "^" (regexp-quote (nth 2 (chatpipe--tool-syntax org)))
                   "[ \t]*$")
           end t)
      (list start body (match-end 0)))))

(defun chatpipe--tool-style (style)
  "Return t if STYLE means Org's tool blocks, else nil.
STYLE is `org', `markdown' (the style of all other buffers), or nil
for the current buffer's."
  (pcase style
    ('org t)
    ('markdown nil)
    (_ (chatpipe--tool-org-p))))

(defun chatpipe-tool-blocks (&optional beg end style)
  "Return the tool blocks between BEG and END (default: all).
Each is a list (START BODY-START BLOCK-END) of buffer positions:
the beginning and end of its first line and the end of its last
line.  STYLE is the style of the blocks: `org', `markdown', or nil
for the current buffer's."
  (let ((org (chatpipe--tool-style style))
        (end (or end (point-max)))
        (case-fold-search nil)
        blocks block)
    (save-excursion
      (goto-char (or beg (point-min)))
      (unless (bolp) (forward-line 1))
      (let ((regexp (chatpipe--tool-begin-regexp org)))
        (while (and (< (point) end) (re-search-forward regexp end t))
          (setq block (chatpipe--tool-block-from (match-beginning 0)
                                                 (match-end 0) end org))
          (when block (push block blocks)))))
    (nreverse blocks)))

(defun chatpipe-tool-block-data (block &optional style)
  "Return the call and result of the tool BLOCK, a plist.
BLOCK is as for `chatpipe-tool-blocks', and STYLE its style (see
there).  The plist has the keys of `chatpipe--tool-parse-line' and
:content, the result: unescaped, without the newlines around it.
Return nil if BLOCK does not start with a tool block's first line."
  (let ((org (chatpipe--tool-style style)))
    (save-excursion
      (goto-char (car block))
      (let ((case-fold-search nil))
        (when (looking-at (chatpipe--tool-begin-regexp org))
          (let ((call (chatpipe--tool-parse-line))
                (body (buffer-substring-no-properties
                       (min (1+ (nth 1 block)) (nth 2 block))
                       (save-excursion (goto-char (nth 2 block))
                                       (line-beginning-position)))))
            (append call
                    (list :content (chatpipe--tool-unescape
                                    (chatpipe--restore-model-text
                                     (string-trim body "\n+" "\n+"))
                                    org)))))))))

(defun chatpipe-tool-block-at (pos)
  "Return the tool block at POS in the current buffer, or nil.
POS may be anywhere from the beginning of the block's first line to
the end of its last line.  The value is as for `chatpipe-tool-blocks'."
  (save-excursion
    (goto-char pos)
    (end-of-line)
    (let ((org (chatpipe--tool-org-p))
          (case-fold-search nil))
      (when (re-search-backward (chatpipe--tool-begin-regexp org) nil t)
        (let ((block (chatpipe--tool-block-from
                      (match-beginning 0) (match-end 0) (point-max) org)))
          (and block (<= pos (nth 2 block)) block))))))

(defun chatpipe--convert-tool-block (start from-org to-org end)
  "Convert the tool block at START from FROM-ORG's style to TO-ORG's.
START is the beginning of its first line; its last line is before
END.  Move point to the end of the block, converted or not; return
non-nil if it was converted."
  (goto-char start)
  (let ((case-fold-search nil))
    (when (looking-at (chatpipe--tool-begin-regexp from-org))
      (let ((block (chatpipe--tool-block-from start (match-end 0) end from-org)))
        (when block
          (let ((text (chatpipe--tool-block-string
                       to-org (chatpipe-tool-block-data
                               block (if from-org 'org 'markdown)))))
            (goto-char start)
            (delete-region start (nth 2 block))
            (insert text)
            t))))))

(provide 'chatpipe-toolblocks)
;;; chatpipe-toolblocks.el ends here
