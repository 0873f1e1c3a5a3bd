;;; chatpipe-org.el --- Markdown answers as Org text for chatpipe -*- lexical-binding: t; -*-

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

;; Models answer in Markdown.  In an Org chat buffer an answer is
;; converted to Org while it streams, by a converter of its own
;; (`chatpipe-org-converter'): `chatpipe-org-convert' takes each delta
;; and returns the Org text that can be inserted at once, and
;; `chatpipe-org-finish' what was held back at the end.  Held back are
;; only the characters whose meaning the next delta may still change: a
;; run of "*", "_", "`" or "#", the start of a line, a fence line or a
;; link not finished yet (up to a bounded length).  Each character is
;; looked at once, and what was returned is never taken back.
;;
;; Converted: fenced code blocks to src blocks ("```" without a
;; language: example blocks; their lines are kept as they are, but
;; lines Org would misread get a comma, as Org's own escaping does),
;; **bold** and __bold__, *italic* and _italic_, `code`, ATX headings
;; (demoted under the answer's heading), "* " bullets to "- ", links
;; [text](url), and rules.  Not converted: emphasis where Org would
;; not read it (inside a word, as in a*b*c, or after punctuation other
;; than "-", "(", "{" and quotes) or across lines, link texts (kept as
;; written), reference links, footnotes, setext headings, "~~~"
;; fences, HTML; numbered lists, quotes and tables stay as they are.
;; The state machine is in chatpipe-org-stream.el.
;;
;; `chatpipe-org-to-markdown' turns an answer's Org text back into the
;; Markdown the model wrote, so that the model is sent its own text.
;; It gives back exactly what was converted, but for "*" bullets (sent
;; as "- "), "__" and "_" (as "**" and "*"), "***" rules (as "---"),
;; and text Org reads as markup that was none in the Markdown (such as
;; "/usr/local/ " or a lone "~" before a code span on its line).

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-org-stream)

(defcustom chatpipe-org-convert-markdown t
  "Whether answers in Org chat buffers are converted to Org.
When non-nil, the Markdown of an answer streaming into an Org
buffer is inserted as Org (see `chatpipe-org-convert'), and an
assistant turn is converted back to Markdown when it is sent."
  :type 'boolean
  :group 'chatpipe)

(defun chatpipe-org-converter (&optional level)
  "Return a new converter of an answer from Markdown to Org.
LEVEL is the level of the answer's heading (default 1): a Markdown
heading of level N becomes an Org heading of level LEVEL + N.  Give
it to `chatpipe-org-convert' and `chatpipe-org-finish'."
  (chatpipe--org-create :level (or level 1)))

(defun chatpipe-org-heading-level (heading)
  "Return the level of the Org HEADING, a string: its number of stars."
  (max 1 (chatpipe--org-skip heading 0 (length heading) '(?*))))

(defun chatpipe-org-maybe-converter (heading)
  "Return a converter for an answer under HEADING in this buffer, or nil.
Return nil unless the buffer is in Org mode and
`chatpipe-org-convert-markdown' is non-nil.  HEADING is the
answer's heading line."
  (and chatpipe-org-convert-markdown (derived-mode-p 'org-mode)
       (chatpipe-org-converter (chatpipe-org-heading-level heading))))

(defun chatpipe-org-convert (state text)
  "Convert TEXT, the next piece of a Markdown answer, with STATE.
STATE is a converter from `chatpipe-org-converter'; TEXT is any
string, cut anywhere.  Return the Org text that can be inserted
now, a string; what may still change its meaning is held back
until the next call, or `chatpipe-org-finish'.  If STATE is nil,
return TEXT as it is."
  (if (not state)
      text
    (chatpipe--org-feed state text)
    (chatpipe--org-take state)))

(defun chatpipe-org-finish (state)
  "Return the Org text that STATE held back at the end of the answer.
STATE is a converter from `chatpipe-org-converter'; the text, a
string, comes after all that `chatpipe-org-convert' returned.  A
code block left open is closed.  If STATE is nil, return \"\"."
  (if (not state)
      ""
    (while (not (memq (chatpipe--org-mode state)
                      '(bol text code block-bol block-esc block)))
      (chatpipe--org-flush state))
    (when (chatpipe--org-fence state)
      (unless (chatpipe--org-bolout state)
        (chatpipe--org-emit state "\n"))
      (chatpipe--org-close-block state))
    (chatpipe--org-take state)))

;;;; Back to Markdown

(defun chatpipe--org-span-end (s j)
  "Return where the emphasis that opens at J in S closes, or nil.
The emphasis marker is the character at J; the rules are Org's."
  (let ((m (aref s j))
        (len (length s))
        (k (+ j 2))
        found)
    (when (and (< k len)
               (chatpipe--org-pre-p (and (> j 0) (aref s (1- j))))
               (not (memq (aref s (1+ j)) '(?\s ?\t)))
               (or (eq m ?~) (not (eq (aref s (1+ j)) m))))
      (while (and (not found) (setq k (string-search (string m) s k)))
        (if (and (not (memq (aref s (1- k)) '(?\s ?\t)))
                 ;; "~~x~~" is no verbatim "~x~", "~~~" no "~".
                 (not (and (eq m ?~) (eq (aref s (1- k)) ?~)))
                 (or (= (1+ k) len)
                     (memq (aref s (1+ k))
                           '(?- ?\s ?\t ?. ?, ?: ?! ?? ?\; ?' ?\" ?\) ?} ?\\ ?\[))))
            (setq found k)
          (setq k (1+ k)))))
    found))

(defun chatpipe--org-inline-markdown (s)
  "Return the Markdown of S, a piece of a line of Org text."
  (let ((i 0) (len (length s)) out)
    (while (< i len)
      (let* ((j (or (string-match "[*/~[]" s i) len))
             (c (and (< j len) (aref s j)))
             (end (cond ((null c) nil)
                        ((eq c ?\[)
                         (and (string-match "\\[\\[\\([^][ \t\n]+\\)\\]\\[\\([^]\n[]+\\)\\]\\]"
                                            s j)
                              (= (match-beginning 0) j)
                              (match-end 0)))
                        (t (chatpipe--org-span-end s j)))))
        (push (substring s i j) out)
        (cond ((null c) (setq i len))
              ((null end) (push (string c) out) (setq i (1+ j)))
              ((eq c ?\[)
               (push (concat "[" (match-string 2 s) "](" (match-string 1 s) ")") out)
               (setq i end))
              (t (let ((body (substring s (1+ j) end)))
                   (push (pcase c
                           (?~ (concat "`" body "`"))
                           (?* (concat "**" (chatpipe--org-inline-markdown body) "**"))
                           (_ (concat "*" (chatpipe--org-inline-markdown body) "*")))
                         out)
                   (setq i (1+ end)))))))
    (apply #'concat (nreverse out))))

(defun chatpipe--org-block-markdown (lines end-re)
  "Return the Markdown of the code block whose lines follow in LINES.
END-RE matches its last line.  The value is (MARKDOWN-LINES FENCE
. REST), REST the lines after the block; nil if it has no end."
  (let ((body nil) (longest 2) end)
    (while (and lines (not end))
      (let ((line (pop lines)))
        (if (string-match end-re line)
            (setq end (match-string 1 line))
          (when (string-match "\\`[ \t]*\\(```+\\)[ \t]*\\'" line)
            (setq longest (max longest (length (match-string 1 line)))))
          (push (if (string-match "\\`[ \t]*,*\\(,\\)\\(?:\\*\\|#\\+\\)" line)
                    (replace-match "" t t line 1)
                  line)
                body))))
    (when end
      (let ((fence (make-string (1+ longest) ?`)))
        (cons (nreverse (cons (concat end fence) body)) (cons fence lines))))))

(defun chatpipe-org-to-markdown (text &optional level)
  "Return TEXT, the Org text of an answer, as the Markdown it came from.
LEVEL is the level of the answer's heading (default 1).  This
undoes `chatpipe-org-convert': src and example blocks become fenced
code (without the commas that escape their lines), *b*, /i/ and ~c~
become **b**, *i* and `c`, [[url][text]] becomes [text](url),
headings below LEVEL become \"#\" headings and rules \"---\"."
  (save-match-data
    (let ((level (or level 1))
          (lines (split-string text "\n"))
          (case-fold-search t)
          out)
      (while lines
        (let ((line (pop lines)))
          (cond
           ((and (string-match "\\`\\([ \t]*\\)#\\+begin_\\(src\\|example\\)\
\\(?:[ \t]+\\(.*?\\)\\)?[ \t]*\\'" line)
                 (let* ((indent (match-string 1 line))
                        (lang (and (equal (downcase (match-string 2 line)) "src")
                                   (match-string 3 line)))
                        (block (chatpipe--org-block-markdown
                                lines (concat "\\`\\([ \t]*\\)#\\+end_"
                                              (match-string 2 line) "[ \t]*\\'"))))
                   (when block
                     (push (concat indent (cadr block) lang) out)
                     (dolist (l (car block)) (push l out))
                     (setq lines (cddr block))
                     t))))
           ((and (string-match "\\`\\(\\*+\\)\\([ \t].*\\)\\'" line)
                 (< level (match-end 1) (+ level 7)))
            (push (concat (make-string (- (match-end 1) level) ?#)
                          (chatpipe--org-inline-markdown (match-string 2 line)))
                  out))
           ((string-match "\\`,\\(\\*\\*+\\)\\([ \t].*\\)\\'" line)
            (push (concat (match-string 1 line)
                          (chatpipe--org-inline-markdown (match-string 2 line)))
                  out))
           ((string-match "\\`\\([ \t]*\\)-----+[ \t]*\\'" line)
            (push (concat (match-string 1 line) "---") out))
           (t (push (chatpipe--org-inline-markdown line) out)))))
      (mapconcat #'identity (nreverse out) "\n"))))

(provide 'chatpipe-org)
;;; chatpipe-org.el ends here
