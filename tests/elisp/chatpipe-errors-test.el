;;; chatpipe-errors-test.el --- ERT tests: abort, errors, dead backends -*- lexical-binding: t; -*-

;;; Commentary:

;; Aborting answers, killing chat buffers, HTTP errors, missing,
;; crashing and killed backends.

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)

(defun chatpipe-test--abort (mode)
  "Abort an answer with `chatpipe-backend-mode' MODE; check it stops.
The partial answer stays, marked; the stream's backend stops: the
shared serve process gets a cancel and answers it, and stays, a
send process ends.  The next answer in the buffer works."
  (let* ((hold (chatpipe-test--hold-offset "openai-chat/text-with-usage.sse" 5))
         (template (chatpipe-test--template
                    (format "/replay/openai-chat/text-with-usage.sse?hold=%d"
                            hold)))
         (next (chatpipe-test--template
                "/replay/openai-chat/text-with-usage.sse"))
         (chatpipe-backend-mode mode))
    (chatpipe-test--with-chat (buffer template)
      (let* ((job (chatpipe-test--ask chatpipe-test--question))
             (stream (chatpipe--job-stream job))
             (proc (chatpipe-stream-process stream))
             (partial "I'm unable to provide"))
        (unwind-protect
            (progn
              (should (chatpipe-test--wait
                       (lambda () (string-search partial (buffer-string)))))
              (should (chatpipe-test--wait
                       (lambda () (equal chatpipe--status
                                         "streaming... 21 chars"))
                       1))
              (let ((start (float-time)))
                (should (chatpipe-abort))
                ;; At once: the text is final and the buffer is idle.
                (should (chatpipe-test--idle-p buffer))
                (should-not (chatpipe-busy-p))
                (should (equal (buffer-string)
                               (chatpipe-test--chat-text
                                (cons 'user chatpipe-test--question)
                                (cons 'assistant (concat partial
                                                         "\n\n[aborted]")))))
                (should (equal chatpipe--status "aborted after 21 chars"))
                (if (eq mode 'serve)
                    (let ((streams (process-get proc 'chatpipe-streams)))
                      ;; The cancel reached the backend: its last event
                      ;; for the stream came back (and was dropped).
                      (while (and (> (hash-table-count streams) 0)
                                  (< (- (float-time) start) 5))
                        (accept-process-output proc 0.01))
                      (should (= 0 (hash-table-count streams)))
                      (message "The cancel came back after %.1f ms"
                               (* 1000 (- (float-time) start)))
                      (should (< (- (float-time) start) 0.25))
                      (should (process-live-p proc)))
                  (should (chatpipe-test--wait
                           (lambda () (not (process-live-p proc))) 5))
                  (should (= 143 (process-exit-status proc))))))
          (chatpipe-test--http "POST" "/release"))
        ;; Nothing more arrives, and the aborted note is not sent back.
        (accept-process-output nil 0.2)
        (should (string-suffix-p "[aborted]\n\n### User\n\n" (buffer-string)))
        (should (equal (chatpipe-messages)
                       `(("user" . ,chatpipe-test--question)
                         ("assistant" . ,partial))))
        ;; The next answer in this buffer works, through the same process.
        (chatpipe-select-template next)
        (let ((stream (chatpipe--job-stream (chatpipe-test--ask "Again?"))))
          (when (eq mode 'serve)
            (should (eq (chatpipe-stream-process stream) proc))))
        (chatpipe-test--wait-idle buffer)
        (should (string-suffix-p (concat "### User\n\nAgain?\n\n### Assistant\n\n"
                                         (chatpipe-test--expected
                                          "openai-chat/text-with-usage.sse")
                                         "\n\n### User\n\n")
                                 (buffer-string)))
        (should (string-prefix-p "done: " chatpipe--status))))))

(ert-deftest chatpipe-test-abort ()
  "Abort sends a cancel to the serve process, which goes on."
  (chatpipe-test--abort 'serve))

(ert-deftest chatpipe-test-abort-send ()
  "Abort stops the send process."
  (chatpipe-test--abort 'send))

(ert-deftest chatpipe-test-kill-buffer-cancels ()
  "Killing a chat buffer cancels its answer; other answers go on."
  (let* ((held (chatpipe-test--template
                "/replay/openai-chat/text-with-usage.sse?hold=600"))
         (slow (chatpipe-test--template
                "/replay/openai-chat/text-with-usage.sse?split=1000&delay=0.1"))
         (buffer (chatpipe held))
         stream proc)
    (unwind-protect
        (chatpipe-test--with-chat (other slow)
          (with-current-buffer buffer
            (setq stream (chatpipe--job-stream (chatpipe-test--ask "Hi")))
            (setq proc (chatpipe-stream-process stream))
            (should (chatpipe-test--wait
                     (lambda () (string-search "I'm" (buffer-string)))))
            (set-buffer-modified-p nil))
          (chatpipe-test--ask "And you?")
          (let ((start (float-time)))
            (kill-buffer buffer)
            (should (< (- (float-time) start) 0.5)))
          (should (chatpipe-stream-finished stream))
          ;; The cancel reached the backend: its last event for the
          ;; stream came back.
          (should (chatpipe-test--wait
                   (lambda () (not (gethash (chatpipe-stream-id stream)
                                            (process-get proc
                                                         'chatpipe-streams))))
                   5))
          (should (process-live-p proc))
          ;; The other answer, on the same process, completes.
          (should (eq proc (chatpipe-stream-process
                            (chatpipe--job-stream chatpipe--job))))
          (chatpipe-test--wait-idle other)
          (should (string-suffix-p "weather app.\n\n### User\n\n"
                                   (buffer-string))))
      (chatpipe-test--http "POST" "/release"))))

(ert-deftest chatpipe-test-kill-buffer-ends-process ()
  "Killing a chat buffer ends its send process without waiting for it."
  (let* ((template (chatpipe-test--template
                    "/replay/openai-chat/text-with-usage.sse?hold=600"))
         (chatpipe-backend-mode 'send)
         (buffer (chatpipe template))
         proc)
    (unwind-protect
        (progn
          (with-current-buffer buffer
            (setq proc (chatpipe-stream-process
                        (chatpipe--job-stream (chatpipe-test--ask "Hi"))))
            (should (chatpipe-test--wait
                     (lambda () (string-search "I'm" (buffer-string)))))
            (set-buffer-modified-p nil))
          (let ((start (float-time)))
            (kill-buffer buffer)
            (should (< (- (float-time) start) 0.5)))
          (should (chatpipe-test--wait (lambda () (not (process-live-p proc)))
                                       5)))
      (chatpipe-test--http "POST" "/release"))))

(defun chatpipe-test--http-error (mode)
  "Check an HTTP error with `chatpipe-backend-mode' MODE.
It is shown in the buffer, the header and the echo area."
  (let ((template (chatpipe-test--template "/error/429"))
        (message "HTTP 429: Rate limit reached for gpt-4o in organization \
org-x on tokens per min.")
        (chatpipe-backend-mode mode))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--ask "Hi")
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text
                      '(user . "Hi")
                      (cons 'assistant (format "[error: %s]" message)))))
      (should (equal chatpipe--status (concat "error: " message)))
      (should (string-search (concat "chatpipe: " message)
                             (with-current-buffer "*Messages*"
                               (buffer-string))))
      ;; The error is not sent back as an answer.
      (should (equal (chatpipe-messages) '(("user" . "Hi")))))))

(ert-deftest chatpipe-test-http-error ()
  "An HTTP error through the serve process is shown."
  (chatpipe-test--http-error 'serve))

(ert-deftest chatpipe-test-http-error-send ()
  "An HTTP error through a send process is shown."
  (chatpipe-test--http-error 'send))

(ert-deftest chatpipe-test-missing-backend ()
  "A missing backend is reported and the buffer is left as it was."
  (let ((chatpipe-command "/nonexistent/bin/chatpipe"))
    (chatpipe-test--with-chat (buffer "local")
      (insert "Hi")
      (let ((err (should-error (chatpipe-send)
                               :type 'chatpipe-backend-missing)))
        (should (string-search "/nonexistent/bin/chatpipe" (cadr err))))
      (should (equal (buffer-string) "### User\n\nHi"))
      (should (string-match-p "\\`error: .*not found" chatpipe--status))
      (should (chatpipe-test--idle-p buffer)))))

(ert-deftest chatpipe-test-backend-crash ()
  "A crash of a send process is shown with its stderr; stray output is logged."
  (let ((chatpipe-backend-mode 'send)
        (chatpipe-command
         (chatpipe-test--write-script
          "crash"
          "#!/bin/sh
cat >/dev/null
echo 'not json at all'
echo '{\"type\":\"start\",\"protocol\":2}'
echo '{\"type\":\"delta\",\"content\":\"Half an ans\"}'
echo 'Traceback (most recent call last):' >&2
echo 'RuntimeError: boom' >&2
exit 3
")))
    (chatpipe-test--with-chat (buffer "crash")
      (chatpipe-test--ask "Hi")
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text
                      '(user . "Hi")
                      '(assistant . "Half an ans\n\n[error: the chatpipe \
backend died: exit status 3: RuntimeError: boom]"))))
      (should (string-search "not json at all"
                             (with-current-buffer chatpipe-log-buffer-name
                               (buffer-string))))
      (should (string-search "Traceback"
                             (with-current-buffer
                                 (format " *chatpipe %s stderr*" (buffer-name))
                               (buffer-string)))))))

(ert-deftest chatpipe-test-serve-killed ()
  "The serve process killed mid-stream: the answer says so; the next works."
  (let* ((held (chatpipe-test--template
                "/replay/openai-chat/text-with-usage.sse?hold=600"))
         (next (chatpipe-test--template
                "/replay/openai-chat/text-with-usage.sse")))
    (chatpipe-test--with-chat (buffer held)
      (unwind-protect
          (let ((proc (chatpipe-stream-process
                       (chatpipe--job-stream (chatpipe-test--ask "Hi")))))
            (should (chatpipe-test--wait
                     (lambda () (string-search "I'm" (buffer-string)))))
            (signal-process proc 'SIGKILL)
            (chatpipe-test--wait-idle buffer 5)
            (should (equal (buffer-string)
                           (chatpipe-test--chat-text
                            '(user . "Hi")
                            '(assistant . "I'm\n\n[error: the chatpipe backend \
died: killed by signal 9]"))))
            (should (equal chatpipe--status "error: the chatpipe backend died: \
killed by signal 9"))
            (should-not (process-live-p proc))
            ;; The next answer starts a new serve process.
            (chatpipe-select-template next)
            (let ((new (chatpipe-stream-process
                        (chatpipe--job-stream (chatpipe-test--ask "Again?")))))
              (should-not (eq new proc))
              (should (process-live-p new))
              (should (equal (process-command new)
                             (chatpipe-test--serve-command))))
            (chatpipe-test--wait-idle buffer)
            (should (string-suffix-p
                     (concat "Again?\n\n### Assistant\n\n"
                             (chatpipe-test--expected
                              "openai-chat/text-with-usage.sse")
                             "\n\n### User\n\n")
                     (buffer-string))))
        (chatpipe-test--http "POST" "/release")))))

(ert-deftest chatpipe-test-serve-crash ()
  "A serve process that crashes: every pending answer shows its stderr."
  (let ((chatpipe-command
         (chatpipe-test--write-script
          "crash-serve"
          (concat "#!" chatpipe-test-python "
# Answer two requests with some text each, then crash.
import json, sys, time
ids = [json.loads(sys.stdin.readline())['id'] for _ in range(2)]
for i in ids:
    print(json.dumps({'id': i, 'type': 'delta', 'content': 'Half'}), flush=True)
time.sleep(0.3)
sys.stderr.write('Traceback (most recent call last):\\nRuntimeError: boom\\n')
sys.exit(3)
"))))
    (chatpipe-test--with-chat (b1 "crash-one")
      (chatpipe-test--with-chat (b2 "crash-two")
        (with-current-buffer b1 (chatpipe-test--ask "One?"))
        (chatpipe-test--ask "Two?")
        (should (eq (chatpipe-stream-process
                     (chatpipe--job-stream (buffer-local-value 'chatpipe--job
                                                               b1)))
                    (chatpipe-stream-process
                     (chatpipe--job-stream chatpipe--job))))
        (chatpipe-test--wait-idle b1)
        (chatpipe-test--wait-idle b2)
        (dolist (case `((,b1 . "One?") (,b2 . "Two?")))
          (should (equal (with-current-buffer (car case) (buffer-string))
                         (chatpipe-test--chat-text
                          (cons 'user (cdr case))
                          '(assistant . "Half\n\n[error: the chatpipe backend \
died: exit status 3: RuntimeError: boom]")))))
        (should (string-search "Traceback"
                               (with-current-buffer " *chatpipe serve stderr*"
                                 (buffer-string))))))))

(ert-deftest chatpipe-test-unknown-template ()
  "A template the backend cannot find is reported in the buffer."
  (chatpipe-test--with-chat (buffer "no-such-template")
    (chatpipe-test--ask "Hi")
    (chatpipe-test--wait-idle buffer)
    (should (string-match-p
             "\\`### User\n\nHi\n\n### Assistant\n\n\\[error: no template \
named 'no-such-template' in .*\\]\n\n### User\n\n\\'"
             (buffer-string)))))

(ert-deftest chatpipe-test-nothing-to-send ()
  "Sending an empty user turn is refused and changes nothing."
  (chatpipe-test--with-chat (buffer "local")
    (should-error (chatpipe-send) :type 'user-error)
    (should (equal (buffer-string) "### User\n\n"))
    (should (chatpipe-test--idle-p buffer))))

(provide 'chatpipe-errors-test)
;;; chatpipe-errors-test.el ends here
