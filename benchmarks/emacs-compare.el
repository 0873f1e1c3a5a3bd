;;; emacs-compare.el --- chatpipe against gptel: N deltas into a buffer -*- lexical-binding: t; -*-

;;; Commentary:

;; Run by `python -m benchmarks' (benchmarks/__main__.py) as
;;
;;   emacs --batch -Q -L elisp -L GPTEL_DIR -L COMPAT_DIR \
;;     -l benchmarks/emacs-bench.el -l benchmarks/emacs-compare.el \
;;     --eval '(chatpipe-compare-main "http://127.0.0.1:PORT" "CHATPIPE" (quote (1000 20000)) 3)'
;;
;; against benchmarks/server.py, whose `POST ...?n=N' streams N deltas
;; of "tok " as fast as it can.  For each N, REPEATS times, alternately:
;;
;; - chatpipe: `chatpipe-send' in a new chat buffer, through the warm
;;   shared `chatpipe serve' process (see emacs-bench.el);
;; - gptel: `gptel-send' in a new buffer of the same major mode with
;;   `gptel-mode' on, a `gptel-make-openai' backend for the server (gptel
;;   runs curl for each request, as it does by default).
;;
;; Both are timed by the same loop: from the send command until the
;; buffer holds the whole answer (N times "tok " after the question),
;; accepting the output of the client's process (the serve process, the
;; curl process) 50 ms at most at a time.  Then the loop waits, untimed,
;; for the request to end, and the answer is checked once more.  Both
;; packages are byte-compiled first, into temporary folders, as installed
;; packages are.
;;
;; It prints one line to stdout, "CHATPIPE-COMPARE " and JSON:
;; {"gptel": VERSION, "sizes": [{"n": N, "chatpipe": [MS...], "gptel":
;; [MS...], "chatpipe_ok": BOOL, "gptel_ok": BOOL, "chatpipe_gcs": G,
;; "gptel_gcs": G, "chatpipe_conses": C, "gptel_conses": C}, ...]}
;; (GCs and objects allocated per delta, of the last run), and its
;; progress to stderr.  With CHATPIPE_BENCH_PROFILE=1, the CPU profile of
;; each client's last N-delta answer goes to stderr too.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'bytecomp)

(defconst chatpipe-compare--gptel-compiled
  (let ((source (file-name-directory (or (locate-library "gptel.el" t)
                                         (error "Put gptel in `load-path'"))))
        (dir (make-temp-file "gptel-bench-elc" t))
        (byte-compile-verbose nil))
    (dolist (file (directory-files source nil "\\`gptel.*\\.el\\'"))
      (copy-file (expand-file-name file source) (expand-file-name file dir)))
    (push dir load-path)
    (dolist (file '("gptel-request.el" "gptel-openai.el" "gptel.el"))
      (let ((inhibit-message t)
            (byte-compile-warnings nil))
        (unless (byte-compile-file (expand-file-name file dir))
          (error "Cannot compile %s" file))))
    dir)
  "A folder with gptel byte-compiled, first in `load-path'.")

(require 'gptel)
(require 'gptel-openai)

(defvar chatpipe-compare--chars 0
  "Characters inserted into the buffer being measured so far.")

(defun chatpipe-compare--count (beg end _len)
  "Count the characters inserted between BEG and END."
  (setq chatpipe-compare--chars (+ chatpipe-compare--chars (- end beg))))

(defun chatpipe-compare--complete-p (from expected)
  "Non-nil if the current buffer holds EXPECTED from the first \"tok \" after FROM.
Cheap until as many characters as EXPECTED's were inserted."
  (and (>= chatpipe-compare--chars (length expected))
       (save-excursion
         (goto-char from)
         (let ((start (and (search-forward "tok " nil t) (- (point) 4))))
           (and start
                (<= (+ start (length expected)) (point-max))
                (string= (buffer-substring-no-properties
                          start (+ start (length expected)))
                         expected))))))

(defun chatpipe-compare--wait (process-fn predicate timeout)
  "Accept the output of PROCESS-FN's process until PREDICATE is true.
PROCESS-FN returns the process to wait for, or nil (any process).
Error after TIMEOUT seconds."
  (let ((deadline (+ (float-time) timeout)))
    (while (not (funcall predicate))
      (when (> (float-time) deadline)
        (error "Timed out"))
      (accept-process-output (funcall process-fn) 0.05))))

(defun chatpipe-compare--gptel-process ()
  "The curl process of gptel's request, or nil."
  (caar gptel--request-alist))

(defun chatpipe-compare--gptel-buffer (mode)
  "A new gptel chat buffer in major MODE with the question typed in."
  (when (get-buffer "*gptel bench*")
    (kill-buffer "*gptel bench*"))
  (with-current-buffer (get-buffer-create "*gptel bench*")
    (funcall mode)
    (gptel-mode 1)
    (insert chatpipe-bench-question)
    (current-buffer)))

(defun chatpipe-compare--measure (client n expected backends mode)
  "Send a chat with CLIENT (`chatpipe' or `gptel') for an N-delta answer.
EXPECTED is the answer; BACKENDS an alist (N . gptel backend); MODE
the major mode of the gptel buffer.  Return (MS OK GCS CONSES)."
  (let* ((buffer (if (eq client 'chatpipe)
                     (chatpipe-bench--chat (format "bench-%d" n))
                   (chatpipe-compare--gptel-buffer mode)))
         (process-fn (if (eq client 'chatpipe)
                         #'chatpipe-serve-process
                       #'chatpipe-compare--gptel-process))
         from start ms ok gcs conses)
    (with-current-buffer buffer
      (when (eq client 'gptel)
        (setq-local gptel-backend (cdr (assq n backends)))
        (setq-local gptel-model 'bench))
      (goto-char (point-max))
      (setq from (point))
      (add-hook 'after-change-functions #'chatpipe-compare--count nil t)
      (setq chatpipe-compare--chars 0)
      (garbage-collect)
      (setq gcs gcs-done conses (apply #'+ (memory-use-counts)))
      (when chatpipe-bench-profile
        (profiler-start 'cpu))
      (setq start (float-time))
      (if (eq client 'chatpipe)
          (chatpipe-send)
        (let ((inhibit-message t))
          (gptel-send)))
      (chatpipe-compare--wait
       process-fn
       (lambda () (with-current-buffer buffer
                    (chatpipe-compare--complete-p from expected)))
       600)
      (setq ms (* 1000 (- (float-time) start)))
      (setq gcs (- gcs-done gcs)
            conses (/ (float (- (apply #'+ (memory-use-counts)) conses)) n))
      (when chatpipe-bench-profile
        (message "%s, n=%d:" client n)
        (chatpipe-bench--report))
      ;; The end of the request, untimed.
      (if (eq client 'chatpipe)
          (chatpipe-bench--wait (lambda () (null chatpipe--job)) 60)
        (chatpipe-compare--wait #'ignore (lambda () (null gptel--request-alist)) 60))
      (setq ok (chatpipe-compare--complete-p from expected))
      (remove-hook 'after-change-functions #'chatpipe-compare--count t)
      (message "%s n=%d: %.0f ms (%.2f us per delta), %s, %d GCs, %.0f objects per delta"
               client n ms (/ (* 1000 ms) n) (if ok "text ok" "TEXT WRONG") gcs conses)
      (list ms ok gcs conses))))

(defun chatpipe-compare-main (url command sizes repeats)
  "Time chatpipe and gptel against the server at URL; print the results.
COMMAND is the `chatpipe' backend; SIZES the numbers of deltas of
the answers; REPEATS the runs of each client for each size.  See
the commentary of this file."
  (let* ((tmp (make-temp-file "chatpipe-compare" t))
         (dir (expand-file-name "chatpipe/templates" tmp))
         (process-environment (cons (concat "XDG_CONFIG_HOME=" tmp)
                                    process-environment))
         (chatpipe-command command)
         (chatpipe-backend-mode 'serve)
         (chatpipe-default-template "bench-5")
         (host (replace-regexp-in-string "\\`http://" "" url))
         (gptel-use-curl t)
         (gptel-log-level nil)
         backends mode results)
    (unwind-protect
        (progn
          (make-directory dir t)
          (dolist (n (cons 5 sizes))
            (chatpipe-bench--template dir url n)
            (push (cons n (gptel-make-openai (format "bench-%d" n)
                            :host host :protocol "http"
                            :endpoint (format "/v1/chat/completions?n=%d" n)
                            :stream t :key "bench" :models '(bench)))
                  backends))
          ;; Warm up both: the serve process, curl, the code paths.
          (chatpipe-serve-process)
          (dotimes (_ 3)
            (chatpipe-bench--first-char "bench-5"))
          (setq mode (buffer-local-value 'major-mode (chatpipe-bench--chat "bench-5")))
          (dotimes (_ 2)
            (dolist (client '(chatpipe gptel))
              (chatpipe-compare--measure client 5 (apply #'concat (make-list 5 "tok "))
                                         backends mode)))
          (dolist (n sizes)
            (let ((expected (apply #'concat (make-list n "tok ")))
                  (runs (list (cons 'chatpipe nil) (cons 'gptel nil)))
                  (oks (list (cons 'chatpipe t) (cons 'gptel t)))
                  last)
              (dotimes (_ repeats)
                (dolist (client '(chatpipe gptel))
                  (pcase-let ((`(,ms ,ok ,gcs ,conses)
                               (chatpipe-compare--measure client n expected
                                                          backends mode)))
                    (push ms (alist-get client runs))
                    (unless ok (setf (alist-get client oks) nil))
                    (setf (alist-get client last) (list gcs conses)))))
              (push (format "{\"n\": %d, \"chatpipe\": [%s], \"gptel\": [%s], \
\"chatpipe_ok\": %s, \"gptel_ok\": %s, \"chatpipe_gcs\": %d, \"gptel_gcs\": %d, \
\"chatpipe_conses\": %.1f, \"gptel_conses\": %.1f}"
                            n
                            (mapconcat (lambda (ms) (format "%.2f" ms))
                                       (reverse (alist-get 'chatpipe runs)) ", ")
                            (mapconcat (lambda (ms) (format "%.2f" ms))
                                       (reverse (alist-get 'gptel runs)) ", ")
                            (if (alist-get 'chatpipe oks) "true" "false")
                            (if (alist-get 'gptel oks) "true" "false")
                            (car (alist-get 'chatpipe last))
                            (car (alist-get 'gptel last))
                            (cadr (alist-get 'chatpipe last))
                            (cadr (alist-get 'gptel last)))
                    results)))
          (princ (format "CHATPIPE-COMPARE {\"gptel\": %S, \"mode\": %S, \"sizes\": [%s]}\n"
                         gptel-version (symbol-name mode)
                         (string-join (nreverse results) ", "))))
      (chatpipe-serve-stop)
      (delete-directory tmp t)
      (delete-directory chatpipe-bench--compiled t)
      (delete-directory chatpipe-compare--gptel-compiled t))))

(provide 'emacs-compare)
;;; emacs-compare.el ends here
