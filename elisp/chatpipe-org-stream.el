;;; chatpipe-org-stream.el --- The streaming Markdown to Org converter of chatpipe -*- lexical-binding: t; -*-

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

;; The state machine behind `chatpipe-org-convert' (chatpipe-org.el): a
;; converter (a `chatpipe--org') takes Markdown in pieces cut anywhere
;; and gives out Org text as soon as its meaning is settled.  Each
;; character is looked at once; only what the next piece may still
;; change is held back, and that is bounded (see the constants below).

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-modeltext)

(defconst chatpipe--org-link-max 1000
  "The longest link text and URL, together, that is held back.
A link longer than that is inserted as it is, not converted.")

(defconst chatpipe--org-info-max 200
  "The longest info string of a code fence that is held back.
It bounds too the spaces held back after a rule or a closing fence.")

(cl-defstruct (chatpipe--org (:constructor chatpipe--org-create)
                             (:copier nil))
  "The state of a Markdown to Org conversion; see `chatpipe-org-converter'.
LEVEL is the answer heading's level.  MODE says what the input is
in: `bol' (the start of a line), `text', `code' (a code span),
`link', `block' (a code block) and the modes that wait for the end
of a run of CH, N long.  INDENT is non-nil if the line starts with
white space, PREV is the last input character of the line (nil at
its start or after an opening marker).  BOLD and ITALIC are the
characters that opened them, CODE the length of the backtick run
that opened a code span, FENCE (LENGTH . END-LINE) in a code block.
HELD is a list of held back strings, newest first, HELD-LEN their
length; PHASE and DEPTH tell how far a link is, TEXT is its text.
OUT is the output, newest first; BOLOUT non-nil if it ends a line,
TAIL the end of its last line (see `chatpipe--org-line-tail')."
  (level 1) (mode 'bol) ch (n 0) indent prev bold italic code fence
  held (held-len 0) phase (depth 0) text out (bolout t) (tail ""))

;;;; Output and held text

(defmacro chatpipe--org-with (st &rest body)
  "Run BODY with the slots of the converter ST as variables.
Each slot of `chatpipe--org' is a place named as the slot."
  (declare (indent 1) (debug (symbolp body)))
  `(cl-symbol-macrolet
       ,(mapcar (lambda (slot)
                  `(,slot (,(intern (format "chatpipe--org-%s" slot)) ,st)))
                '(level mode ch n indent prev bold italic code fence held
                        held-len phase depth text out bolout tail))
     ,@body))

(defconst chatpipe--org-tail-max 40
  "The most characters of the output's last line a converter keeps.
They are the context in which the Org constructs of the next output
are looked for: longer than any of them (see `chatpipe--breaks').")

(defun chatpipe--org-line-tail (tail s)
  "Return the end of the last output line once S follows TAIL.
TAIL is the end of the output's last line so far.  The value is at
most `chatpipe--org-tail-max' characters long; a line cut so starts
with \"x\", so that it is not taken for the start of the line."
  (let ((line (if (string-match "\n\\([^\n]*\\)\\'" s)
                  (match-string 1 s)
                (concat tail s))))
    (if (<= (length line) chatpipe--org-tail-max)
        line
      (concat "x" (substring line (- 1 chatpipe--org-tail-max))))))

(defun chatpipe--org-emit (st s &optional raw)
  "Add S to the output of the converter ST.
S is the model's text, converted: its Org constructs that could run
code (keyword lines, inline source blocks, elisp: links...) are
broken first (see `chatpipe--break-string'), the output before S on
its line their context; but not in a code block, where Org reads
none of them.  RAW non-nil means that S is a line of the
converter's own, such as \"#+begin_src python\", emitted as it is."
  (unless (equal s "")
    (chatpipe--org-with st
      (let ((s (if (or raw fence)
                   s
                 (chatpipe--break-string
                  s '(org org-line)
                  (if (string-match-p "\\`[ \t]*\\'" tail) "" tail)))))
        (push s out)
        (setq tail (chatpipe--org-line-tail tail s))
        (setq bolout (eq (aref s (1- (length s))) ?\n))))))

(defun chatpipe--org-hold (st s i j max)
  "Hold back S from I to J in ST, as long as MAX is not exceeded.
MAX bounds the length of all the held text.  Return the index
after what was held: less than J if MAX was reached."
  (chatpipe--org-with st
    (let ((end (min j (+ i (- max held-len)))))
      (when (> end i)
        (push (substring s i end) held)
        (cl-incf held-len (- end i)))
      end)))

(defun chatpipe--org-hold-space (st s i len)
  "Hold back, in ST, the spaces and tabs of S from I (before LEN).
Hold at most `chatpipe--org-info-max' characters in all.  Return
the index after them, I if there are none or too many."
  (let ((j (chatpipe--org-skip s i len '(?\s ?\t))))
    (if (> (+ (- j i) (chatpipe--org-held-len st)) chatpipe--org-info-max)
        i
      (chatpipe--org-hold st s i j chatpipe--org-info-max))))

(defun chatpipe--org-release (st)
  "Return the text held back in ST, and forget it."
  (chatpipe--org-with st
    (prog1 (apply #'concat (reverse held))
      (setq held nil held-len 0))))

(defun chatpipe--org-run (st run-mode c)
  "Make ST wait, in RUN-MODE, for the end of a run of the character C."
  (chatpipe--org-with st
    (setq mode run-mode ch c n 0)))

(defun chatpipe--org-skip (s i len chars)
  "Return the index in S after I (before LEN) of the first char not in CHARS."
  (while (and (< i len) (memq (aref s i) chars))
    (setq i (1+ i)))
  i)

(defun chatpipe--org-pre-p (c)
  "Return non-nil if Org emphasis may start after the character C.
C is nil at the start of a line."
  (or (null c) (memq c '(?\s ?\t ?- ?\( ?{ ?' ?\"))))

(defun chatpipe--org-word-p (c)
  "Return non-nil if the character C, or nil, is a letter or digit."
  (and c (memq (get-char-code-property c 'general-category)
               '(Lu Ll Lt Lm Lo Mn Nd Nl No))))

;;;; Converting

(defconst chatpipe--org-runs
  '(hashes run ticks-bol marker ticks code-ticks block-ticks)
  "The modes that wait for the end of a run of characters.")

(defun chatpipe--org-feed (st s)
  "Convert S, the next piece of Markdown, with ST, adding to its output."
  (chatpipe--org-with st
    (let ((i 0) (len (length s)))
      (while (< i len)
        (setq i (cond ((and (memq mode chatpipe--org-runs) (eq (aref s i) ch))
                       (let ((j (chatpipe--org-skip s i len (list ch))))
                         (cl-incf n (- j i))
                         j))
                      ((memq mode '(bol hashes run rule ticks-bol info))
                       (chatpipe--org-line-start st s i len))
                      ((memq mode '(block-bol block-esc block-hash block-ticks
                                              block-close block))
                       (chatpipe--org-block st s i len))
                      (t (chatpipe--org-inline st s i len))))))))

(defun chatpipe--org-line-start (st s i len)
  "Convert S from I (before LEN) at the start of a line, with ST.
Return the index of the first character not used."
  (chatpipe--org-with st
    (let ((c (aref s i)))
      (pcase mode
        ('bol
         (cond ((memq c '(?\s ?\t))
                (let ((j (chatpipe--org-skip s i len '(?\s ?\t))))
                  (chatpipe--org-emit st (substring s i j))
                  (setq indent t prev (aref s (1- j)))
                  j))
               ((and (eq c ?#) (not indent)) (chatpipe--org-run st 'hashes c) i)
               ((eq c ?`) (chatpipe--org-run st 'ticks-bol c) i)
               ((memq c '(?* ?- ?_)) (chatpipe--org-run st 'run c) i)
               (t (setq mode 'text) i)))
        ('hashes
         (chatpipe--org-emit st (if (and (memq c '(?\s ?\t)) (<= n 6))
                                    (make-string (+ n level) ?*)
                                  (make-string n ?#)))
         (setq prev ?# mode 'text)
         i)
        ('run
         (cond ((and (>= n 3) (memq c '(?\s ?\t))) (setq mode 'rule))
               ((and (>= n 3) (eq c ?\n))
                (chatpipe--org-emit st "-----")
                (setq mode 'text))
               (t (chatpipe--org-run-done st c)))
         i)
        ('rule
         (let ((k (chatpipe--org-hold-space st s i len)))
           (cond ((> k i) k)
                 ((eq c ?\n)
                  (chatpipe--org-release st)
                  (chatpipe--org-emit st "-----")
                  (setq mode 'text)
                  i)
                 (t (let ((space (chatpipe--org-release st)))
                      (chatpipe--org-run-done st ?\s)
                      (chatpipe--org-feed st space))
                    i))))
        ('ticks-bol (setq mode (if (>= n 3) 'info 'ticks)) i)
        ('info
         (let ((j (or (string-match-p "[`\n]" s i) len)))
           (cond ((> j i)
                  (let ((k (chatpipe--org-hold st s i j chatpipe--org-info-max)))
                    (when (< k j) (chatpipe--org-info-fail st))
                    k))
                 ((eq c ?\n) (chatpipe--org-open-block st) i)
                 (t (chatpipe--org-info-fail st) i))))))))

(defun chatpipe--org-run-done (st q)
  "End, for ST, the run of \"*\", \"-\" or \"_\" at the start of a line.
Q is the character after it, nil at the end of the answer."
  (chatpipe--org-with st
    (if (not (or (eq ch ?-) (memq q '(nil ?\s ?\t ?\n))))
        (setq mode 'marker)
      (chatpipe--org-emit
       st (cond ((or (memq ch '(?- ?_)) (not (memq q '(?\s ?\t))))
                 (make-string n ch))
                ((= n 1) "-")           ; A bullet.
                ;; Not a heading: "** " at the start of a line.
                (indent (make-string n ch))
                (t (concat "," (make-string n ch)))))
      (setq prev ch mode 'text))))

(defun chatpipe--org-fence-language (info)
  "Return the language name at the start of a fence's INFO string, or nil.
It is a plain word, such as \"python\", \"emacs-lisp\" or \"c++\":
letters, digits and \"_+#.-\".  The rest of INFO (attributes, or Org
header arguments, which run code) is not kept."
  (and (string-match "\\`[ \t]*\\([[:alnum:]][[:alnum:]_+#.-]*\\)" info)
       (match-string 1 info)))

(defun chatpipe--org-open-block (st)
  "Start the code block of the fence line held back in ST.
It is a src block of the fence's language, if its info string starts
with one (see `chatpipe--org-fence-language'), else an example block."
  (let ((lang (chatpipe--org-fence-language (chatpipe--org-release st))))
    (chatpipe--org-emit st (if lang (concat "#+begin_src " lang) "#+begin_example")
                        t)
    (chatpipe--org-with st
      (setq fence (cons n (if lang "#+end_src" "#+end_example"))
            mode 'block-bol))))

(defun chatpipe--org-info-fail (st)
  "Convert the line held back in ST, which is no fence line, as text."
  (let ((line (chatpipe--org-release st)))
    (setf (chatpipe--org-mode st) 'ticks)
    (chatpipe--org-feed st line)))

(defun chatpipe--org-inline (st s i len)
  "Convert S from I (before LEN) inside a line, with ST.
Return the index of the first character not used."
  (chatpipe--org-with st
    (let ((c (aref s i)))
      (pcase mode
        ('text
         (let ((j (or (string-match-p "[*_`[\\\n]" s i) len)))
           (cond ((> j i) (chatpipe--org-emit st (substring s i j))
                  (setq prev (aref s (1- j)))
                  j)
                 ((eq c ?\n) (chatpipe--org-emit st "\n")
                  (setq mode 'bol prev nil indent nil bold nil italic nil)
                  (1+ i))
                 ((eq c ?\\) (setq mode 'escape) (1+ i))
                 ((eq c ?\[) (setq mode 'link phase 'text) (1+ i))
                 (t (chatpipe--org-run st (if (eq c ?`) 'ticks 'marker) c) i))))
        ('escape
         (setq mode 'text)
         (if (eq c ?\n)
             (progn (chatpipe--org-emit st "\\") i)
           (chatpipe--org-emit st (string ?\\ c))
           (setq prev c)
           (1+ i)))
        ('marker (chatpipe--org-marker-done st c) i)
        ('ticks (chatpipe--org-ticks-done st c) i)
        ('code
         (let ((j (or (string-match-p "[`\n]" s i) len)))
           (cond ((> j i) (chatpipe--org-emit st (substring s i j)) j)
                 ((eq c ?\n) (setq code nil mode 'text) i)
                 (t (chatpipe--org-run st 'code-ticks c) i))))
        ('code-ticks (chatpipe--org-code-done st) i)
        ('link (chatpipe--org-link st s i len))))))

(defun chatpipe--org-marker-done (st q)
  "End the run of \"*\" or \"_\" in ST, followed by Q (nil at the end)."
  (chatpipe--org-with st
    ;; An opening marker is followed by no other: "*" then "*" and a
    ;; space could start a line as an Org heading does.
    (let* ((open (and q (not (memq q '(?\s ?\t ?\n ?* ?_)))
                      (chatpipe--org-pre-p prev)))
           (close (and prev (not (memq prev '(?\s ?\t)))
                       (or (eq ch ?*) (not (chatpipe--org-word-p q)))))
           (marks (cond ((or (> n 3) (not (or open close))) nil)
                        ((and close (if (= n 1) (eq italic ch) (eq bold ch))
                              (or (< n 3) (eq italic ch)))
                         (setq open nil)
                         (pcase n (1 "/") (2 "*") (_ "/*")))
                        ((and open (not (if (= n 1) italic bold))
                              (or (< n 3) (not italic)))
                         (pcase n (1 "/") (2 "*") (_ "*/"))))))
      (when marks
        (unless (= n 2) (setq italic (and open ch)))
        (unless (= n 1) (setq bold (and open ch))))
      (chatpipe--org-emit st (or marks (make-string n ch)))
      ;; After an opening marker, nested emphasis may start at once.
      (setq prev (if (and marks open) nil ch) mode 'text))))

(defun chatpipe--org-ticks-done (st q)
  "End the run of backticks in ST that may open a code span.
Q is the character after it, nil at the end of the answer."
  (chatpipe--org-with st
    (if (and q (not (eq q ?\n)) (chatpipe--org-pre-p prev))
        (progn (chatpipe--org-emit st "~")
               (setq code n mode 'code))
      (chatpipe--org-emit st (make-string n ?`))
      (setq prev ?` mode 'text))))

(defun chatpipe--org-code-done (st)
  "End a run of backticks in a code span, in ST: it may close the span."
  (chatpipe--org-with st
    (if (/= n code)
        (progn (chatpipe--org-emit st (make-string n ?`))
               (setq mode 'code))
      (chatpipe--org-emit st "~")
      (setq code nil prev ?` mode 'text))))

(defun chatpipe--org-link (st s i len)
  "Go on holding back a link from S at I (before LEN), in ST.
Return the index of the first character not used."
  (chatpipe--org-with st
    (let* ((c (aref s i))
           (url (eq phase 'url))
           (j (and (not (eq phase 'close))
                   (or (string-match-p (if url "[][()<> \t\n]" "[][\n]") s i)
                       len))))
      (cond
       ((eq phase 'close)
        (if (not (eq c ?\())
            (progn (chatpipe--org-link-fail st) i)
          (setq text (chatpipe--org-release st)
                held-len (length text) phase 'url depth 0)
          (1+ i)))
       ((> j i)
        (let ((k (chatpipe--org-hold st s i j chatpipe--org-link-max)))
          (when (< k j) (chatpipe--org-link-fail st))
          k))
       ((and (not url) (eq c ?\]) held) (setq phase 'close) (1+ i))
       ((and url (eq c ?\)) (= 0 depth) held)
        (chatpipe--org-emit st (concat "[[" (chatpipe--org-release st) "]["
                                       text "]]"))
        (setq text nil prev ?\] mode 'text)
        (1+ i))
       ((and url (or (eq c ?\() (and (eq c ?\)) (> depth 0)))
             (< i (chatpipe--org-hold st s i (1+ i) chatpipe--org-link-max)))
        (cl-incf depth (if (eq c ?\() 1 -1))
        (1+ i))
       (t (chatpipe--org-link-fail st) i)))))

(defun chatpipe--org-link-fail (st)
  "Convert the text held back in ST, which is no link, as text."
  (chatpipe--org-with st
    (let* ((part (chatpipe--org-release st))
           (again (pcase phase
                    ('text part)
                    ('close (concat part "]"))
                    (_ (concat text "](" part)))))
      (chatpipe--org-emit st "[")
      (setq text nil prev ?\[ mode 'text)
      (chatpipe--org-feed st again))))

(defun chatpipe--org-block (st s i len)
  "Convert S from I (before LEN) in a code block, with ST.
Return the index of the first character not used."
  (chatpipe--org-with st
    (let ((c (aref s i)))
      (pcase mode
        ('block-bol
         (cond ((memq c '(?\s ?\t))
                (let ((j (chatpipe--org-skip s i len '(?\s ?\t))))
                  (chatpipe--org-emit st (substring s i j))
                  j))
               ((eq c ?`) (chatpipe--org-run st 'block-ticks c) i)
               (t (setq mode 'block-esc) i)))
        ('block-esc                     ; As `org-escape-code-in-string'.
         (cond ((eq c ?,)
                (let ((j (chatpipe--org-skip s i len '(?,))))
                  (chatpipe--org-emit st (substring s i j))
                  j))
               ((eq c ?*) (chatpipe--org-emit st ",*") (setq mode 'block) (1+ i))
               ((eq c ?#) (setq mode 'block-hash) (1+ i))
               (t (setq mode 'block) i)))
        ('block-hash
         (setq mode 'block)
         (if (not (eq c ?+))
             (progn (chatpipe--org-emit st "#") i)
           (chatpipe--org-emit st ",#+")
           (1+ i)))
        ('block-ticks
         (if (and (>= n (car fence)) (memq c '(?\s ?\t ?\n)))
             (setq mode 'block-close)
           (chatpipe--org-emit st (make-string n ?`))
           (setq mode 'block))
         i)
        ('block-close
         (let ((k (chatpipe--org-hold-space st s i len)))
           (cond ((> k i) k)
                 ((eq c ?\n) (chatpipe--org-close-block st) i)
                 (t (chatpipe--org-emit st (concat (make-string n ?`)
                                                   (chatpipe--org-release st)))
                    (setq mode 'block)
                    i))))
        ('block
         (let ((j (string-search "\n" s i)))
           (if (not j)
               (progn (chatpipe--org-emit st (substring s i)) len)
             (chatpipe--org-emit st (substring s i (1+ j)))
             (setq mode 'block-bol)
             (1+ j))))))))

(defun chatpipe--org-close-block (st)
  "End the code block of ST with its last line."
  (chatpipe--org-release st)
  (chatpipe--org-emit st (cdr (chatpipe--org-fence st)) t)
  (setf (chatpipe--org-fence st) nil (chatpipe--org-mode st) 'text))

(defun chatpipe--org-flush (st)
  "Settle, at the end of the answer, what ST waits for."
  (chatpipe--org-with st
    (pcase mode
      ((or 'hashes 'escape)
       (chatpipe--org-emit st (if (eq mode 'escape) "\\" (make-string n ?#)))
       (setq mode 'text))
      ((or 'run 'rule)
       (if (and (eq mode 'run) (< n 3))
           (chatpipe--org-run-done st nil)
         (chatpipe--org-release st)
         (chatpipe--org-emit st "-----")
         (setq mode 'text)))
      ('ticks-bol (if (>= n 3) (chatpipe--org-open-block st) (setq mode 'ticks)))
      ('info (chatpipe--org-open-block st))
      ('marker (chatpipe--org-marker-done st nil))
      ('ticks (chatpipe--org-ticks-done st nil))
      ('code-ticks (chatpipe--org-code-done st))
      ('link (chatpipe--org-link-fail st))
      ('block-hash (chatpipe--org-emit st "#") (setq mode 'block))
      ('block-ticks (if (>= n (car fence))
                        (chatpipe--org-close-block st)
                      (chatpipe--org-emit st (make-string n ?`))
                      (setq mode 'block)))
      ('block-close (chatpipe--org-close-block st)))))

(defun chatpipe--org-take (st)
  "Return the output of the converter ST, and empty it."
  (chatpipe--org-with st
    (prog1 (if (cdr out) (apply #'concat (nreverse out)) (or (car out) ""))
      (setq out nil))))

(provide 'chatpipe-org-stream)
;;; chatpipe-org-stream.el ends here
