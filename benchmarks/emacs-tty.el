;;; emacs-tty.el --- Emacs' CPU while an answer streams, redisplay on -*- lexical-binding: t; -*-

;;; Commentary:

;; Run by `python -m benchmarks' (benchmarks/__main__.py) in a visible
;; `emacs -nw -Q' in a tmux session of 120x40, as
;;
;;   emacs -nw -Q -L elisp -L MARKDOWN-MODE-DIR [-L GPTEL_DIR -L COMPAT_DIR] \
;;     -l benchmarks/emacs-bench.el [-l benchmarks/emacs-compare.el] \
;;     -l benchmarks/emacs-tty.el \
;;     --eval '(chatpipe-tty-main (quote CLIENT) "http://127.0.0.1:PORT" "CHATPIPE" N PACE REPEATS "OUT" "EXPECTED")'
;;
;; CLIENT is `chatpipe' (`chatpipe-send' in a chat buffer, `chatpipe
;; serve'), `gptel' (`gptel-send' in a buffer made by `gptel', its curl
;; process), or `gptel-scroll' (gptel with `gptel-auto-scroll' on
;; `gptel-post-stream-hook', so that the window follows the answer as
;; chatpipe's does).  Both buffers are in `markdown-mode', shown alone
;; in the frame, point at the end of the question.
;;
;; Emacs runs its command loop, redisplaying as it does for a user.
;; After a warm-up answer (5 deltas, fast) and an idle period as long as
;; an answer (Emacs' CPU doing nothing), REPEATS answers of N deltas of
;; Markdown prose, PACE ms apart (benchmarks/server.py `text=prose'),
;; are streamed, each into a new buffer.  For each, from the send
;; command to the end of the request (`chatpipe--job' nil, gptel's
;; request gone), it measures Emacs' own CPU time
;; (`get-internal-run-time': user + system of this process, without its
;; children), the wall time, and the redisplays of the chat window (calls
;; of `pre-redisplay-functions' for it), and checks that the buffer holds
;; the answer (the text in the file EXPECTED).  The end of a request is
;; polled every 50 ms (a timer), alike for every client.
;;
;; Each result is a JSON line appended to the file OUT: {"kind": "idle"
;; | "run" | "error" | "end", ...}; Emacs exits after the "end" line.
;; With CHATPIPE_BENCH_PROFILE=1, the CPU profile of the last answer
;; (the call tree, then the reversed tree: the functions where the time
;; goes) is written to OUT.CLIENT.profile.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'markdown-mode)

(defvar chatpipe-tty--window nil
  "The window whose redisplays are counted.")

(defvar chatpipe-tty--redisplays 0
  "Redisplays of `chatpipe-tty--window' counted so far.")

(defvar chatpipe-tty--out nil
  "The file the results are appended to.")

(defvar chatpipe-tty--tmp nil
  "The temporary configuration folder (templates).")

(defun chatpipe-tty--count (window)
  "Count a redisplay of WINDOW if it is the measured one."
  (when (eq window chatpipe-tty--window)
    (setq chatpipe-tty--redisplays (1+ chatpipe-tty--redisplays))))

(defun chatpipe-tty--write (object)
  "Append OBJECT, an alist, as a JSON line to the results file."
  (let ((line (concat (json-serialize object) "\n"))
        (inhibit-message t))
    (write-region line nil chatpipe-tty--out t 'silent)))

(defun chatpipe-tty--finish (&optional code)
  "Clean up, write the end line and exit Emacs with CODE."
  (ignore-errors (chatpipe-serve-stop))
  (ignore-errors (delete-directory chatpipe-tty--tmp t))
  (ignore-errors (delete-directory chatpipe-bench--compiled t))
  (when (boundp 'chatpipe-compare--gptel-compiled)
    (ignore-errors (delete-directory chatpipe-compare--gptel-compiled t)))
  (chatpipe-tty--write '((kind . "end")))
  (kill-emacs (or code 0)))

(defmacro chatpipe-tty--guard (&rest body)
  "Run BODY; on an error, write it to the results and exit Emacs."
  (declare (indent 0))
  `(condition-case err
       (progn ,@body)
     (error (chatpipe-tty--write `((kind . "error")
                                   (message . ,(error-message-string err))))
            (chatpipe-tty--finish 1))))

(defun chatpipe-tty--template (url name query)
  "Write template NAME for URL's answers with QUERY; return NAME."
  (with-temp-file (expand-file-name (concat "chatpipe/templates/" name ".json")
                                    chatpipe-tty--tmp)
    (insert (json-serialize
             `((chatpipe . ((api . "openai-chat")
                            (url . ,(format "%s/v1/chat/completions?%s" url query))
                            (max_retries . 0)))
               (model . "bench")
               (stream . t)
               (messages . [])))))
  name)

(defun chatpipe-tty--gptel-p (client)
  "Non-nil if CLIENT is one of the gptel ones."
  (memq client '(gptel gptel-scroll)))

(defun chatpipe-tty--write-profile (client)
  "Stop the profiler and write its report for CLIENT next to the results."
  (profiler-stop)
  (let ((profile (profiler-cpu-profile))
        (text nil))
    (dolist (reversed '(nil t))
      (with-current-buffer (profiler-report-setup-buffer profile)
        (if reversed
            (profiler-report-render-reversed-calltree)
          (profiler-report-render-calltree))
        (goto-char (point-min))
        (let ((n 0))
          (while (and (not (eobp)) (< n 400))
            (profiler-report-expand-entry t)
            (forward-line 1)
            (setq n (1+ n))))
        (goto-char (point-min))
        (forward-line 150)
        (push (format "%s profile:\n%s\n" (if reversed "Reversed" "CPU")
                      (buffer-substring-no-properties (point-min) (point)))
              text)
        (kill-buffer)))
    (let ((inhibit-message t))
      (write-region (apply #'concat (nreverse text)) nil
                    (format "%s.%s.profile" chatpipe-tty--out client) nil 'silent))))

(defun chatpipe-tty--buffer (client key backends)
  "A new chat buffer of CLIENT for the answers KEY (`warm' or `run').
BACKENDS is an alist (KEY . gptel backend).  The question is typed
in, point after it; the buffer is shown alone in the selected window."
  (let ((buffer
         (if (chatpipe-tty--gptel-p client)
             (progn
               (when (get-buffer "*gptel bench*")
                 (kill-buffer "*gptel bench*"))
               (let ((inhibit-message t))
                 (gptel "*gptel bench*")))
           (chatpipe-bench--chat (format "tty-%s" key)))))
    (with-current-buffer buffer
      (when (chatpipe-tty--gptel-p client)
        (setq-local gptel-backend (cdr (assq key backends)))
        (setq-local gptel-model 'bench)
        (goto-char (point-max))
        (insert chatpipe-bench-question))
      (goto-char (point-max)))
    (switch-to-buffer buffer)
    (delete-other-windows)
    (set-window-point (selected-window) (with-current-buffer buffer (point)))
    buffer))

(defun chatpipe-tty--busy-p (client buffer)
  "Non-nil while CLIENT's request into BUFFER runs."
  (if (chatpipe-tty--gptel-p client)
      gptel--request-alist
    (buffer-local-value 'chatpipe--job buffer)))

(defun chatpipe-tty--send (client)
  "Send the chat in the current buffer with CLIENT."
  (if (chatpipe-tty--gptel-p client)
      (let ((inhibit-message t))
        (gptel-send))
    (chatpipe-send)))

(defun chatpipe-tty--has-answer-p (buffer expected)
  "Non-nil if BUFFER holds EXPECTED after the question."
  (with-current-buffer buffer
    (save-excursion
      (goto-char (point-min))
      (and (search-forward chatpipe-bench-question nil t)
           (search-forward expected nil t)
           t))))

(defun chatpipe-tty--run (client repeats expected backends)
  "Stream REPEATS answers with CLIENT, one after the other; then finish.
EXPECTED is the text of each answer; BACKENDS as for
`chatpipe-tty--buffer'."
  (if (<= repeats 0)
      (chatpipe-tty--finish)
    (chatpipe-tty--guard
      (let* ((buffer (chatpipe-tty--buffer client 'run backends))
             cpu wall timer deadline)
        (redisplay t)
        (setq chatpipe-tty--window (get-buffer-window buffer))
        (garbage-collect)
        (when (and chatpipe-bench-profile (= repeats 1))
          (profiler-start 'cpu))
        (setq chatpipe-tty--redisplays 0
              deadline (+ (float-time) 300)
              wall (float-time)
              cpu (float-time (get-internal-run-time)))
        (chatpipe-tty--send client)
        (setq timer
              (run-at-time
               0.05 0.05
               (lambda ()
                 (chatpipe-tty--guard
                   (cond
                    ((not (chatpipe-tty--busy-p client buffer))
                     (let ((cpu (- (float-time (get-internal-run-time)) cpu))
                           (wall (- (float-time) wall))
                           (redisplays chatpipe-tty--redisplays))
                       (cancel-timer timer)
                       (when (and chatpipe-bench-profile (= repeats 1))
                         (chatpipe-tty--write-profile client))
                       (chatpipe-tty--write
                        `((kind . "run") (client . ,(symbol-name client))
                          (cpu . ,cpu) (wall . ,wall) (redisplays . ,redisplays)
                          (ok . ,(if (chatpipe-tty--has-answer-p buffer expected)
                                     t :false))
                          (mode . ,(symbol-name (buffer-local-value 'major-mode buffer)))))
                       (run-at-time 0.5 nil #'chatpipe-tty--run
                                    client (1- repeats) expected backends)))
                    ((> (float-time) deadline)
                     (cancel-timer timer)
                     (error "The answer took more than 300 s")))))))))))

(defun chatpipe-tty--idle (client seconds repeats expected backends)
  "Measure Emacs' CPU for SECONDS doing nothing, then start the runs.
CLIENT, REPEATS, EXPECTED and BACKENDS are for `chatpipe-tty--run'."
  (let ((cpu (float-time (get-internal-run-time)))
        (wall (float-time)))
    (setq chatpipe-tty--redisplays 0)
    (run-at-time
     seconds nil
     (lambda ()
       (chatpipe-tty--write
        `((kind . "idle") (cpu . ,(- (float-time (get-internal-run-time)) cpu))
          (wall . ,(- (float-time) wall)) (redisplays . ,chatpipe-tty--redisplays)))
       (run-at-time 0.2 nil #'chatpipe-tty--run client repeats expected backends)))))

(defun chatpipe-tty--start (client n pace repeats expected backends)
  "Warm CLIENT up with a fast 5-delta answer, then measure.
N, PACE (ms), REPEATS, EXPECTED and BACKENDS: see `chatpipe-tty-main'."
  (chatpipe-tty--guard
    (let ((buffer (chatpipe-tty--buffer client 'warm backends))
          (deadline (+ (float-time) 60)))
      (redisplay t)
      (chatpipe-tty--send client)
      (while (chatpipe-tty--busy-p client buffer)
        (when (> (float-time) deadline)
          (error "The warm-up answer took more than 60 s"))
        (accept-process-output nil 0.05))
      (unless (chatpipe-tty--has-answer-p buffer "tok tok tok tok tok ")
        (error "The warm-up answer is wrong: %s"
               (with-current-buffer buffer
                 (buffer-substring-no-properties (point-min) (point-max)))))
      (redisplay t)
      (chatpipe-tty--idle client (/ (* n (max pace 1)) 1000.0) repeats expected
                          backends))))

(defun chatpipe-tty-main (client url command n pace repeats out expected-file)
  "Measure Emacs streaming N-delta answers, PACE ms apart, with CLIENT.
URL is benchmarks/server.py's; COMMAND the `chatpipe' backend;
REPEATS the measured answers; OUT the results file; EXPECTED-FILE
holds the text of an answer.  See the commentary of this file."
  (setq chatpipe-tty--out out
        chatpipe-tty--tmp (make-temp-file "chatpipe-tty" t))
  (chatpipe-tty--guard
    (make-directory (expand-file-name "chatpipe/templates" chatpipe-tty--tmp) t)
    (setenv "XDG_CONFIG_HOME" chatpipe-tty--tmp)
    (setq chatpipe-command command
          chatpipe-backend-mode 'serve)
    (add-hook 'pre-redisplay-functions #'chatpipe-tty--count)
    (let ((expected (with-temp-buffer
                      (insert-file-contents expected-file)
                      (buffer-string)))
          (query (format "n=%d&pace=%s&text=prose" n pace))
          backends)
      (chatpipe-tty--template url "tty-warm" "n=5")
      (chatpipe-tty--template url "tty-run" query)
      (when (chatpipe-tty--gptel-p client)
        (let ((host (replace-regexp-in-string "\\`http://" "" url)))
          (setq gptel-use-curl t
                gptel-log-level nil
                gptel-default-mode 'markdown-mode
                backends
                (list (cons 'warm (gptel-make-openai "bench-warm"
                                    :host host :protocol "http"
                                    :endpoint "/v1/chat/completions?n=5"
                                    :stream t :key "bench" :models '(bench)))
                      (cons 'run (gptel-make-openai "bench-run"
                                   :host host :protocol "http"
                                   :endpoint (concat "/v1/chat/completions?" query)
                                   :stream t :key "bench" :models '(bench)))))
          (setq-default gptel-backend (cdr (assq 'warm backends))
                        gptel-model 'bench)
          (when (eq client 'gptel-scroll)
            (add-hook 'gptel-post-stream-hook #'gptel-auto-scroll))))
      (run-at-time 1 nil #'chatpipe-tty--start client n pace repeats expected
                   backends))))

(provide 'emacs-tty)
;;; emacs-tty.el ends here
