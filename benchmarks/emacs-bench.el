;;; emacs-bench.el --- Benchmark of the chatpipe Emacs package -*- lexical-binding: t; -*-

;;; Commentary:

;; Run by `python -m benchmarks' (benchmarks/__main__.py) as
;;
;;   emacs --batch -Q -L elisp -l benchmarks/emacs-bench.el \
;;     --eval '(chatpipe-bench-main "http://127.0.0.1:PORT" "CHATPIPE" (quote (1000 20000)))'
;;
;; against benchmarks/server.py, whose `POST ...?n=N' streams N deltas
;; of "tok " as fast as it can.  Through the real package, the real
;; command `chatpipe-send' in real chat buffers and the shared `chatpipe
;; serve' process (warmed up first), it measures:
;;
;; 1. the time from calling `chatpipe-send' to the first character of
;;    the answer in the buffer (an `after-change-functions' hook records
;;    the moment of the insertion), over `chatpipe-bench-repeats' answers
;;    of 5 deltas: median and minimum;
;; 2. the first message of an Emacs session: the serve process stopped,
;;    a new chat buffer opened, and `chatpipe-send' called either after
;;    the user took `chatpipe-bench-typing' seconds to type the question
;;    (Emacs idle meanwhile: the `chatpipe-prestart' timers run, as the
;;    command loop would run them) or at once (the worst case: the serve
;;    process starts with the request), over `chatpipe-bench-sessions'
;;    sessions: the time from `chatpipe-send' to the first character;
;; 3. for each N, the time from calling `chatpipe-send' to the complete
;;    answer (the `done' status, the undo step recorded), and whether
;;    the buffer then holds exactly N times "tok " as the answer and one
;;    undo removes the whole answer.
;;
;; It prints one line to stdout, "CHATPIPE-BENCH " and JSON:
;; {"first_ms": MEDIAN, "first_min_ms": MIN, "session_ms": [MS...],
;;  "session_now_ms": [MS...], "sizes": [{"n": N, "ms": MS, "ok": true}, ...]}
;; and its progress to stderr, with the garbage collections and the
;; allocations of each answer.  The package is byte-compiled first, into
;; a temporary folder, as an installed package is.  With the environment
;; variable CHATPIPE_BENCH_PROFILE=1, the CPU profile of each N-delta
;; answer goes to stderr too.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'profiler)
(require 'bytecomp)

(defconst chatpipe-bench--compiled
  (let ((source (file-name-directory (or (locate-library "chatpipe.el" t)
                                         (error "Put elisp/ in `load-path'"))))
        (dir (make-temp-file "chatpipe-bench-elc" t))
        (byte-compile-verbose nil))
    ;; Every file compiled, then every .elc loaded: a file another
    ;; one required while it was compiled was loaded from source.
    (let ((files (directory-files source nil "\\`chatpipe.*\\.el\\'")))
      (dolist (file files)
        (copy-file (expand-file-name file source) (expand-file-name file dir)))
      (let ((load-path (cons dir load-path))
            (inhibit-message t))
        (dolist (file files)
          (unless (byte-compile-file (expand-file-name file dir))
            (error "Cannot compile %s" file)))
        (dolist (file files)
          (load (expand-file-name (concat (file-name-sans-extension file) ".elc")
                                  dir)
                nil t t))))
    (push dir load-path)
    dir)
  "A folder with the package byte-compiled, as installed packages are.
It comes first in `load-path'.")

(require 'chatpipe)

(defvar chatpipe-bench-sessions 5
  "How many sessions' first messages are timed, each way.")

(defvar chatpipe-bench-typing 1.0
  "Seconds the user takes to type the first question of a session.")

(defvar chatpipe-bench-repeats 20
  "How many answers the first-character latency is measured over.")

(defvar chatpipe-bench-profile (equal (getenv "CHATPIPE_BENCH_PROFILE") "1")
  "Non-nil to profile the N-delta answers (env CHATPIPE_BENCH_PROFILE=1).
The CPU profile of each (see `chatpipe-bench--report') goes to
stderr.")

(defconst chatpipe-bench-question "Say tok, many times."
  "The question of each benchmark chat.")

(defvar-local chatpipe-bench--first nil
  "When set to t, the next change of the buffer sets it to `float-time'.")

(defvar chatpipe-bench--done nil
  "The `float-time' when a status that starts with \"done\" was set.")

(defun chatpipe-bench--status-watcher (_symbol value _operation _where)
  "Record the time of a done status: VALUE, the new `chatpipe--status'."
  (when (and (stringp value) (string-prefix-p "done" value))
    (setq chatpipe-bench--done (float-time))))

(defun chatpipe-bench--template (dir url n)
  "Write a template for URL's N-delta answers into DIR; return its name."
  (let ((name (format "bench-%d" n)))
    (with-temp-file (expand-file-name (concat name ".json") dir)
      (insert (json-serialize
               `((chatpipe . ((api . "openai-chat")
                              (url . ,(format "%s/v1/chat/completions?n=%d"
                                              url n))
                              (max_retries . 0)))
                 (model . "bench")
                 (stream . t)
                 (messages . [])))))
    name))

(defun chatpipe-bench--after-change (_beg _end _len)
  "Record the time of the first change after the hook was armed."
  (when (eq chatpipe-bench--first t)
    (setq chatpipe-bench--first (float-time))))

(defun chatpipe-bench--chat (template)
  "Return a new chat buffer for TEMPLATE with the question typed in."
  (let ((name (format chatpipe-buffer-name-format template)))
    (when (get-buffer name)
      (kill-buffer name)))
  (let ((buffer (chatpipe template)))
    (with-current-buffer buffer
      (goto-char (point-max))
      (insert chatpipe-bench-question)
      (undo-boundary)
      (add-hook 'after-change-functions #'chatpipe-bench--after-change nil t))
    buffer))

(defun chatpipe-bench--wait (predicate timeout)
  "Accept process output until PREDICATE is true; error after TIMEOUT s.
Wait for the output of the serve process: `accept-process-output'
then returns as soon as its output is handled (for any process, it
would wait 10 ms more for other output)."
  (let ((deadline (+ (float-time) timeout))
        (proc (chatpipe-serve-process)))
    (while (not (funcall predicate))
      (when (> (float-time) deadline)
        (error "Timed out"))
      (accept-process-output proc 0.05))))

(defun chatpipe-bench--idle (seconds)
  "Let SECONDS pass as an idle Emacs would, for a new chat buffer.
The `chatpipe--prestart' idle timers run at once (Emacs in batch
mode is never idle, so they would not run by themselves), then the
output of every process is handled until SECONDS have passed."
  (dolist (timer (copy-sequence timer-idle-list))
    (when (eq (timer--function timer) #'chatpipe--prestart)
      (cancel-timer timer)
      (apply (timer--function timer) (timer--args timer))))
  (let ((end (+ (float-time) seconds)))
    (while (< (float-time) end)
      (accept-process-output nil 0.02))))

(defun chatpipe-bench--session-first (template typing)
  "Time the first message of a session with TEMPLATE; return ms.
The serve process is stopped; a new chat buffer opens, and the
question is sent after TYPING seconds of idle time (see
`chatpipe-bench--idle'), or at once if TYPING is nil."
  (chatpipe-serve-stop)
  (chatpipe-bench--first-char template typing))

(defun chatpipe-bench--first-char (template &optional typing)
  "Send a chat with TEMPLATE; return the ms to the answer's first character.
With TYPING, let that many seconds of idle time pass first, once the
buffer is open (see `chatpipe-bench--idle').  Wait for the end of
the answer."
  (with-current-buffer (chatpipe-bench--chat template)
    (when typing
      (chatpipe-bench--idle typing))
    (let (start)
      (garbage-collect)
      (setq start (float-time))
      (chatpipe-send)
      (setq chatpipe-bench--first t)
      (chatpipe-bench--wait (lambda () (floatp chatpipe-bench--first)) 30)
      (prog1 (* 1000 (- chatpipe-bench--first start))
        (chatpipe-bench--wait (lambda () (null chatpipe--job)) 30)
        (unless (string-prefix-p "done" chatpipe--status)
          (error "Answer failed: %s" chatpipe--status))))))

(defun chatpipe-bench--report ()
  "Stop the profiler and print its report to stderr.
The call tree unfolded, then the reversed tree folded (the functions
where the time is spent), 120 lines of each at most."
  (profiler-stop)
  (let ((profile (profiler-cpu-profile)))
    (dolist (reversed '(nil t))
      (with-current-buffer (profiler-report-setup-buffer profile)
        (if reversed
            (profiler-report-render-reversed-calltree)
          (goto-char (point-min))
          (while (not (eobp))
            (profiler-report-expand-entry t)
            (forward-line 1)))
        (goto-char (point-min))
        (forward-line 120)
        (message "%s profile:\n%s" (if reversed "Reversed" "CPU")
                 (buffer-substring-no-properties (point-min) (point)))
        (kill-buffer)))))

(defun chatpipe-bench--answer (template n)
  "Send a chat with TEMPLATE, whose answer has N deltas; return (MS OK).
MS is the time from `chatpipe-send' to the end of the answer; OK is
non-nil if the buffer then holds exactly the answer and one undo
removes it."
  (with-current-buffer (chatpipe-bench--chat template)
    (let ((before (buffer-string))
          start ms ok gcs gc-time conses)
      (garbage-collect)
      (setq gcs gcs-done gc-time gc-elapsed
            conses (apply #'+ (memory-use-counts)))
      (when chatpipe-bench-profile
        (profiler-start 'cpu))
      (setq chatpipe-bench--done nil)
      (setq start (float-time))
      (chatpipe-send)
      (chatpipe-bench--wait (lambda () (null chatpipe--job)) 300)
      (setq ms (* 1000 (- (or chatpipe-bench--done (float-time)) start)))
      (when chatpipe-bench-profile
        (chatpipe-bench--report))
      (setq ok (and (string-prefix-p "done" chatpipe--status)
                    (equal (buffer-string)
                           (concat before "\n\n### Assistant\n\n"
                                   (apply #'concat (make-list n "tok "))
                                   "\n\n### User\n\n"))))
      (message "n=%d: %.0f ms (%.2f us per delta), %s, status %s"
               n ms (/ (* 1000 ms) n) (if ok "text ok" "TEXT WRONG")
               chatpipe--status)
      (message "n=%d: %d GCs, %.0f ms in GC, %.0f objects allocated per delta"
               n (- gcs-done gcs) (* 1000 (- gc-elapsed gc-time))
               (/ (float (- (apply #'+ (memory-use-counts)) conses)) n))
      (undo-boundary)
      (let ((undo-start (float-time))
            (last-command nil))
        (undo)
        (message "n=%d: undo in one step: %.1f ms" n
                 (* 1000 (- (float-time) undo-start))))
      (unless (equal (buffer-string) before)
        (message "n=%d: ONE UNDO DID NOT REMOVE THE ANSWER" n)
        (setq ok nil))
      (list ms ok))))

(defun chatpipe-bench-main (url command sizes)
  "Benchmark the package against the server at URL; print the results.
COMMAND is the `chatpipe' backend; SIZES the numbers of deltas of
the answers to time.  See the commentary of this file."
  (let* ((tmp (make-temp-file "chatpipe-bench" t))
         (dir (expand-file-name "chatpipe/templates" tmp))
         (process-environment (cons (concat "XDG_CONFIG_HOME=" tmp)
                                    process-environment))
         (chatpipe-command command)
         (chatpipe-backend-mode 'serve)
         (chatpipe-default-template "bench-5")
         firsts sessions sessions-now results)
    (unwind-protect
        (progn
          (make-directory dir t)
          (dolist (n (cons 5 sizes))
            (chatpipe-bench--template dir url n))
          (add-variable-watcher 'chatpipe--status
                                #'chatpipe-bench--status-watcher)
          ;; Warm up: start the serve process, open the connection.
          (chatpipe-serve-process)
          (dotimes (_ 3)
            (chatpipe-bench--first-char "bench-5"))
          (dotimes (_ chatpipe-bench-repeats)
            (push (chatpipe-bench--first-char "bench-5") firsts))
          (setq firsts (sort firsts #'<))
          (dotimes (_ chatpipe-bench-sessions)
            (push (chatpipe-bench--session-first "bench-5" chatpipe-bench-typing)
                  sessions)
            (push (chatpipe-bench--session-first "bench-5" nil) sessions-now))
          (message "first message of a session: %s ms (sent at once: %s ms)"
                   (mapconcat (lambda (ms) (format "%.2f" ms)) sessions " ")
                   (mapconcat (lambda (ms) (format "%.2f" ms)) sessions-now " "))
          (message "first character: %s ms"
                   (mapconcat (lambda (ms) (format "%.2f" ms)) firsts " "))
          (dolist (n sizes)
            (pcase-let ((`(,ms ,ok)
                         (chatpipe-bench--answer (format "bench-%d" n) n)))
              (push (format "{\"n\": %d, \"ms\": %.2f, \"ok\": %s}"
                            n ms (if ok "true" "false"))
                    results)))
          (let* ((count (length firsts))
                 (median (if (cl-oddp count)
                             (nth (/ count 2) firsts)
                           (/ (+ (nth (1- (/ count 2)) firsts)
                                 (nth (/ count 2) firsts))
                              2))))
            (princ (format "CHATPIPE-BENCH {\"first_ms\": %.3f, \
\"first_min_ms\": %.3f, \"session_ms\": [%s], \"session_now_ms\": [%s], \
\"sizes\": [%s]}\n"
                           median (car firsts)
                           (mapconcat #'number-to-string sessions ", ")
                           (mapconcat #'number-to-string sessions-now ", ")
                           (string-join (nreverse results) ", ")))))
      (chatpipe-serve-stop)
      (delete-directory tmp t)
      (delete-directory chatpipe-bench--compiled t))))

(provide 'emacs-bench)
;;; emacs-bench.el ends here
