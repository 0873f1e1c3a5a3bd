;;; chatpipe-rewrite-test.el --- ERT tests: rewrite in place -*- lexical-binding: t; -*-

;;; Commentary:

;; `chatpipe-rewrite' through the real backend (its `rewrite' request
;; field) and a route server on 127.0.0.1 that answers as an OpenAI
;; chat API: the proposal streams into an overlay, and accept, reject,
;; iterate, hunks, ediff, merge and the refusal after an edit act on the
;; buffer's exact text.

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)
(require 'chatpipe-rewrite)
(require 'chatpipe-rewrite-review)

(defconst chatpipe-test--rw-script "
import json
def answer(*parts, delay=0.0, finish='stop'):
    chunks = [b'data: ' + json.dumps({'choices': [{'index': 0, 'delta': {'content': p}}]}).encode()
              + b'\\n\\n' for p in parts]
    chunks.append(b'data: ' + json.dumps({'choices': [{'index': 0, 'delta': {},
                                                      'finish_reason': finish}]}).encode()
                  + b'\\n\\ndata: [DONE]\\n\\n')
    return Reply(chunks, delay=delay)
"
  "Python of the route servers: `answer' streams its PARTS as deltas.")

(defconst chatpipe-test--rw-python
  "import os\n\n\ndef add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"
  "The Python file of the tests.")

(defconst chatpipe-test--rw-prose
  "First paragraph, which stays.\n\nThe quick brown fox jumps.\nIt is fast.\n\nLast one.\n"
  "The text file of the tests.")

(defmacro chatpipe-test--rw-with (spec &rest body)
  "Run BODY in a new buffer; SPEC is (URL ROUTES MODE TEXT).
ROUTES is Python that adds the route server's routes (with
`answer'); URL is bound to its URL; the buffer, in MODE, holds TEXT,
with undo on, and its rewrites use a template for URL/m."
  (declare (indent 1) (debug ((symbolp form form form) body)))
  (let ((buffer (make-symbol "buffer")))
    `(chatpipe-test--with-route-server
         (,(car spec) (concat chatpipe-test--rw-script ,(nth 1 spec)))
       (let ((chatpipe-rewrite-template
              (chatpipe-test--template nil nil (concat ,(car spec) "/m")))
             (,buffer (generate-new-buffer "rewrite-test")))
         (unwind-protect
             (with-current-buffer ,buffer
               (insert ,(nth 3 spec))
               (funcall ,(nth 2 spec))
               (buffer-enable-undo)
               (undo-boundary)
               ,@body)
           (with-current-buffer ,buffer (set-buffer-modified-p nil))
           (kill-buffer ,buffer))))))

(defun chatpipe-test--rw-start (instruction &optional from)
  "Rewrite what `chatpipe-rewrite' takes at FROM (a string searched for).
INSTRUCTION is the instruction.  Return the rewrite."
  (goto-char (point-min))
  (when from (search-forward from) (goto-char (match-beginning 0)))
  (let ((bounds (chatpipe--rewrite-bounds)))
    (chatpipe-rewrite (car bounds) (cdr bounds) instruction)))

(defun chatpipe-test--rw-wait (rewrite)
  "Wait until REWRITE has stopped streaming; return its state."
  (should (chatpipe-test--wait
           (lambda () (not (eq (chatpipe--rewrite-state rewrite) 'streaming)))
           30))
  (chatpipe--rewrite-state rewrite))

(defun chatpipe-test--rw-bodies (url)
  "Return the JSON text of the bodies the route server URL got, oldest first."
  (mapcar (lambda (request) (prin1-to-string (alist-get 'body request)))
          (chatpipe-test--http "GET" "/requests" url)))

(defun chatpipe-test--rw-without (text face)
  "Return TEXT without its parts in FACE."
  (let ((parts nil) (pos 0))
    (while (< pos (length text))
      (let ((next (next-single-property-change pos 'face text (length text))))
        (unless (eq (get-text-property pos 'face text) face)
          (push (substring-no-properties text pos next) parts))
        (setq pos next)))
    (apply #'concat (nreverse parts))))

(defun chatpipe-test--rw-undo ()
  "Undo one step, as \\[undo] after another command does."
  (let ((last-command nil)) (undo)))

(ert-deftest chatpipe-test-rewrite-python-accept ()
  "A defun of a python-mode buffer rewritten, accepted, undone in one step.
The answer's code fence goes; a marker and an overlay outside the
changed part stay where they were; the overlay shows the proposal."
  (chatpipe-test--rw-with
      (url "server.add('/m', answer('```python\\ndef plus', '(a, b):\\n    return a + b\\n```\\n'))"
           #'python-mode chatpipe-test--rw-python)
    (let* ((before (copy-marker 3))
           (after (copy-marker (progn (goto-char (point-min))
                                      (search-forward "print(") (point))))
           (other (make-overlay 1 7))
           (rewrite (chatpipe-test--rw-start "Rename add to plus" "return")))
      (should (equal (chatpipe--rewrite-original rewrite)
                     "def add(a, b):\n    return a + b\n"))
      ;; Outside a defun, the paragraph at point.
      (save-excursion
        (search-forward "print")
        (let ((bounds (chatpipe--rewrite-bounds)))
          (should (equal (buffer-substring (car bounds) (cdr bounds))
                         "print(add(1, 2))\n"))))
      (should (eq (chatpipe-test--rw-wait rewrite) 'ready))
      (should (equal (chatpipe--rewrite-text rewrite)
                     "def plus(a, b):\n    return a + b\n"))
      (should (equal (substring-no-properties
                      (overlay-get (chatpipe--rewrite-overlay rewrite) 'display))
                     "def plus(a, b):\n    return a + b\n"))
      (should (string-match-p "a accept" (overlay-get (chatpipe--rewrite-overlay
                                                         rewrite)
                                                        'help-echo)))
      (should chatpipe-rewrite-mode)
      (should (equal (chatpipe--rewrite-lighter) " Rewrite[1 ready]"))
      (let ((body (car (chatpipe-test--rw-bodies url))))
        (should (string-search "Rename add to plus" body))
        (should (string-search "def add(a, b):" body)))
      (should (equal (key-binding "a") #'chatpipe-rewrite-accept))
      (chatpipe-rewrite-accept rewrite)
      (should (equal (buffer-string)
                     (string-replace "def add(a" "def plus(a"
                                     chatpipe-test--rw-python)))
      (should (= before 3))
      (should (equal (buffer-substring after (+ after 3)) "add"))
      (should (equal (list (overlay-start other) (overlay-end other)) '(1 7)))
      (should-not chatpipe--rewrites)
      (should-not chatpipe-rewrite-mode)
      (chatpipe-test--rw-undo)
      (should (equal (buffer-string) chatpipe-test--rw-python)))))

(ert-deftest chatpipe-test-rewrite-text-accept-reject ()
  "A paragraph of a text-mode buffer: reject leaves it, accept replaces it."
  (chatpipe-test--rw-with
      (url "server.add('/m', answer('The fox', ' jumps.\\n'))"
           #'text-mode chatpipe-test--rw-prose)
    (let ((rewrite (chatpipe-test--rw-start "Shorter" "quick")))
      (should (equal (chatpipe--rewrite-original rewrite)
                     "The quick brown fox jumps.\nIt is fast.\n"))
      (should (eq (chatpipe-test--rw-wait rewrite) 'ready))
      (chatpipe-rewrite-reject rewrite)
      (should (equal (buffer-string) chatpipe-test--rw-prose))
      (should-not (overlays-in (point-min) (point-max)))
      (setq rewrite (chatpipe-test--rw-start "Shorter" "quick"))
      (should (eq (chatpipe-test--rw-wait rewrite) 'ready))
      (chatpipe-rewrite-accept rewrite)
      (should (equal (buffer-string)
                     "First paragraph, which stays.\n\nThe fox jumps.\n\nLast one.\n"))
      (chatpipe-test--rw-undo)
      (should (equal (buffer-string) chatpipe-test--rw-prose)))))

(ert-deftest chatpipe-test-rewrite-iterate ()
  "Iterate rewrites the proposal; the diff still compares with the original."
  (chatpipe-test--rw-with
      (url "server.add('/m', [answer('The brown fox leaps.\\nIt is fast.\\n'),
                              answer('The fox leaps.\\n')])"
           #'text-mode chatpipe-test--rw-prose)
    (let ((rewrite (chatpipe-test--rw-start "Leaps" "quick")))
      (should (eq (chatpipe-test--rw-wait rewrite) 'ready))
      (chatpipe-rewrite-iterate rewrite "Also make it shorter")
      (should (eq (chatpipe-test--rw-wait rewrite) 'ready))
      (let ((second (nth 1 (chatpipe-test--rw-bodies url))))
        (should (string-search "The brown fox leaps." second))
        (should (string-search "Also make it shorter" second))
        (should-not (string-search "quick" second)))
      (should (equal (chatpipe--rewrite-text rewrite) "The fox leaps.\n"))
      (chatpipe-rewrite-toggle-diff rewrite)
      ;; The word diff shows the original's words taken away, the
      ;; proposal's added.
      (let ((shown (overlay-get (chatpipe--rewrite-overlay rewrite) 'display)))
        (should (equal (chatpipe-test--rw-without shown 'diff-refine-added)
                       "The quick brown fox jumps.\nIt is fast.\n"))
        (should (equal (chatpipe-test--rw-without shown 'diff-refine-removed)
                       "The fox leaps.\n"))
        (should (eq (get-text-property (string-search "quick" shown) 'face shown)
                    'diff-refine-removed)))
      ;; An iteration that cannot be sent brings the proposal back.
      (let ((chatpipe-command (expand-file-name "no-such-chatpipe"
                                                chatpipe-test-tmp)))
        (should-error (chatpipe-rewrite-iterate rewrite "Again")))
      (should (eq (chatpipe--rewrite-state rewrite) 'ready))
      (should (string-search "iterating failed" (chatpipe--rewrite-status rewrite)))
      (chatpipe-rewrite-accept rewrite)
      (should (equal (buffer-string)
                     "First paragraph, which stays.\n\nThe fox leaps.\n\nLast one.\n")))))

(ert-deftest chatpipe-test-rewrite-hunks-and-merge ()
  "Hunk by hunk takes the hunks chosen; merge writes conflict markers."
  (chatpipe-test--rw-with
      (url "server.add('/m', answer('ONE\\ntwo\\nTHREE\\n'))"
           #'text-mode "one\ntwo\nthree\n")
    (let ((rewrite (chatpipe-rewrite (point-min) (point-max) "Shout")))
      (should (eq (chatpipe-test--rw-wait rewrite) 'ready))
      (let ((asked nil))
        (chatpipe-rewrite-accept-hunks
         rewrite (lambda (old new) (push (cons old new) asked)
                   (equal old "one\n")))
        (should (equal (reverse asked) '(("one\n" . "ONE\n")
                                         ("three\n" . "THREE\n")))))
      (should (equal (buffer-string) "ONE\ntwo\nthree\n"))
      (chatpipe-test--rw-undo)
      (should (equal (buffer-string) "one\ntwo\nthree\n"))
      (setq rewrite (chatpipe-rewrite (point-min) (point-max) "Shout"))
      (should (eq (chatpipe-test--rw-wait rewrite) 'ready))
      (chatpipe-rewrite-merge rewrite)
      (should (equal (buffer-string)
                     "<<<<<<< original\none\n=======\nONE\n>>>>>>> rewrite\ntwo\n\
<<<<<<< original\nthree\n=======\nTHREE\n>>>>>>> rewrite\n"))
      (should smerge-mode)
      (goto-char (point-min))
      (re-search-forward "^<<<<<<<")
      (smerge-keep-lower)
      (re-search-forward "^<<<<<<<")
      (smerge-keep-upper)
      (should (equal (buffer-string) "ONE\ntwo\nthree\n")))))

(ert-deftest chatpipe-test-rewrite-ediff-choice ()
  "What is chosen in ediff is what accept applies."
  (chatpipe-test--rw-with
      (url "server.add('/m', answer('ONE\\ntwo\\nTHREE\\n'))"
           #'text-mode "one\ntwo\nthree\n")
    (let ((rewrite (chatpipe-rewrite (point-min) (point-max) "Shout"))
          (ediff-window-setup-function #'ediff-setup-windows-plain)
          (buffer (current-buffer)))
      (should (eq (chatpipe-test--rw-wait rewrite) 'ready))
      ;; In the control buffer: the second difference takes the original.
      (with-current-buffer (chatpipe-rewrite-ediff rewrite)
        (should (eq major-mode 'ediff-mode))
        (ediff-next-difference)
        (ediff-next-difference)
        (ediff-copy-A-to-C nil)
        (ediff-really-quit nil))
      (with-current-buffer buffer
        (should (equal (chatpipe--rewrite-text rewrite) "ONE\ntwo\nthree\n"))
        (should-not (get-buffer "*chatpipe rewrite original*"))
        (chatpipe-rewrite-accept rewrite)
        (should (equal (buffer-string) "ONE\ntwo\nthree\n"))))))

(ert-deftest chatpipe-test-rewrite-refused-after-edit ()
  "Accept is refused when the text was edited since the request.
The diff from the edited text shows instead; an edit outside does not count."
  (chatpipe-test--rw-with
      (url "server.add('/m', answer('The fox jumps.\\n'))"
           #'text-mode chatpipe-test--rw-prose)
    (let ((rewrite (chatpipe-test--rw-start "Shorter" "quick")))
      (should (eq (chatpipe-test--rw-wait rewrite) 'ready))
      (goto-char (point-max))
      (insert "Added at the end.\n")
      (goto-char (point-min))
      (search-forward "brown")
      (replace-match "red")
      (let ((edited (buffer-string)))
        (should-error (chatpipe-rewrite-accept rewrite) :type 'user-error)
        (should (equal (buffer-string) edited))
        (should (overlay-buffer (chatpipe--rewrite-overlay rewrite)))
        (with-current-buffer "*chatpipe rewrite diff*"
          (should (string-search "-The quick red fox jumps." (buffer-string)))))
      (search-backward "red")
      (replace-match "brown")
      (chatpipe-rewrite-accept rewrite)
      (should (equal (buffer-string)
                     "First paragraph, which stays.\n\nThe fox jumps.\n\nLast one.\n\
Added at the end.\n")))))

(ert-deftest chatpipe-test-rewrite-two-at-once ()
  "Two rewrites stream at once in one buffer; overlapping text is refused."
  (chatpipe-test--rw-with
      (url "server.add('/m', lambda body: answer('ALPHA', ' DONE\\n', delay=1.5)
    if 'zzfirst' in json.dumps(body) else answer('BETA', ' DONE\\n', delay=1.5))"
           #'text-mode "alpha text\n\nbeta text\n")
    (let ((first (chatpipe-rewrite 1 12 "Upper zzfirst"))
          (second (chatpipe-rewrite 13 23 "Upper zzsecond")))
      (should-error (chatpipe-rewrite 5 15 "Upper") :type 'user-error)
      (should (chatpipe-test--wait
               (lambda () (and (equal (chatpipe--rewrite-text first) "ALPHA")
                               (equal (chatpipe--rewrite-text second) "BETA")))))
      (should (string-match-p "2 streaming" (chatpipe--rewrite-lighter)))
      (chatpipe-test--rw-wait first)
      (chatpipe-test--rw-wait second)
      (goto-char (point-min))
      (chatpipe-rewrite-next)
      (should (= (point) 13))
      (chatpipe-rewrite-accept (chatpipe--rewrite-at-point))
      (chatpipe-rewrite-previous)
      (should (= (point) 1))
      (chatpipe-rewrite-accept (chatpipe--rewrite-at-point))
      (should (equal (buffer-string) "ALPHA DONE\n\nBETA DONE\n")))))

(ert-deftest chatpipe-test-rewrite-failure ()
  "A failed rewrite says why, cannot be accepted, and rejects cleanly."
  (chatpipe-test--rw-with
      (url "server.add('/m', Reply([json.dumps({'error': {'message': 'overloaded', 'type': 'x'}}).encode()],
                        status=400, framing='length', content_type='application/json'))"
           #'text-mode chatpipe-test--rw-prose)
    (let ((rewrite (chatpipe-test--rw-start "Shorter" "quick")))
      (should (eq (chatpipe-test--rw-wait rewrite) 'failed))
      (should (string-search "overloaded" (chatpipe--rewrite-message rewrite)))
      (should (string-match-p "1 failed" (chatpipe--rewrite-lighter)))
      (should-error (chatpipe-rewrite-accept rewrite) :type 'user-error)
      (chatpipe-rewrite-reject rewrite)
      (should (equal (buffer-string) chatpipe-test--rw-prose))
      (should-not chatpipe-rewrite-mode))))

(ert-deftest chatpipe-test-rewrite-cut-off ()
  "A proposal cut off at the token limit is not accepted; its hunks may be."
  (chatpipe-test--rw-with
      (url "server.add('/m', answer('ONE\\ntwo\\n', finish='length'))"
           #'text-mode "one\ntwo\nthree\n")
    (let ((rewrite (chatpipe-rewrite (point-min) (point-max) "Shout")))
      (should (eq (chatpipe-test--rw-wait rewrite) 'ready))
      (should (string-search "cut off" (chatpipe--rewrite-status rewrite)))
      (should-error (chatpipe-rewrite-accept rewrite) :type 'user-error)
      (should (equal (buffer-string) "one\ntwo\nthree\n"))
      (chatpipe-rewrite-accept-hunks rewrite (lambda (old _new) (equal old "one\n")))
      (should (equal (buffer-string) "ONE\ntwo\nthree\n")))))

(ert-deftest chatpipe-test-rewrite-view-follows ()
  "The view buffer follows the stream, keeps point, and its keys act.
Accepting from it replaces the text and takes the view away."
  (chatpipe-test--rw-with
      (url "server.add('/m', answer('line1\\n', 'line2\\n', 'line3\\n', delay=0.3))"
           #'text-mode "one\n")
    (let* ((rewrite (chatpipe-rewrite (point-min) (point-max) "Lines"))
           (view (chatpipe-rewrite-view rewrite))
           (buffer (current-buffer)))
      (should (chatpipe-test--wait
               (lambda () (string-prefix-p
                           "line1" (with-current-buffer view (buffer-string))))))
      ;; A marker stays where it is if text is only added, not replaced.
      (let ((mark (with-current-buffer view (goto-char 3) (copy-marker 3))))
        (should (eq (chatpipe-test--rw-wait rewrite) 'ready))
        (should (= mark 3)))
      (with-current-buffer view
        (should (equal (buffer-string) "line1\nline2\nline3\n"))
        (should (= (point) 3))
        (should (eq (key-binding "a") #'chatpipe-rewrite-accept))
        (call-interactively #'chatpipe-rewrite-accept))
      (should-not (buffer-live-p view))
      (with-current-buffer buffer
        (should (equal (buffer-string) "line1\nline2\nline3\n"))))))

(ert-deftest chatpipe-test-rewrite-file-settings-ignored ()
  "A buffer's own template and URL, as a file's variables set, are not used.
The request goes to `chatpipe-default-template''s server only."
  (chatpipe-test--rw-with
      (url "server.add('/m', answer('Fine.\\n'))" #'text-mode "Text.\n")
    (chatpipe-test--with-route-server
        (evil (concat chatpipe-test--rw-script
                      "server.add('/m', answer('Evil.\\n'))"))
      (let ((chatpipe-default-template chatpipe-rewrite-template)
            (chatpipe-rewrite-template nil))
        (setq-local chatpipe-template
                    (chatpipe-test--template nil nil (concat evil "/m")))
        (setq-local chatpipe-url (concat evil "/m"))
        (let ((rewrite (chatpipe-rewrite (point-min) (point-max) "Better")))
          (should (eq (chatpipe-test--rw-wait rewrite) 'ready))
          (should (equal (chatpipe--rewrite-text rewrite) "Fine.\n"))
          (should-not (chatpipe-test--http "GET" "/requests" evil))
          (should (= (length (chatpipe-test--rw-bodies url)) 1)))))))

(ert-deftest chatpipe-test-rewrite-read-only-and-kill ()
  "Accept in a read-only buffer is refused and keeps the rewrite.
Turning the mode off, or killing the buffer, stops a rewrite that streams."
  (chatpipe-test--rw-with
      (url "server.add('/m', answer('New.\\n', 'More.\\n', delay=2))"
           #'text-mode "Old.\n")
    (let ((rewrite (chatpipe-rewrite (point-min) (point-max) "New")))
      (should (chatpipe-test--wait
               (lambda () (string-prefix-p "New." (chatpipe--rewrite-text rewrite)))))
      (let ((stream (chatpipe--rewrite-stream rewrite)))
        (should (chatpipe-stream-live-p stream))
        (chatpipe-rewrite-mode -1)
        (should-not (chatpipe-stream-live-p stream))
        (should-not (overlays-in (point-min) (point-max))))
      (setq rewrite (chatpipe-rewrite (point-min) (point-max) "New"))
      (should (eq (chatpipe-test--rw-wait rewrite) 'ready))
      (setq buffer-read-only t)
      (should-error (chatpipe-rewrite-accept rewrite) :type 'buffer-read-only)
      (should (equal (buffer-string) "Old.\n"))
      (should (memq rewrite chatpipe--rewrites))
      (setq buffer-read-only nil)
      (let ((other (generate-new-buffer "rewrite-test-killed")))
        (with-current-buffer other
          (insert "Old.\n")
          (setq rewrite (chatpipe-rewrite (point-min) (point-max) "New")))
        (should (chatpipe-stream-live-p (chatpipe--rewrite-stream rewrite)))
        (kill-buffer other)
        (should-not (chatpipe-stream-live-p (chatpipe--rewrite-stream rewrite)))))))

(ert-deftest chatpipe-test-rewrite-instruction ()
  "A directive's name gives its text; a blank instruction is refused."
  (let ((chatpipe-directives '(("terse" . "Make it terse.")))
        (answer nil))
    (cl-letf (((symbol-function 'completing-read)
               (lambda (_prompt collection &rest _)
                 (should (equal collection '("terse")))
                 answer)))
      (setq answer "terse")
      (should (equal (chatpipe--rewrite-read-instruction "? ") "Make it terse."))
      (setq answer "Fix the typos")
      (should (equal (chatpipe--rewrite-read-instruction "? ") "Fix the typos"))
      (setq answer "  ")
      (should-error (chatpipe--rewrite-read-instruction "? ") :type 'user-error))))

(ert-deftest chatpipe-test-rewrite-diff-segments ()
  "The diff's sides join to the texts, whatever they hold."
  (dolist (pair '(("a\nb\nc" . "a\nB\nc\n")
                  ("--help\n-x\n" . "--version\n-x\n")
                  ("nul \0 here\nend" . "nul \0 there\nend")
                  ("" . "new\n")
                  ("été\n" . "")))
    (dolist (unit '(lines words))
      (let ((segments (chatpipe--rewrite-diff-segments (car pair) (cdr pair) unit)))
        (should (equal (mapconcat (lambda (s) (if (eq (car s) 'same) (nth 1 s) (nth 1 s)))
                                  segments "")
                       (car pair)))
        (should (equal (mapconcat (lambda (s) (car (last s))) segments "")
                       (cdr pair)))))))

(provide 'chatpipe-rewrite-test)
;;; chatpipe-rewrite-test.el ends here
