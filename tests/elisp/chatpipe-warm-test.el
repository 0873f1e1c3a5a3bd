;;; chatpipe-warm-test.el --- ERT tests: a warm first answer, text batching, protocol, cost -*- lexical-binding: t; -*-

;;; Commentary:

;; The backend made ready when a chat opens (the shared serve process
;; started, a connection to the endpoint opened before any request),
;; the text of fast answers handed on in few pieces, the check of the
;; backend's protocol version, what answers cost, and the backend
;; installed by `chatpipe-install-backend' found by default.

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)

;;;; Helpers

(defun chatpipe-test--prestart-timers (buffer)
  "Return the idle timers that will get the backend ready for BUFFER."
  (cl-remove-if-not (lambda (timer)
                      (and (eq (timer--function timer) #'chatpipe--prestart)
                           (eq (car (timer--args timer)) buffer)))
                    timer-idle-list))

(defun chatpipe-test--run-prestart-timers (buffer)
  "Run BUFFER's prestart idle timers now, as the command loop would.
Emacs in batch mode is never idle: its idle timers never run."
  (dolist (timer (chatpipe-test--prestart-timers buffer))
    (cancel-timer timer)
    (apply (timer--function timer) (timer--args timer))))

(defun chatpipe-test--server-port ()
  "Return the TCP port of the replay server."
  (let ((url (chatpipe-test--server-url)))
    (should (string-match ":\\([0-9]+\\)\\'" url))
    (string-to-number (match-string 1 url))))

(defun chatpipe-test--connections-to (port)
  "Return the local ports of the established TCP connections to PORT.
They are read from /proc/net/tcp (IPv4)."
  (with-temp-buffer
    (insert-file-contents "/proc/net/tcp")
    (let ((ports nil))
      (while (re-search-forward "^ *[0-9]+: [0-9A-F]+:\\([0-9A-F]+\\) \
[0-9A-F]+:\\([0-9A-F]+\\) 01 " nil t)
        (when (= port (string-to-number (match-string 2) 16))
          (push (string-to-number (match-string 1) 16) ports)))
      ports)))

(defun chatpipe-test--priced-template ()
  "Write a copy of the bundled `openai' template; return its name.
Its endpoint stays OpenAI's, which the backend prices by; chats send
it elsewhere with `chatpipe-url'.  It makes no retries."
  (let ((doc (json-parse-string
              (with-temp-buffer
                (insert-file-contents (expand-file-name
                                       "request-templates/openai.json"
                                       chatpipe-test-root))
                (buffer-string))))
        (name (format "test%d" (cl-incf chatpipe-test--counter))))
    (puthash "max_retries" 0 (gethash "chatpipe" doc))
    (with-temp-file (expand-file-name (concat name ".json")
                                      chatpipe-test-template-dir)
      (insert (json-serialize doc)))
    name))

(defun chatpipe-test--old-backend (name serve-text &optional send-text)
  "Write a backend script NAME that fakes `serve' and `send'; return it.
`chatpipe serve' prints SERVE-TEXT and reads its stdin to the end;
`chatpipe send' reads its stdin, then prints SEND-TEXT.  Other
commands are the real backend's."
  (chatpipe-test--write-script
   name
   (format "#!/bin/sh
case \"$1\" in
  serve) printf '%%s\\n' '%s'; exec cat >/dev/null;;
  send) cat >/dev/null; printf '%%s\\n' '%s'; exit 0;;
esac
exec '%s' \"$@\"
" serve-text (or send-text "") chatpipe-test-command)))

;;;; Getting the backend ready

(ert-deftest chatpipe-test-prestart ()
  "A new chat starts the serve process and connects to its endpoint.
Opening the buffer starts nothing; once Emacs is idle a moment, the
shared serve process starts, says its version, and opens a
connection to the template's endpoint before any request, which
the first request then uses."
  (unless (file-readable-p "/proc/net/tcp")
    (ert-skip "no /proc/net/tcp"))
  (let ((template (chatpipe-test--template
                   "/replay/openai-chat/text-with-usage.sse"))
        (port (chatpipe-test--server-port))
        (chatpipe-prestart t))
    (chatpipe-test--http "DELETE" "/requests")
    (chatpipe-serve-stop)
    (chatpipe-test--with-chat (buffer template)
      (should-not (chatpipe--backend-processes t))
      (let ((timers (chatpipe-test--prestart-timers buffer)))
        (should (= 1 (length timers)))
        (should (< (float-time (timer--time (car timers))) 1)))
      (chatpipe-test--run-prestart-timers buffer)
      (let ((proc chatpipe--serve-process))
        (should (process-live-p proc))
        (should (chatpipe-test--wait
                 (lambda () (process-get proc 'chatpipe-version)) 20))
        (should (equal (process-get proc 'chatpipe-protocol) 2))
        (let ((ports (chatpipe-test--wait
                      (lambda () (chatpipe-test--connections-to port)) 20)))
          (should ports)
          (should (null (chatpipe-test--requests)))
          (chatpipe-test--ask chatpipe-test--question)
          (chatpipe-test--wait-idle buffer)
          (should (equal (buffer-string)
                         (chatpipe-test--chat-text
                          (cons 'user chatpipe-test--question)
                          (cons 'assistant (chatpipe-test--expected
                                            "openai-chat/text-with-usage.sse")))))
          (should (eq proc (chatpipe-serve-process)))
          (let ((requests (chatpipe-test--requests)))
            (should (= 1 (length requests)))
            (should (memq (alist-get 'client_port (car requests)) ports))))))))

(ert-deftest chatpipe-test-prestart-off ()
  "No backend is started without `chatpipe-prestart', in send mode, or ever
visibly when it is missing."
  (let ((template (chatpipe-test--template
                   "/replay/openai-chat/text-with-usage.sse")))
    (chatpipe-serve-stop)
    (dolist (setting '((nil . serve) (t . send)))
      (let ((chatpipe-prestart (car setting))
            (chatpipe-backend-mode (cdr setting)))
        (chatpipe-test--with-chat (buffer template)
          (chatpipe-test--run-prestart-timers buffer)
          (should-not (chatpipe--backend-processes t)))))
    (let ((chatpipe-prestart t)
          (chatpipe-command (expand-file-name "no-such-chatpipe"
                                              chatpipe-test-tmp)))
      (chatpipe-test--with-chat (buffer template)
        (chatpipe-test--run-prestart-timers buffer)
        (should-not (chatpipe--backend-processes t))
        (should (string-search "cannot get the backend ready"
                               (with-current-buffer chatpipe-log-buffer-name
                                 (buffer-string))))))))

;;;; Text in few pieces

(ert-deftest chatpipe-test-insert-interval ()
  "Text is handed on at once, then at most every `chatpipe-insert-interval'.
The first text of each kind goes at once; text that follows within
the interval is held, and handed on joined by a timer, or before
any other event of its stream; an abort hands it on too."
  (let* ((events nil)
         (chatpipe-insert-interval 0.5)
         (proc (chatpipe-test--fake-process "chatpipe-test-interval" t))
         (line (lambda (type content)
                 (format "{\"id\":\"a\",\"type\":%S,\"content\":%S}\n"
                         type content))))
    (unwind-protect
        (progn
          (chatpipe-test--fake-stream proc "a" (lambda (e) (push e events)))
          (chatpipe--filter proc (funcall line "delta" "one"))
          (should (equal events '((:type "delta" :content "one"))))
          (chatpipe--filter proc (funcall line "delta" " two"))
          (chatpipe--filter proc (funcall line "delta" " three"))
          (should (= 1 (length events)))
          ;; Reasoning: the held answer text first, then the first
          ;; reasoning at once.
          (chatpipe--filter proc (funcall line "reasoning" "hmm"))
          (should (equal (cdr (reverse events))
                         '((:type "delta" :content " two three")
                           (:type "reasoning" :content "hmm"))))
          (chatpipe--filter proc (funcall line "reasoning" " so"))
          (should (= 3 (length events)))
          ;; The timer hands it on when the interval has passed.
          (should (chatpipe-test--wait (lambda () (= 4 (length events))) 5))
          (should (equal (car events) '(:type "reasoning" :content " so")))
          (chatpipe--filter proc (funcall line "delta" " four"))
          (chatpipe--filter proc "{\"id\":\"a\",\"type\":\"done\"}\n")
          (should (equal (cl-subseq events 0 2)
                         '((:id "a" :type "done")
                           (:type "delta" :content " four"))))
          ;; An abort hands on what is held.
          (setq events nil)
          (let ((stream (chatpipe-test--fake-stream
                         proc "a" (lambda (e) (push e events)))))
            (chatpipe--filter proc (funcall line "delta" "x"))
            (chatpipe--filter proc (funcall line "delta" "y"))
            (should (equal events '((:type "delta" :content "x"))))
            (chatpipe-process-abort stream)
            (should (equal events '((:type "delta" :content "y")
                                    (:type "delta" :content "x"))))
            (accept-process-output nil 0.6)
            (should (= 2 (length events)))))
      (chatpipe-test--delete-fake-process proc))))

(ert-deftest chatpipe-test-insert-interval-chat ()
  "A paced answer is inserted whole, in fewer pieces than it was read.
Nothing is logged: no line is rejected."
  (let* ((template (chatpipe-test--template
                    "/replay/openai-chat/text-with-usage.sse?split=16&delay=0.002"))
         (chatpipe-log-buffer-name " *chatpipe-test-interval-log*")
         (reads 0)
         (inserts 0)
         (count-read (lambda (&rest _) (cl-incf reads)))
         (count-insert (lambda (&rest _) (cl-incf inserts))))
    (chatpipe-test--with-chat (buffer template)
      (advice-add 'chatpipe--filter :before count-read)
      (advice-add 'chatpipe--insert-answer :before count-insert)
      (unwind-protect
          (progn (chatpipe-test--ask chatpipe-test--question)
                 (chatpipe-test--wait-idle buffer))
        (advice-remove 'chatpipe--filter count-read)
        (advice-remove 'chatpipe--insert-answer count-insert))
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text
                      (cons 'user chatpipe-test--question)
                      (cons 'assistant (chatpipe-test--expected
                                        "openai-chat/text-with-usage.sse")))))
      (should (< 0 inserts reads))
      (should-not (get-buffer chatpipe-log-buffer-name)))))

(ert-deftest chatpipe-test-text-not-held ()
  "The text read reaches the buffer while nothing more comes.
The server holds the answer after its first events (30 s, longer
than the wait here): their text is in the chat buffer all the same,
and the rest follows once it is let go.  Text the insertion interval
\(long here) held back is handed on by its timer, not by more output."
  (let* ((recording "openai-chat/text-with-usage.sse")
         (template (chatpipe-test--template
                    (format "/replay/%s?hold=%d" recording
                            (chatpipe-test--hold-offset recording 5))))
         (chatpipe-insert-interval 0.5))
    (chatpipe-test--with-chat (buffer template)
      (unwind-protect
          (progn
            (chatpipe-test--ask chatpipe-test--question)
            (should (chatpipe-test--wait
                     (lambda () (string-search "I'm unable to provide"
                                               (buffer-string)))
                     10))
            (should-not (chatpipe-test--idle-p buffer)))
        (chatpipe-test--http "POST" "/release"))
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text
                      (cons 'user chatpipe-test--question)
                      (cons 'assistant (chatpipe-test--expected recording))))))))

(ert-deftest chatpipe-test-text-lines ()
  "Lines of text are read exactly, on the short path or the general one.
Escapes and quotes in the content, a content string left open (not
read past its line), other keys (not text to join)."
  (let* ((events nil)
         (chatpipe-insert-interval 0)
         (chatpipe-log-buffer-name " *chatpipe-test-lines-log*")
         (serve (chatpipe-test--fake-process "chatpipe-test-lines" t))
         (send (chatpipe-test--fake-process "chatpipe-test-lines-send")))
    (unwind-protect
        (progn
          (chatpipe-test--fake-stream serve "a" (lambda (e) (push e events)))
          (chatpipe--filter
           serve (concat "{\"id\":\"a\",\"type\":\"delta\",\"content\":"
                         "\"x\\n\\u00e9\\\"}\\\\\"}\n"
                         "{\"id\":\"a\",\"type\":\"delta\",\"content\":\"open}\n"
                         "{\"id\":\"a\",\"type\":\"delta\",\"content\":\"y\","
                         "\"extra\":1}\n"
                         "{\"id\":\"a\",\"type\":\"delta\",\"content\":\"z\"} \n"))
          (should (equal (nreverse events)
                         '((:type "delta" :content "x\né\"}\\")
                           (:id "a" :type "delta" :content "y" :extra 1)
                           (:type "delta" :content "z"))))
          (should (string-search "not a protocol event: {\"id\":\"a\",\"type\":\
\"delta\",\"content\":\"open}"
                                 (with-current-buffer chatpipe-log-buffer-name
                                   (buffer-string))))
          (setq events nil)
          (chatpipe-test--fake-stream send nil (lambda (e) (push e events)))
          (chatpipe--filter send "{\"type\":\"reasoning\",\"content\":\"r\"}\n")
          (should (equal events '((:type "reasoning" :content "r")))))
      (chatpipe-test--delete-fake-process serve)
      (chatpipe-test--delete-fake-process send)
      (when (get-buffer chatpipe-log-buffer-name)
        (kill-buffer chatpipe-log-buffer-name)))))

;;;; The protocol version

(ert-deftest chatpipe-test-protocol-mismatch ()
  "A backend of another protocol ends each answer with an error saying so."
  (let* ((template (chatpipe-test--template
                    "/replay/openai-chat/text-with-usage.sse"))
         (text "the chatpipe backend speaks protocol %d, this package \
speaks 2: M-x chatpipe-install-backend updates it")
         (chatpipe-command
          (chatpipe-test--old-backend
           "old-chatpipe" "{\"type\":\"ready\",\"protocol\":1,\"version\":\"0.0.9\"}"
           (concat "{\"type\":\"start\",\"protocol\":3}\n"
                   "{\"type\":\"delta\",\"content\":\"never shown\"}\n"
                   "{\"type\":\"done\"}"))))
    (chatpipe-serve-stop)
    (chatpipe-test--with-chat (buffer template)
      (let ((first (chatpipe-stream-process
                    (chatpipe--job-stream (chatpipe-test--ask "One?")))))
        (chatpipe-test--wait-idle buffer)
        (should (equal (process-get first 'chatpipe-version) "0.0.9"))
        (should (equal chatpipe--status (concat "error: " (format text 1))))
        ;; The next answer too, from a new process.
        (should (chatpipe-test--wait (lambda () (not (process-live-p first)))))
        (chatpipe-test--ask "Two?")
        (chatpipe-test--wait-idle buffer)
        (should (equal chatpipe--status (concat "error: " (format text 1))))
        ;; `chatpipe send' says its protocol in `start'.
        (let ((chatpipe-backend-mode 'send))
          (chatpipe-test--ask "Three?")
          (chatpipe-test--wait-idle buffer))
        (should (equal chatpipe--status (concat "error: " (format text 3))))
        (should (equal (buffer-string)
                       (chatpipe-test--chat-text
                        '(user . "One?")
                        (cons 'assistant (format "[error: %s]" (format text 1)))
                        '(user . "Two?")
                        (cons 'assistant (format "[error: %s]" (format text 1)))
                        '(user . "Three?")
                        (cons 'assistant
                              (format "[error: %s]" (format text 3))))))))))

;;;; Cost

(ert-deftest chatpipe-test-cost ()
  "The header line shows what each answer cost, and the chat so far.
Through serve and send; a model whose price is unknown shows tokens
only, and the chat's total stays."
  (let ((template (chatpipe-test--priced-template))
        (process-environment (cons "OPENAI_API_KEY=sk-test"
                                   process-environment))
        (status "\\`done: 14 in, 30 out, \\$0\\.00002 (chat \\$%s), [0-9.]+ s\\'"))
    (chatpipe-test--with-chat (buffer template)
      (setq chatpipe-url (concat (chatpipe-test--server-url)
                                 "/replay/openai-chat/text-with-usage.sse"))
      (dolist (case '((serve . "0\\.00002") (serve . "0\\.00004")
                      (send . "0\\.00006")))
        (let ((chatpipe-backend-mode (car case)))
          (chatpipe-test--ask "Hi")
          (chatpipe-test--wait-idle buffer)
          (should (string-match-p (format status (cdr case)) chatpipe--status))))
      (should (string-search "| done: 14 in, 30 out, $0.00002 (chat $0.00006)"
                             (chatpipe-header-line)))
      (should (< (abs (- chatpipe--chat-cost (* 3 2.01e-5))) 1e-9))
      (setq chatpipe-model "no-such-model-anywhere")
      (chatpipe-test--ask "Hi")
      (chatpipe-test--wait-idle buffer)
      (should (string-match-p "\\`done: 14 in, 30 out, [0-9.]+ s\\'"
                              chatpipe--status))
      (should (< (abs (- chatpipe--chat-cost (* 3 2.01e-5))) 1e-9))
      (should (equal (mapcar (lambda (request)
                               (alist-get 'model (alist-get 'body request)))
                             (last (chatpipe-test--requests) 4))
                     '("gpt-4o-mini" "gpt-4o-mini" "gpt-4o-mini"
                       "no-such-model-anywhere"))))))

(ert-deftest chatpipe-test-dollars ()
  "Costs show two significant digits under a dollar, else cents."
  (should (equal (mapcar #'chatpipe--dollars '(2.01e-5 0.0013 0.00099999 0.5
                                                0.123 0 1 12.346))
                 '("$0.00002" "$0.0013" "$0.001" "$0.50" "$0.12" "$0.00"
                   "$1.00" "$12.35"))))

;;;; The installed backend

(ert-deftest chatpipe-test-default-venv ()
  "The venv `chatpipe-install-backend' makes is used when nothing is set."
  (let* ((user-emacs-directory (file-name-as-directory
                                (make-temp-file "chatpipe-emacs-d" t)))
         (program (expand-file-name "chatpipe/venv/bin/chatpipe"
                                    user-emacs-directory))
         (chatpipe-command nil)
         (chatpipe-python-venv nil)
         (exec-path nil))
    (unwind-protect
        (progn
          (should-error (chatpipe--command) :type 'chatpipe-backend-missing)
          (make-directory (file-name-directory program) t)
          (with-temp-file program (insert "#!/bin/sh\n"))
          (set-file-modes program #o755)
          (should (equal (chatpipe--command) (list program)))
          ;; A venv that is set wins.
          (let ((chatpipe-python-venv (expand-file-name "other"
                                                        user-emacs-directory)))
            (should-error (chatpipe--command)
                          :type 'chatpipe-backend-missing)))
      (delete-directory user-emacs-directory t)))
  (should (equal (plist-get (nth 2 (transient-get-suffix 'chatpipe-menu "I"))
                            :command)
                 'chatpipe-install-backend)))

(provide 'chatpipe-warm-test)
;;; chatpipe-warm-test.el ends here
