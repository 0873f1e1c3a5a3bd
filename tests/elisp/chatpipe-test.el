;;; chatpipe-test.el --- ERT tests for chatpipe -*- lexical-binding: t; -*-

;;; Commentary:

;; Run by tests/run-emacs-tests.  The tests drive the real `chatpipe'
;; backend (env CHATPIPE_COMMAND) against a real local HTTP server,
;; tests/replay_server.py (run with env CHATPIPE_PYTHON), that replays
;; the recordings in tests/streams/, and check the chat buffer's text
;; exactly.  The backend's user template folder is a temporary
;; XDG_CONFIG_HOME.  Answers go through the shared `chatpipe serve'
;; process (the default `chatpipe-backend-mode'), which is stopped after
;; each test; the tests named -send, and those with fake backends, use
;; `chatpipe send' processes.  `chatpipe-test-local-llama' streams from the real
;; llama.cpp server of scripts/local-server; it is skipped only when
;; CHATPIPE_SKIP_LLAMA=1.

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'json)
(require 'chatpipe)

;; From checkdoc and package-lint, loaded by the tests that use them.
(defvar checkdoc-create-error-function)
(defvar checkdoc-autofix-flag)
(defvar package-lint-main-file)
(declare-function checkdoc-current-buffer "checkdoc")
(declare-function package-lint-buffer "package-lint")

;;;; Setup

(defconst chatpipe-test-root
  (expand-file-name "../.." (file-name-directory
                             (or load-file-name buffer-file-name)))
  "The top of the repository.")

(defconst chatpipe-test-command
  (or (getenv "CHATPIPE_COMMAND")
      (expand-file-name ".venv/bin/chatpipe" chatpipe-test-root))
  "The backend under test.")

(defconst chatpipe-test-python
  (or (getenv "CHATPIPE_PYTHON")
      (expand-file-name ".venv/bin/python" chatpipe-test-root))
  "The Python that runs the replay server.")

(defconst chatpipe-test-tmp (make-temp-file "chatpipe-test" t)
  "Temporary folder of this run; its config/ is XDG_CONFIG_HOME.")

(defconst chatpipe-test-template-dir
  (expand-file-name "config/chatpipe/templates" chatpipe-test-tmp)
  "The backend's user template folder during the tests.")

(setenv "XDG_CONFIG_HOME" (expand-file-name "config" chatpipe-test-tmp))
(setenv "CHATPIPE_TEST_KEY")
(make-directory chatpipe-test-template-dir t)
(setq chatpipe-command chatpipe-test-command)
(setq auth-sources nil)

(defvar chatpipe-test--server nil "The replay server process.")
(defvar chatpipe-test--url nil "The replay server's base URL.")
(defvar chatpipe-test--counter 0 "Counter for unique template names.")

(defun chatpipe-test--cleanup ()
  "Stop the servers and delete the temporary folder."
  (chatpipe-serve-stop)
  (when (process-live-p chatpipe-test--server)
    (delete-process chatpipe-test--server))
  (delete-directory chatpipe-test-tmp t))
(add-hook 'kill-emacs-hook #'chatpipe-test--cleanup)

(defun chatpipe-test--fixture (run-test &rest args)
  "Call RUN-TEST with ARGS (one ERT test), then stop the backend.
The shared `chatpipe serve' process keeps the environment it was
started with, so that each test starts its own."
  (unwind-protect (apply run-test args)
    (chatpipe-serve-stop)))
(advice-add 'ert-run-test :around #'chatpipe-test--fixture)

(defun chatpipe-test--serve-command ()
  "Return the command of the shared `chatpipe serve' process."
  (list chatpipe-test-command "serve"))

(defun chatpipe-test--wait (predicate &optional timeout)
  "Accept process output until PREDICATE is true or TIMEOUT seconds pass.
Return the value of PREDICATE."
  (let ((deadline (+ (float-time) (or timeout 20)))
        value)
    (while (and (not (setq value (funcall predicate)))
                (< (float-time) deadline))
      (accept-process-output nil 0.02))
    value))

(defun chatpipe-test--server-url ()
  "Return the URL of the replay server, starting it if needed."
  (unless (process-live-p chatpipe-test--server)
    (let ((buffer (generate-new-buffer " *replay-server*")))
      (setq chatpipe-test--server
            (make-process :name "replay-server" :buffer buffer
                          :command (list chatpipe-test-python
                                         (expand-file-name
                                          "tests/replay_server.py"
                                          chatpipe-test-root))
                          :connection-type 'pipe :noquery t
                          :stderr (get-buffer-create " *replay-stderr*")))
      (should (chatpipe-test--wait
               (lambda () (with-current-buffer buffer
                            (string-search "\n" (buffer-string))))
               15))
      (setq chatpipe-test--url
            (string-trim (with-current-buffer buffer (buffer-string))))))
  chatpipe-test--url)

(defun chatpipe-test--http (method path)
  "Send an HTTP METHOD request for PATH to the replay server.
Return the response body parsed as JSON, or nil if it is empty."
  (with-temp-buffer
    (let ((coding-system-for-read 'utf-8))
      (should (eq 0 (call-process
                     chatpipe-test-python nil t nil "-c"
                     "import sys, urllib.request as u
r = u.urlopen(u.Request(sys.argv[1], method=sys.argv[2]), timeout=10)
sys.stdout.write(r.read().decode())"
                     (concat (chatpipe-test--server-url) path) method))))
    (unless (= (buffer-size) 0)
      (json-parse-string (buffer-string) :object-type 'alist
                         :array-type 'list :null-object nil
                         :false-object :false))))

(defun chatpipe-test--requests ()
  "Return the requests the replay server got, oldest first."
  (chatpipe-test--http "GET" "/requests"))

(defun chatpipe-test--request-messages (request)
  "Return the messages of REQUEST's body as (ROLE . CONTENT) pairs."
  (mapcar (lambda (m) (cons (alist-get 'role m) (alist-get 'content m)))
          (alist-get 'messages (alist-get 'body request))))

(defun chatpipe-test--template (path &optional headers url retries)
  "Write a test template for the replay server's PATH; return its name.
HEADERS is an alist of HTTP headers; URL replaces the server's URL.
RETRIES is the backend's `max_retries' (default 0: fail at once)."
  (let ((name (format "test%d" (cl-incf chatpipe-test--counter))))
    (with-temp-file (expand-file-name (concat name ".json")
                                      chatpipe-test-template-dir)
      (insert (json-serialize
               `((chatpipe . ((api . "openai-chat")
                              (url . ,(or url (concat (chatpipe-test--server-url)
                                                      path)))
                              (max_retries . ,(or retries 0))
                              ,@(and headers `((headers . ,headers)))))
                 (model . "test-model")
                 (stream . t)
                 (stream_options . ((include_usage . t)))
                 (messages . [])))))
    name))

(defun chatpipe-test--expected (recording &optional key)
  "Return the expected answer text of RECORDING, from expected.json.
With KEY, return the value of KEY instead of \"text\", arrays as
lists and objects as alists."
  (let ((all (json-parse-string
              (with-temp-buffer
                (insert-file-contents (expand-file-name
                                       "tests/streams/expected.json"
                                       chatpipe-test-root))
                (buffer-string))
              :object-type 'hash-table :array-type 'list
              :null-object nil)))
    (let ((value (gethash (or key "text") (gethash recording all))))
      (if (hash-table-p value)
          (chatpipe-test--alist value)
        (if (and (consp value) (hash-table-p (car value)))
            (mapcar #'chatpipe-test--alist value)
          value)))))

(defun chatpipe-test--alist (table)
  "Return the hash TABLE as an alist with symbol keys, in its order."
  (let (alist)
    (maphash (lambda (k v) (push (cons (intern k) v) alist)) table)
    (nreverse alist)))

(defun chatpipe-test--recording-reasoning (recording)
  "Return the reasoning text of the OpenAI-compatible RECORDING.
It is the concatenated `reasoning_content' or `reasoning' fields of
the deltas of choice 0, read from the file."
  (with-temp-buffer
    (let ((coding-system-for-read 'utf-8)
          (parts nil))
      (insert-file-contents (expand-file-name (concat "tests/streams/"
                                                      recording)
                                              chatpipe-test-root))
      (goto-char (point-min))
      (while (re-search-forward "^data: ?\\(.*\\)$" nil t)
        (let ((data (match-string 1)))
          (unless (equal data "[DONE]")
            (dolist (choice (alist-get 'choices
                                       (json-parse-string
                                        data :object-type 'alist
                                        :array-type 'list :null-object nil
                                        :false-object nil)))
              (when (eql (alist-get 'index choice) 0)
                (let* ((delta (alist-get 'delta choice))
                       (text (or (alist-get 'reasoning_content delta)
                                 (alist-get 'reasoning delta))))
                  (when (stringp text) (push text parts))))))))
      (apply #'concat (nreverse parts)))))

(defun chatpipe-test--bundled-template (bundled path)
  "Write a copy of the BUNDLED template for the replay server's PATH.
The copy has no headers (the replay server needs no key) and no
retries.  Return its name."
  (let ((doc (json-parse-string
              (with-temp-buffer
                (insert-file-contents (expand-file-name
                                       (format "request-templates/%s.json"
                                               bundled)
                                       chatpipe-test-root))
                (buffer-string))))
        (name (format "test%d" (cl-incf chatpipe-test--counter))))
    (let ((block (gethash "chatpipe" doc)))
      (puthash "url" (concat (chatpipe-test--server-url) path) block)
      (puthash "max_retries" 0 block)
      (remhash "headers" block))
    (with-temp-file (expand-file-name (concat name ".json")
                                      chatpipe-test-template-dir)
      (insert (json-serialize doc)))
    name))

(defun chatpipe-test--reasoning-buffer (chat)
  "Return the reasoning buffer of the chat buffer CHAT, by its name."
  (get-buffer (format "*chatpipe-reasoning: %s*" (buffer-name chat))))

(defun chatpipe-test--idle-p (buffer)
  "Return non-nil if no answer is streaming into BUFFER."
  (null (buffer-local-value 'chatpipe--job buffer)))

(defun chatpipe-test--wait-idle (buffer &optional timeout)
  "Wait until the answer in BUFFER has ended; fail after TIMEOUT seconds."
  (should (chatpipe-test--wait (lambda () (chatpipe-test--idle-p buffer))
                               (or timeout 20))))

(defmacro chatpipe-test--with-chat (spec &rest body)
  "Run BODY with a new chat buffer; SPEC is (VAR TEMPLATE).
The buffer is killed afterwards."
  (declare (indent 1) (debug ((symbolp form) body)))
  `(let ((,(car spec) (chatpipe ,(cadr spec))))
     (unwind-protect
         (with-current-buffer ,(car spec) ,@body)
       (when (buffer-live-p ,(car spec))
         (with-current-buffer ,(car spec) (set-buffer-modified-p nil))
         (kill-buffer ,(car spec))))))

(defun chatpipe-test--ask (question)
  "Type QUESTION at the end of the current chat buffer and send it.
Return the job."
  (goto-char (point-max))
  (insert question)
  (undo-boundary)
  (chatpipe-send))

(defun chatpipe-test--chat-text (&rest turns)
  "Return the text of a chat with TURNS, (ROLE . TEXT) pairs.
A blank line follows each turn; an empty user turn ends it."
  (concat (mapconcat (lambda (turn)
                       (let ((text (cdr turn)))
                         (concat (alist-get (car turn) chatpipe-headings)
                                 "\n\n" text
                                 (cond ((string-suffix-p "\n\n" text) "")
                                       ((string-suffix-p "\n" text) "\n")
                                       (t "\n\n")))))
                     turns "")
          "### User\n\n"))

(defun chatpipe-test--write-script (name text)
  "Write TEXT to an executable script NAME in the temporary folder.
Return its file name."
  (let ((file (expand-file-name name chatpipe-test-tmp))
        (coding-system-for-write 'utf-8-unix))
    (with-temp-file file (insert text))
    (set-file-modes file #o755)
    file))

;;;; Streaming

(defconst chatpipe-test--question "What's the weather in San Francisco?")

(defun chatpipe-test--stream-answer (mode)
  "Stream an answer with `chatpipe-backend-mode' MODE and check it all.
Exact text, status, request, point, one-step undo, and the backend
process: the shared serve process stays, a send process exits 0."
  (chatpipe-test--http "DELETE" "/requests")
  (let ((template (chatpipe-test--template
                   "/replay/openai-chat/text-with-usage.sse?split=64"))
        (answer (chatpipe-test--expected "openai-chat/text-with-usage.sse"))
        (chatpipe-backend-mode mode))
    (chatpipe-test--with-chat (buffer template)
      (should chatpipe-mode)
      (should (equal (buffer-string) "### User\n\n"))
      (let* ((job (chatpipe-test--ask chatpipe-test--question))
             (stream (chatpipe--job-stream job))
             (proc (chatpipe-stream-process stream)))
        (should (equal chatpipe--status "waiting..."))
        (should (string-match-p "waiting" (chatpipe-header-line)))
        (should (chatpipe-busy-p))
        ;; The messages go to stdin, not the command line.
        (should-not (cl-some (lambda (arg) (string-search "weather" arg))
                             (process-command proc)))
        (if (eq mode 'serve)
            (progn (should (equal (process-command proc)
                                  (chatpipe-test--serve-command)))
                   (should (eq proc (chatpipe-serve-process)))
                   (should (stringp (chatpipe-stream-id stream))))
          (should (member "--messages" (process-command proc)))
          (should-not (chatpipe-stream-id stream)))
        (chatpipe-test--wait-idle buffer)
        (should-not (chatpipe-busy-p))
        (should (equal (buffer-string)
                       (chatpipe-test--chat-text
                        (cons 'user chatpipe-test--question)
                        (cons 'assistant answer))))
        ;; Point was at the end: it followed the answer.
        (should (= (point) (point-max)))
        (should (string-match-p "\\`done: 14 in, 30 out, [0-9.]+ s\\'"
                                chatpipe--status))
        (should (string-match-p (concat "\\`chatpipe " template
                                        " \\[test-model\\] | done")
                                (substring-no-properties
                                 (chatpipe-header-line))))
        (if (eq mode 'serve)
            (progn (accept-process-output nil 0.1)
                   (should (process-live-p proc))
                   (should (eq proc (chatpipe-serve-process)))
                   (should (= 0 (hash-table-count
                                 (process-get proc 'chatpipe-streams)))))
          (should (chatpipe-test--wait (lambda () (not (process-live-p proc)))))
          (should (= 0 (process-exit-status proc)))))
      (let ((requests (chatpipe-test--requests)))
        (should (= 1 (length requests)))
        (should (equal (chatpipe-test--request-messages (car requests))
                       `(("user" . ,chatpipe-test--question)))))
      ;; The whole answer undoes in one step.
      (undo-boundary)
      (let ((last-command nil)) (undo))
      (should (equal (buffer-string)
                     (concat "### User\n\n" chatpipe-test--question))))))

(ert-deftest chatpipe-test-stream-answer ()
  "A streamed answer through the shared serve process."
  (chatpipe-test--stream-answer 'serve))

(ert-deftest chatpipe-test-stream-answer-send ()
  "A streamed answer through a send process of its own."
  (chatpipe-test--stream-answer 'send))

(ert-deftest chatpipe-test-point-stays ()
  "Point and window away from the end do not move while streaming."
  (let ((template (chatpipe-test--template
                   "/replay/openai-chat/text-with-usage.sse?split=512")))
    (chatpipe-test--with-chat (buffer template)
      (insert "Hi")
      (set-window-buffer (selected-window) buffer)
      (goto-char (point-min))
      (set-window-start (selected-window) (point-min))
      (chatpipe-send)
      (chatpipe-test--wait-idle buffer)
      (should (= (point) (point-min)))
      (should (= (window-point (selected-window)) (point-min)))
      (should (string-suffix-p "weather app.\n\n### User\n\n" (buffer-string))))))

(ert-deftest chatpipe-test-multibyte-split ()
  "Multi-byte characters cut across reads arrive whole."
  (dolist (case '(("openai-chat/utf8-multiline-json.sse" . 1)
                  ("deepseek/reasoner-reasoning-content.sse" . 7)))
    (let ((template (chatpipe-test--template
                     (format "/replay/%s?split=%d" (car case) (cdr case))))
          (answer (chatpipe-test--expected (car case)))
          (chatpipe-reasoning-display 'buffer))
      (should (string-match-p "[°😊]" answer))
      (chatpipe-test--with-chat (buffer template)
        (chatpipe-test--ask "Wetter in °C? 😊")
        (chatpipe-test--wait-idle buffer 60)
        (should (equal (buffer-string)
                       (chatpipe-test--chat-text
                        '(user . "Wetter in °C? 😊")
                        (cons 'assistant answer))))
        (should (equal (with-current-buffer (chatpipe--reasoning-buffer-of
                                             buffer t)
                         (buffer-string))
                       (chatpipe-test--recording-reasoning (car case))))
        (should (equal (chatpipe-test--request-messages
                        (car (last (chatpipe-test--requests))))
                       '(("user" . "Wetter in °C? 😊"))))))))

(ert-deftest chatpipe-test-multibyte-split-in-pipe ()
  "Bytes of one character that reach Emacs in different reads decode whole."
  (let* ((lines (concat "{\"type\":\"start\",\"protocol\":1}\n"
                        "{\"type\":\"delta\",\"content\":\"18°C 😊 ü\"}\n"
                        "{\"type\":\"delta\",\"content\":\"\\n€\"}\n"
                        "{\"type\":\"done\",\"finish_reason\":null}\n"))
         (script (chatpipe-test--write-script
                  "bytewise"
                  (concat "#!" chatpipe-test-python "\n"
                          "import sys, time\n"
                          "sys.stdin.read()\n"
                          "data = " (json-encode-string lines) ".encode()\n"
                          "# Cut after the first byte of each multi-byte character.\n"
                          "cuts = [i + 1 for i, b in enumerate(data) if b >= 0xC0]\n"
                          "for a, b in zip([0] + cuts, cuts + [len(data)]):\n"
                          "    sys.stdout.buffer.write(data[a:b])\n"
                          "    sys.stdout.buffer.flush()\n"
                          "    time.sleep(0.1)\n")))
         (chatpipe-command script)
         (chatpipe-backend-mode 'send)
         (reads 0)
         (count (lambda (&rest _) (cl-incf reads))))
    (chatpipe-test--with-chat (buffer "bytewise")
      (advice-add 'chatpipe--filter :before count)
      (unwind-protect
          (progn (chatpipe-test--ask "Hi")
                 (chatpipe-test--wait-idle buffer))
        (advice-remove 'chatpipe--filter count))
      ;; The output came in at least 5 reads, each cut inside a character.
      (should (>= reads 5))
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text '(user . "Hi")
                                               '(assistant . "18°C 😊 ü\n€")))))))

(ert-deftest chatpipe-test-filter-partial-lines ()
  "The process filter joins partial lines and logs lines that are not JSON."
  (let* ((events nil)
         (proc (make-pipe-process :name "chatpipe-test-filter" :noquery t))
         (chatpipe-log-buffer-name " *chatpipe-test-log*"))
    (unwind-protect
        (progn
          (process-put proc 'chatpipe-stream
                       (chatpipe--stream-create
                        :process proc :handler (lambda (e) (push e events))))
          (dolist (piece '("{\"type\":\"del" "ta\",\"content\":\"a°\"}\n{\"ty"
                           "pe\":\"delta\",\"content\":\"b\"}\nnot json\n"
                           "{\"type\":\"future\",\"x\":1}\n{\"type\":\"done\""
                           "}" "\n{\"type\":\"delta\",\"content\":\"late\"}\n"))
            (chatpipe--filter proc piece))
          (should (equal (nreverse events)
                         '((:type "delta" :content "a°")
                           (:type "delta" :content "b")
                           (:type "future" :x 1)
                           (:type "done"))))
          (should (string-search "not a protocol event: not json"
                                 (with-current-buffer chatpipe-log-buffer-name
                                   (buffer-string)))))
      (kill-buffer (chatpipe--input-buffer proc))
      (delete-process proc)
      (when (get-buffer " *chatpipe-test-log*")
        (kill-buffer " *chatpipe-test-log*")))))

(ert-deftest chatpipe-test-filter-long-line ()
  "A 4 MB event in 4 KB reads is searched and copied once: linear time."
  (let* ((events nil)
         (proc (make-pipe-process :name "chatpipe-test-long" :noquery t))
         (content (make-string (* 4 1024 1024) ?x))
         (line (concat "{\"type\":\"delta\",\"content\":\"" content "\"}\n"
                       "{\"type\":\"done\"}\n"))
         (start (float-time)))
    (unwind-protect
        (progn
          (process-put proc 'chatpipe-stream
                       (chatpipe--stream-create
                        :process proc :handler (lambda (e) (push e events))))
          (let ((i 0))
            (while (< i (length line))
              (chatpipe--filter proc (substring line i (min (length line)
                                                            (+ i 4096))))
              (setq i (+ i 4096))))
          (message "A 4 MB line in 4 KB reads: %.0f ms"
                   (* 1000 (- (float-time) start)))
          (should (< (- (float-time) start) 3))
          (should (equal (nreverse events)
                         `((:type "delta" :content ,content) (:type "done"))))
          (should (= 0 (buffer-size (chatpipe--input-buffer proc)))))
      (kill-buffer (chatpipe--input-buffer proc))
      (delete-process proc))))

(ert-deftest chatpipe-test-serve-filter-routes-by-id ()
  "Serve lines go to the stream their id names, several in one read."
  (let* ((events nil)
         (proc (make-pipe-process :name "chatpipe-test-serve-filter" :noquery t))
         (streams (make-hash-table :test 'equal))
         (chatpipe-log-buffer-name " *chatpipe-test-log*")
         (stream (lambda (id)
                   (puthash id (chatpipe--stream-create
                                :id id :process proc
                                :handler (lambda (e)
                                           (push (cons id (plist-get e :content))
                                                 events)))
                            streams))))
    (unwind-protect
        (progn
          (process-put proc 'chatpipe-streams streams)
          (funcall stream "a")
          (funcall stream "b")
          (chatpipe--filter
           proc (concat "{\"id\":\"a\",\"type\":\"delta\",\"content\":\"1\"}\n"
                        "{\"id\":\"b\",\"type\":\"delta\",\"content\":\"2\"}\n"
                        "{\"id\":\"a\",\"type\":\"de"))
          (chatpipe--filter
           proc (concat "lta\",\"content\":\"3\"}\n"
                        ;; An id that is none of ours, with two streams:
                        ;; nobody's.
                        "{\"id\":\"call_1\",\"type\":\"delta\",\"content\":\"?\"}\n"
                        "{\"id\":\"a\",\"type\":\"done\"}\n"
                        ;; Without an id: nobody's.
                        "{\"type\":\"error\",\"message\":\"bad line\"}\n"))
          (should (equal (hash-table-keys streams) '("b")))
          ;; Even with one stream left, an id that is not ours is nobody's.
          (chatpipe--filter
           proc (concat "{\"id\":\"call_2\",\"type\":\"delta\",\"content\":\"4\"}\n"
                        "{\"id\":\"b\",\"type\":\"done\"}\n"))
          (should (equal (nreverse events)
                         '(("a" . "1") ("b" . "2") ("a" . "3") ("a") ("b"))))
          (should (= 0 (hash-table-count streams)))
          (let ((log (with-current-buffer chatpipe-log-buffer-name
                       (buffer-string))))
            (should (string-search "event for no stream: {\"id\":\"call_1\"" log))
            (should (string-search "event for no stream: {\"type\":\"error\"" log))))
      (kill-buffer (chatpipe--input-buffer proc))
      (delete-process proc)
      (when (get-buffer " *chatpipe-test-log*")
        (kill-buffer " *chatpipe-test-log*")))))

;;;; Abort, errors

(defun chatpipe-test--hold-offset (recording events)
  "Return the byte offset just after the first EVENTS events of RECORDING."
  (with-temp-buffer
    (set-buffer-multibyte nil)
    (insert-file-contents-literally
     (expand-file-name (concat "tests/streams/" recording) chatpipe-test-root))
    (goto-char (point-min))
    (dotimes (_ events) (search-forward "\n\n"))
    (1- (point))))

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
echo '{\"type\":\"start\",\"protocol\":1}'
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
                      '(assistant . "Half an ans\n\n[error: chatpipe exited \
with status 3: RuntimeError: boom]"))))
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

;;;; Several chats, saved chats

(ert-deftest chatpipe-test-two-buffers ()
  "Two chats stream at once, through one serve process."
  (let ((t1 (chatpipe-test--template
             "/replay/openai-chat/text-with-usage.sse?split=600&delay=0.1"))
        (t2 (chatpipe-test--template
             "/replay/openai-chat/utf8-multiline-json.sse?split=3000&delay=0.1")))
    (chatpipe-test--with-chat (b1 t1)
      (chatpipe-test--with-chat (b2 t2)
        (let ((s1 (with-current-buffer b1
                    (chatpipe--job-stream (chatpipe-test--ask "One?"))))
              (s2 (with-current-buffer b2
                    (chatpipe--job-stream (chatpipe-test--ask "Two?")))))
          ;; One process, two ids.
          (should (eq (chatpipe-stream-process s1) (chatpipe-stream-process s2)))
          (should-not (equal (chatpipe-stream-id s1) (chatpipe-stream-id s2)))
          (should (equal (mapcar #'process-command
                                 (cl-remove-if-not
                                  (lambda (p) (and (eq (process-type p) 'real)
                                                   (string-prefix-p
                                                    "chatpipe" (process-name p))))
                                  (process-list)))
                         (list (chatpipe-test--serve-command))))
          ;; Both have streamed some text while both are still going.
          (should (chatpipe-test--wait
                   (lambda ()
                     (and (> (length (with-current-buffer b1 (buffer-string)))
                             40)
                          (> (length (with-current-buffer b2 (buffer-string)))
                             40)))))
          (should-not (chatpipe-test--idle-p b1))
          (should-not (chatpipe-test--idle-p b2))
          (chatpipe-test--wait-idle b1)
          (chatpipe-test--wait-idle b2)
          (should (equal (with-current-buffer b1 (buffer-string))
                         (chatpipe-test--chat-text
                          '(user . "One?")
                          (cons 'assistant (chatpipe-test--expected
                                            "openai-chat/text-with-usage.sse")))))
          (should (equal (with-current-buffer b2 (buffer-string))
                         (chatpipe-test--chat-text
                          '(user . "Two?")
                          (cons 'assistant
                                (chatpipe-test--expected
                                 "openai-chat/utf8-multiline-json.sse"))))))))))

(ert-deftest chatpipe-test-saved-chat-continued ()
  "A chat saved to a file, reopened and continued sends the first turns."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((template (chatpipe-test--template
                    "/replay/openai-chat/text-with-usage.sse"))
         (answer (chatpipe-test--expected "openai-chat/text-with-usage.sse"))
         (file (expand-file-name "chat.md" chatpipe-test-tmp))
         (chatpipe-default-template template))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--ask chatpipe-test--question)
      (chatpipe-test--wait-idle buffer)
      (write-file file))
    (should-not (get-file-buffer file))
    (let ((buffer (find-file-noselect file)))
      (unwind-protect
          (with-current-buffer buffer
            (chatpipe-mode 1)
            (goto-char (point-max))
            (insert "And tomorrow?")
            (chatpipe-send)
            (chatpipe-test--wait-idle buffer)
            (should (equal (buffer-string)
                           (chatpipe-test--chat-text
                            (cons 'user chatpipe-test--question)
                            (cons 'assistant answer)
                            '(user . "And tomorrow?")
                            (cons 'assistant answer))))
            (save-buffer)
            (should (equal (with-temp-buffer
                             (insert-file-contents file)
                             (buffer-string))
                           (buffer-string))))
        (kill-buffer buffer)))
    (let ((requests (chatpipe-test--requests)))
      (should (= 2 (length requests)))
      (should (equal (chatpipe-test--request-messages (nth 1 requests))
                     `(("user" . ,chatpipe-test--question)
                       ("assistant" . ,answer)
                       ("user" . "And tomorrow?")))))))

(ert-deftest chatpipe-test-retry ()
  "Retry replaces the last answer and sends the chat without it."
  (chatpipe-test--http "DELETE" "/requests")
  (let ((failing (chatpipe-test--template "/error/500"))
        (working (chatpipe-test--template
                  "/replay/openai-chat/text-with-usage.sse?split=100"))
        (multiline (chatpipe-test--template
                    "/replay/openai-chat/utf8-multiline-json.sse"))
        (answer (chatpipe-test--expected "openai-chat/text-with-usage.sse")))
    (chatpipe-test--with-chat (buffer failing)
      (chatpipe-test--ask "Hi")
      (chatpipe-test--wait-idle buffer)
      (should (string-search "[error: HTTP 500: " (buffer-string)))
      (chatpipe-select-template working)
      (goto-char (point-min))
      (chatpipe-retry)
      (chatpipe-test--wait-idle buffer)
      (should (= (point) (point-min)))
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text
                      '(user . "Hi") (cons 'assistant answer))))
      ;; Again, with a question already typed in the next turn.
      (goto-char (point-max))
      (insert "Next question")
      (chatpipe-retry)
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (concat "### User\n\nHi\n\n### Assistant\n\n" answer
                             "\n\n### User\n\nNext question")))
      (should (= (point) (point-max)))
      ;; An answer that ends with a newline: still one blank line after it.
      (chatpipe-select-template multiline)
      (chatpipe-retry)
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (concat "### User\n\nHi\n\n### Assistant\n\n"
                             (chatpipe-test--expected
                              "openai-chat/utf8-multiline-json.sse")
                             "\n### User\n\nNext question"))))
    (let ((requests (chatpipe-test--requests)))
      (should (= 4 (length requests)))
      (dolist (request requests)
        (should (equal (chatpipe-test--request-messages request)
                       '(("user" . "Hi"))))))))

;;;; Reasoning, tool calls, refusals, retries, dialects

(defconst chatpipe-test--details-begin "<details><summary>Reasoning</summary>"
  "The first line of a reasoning block in text buffers.")

(ert-deftest chatpipe-test-reasoning-folded ()
  "Reasoning goes in a folded block before the answer and is not sent back."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((recording "deepseek/reasoner-reasoning-content.sse")
         (template (chatpipe-test--template (concat "/replay/" recording)))
         (next (chatpipe-test--template
                "/replay/openai-chat/text-with-usage.sse"))
         (reasoning (chatpipe-test--recording-reasoning recording))
         (answer (chatpipe-test--expected recording))
         (question "What is 4 * 8?")
         (chatpipe-reasoning-display 'fold))
    (should (= (length reasoning)
               (chatpipe-test--expected recording "reasoning_chars")))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--ask question)
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text
                      (cons 'user question)
                      (cons 'assistant
                            (concat chatpipe-test--details-begin "\n\n"
                                    reasoning "\n\n</details>\n\n" answer)))))
      (should (= (point) (point-max)))
      (should (string-match-p
               "\\`done: 19 in, 739 out (533 reasoning), [0-9.]+ s\\'"
               chatpipe--status))
      (should-not (chatpipe-test--reasoning-buffer buffer))
      ;; Folded: of the block only its first line shows.
      (goto-char (point-min))
      (search-forward chatpipe-test--details-begin)
      (let ((first-line (line-beginning-position))
            (inside (+ (point) 100))
            (last-line (save-excursion (search-forward "\n</details>")
                                       (1- (point))))
            (in-answer (- (point-max) 20)))
        (should (invisible-p (point)))
        (should (invisible-p inside))
        (should (invisible-p last-line))
        (should-not (invisible-p first-line))
        (should-not (invisible-p (- (point) 1)))
        (should-not (invisible-p in-answer))
        ;; TAB on its first line unfolds it.
        (should (eq (key-binding (kbd "TAB")) #'chatpipe-toggle-reasoning))
        (call-interactively (key-binding (kbd "TAB")))
        (should-not (invisible-p inside))
        (should-not (invisible-p last-line))
        ;; Anywhere in the block the command folds it again.
        (goto-char inside)
        (should (chatpipe-toggle-reasoning))
        (should (invisible-p inside))
        ;; Outside of blocks, TAB is not ours, and the command unfolds
        ;; all the blocks.
        (goto-char in-answer)
        (should-not (eq (key-binding (kbd "TAB")) #'chatpipe-toggle-reasoning))
        (should-not (chatpipe-toggle-reasoning))
        (should-not (invisible-p inside))
        ;; Turning the mode on (as in a chat reopened from a file) folds
        ;; the blocks.
        (chatpipe-mode -1)
        (chatpipe-mode 1)
        (should (invisible-p inside))
        (should-not (invisible-p first-line)))
      ;; The block is not part of the answer sent back.
      (should (equal (chatpipe-messages)
                     `(("user" . ,question) ("assistant" . ,answer))))
      (chatpipe-select-template next)
      (chatpipe-test--ask "And 5 * 8?")
      (chatpipe-test--wait-idle buffer)
      (should (string-suffix-p "weather app.\n\n### User\n\n" (buffer-string))))
    (let ((requests (chatpipe-test--requests)))
      (should (= 2 (length requests)))
      (should (equal (chatpipe-test--request-messages (nth 1 requests))
                     `(("user" . ,question) ("assistant" . ,answer)
                       ("user" . "And 5 * 8?")))))))

(defun chatpipe-test--reasoning-script ()
  "Write a fake backend that streams awkward reasoning, then \"Hi!\".
Return its file name.  The reasoning has lines that look like
headings and block lines, cut across events."
  (chatpipe-test--write-script
   "reasoning"
   (concat "#!/bin/sh\ncat >/dev/null\ncat <<'EOF'\n"
           (mapconcat
            (lambda (piece)
              (if (stringp piece)
                  (json-serialize `((type . "reasoning") (content . ,piece)))
                (json-serialize piece)))
            '("Plan:\n" "*" " User asks\n### User\n#" "+end_reasoning\n  #"
              "+x\n**bold** ok\n" ((type . "delta") (content . "Hi"))
              "</details>\n" "*" ((type . "delta") (content . "!"))
              ((type . "done") (finish_reason . "stop")))
            "\n")
           "\nEOF\n")))

(ert-deftest chatpipe-test-reasoning-block-org-and-text ()
  "Headings in reasoning start no turn; lines like block lines are escaped."
  (let ((chatpipe-command (chatpipe-test--reasoning-script))
        (chatpipe-backend-mode 'send)
        (chatpipe-reasoning-display 'fold))
    (with-temp-buffer
      (org-mode)
      (insert "* User\n\nHi\n")
      (setq chatpipe-template "reasoning")
      (chatpipe-send)
      (chatpipe-test--wait-idle (current-buffer))
      (should (equal (buffer-string)
                     "* User\n\nHi\n\n* Assistant\n\n#+begin_reasoning
Plan:
,* User asks
### User
,#+end_reasoning
,  #+x
**bold** ok
</details>
,*
#+end_reasoning\n\nHi!\n\n* User\n\n"))
      (should (equal (chatpipe-messages)
                     '(("user" . "Hi") ("assistant" . "Hi!"))))
      (goto-char (point-min))
      (search-forward "Plan:")
      (should (invisible-p (point)))
      (should (equal (length (chatpipe-reasoning-blocks)) 1)))
    (with-temp-buffer
      (text-mode)
      (insert "### User\n\nHi\n")
      (setq chatpipe-template "reasoning")
      (chatpipe-send)
      (chatpipe-test--wait-idle (current-buffer))
      ;; Only a line like the block's own last line is escaped, with a
      ;; backslash as in Markdown; the "### User" line starts no turn.
      (should (equal (buffer-string)
                     (concat "### User\n\nHi\n\n### Assistant\n\n"
                             chatpipe-test--details-begin "\n\nPlan:
* User asks
### User
#+end_reasoning
  #+x
**bold** ok
\\</details>
*\n\n</details>\n\nHi!\n\n### User\n\n")))
      (should (equal (mapcar #'car (chatpipe-turns)) '(user assistant user)))
      (should (equal (length (chatpipe-reasoning-blocks)) 1))
      (should (equal (chatpipe-messages)
                     '(("user" . "Hi") ("assistant" . "Hi!")))))))

(ert-deftest chatpipe-test-reasoning-buffer ()
  "Reasoning streams into a buffer of its own; the chat has the answer."
  (let* ((recording "vllm/glm45-air-reasoning-content.sse")
         (template (chatpipe-test--template
                    (concat "/replay/" recording "?split=200")))
         (next (chatpipe-test--template
                "/replay/openai-chat/text-with-usage.sse"))
         (reasoning (chatpipe-test--recording-reasoning recording))
         (answer (chatpipe-test--expected recording))
         (chatpipe-reasoning-display 'buffer)
         name)
    (should (= (length reasoning)
               (chatpipe-test--expected recording "reasoning_chars")))
    (chatpipe-test--with-chat (buffer template)
      (setq name (format "*chatpipe-reasoning: %s*" (buffer-name)))
      (chatpipe-test--ask "Hi!")
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text '(user . "Hi!")
                                               (cons 'assistant answer))))
      (let ((reasoning-buffer (get-buffer name)))
        (should reasoning-buffer)
        (should (equal (with-current-buffer reasoning-buffer (buffer-string))
                       reasoning))
        (should (eq (buffer-local-value 'major-mode reasoning-buffer)
                    'chatpipe-reasoning-mode))
        (should (eq (window-buffer (chatpipe-show-reasoning))
                    reasoning-buffer))
        ;; The next answer, without reasoning, starts it afresh.
        (chatpipe-select-template next)
        (chatpipe-test--ask "Weather?")
        (chatpipe-test--wait-idle buffer)
        (should (equal (with-current-buffer reasoning-buffer (buffer-string))
                       ""))))
    ;; Killing the chat kills its reasoning buffer.
    (should-not (get-buffer name))))

(ert-deftest chatpipe-test-reasoning-dropped ()
  "With `chatpipe-reasoning-display' nil, reasoning is not shown at all."
  (let* ((recording "openrouter/gpt-oss-20b-reasoning.sse")
         (template (chatpipe-test--template (concat "/replay/" recording)))
         (chatpipe-reasoning-display nil))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--ask "Etymology of apoplectic?")
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text
                      '(user . "Etymology of apoplectic?")
                      (cons 'assistant (chatpipe-test--expected recording)))))
      (should-not (chatpipe-test--reasoning-buffer buffer))
      (should-error (chatpipe-show-reasoning) :type 'user-error)
      (should (string-match-p "\\`done: 200 in, 250 out, [0-9.]+ s\\'"
                              chatpipe--status)))))

(defun chatpipe-test--tool-lines (recording)
  "Return the tool call lines expected for RECORDING, joined."
  (mapconcat (lambda (call)
               (format "[tool call: %s(%s)]" (alist-get 'name call)
                       (alist-get 'arguments call)))
             (chatpipe-test--expected recording "tool_calls")
             "\n"))

(ert-deftest chatpipe-test-tool-calls ()
  "Tool calls are shown after the answer and not sent back."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((parallel "openai-chat/tool-calls-parallel.sse")
         (anthropic "anthropic/tool-use.sse")
         (gemini "gemini/thinking-function-call-crlf.sse")
         (t1 (chatpipe-test--template (concat "/replay/" parallel)))
         (t2 (chatpipe-test--bundled-template "anthropic"
                                              (concat "/replay/" anthropic)))
         (t3 (chatpipe-test--bundled-template "gemini"
                                              (concat "/replay/" gemini)))
         (chatpipe-reasoning-display 'buffer))
    (chatpipe-test--with-chat (buffer t1)
      (chatpipe-test--ask "Weather in Edinburgh, and AAPL?")
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text
                      '(user . "Weather in Edinburgh, and AAPL?")
                      (cons 'assistant (chatpipe-test--tool-lines parallel)))))
      (should (equal (buffer-string)
                     "### User\n\nWeather in Edinburgh, and AAPL?\n\n\
### Assistant\n\n[tool call: GetWeatherArgs({\"city\": \"Edinburgh\", \
\"country\": \"GB\", \"units\": \"c\"})]\n[tool call: get_stock_price(\
{\"ticker\": \"AAPL\", \"exchange\": \"NASDAQ\"})]\n\n### User\n\n"))
      (should (string-match-p "\\`done (tool_calls): 149 in, 60 out, [0-9.]+ s\\'"
                              chatpipe--status))
      ;; Text, then a tool call (Anthropic): the call after the text.
      (chatpipe-select-template t2)
      (chatpipe-test--ask "Weather in Paris?")
      (chatpipe-test--wait-idle buffer)
      (should (string-suffix-p
               (concat "### User\n\nWeather in Paris?\n\n### Assistant\n\n"
                       (chatpipe-test--expected anthropic) "\n\n"
                       (chatpipe-test--tool-lines anthropic)
                       "\n\n### User\n\n")
               (buffer-string)))
      ;; The tool call lines are not sent back.
      (should (equal (chatpipe-messages)
                     `(("user" . "Weather in Edinburgh, and AAPL?")
                       ("user" . "Weather in Paris?")
                       ("assistant" . ,(chatpipe-test--expected anthropic)))))
      ;; Gemini: reasoning (to its buffer), then a call, no text.
      (chatpipe-select-template t3)
      (chatpipe-test--ask "Coat?")
      (chatpipe-test--wait-idle buffer)
      (should (string-suffix-p "### User\n\nCoat?\n\n### Assistant\n\n\
[tool call: weather({\"city\": \"San Francisco\"})]\n\n### User\n\n"
                               (buffer-string)))
      (should (= (length (with-current-buffer
                             (chatpipe-test--reasoning-buffer buffer)
                           (buffer-string)))
                 (chatpipe-test--expected gemini "reasoning_chars")))
      (should (equal (json-parse-string "{\"city\": \"San Francisco\"}"
                                        :object-type 'alist)
                     (json-parse-string (alist-get 'arguments
                                                   (car (chatpipe-test--expected
                                                         gemini "tool_calls")))
                                        :object-type 'alist))))
    (should (equal (chatpipe-test--request-messages
                    (nth 1 (chatpipe-test--requests)))
                   '(("user" . "Weather in Edinburgh, and AAPL?")
                     ("user" . "Weather in Paris?"))))))

(ert-deftest chatpipe-test-refusal ()
  "A refusal is shown as the answer."
  (let* ((recording "openai-chat/refusal.sse")
         (template (chatpipe-test--template (concat "/replay/" recording)))
         (refusal (chatpipe-test--expected recording "refusal")))
    (should (equal refusal "I'm sorry, I can't assist with that request."))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--ask "Something bad")
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text '(user . "Something bad")
                                               (cons 'assistant refusal))))
      (should (equal (chatpipe-messages)
                     `(("user" . "Something bad") ("assistant" . ,refusal)))))))

(ert-deftest chatpipe-test-retry-status ()
  "A retry is shown in the status and the echo area, then the error."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((template (chatpipe-test--template "/error/429?retry_after=1"
                                            nil nil 1))
         (twice (chatpipe-test--template "/error/429?retry_after=0"
                                         nil nil 2))
         (reason "Rate limit reached for gpt-4o in organization org-x on \
tokens per min.")
         (retrying (concat "retrying in 1.0 s (attempt 1): HTTP 429: " reason))
         (answer (format "[error: HTTP 429: %s]" reason)))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--ask "Hi")
      (should (chatpipe-test--wait
               (lambda () (string-search "retrying" (or chatpipe--status "")))
               10))
      (should (equal chatpipe--status retrying))
      (should (string-suffix-p (concat " | " retrying)
                               (substring-no-properties
                                (chatpipe-header-line))))
      (should (string-search (concat "chatpipe: " retrying)
                             (with-current-buffer "*Messages*"
                               (buffer-string))))
      (should-not (chatpipe-test--idle-p buffer))
      (should (equal (buffer-string) "### User\n\nHi\n\n### Assistant\n\n"))
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text '(user . "Hi")
                                               (cons 'assistant answer))))
      (should (equal chatpipe--status (concat "error: HTTP 429: " reason)))
      (should (= 2 (length (chatpipe-test--requests))))
      ;; Two retries at once, then the error.
      (chatpipe-select-template twice)
      (chatpipe-retry)
      (chatpipe-test--wait-idle buffer)
      (should (string-search (concat "chatpipe: retrying in 0.0 s (attempt 2): \
HTTP 429: " reason)
                             (with-current-buffer "*Messages*"
                               (buffer-string))))
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text '(user . "Hi")
                                               (cons 'assistant answer))))
      (should (= 5 (length (chatpipe-test--requests)))))))

(ert-deftest chatpipe-test-dialects ()
  "Anthropic, Ollama and OpenAI Responses streams, text and reasoning."
  (let ((chatpipe-reasoning-display 'buffer))
    (pcase-dolist (`(,bundled . ,recording)
                   '(("anthropic" . "anthropic/extended-thinking.sse")
                     ("ollama" . "ollama/thinking.ndjson")
                     ("openai-responses"
                      . "openai-responses/gpt52-reasoning-summary.sse")))
      (let ((template (chatpipe-test--bundled-template
                       bundled (format "/replay/%s?split=300" recording))))
        (chatpipe-test--with-chat (buffer template)
          (chatpipe-test--ask "Tell me")
          (chatpipe-test--wait-idle buffer)
          (should (equal (buffer-string)
                         (chatpipe-test--chat-text
                          '(user . "Tell me")
                          (cons 'assistant (chatpipe-test--expected recording)))))
          (should (= (length (with-current-buffer
                                 (chatpipe-test--reasoning-buffer buffer)
                               (buffer-string)))
                     (chatpipe-test--expected recording "reasoning_chars")))
          (should (string-prefix-p "done: " chatpipe--status)))))))

;;;; Buffers of other kinds

(ert-deftest chatpipe-test-org-buffer-with-system-prompt ()
  "An Org notes buffer: Org headings, a system turn, a preamble left out."
  (chatpipe-test--http "DELETE" "/requests")
  (let ((template (chatpipe-test--template
                   "/replay/openai-chat/text-with-usage.sse"))
        (answer (chatpipe-test--expected "openai-chat/text-with-usage.sse")))
    (with-temp-buffer
      (org-mode)
      (insert "#+title: Notes\n\nSome notes.\n\n* System\n\nBe brief.\n\n"
              "* User\n\nHi\n")
      (setq chatpipe-template template)
      (chatpipe-send)
      (chatpipe-test--wait-idle (current-buffer))
      (should (equal (buffer-string)
                     (concat "#+title: Notes\n\nSome notes.\n\n* System\n\n"
                             "Be brief.\n\n* User\n\nHi\n\n* Assistant\n\n"
                             answer "\n\n* User\n\n"))))
    (should (equal (chatpipe-test--request-messages
                    (car (last (chatpipe-test--requests))))
                   '(("system" . "Be brief.") ("user" . "Hi"))))))

(ert-deftest chatpipe-test-text-without-headings ()
  "Text without headings is the question; a user heading is added."
  (let ((template (chatpipe-test--template
                   "/replay/openai-chat/text-with-usage.sse"))
        (answer (chatpipe-test--expected "openai-chat/text-with-usage.sse")))
    (with-temp-buffer
      (text-mode)
      (insert "\nHow warm is it?\n\n")
      (setq chatpipe-template template)
      (chatpipe-send)
      (should chatpipe-mode)
      (chatpipe-test--wait-idle (current-buffer))
      (should (equal (buffer-string)
                     (concat "\n" (chatpipe-test--chat-text
                                   '(user . "How warm is it?")
                                   (cons 'assistant answer))))))))

(ert-deftest chatpipe-test-send-region ()
  "A region sent with an instruction from a code buffer."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((template (chatpipe-test--template
                    "/replay/openai-chat/text-with-usage.sse"))
         (answer (chatpipe-test--expected "openai-chat/text-with-usage.sse"))
         (question "Explain this.\n\n```emacs-lisp\n(+ 1 2)\n```")
         chat)
    (unwind-protect
        (with-temp-buffer
          (emacs-lisp-mode)
          (insert ";; code\n(+ 1 2)\n;; more\n")
          (setq chat (chatpipe-send-region 9 17 "Explain this." template))
          (chatpipe-test--wait-idle chat)
          (should (equal (with-current-buffer chat (buffer-string))
                         (chatpipe-test--chat-text
                          (cons 'user question) (cons 'assistant answer))))
          ;; A second region goes to the same chat, in a new turn.
          (should (eq chat (chatpipe-send-region 1 8 "" template)))
          (chatpipe-test--wait-idle chat)
          (should (equal (chatpipe-test--request-messages
                          (car (last (chatpipe-test--requests))))
                         `(("user" . ,question) ("assistant" . ,answer)
                           ("user" . "```emacs-lisp\n;; code\n```")))))
      (when (buffer-live-p chat) (kill-buffer chat)))))

;;;; Templates and keys

(ert-deftest chatpipe-test-templates ()
  "Templates are listed by the backend and selected per buffer."
  (let* ((template (chatpipe-test--template "/error/500"))
         (names (mapcar (lambda (e) (plist-get e :name)) (chatpipe-templates))))
    (should (member "local" names))
    (should (member "openai" names))
    (should (member template names))
    (chatpipe-test--with-chat (buffer "local")
      (should (equal (chatpipe-select-template template) template))
      (should (equal chatpipe-template template))
      (should (string-match-p (concat "\\`chatpipe " template)
                              (chatpipe-header-line)))
      (chatpipe-set-model "other-model")
      (should (string-search "[other-model]" (chatpipe-header-line)))
      (chatpipe-test--http "DELETE" "/requests")
      (chatpipe-test--ask "Hi")
      (chatpipe-test--wait-idle buffer)
      (should (equal (alist-get 'model (alist-get 'body
                                                  (car (chatpipe-test--requests))))
                     "other-model")))))

(ert-deftest chatpipe-test-edit-template-broken-json ()
  "Editing a bundled template copies it; broken JSON is shown at its line."
  (let* ((copy (expand-file-name "local.json" chatpipe-test-template-dir))
         (bundled (expand-file-name "request-templates/local.json"
                                    chatpipe-test-root))
         (buffer (chatpipe-edit-template "local")))
    (unwind-protect
        (with-current-buffer buffer
          (should (equal buffer-file-name copy))
          (should chatpipe-template-mode)
          (should (equal (buffer-string)
                         (with-temp-buffer (insert-file-contents bundled)
                                           (buffer-string))))
          (goto-char (point-min))
          (search-forward "\"stream\": true,")
          (let ((line (line-number-at-pos)))
            (insert ",")
            (save-buffer)
            (should (equal chatpipe-template-errors
                           `((,line 18 "invalid JSON: Expecting property name \
enclosed in double quotes"))))
            (let ((overlays (cl-remove-if-not
                             (lambda (ov) (overlay-get ov 'chatpipe-template-error))
                             (overlays-in (point-min) (point-max)))))
              (should (= 1 (length overlays)))
              (should (= line (line-number-at-pos
                               (overlay-start (car overlays))))))
            (should (string-search (format "local.json:%d:18: invalid JSON" line)
                                   (with-current-buffer "*Messages*"
                                     (buffer-string)))))
          (delete-char -1)
          (save-buffer)
          (should (null chatpipe-template-errors))
          (should-not (cl-some (lambda (ov) (overlay-get ov 'chatpipe-template-error))
                               (overlays-in (point-min) (point-max)))))
      (kill-buffer buffer)
      (delete-file copy))))

(defun chatpipe-test--authorization ()
  "Return the Authorization header of the last request of the replay server."
  (alist-get 'Authorization
             (alist-get 'headers (car (last (chatpipe-test--requests))))))

(defun chatpipe-test--api-key (mode)
  "Check API keys with `chatpipe-backend-mode' MODE.
A key missing from the environment is read from auth-source; a key
set in `process-environment' after the backend started is used
too.  Neither is ever on a command line."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((secret "sk-test-0123456789secret")
         (authinfo (expand-file-name "authinfo" chatpipe-test-tmp))
         (template (chatpipe-test--template
                    "/replay/openai-chat/text-with-usage.sse"
                    '((Authorization . "Bearer ${env:CHATPIPE_TEST_KEY}"))))
         (auth-source-do-cache nil)
         (chatpipe-backend-mode mode))
    (should-not (getenv "CHATPIPE_TEST_KEY"))
    ;; Without a key anywhere: the backend's error, nothing lost.
    (let ((auth-sources nil))
      (chatpipe-test--with-chat (buffer template)
        (chatpipe-test--ask "Hi")
        (chatpipe-test--wait-idle buffer)
        (should (string-match-p "\\[error: .*environment variable \
CHATPIPE_TEST_KEY is not set" (buffer-string)))
        (should (string-prefix-p "### User\n\nHi\n\n" (buffer-string)))))
    (with-temp-file authinfo
      (insert "machine 127.0.0.1 login apikey password " secret "\n"))
    (let ((auth-sources (list authinfo)))
      (chatpipe-test--with-chat (buffer template)
        (let ((proc (chatpipe-stream-process
                     (chatpipe--job-stream (chatpipe-test--ask "Hi")))))
          (should-not (cl-some (lambda (arg) (string-search secret arg))
                               (process-command proc)))
          (when (eq mode 'serve)
            ;; The serve process got it in the request, not in its
            ;; environment or on its command line.
            (dolist (file '("environ" "cmdline"))
              (should-not (string-search
                           secret
                           (with-temp-buffer
                             (insert-file-contents-literally
                              (format "/proc/%d/%s" (process-id proc) file))
                             (buffer-string))))))
          (chatpipe-test--wait-idle buffer)
          (should (string-suffix-p "weather app.\n\n### User\n\n"
                                   (buffer-string)))
          (should-not (string-search secret (buffer-string))))))
    (should-not (getenv "CHATPIPE_TEST_KEY"))
    (should (equal (chatpipe-test--authorization) (concat "Bearer " secret)))
    ;; A key in `process-environment' wins over auth-source.
    (let ((auth-sources (list authinfo))
          (process-environment (cons "CHATPIPE_TEST_KEY=sk-from-env"
                                     process-environment)))
      (chatpipe-test--with-chat (buffer template)
        (chatpipe-test--ask "Hi")
        (chatpipe-test--wait-idle buffer)
        (should (string-suffix-p "weather app.\n\n### User\n\n"
                                 (buffer-string)))))
    (should (equal (chatpipe-test--authorization) "Bearer sk-from-env"))))

(ert-deftest chatpipe-test-api-key-from-auth-source ()
  "Keys go to the serve process in each request, never on a command line."
  (chatpipe-test--api-key 'serve))

(ert-deftest chatpipe-test-api-key-from-auth-source-send ()
  "Keys go to a send process in its environment, never on a command line."
  (chatpipe-test--api-key 'send))

;;;; Package checks

(defconst chatpipe-test-files '("chatpipe-process.el" "chatpipe-chat.el"
                                "chatpipe.el")
  "The package's files, in dependency order.")

(defun chatpipe-test--source (file)
  "Return the source file name of FILE in elisp/."
  (expand-file-name (concat "elisp/" file) chatpipe-test-root))

(ert-deftest chatpipe-test-byte-compile ()
  "Each file byte-compiles with no warnings."
  (let* ((dir (make-temp-file "chatpipe-compile" t))
         (load-path (cons dir load-path))
         (byte-compile-error-on-warn t))
    (unwind-protect
        (dolist (file chatpipe-test-files)
          (copy-file (chatpipe-test--source file) (expand-file-name file dir))
          (should (byte-compile-file (expand-file-name file dir))))
      (delete-directory dir t))))

(ert-deftest chatpipe-test-checkdoc ()
  "Each file is checkdoc clean."
  (require 'checkdoc)
  (dolist (file chatpipe-test-files)
    (let* ((problems nil)
           (checkdoc-create-error-function
            (lambda (text start _end &optional _unfixable)
              (push (format "%s:%d: %s" file
                            (if start (line-number-at-pos start) 0) text)
                    problems)
              nil))
           (checkdoc-autofix-flag 'never))
      (with-temp-buffer
        (insert-file-contents (chatpipe-test--source file) t)
        (emacs-lisp-mode)
        (checkdoc-current-buffer t))
      (should (equal (nreverse problems) nil)))))

(ert-deftest chatpipe-test-package-lint ()
  "The main file is package-lint clean."
  (let ((dir (or (getenv "PACKAGE_LINT_DIR")
                 (car (last (file-expand-wildcards
                             "/usr/share/emacs/site-lisp/elpa-src/package-lint-[0-9]*"))))))
    (should dir)
    (add-to-list 'load-path dir)
    (require 'package-lint)
    (with-temp-buffer
      (insert-file-contents (chatpipe-test--source "chatpipe.el") t)
      (emacs-lisp-mode)
      (let ((package-lint-main-file (chatpipe-test--source "chatpipe.el")))
        (should (equal (cl-remove-if
                        ;; package-lint 0.16 (Debian's) predates Emacs 28.1,
                        ;; which this package needs and which is released.
                        (lambda (problem)
                          (string-prefix-p "This makes the package \
uninstallable in all released Emacs versions" (nth 3 problem)))
                        (package-lint-buffer))
                       nil))))))

;;;; The real local model

(defun chatpipe-test--local-template (url)
  "Write a copy of the bundled `local' template for URL; return its name."
  (let ((doc (json-parse-string
              (with-temp-buffer
                (insert-file-contents (expand-file-name
                                       "request-templates/local.json"
                                       chatpipe-test-root))
                (buffer-string))))
        (name (format "local%d" (cl-incf chatpipe-test--counter))))
    (puthash "url" url (gethash "chatpipe" doc))
    (with-temp-file (expand-file-name (concat name ".json")
                                      chatpipe-test-template-dir)
      (insert (json-serialize doc)))
    name))

(ert-deftest chatpipe-test-local-llama ()
  "A streamed answer from the real local llama.cpp server."
  :tags '(:llama)
  (skip-unless (not (equal (getenv "CHATPIPE_SKIP_LLAMA") "1")))
  (let* ((script (expand-file-name "scripts/local-server" chatpipe-test-root))
         (output (generate-new-buffer " *local-server*"))
         (server (make-process :name "local-server" :buffer output
                               :command (list script "serve" "--port" "0")
                               :connection-type 'pipe :noquery t
                               :stderr (get-buffer-create
                                        " *local-server stderr*")))
         url)
    (unwind-protect
        (progn
          (should (chatpipe-test--wait
                   (lambda ()
                     (or (not (process-live-p server))
                         (with-current-buffer output
                           (string-match "^ready \\(http://[^\n]+\\)\n"
                                         (buffer-string)))))
                   300))
          (setq url (with-current-buffer output
                      (and (string-match "^ready \\(http://[^\n]+\\)\n"
                                         (buffer-string))
                           (match-string 1 (buffer-string)))))
          (unless url
            (ert-fail (list "local-server did not start"
                            (with-current-buffer " *local-server stderr*"
                              (buffer-string)))))
          (let ((template (chatpipe-test--local-template
                           (concat url "/v1/chat/completions"))))
            (chatpipe-test--with-chat (buffer template)
              (chatpipe-test--ask "Say hello in one short sentence.")
              (chatpipe-test--wait-idle buffer 300)
              (should (string-match
                       "\\`### User\n\nSay hello in one short sentence.\n\n\
### Assistant\n\n\\(\\(?:.\\|\n\\)+\\)\n\n### User\n\n\\'"
                       (buffer-string)))
              (let ((answer (match-string 1 (buffer-string))))
                (message "The local model answered: %S" answer)
                (should (string-match-p "[[:alpha:]]" answer)))
              ;; llama-cpp-python's server may not send usage; a long
              ;; answer may end at the template's max_tokens.
              (should (string-match-p
                       "\\`done\\(?: (length)\\)?: \\([1-9][0-9]* in\\(?: ([0-9]+ \
cached)\\)?, [1-9][0-9]* out, \\)?[0-9.]+ s\\'"
                       chatpipe--status)))))
      (when (process-live-p server)
        (signal-process server 'SIGTERM)
        (chatpipe-test--wait (lambda () (not (process-live-p server))) 20))
      (when (process-live-p server) (delete-process server)))))

(provide 'chatpipe-test)
;;; chatpipe-test.el ends here
