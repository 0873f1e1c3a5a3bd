;;; chatpipe-test-helpers.el --- Helpers of the chatpipe ERT tests -*- lexical-binding: t; -*-

;;; Commentary:

;; Loaded by the ERT suites tests/elisp/chatpipe-*-test.el, which
;; tests/run-emacs-tests runs.  The tests drive the real `chatpipe'
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
(require 'auth-source)
(require 'chatpipe)

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
;; New chats in text-mode, whether a test has loaded markdown-mode or not.
(setq chatpipe-major-mode #'text-mode)

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

(defun chatpipe-test--http (method path &optional base)
  "Send an HTTP METHOD request for PATH to the replay server.
BASE is the server's URL (default: the shared replay server's).
Return the response body parsed as JSON, or nil if it is empty."
  (with-temp-buffer
    (let ((coding-system-for-read 'utf-8))
      (should (eq 0 (call-process
                     chatpipe-test-python nil t nil "-c"
                     "import sys, urllib.request as u
r = u.urlopen(u.Request(sys.argv[1], method=sys.argv[2]), timeout=10)
sys.stdout.write(r.read().decode())"
                     (concat (or base (chatpipe-test--server-url)) path) method))))
    (unless (= (buffer-size) 0)
      (json-parse-string (buffer-string) :object-type 'alist
                         :array-type 'list :null-object nil
                         :false-object :false))))

(defun chatpipe-test--route-server (script)
  "Start a replay server of its own, whose routes SCRIPT registers.
SCRIPT is Python code run with `server', a ReplayServer of
tests/replay_server.py (with `Reply', `split_every' and
`error_reply'), and the tests folder on `sys.path', so that it may
import the pytest suite's helpers (such as test_tool_loop's
`tool_call_answer' and `text_answer').  Return a cons (PROCESS .
URL); `chatpipe-test--http' with URL as BASE reads its requests."
  (let* ((buffer (generate-new-buffer " *route-replay*"))
         (process
          (make-process
           :name "route-replay" :buffer buffer :connection-type 'pipe :noquery t
           :stderr (get-buffer-create " *route-replay stderr*")
           :command (list chatpipe-test-python "-c" "
import sys
sys.path.insert(0, sys.argv[1])
from replay_server import ReplayServer, Reply, split_every, error_reply
with ReplayServer() as server:
    exec(sys.argv[2])
    print(server.url, flush=True)
    sys.stdin.read()"
                          (expand-file-name "tests" chatpipe-test-root)
                          script))))
    (should (chatpipe-test--wait
             (lambda () (with-current-buffer buffer
                          (string-search "\n" (buffer-string))))
             30))
    (cons process (string-trim (with-current-buffer buffer (buffer-string))))))

(defmacro chatpipe-test--with-route-server (spec &rest body)
  "Run BODY with VAR bound to the URL of a route server; SPEC is (VAR SCRIPT).
See `chatpipe-test--route-server'; the server is stopped afterwards."
  (declare (indent 1) (debug ((symbolp form) body)))
  (let ((server (make-symbol "server")))
    `(let* ((,server (chatpipe-test--route-server ,(cadr spec)))
            (,(car spec) (cdr ,server)))
       (unwind-protect (progn ,@body)
         (delete-process (car ,server))
         (kill-buffer (process-buffer (car ,server)))))))

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

(defconst chatpipe-test--question "What's the weather in San Francisco?"
  "The question of most tests.")

(defun chatpipe-test--hold-offset (recording events)
  "Return the byte offset just after the first EVENTS events of RECORDING."
  (with-temp-buffer
    (set-buffer-multibyte nil)
    (insert-file-contents-literally
     (expand-file-name (concat "tests/streams/" recording) chatpipe-test-root))
    (goto-char (point-min))
    (dotimes (_ events) (search-forward "\n\n"))
    (1- (point))))


(defun chatpipe-test--fake-process (name &optional serve)
  "Return a pipe process NAME that stands for a backend process.
It has a table of pending streams, as `chatpipe--start-process'
makes; SERVE non-nil makes it a serve process."
  (let ((proc (make-pipe-process :name name :noquery t)))
    (process-put proc 'chatpipe-serve serve)
    (process-put proc 'chatpipe-streams (make-hash-table :test 'equal))
    proc))

(defun chatpipe-test--fake-stream (proc id handler)
  "Return a new stream ID of the fake process PROC, pending on it.
HANDLER is called with its events."
  (puthash id (chatpipe--stream-create :id id :process proc :handler handler)
           (process-get proc 'chatpipe-streams)))

(defun chatpipe-test--delete-fake-process (proc)
  "Delete the fake process PROC and its input buffer."
  (let ((input (process-get proc 'chatpipe-input)))
    (when (buffer-live-p input) (kill-buffer input)))
  (delete-process proc))

(defun chatpipe-test--require-markdown ()
  "Load markdown-mode, from Debian's elpa-markdown-mode if need be.
Skip the test if it is not installed."
  (unless (featurep 'markdown-mode)
    (dolist (dir (file-expand-wildcards
                  "/usr/share/emacs/site-lisp/elpa/markdown-mode-*"))
      (add-to-list 'load-path dir))
    (require 'markdown-mode nil t))
  (unless (featurep 'markdown-mode)
    (ert-skip "markdown-mode is not installed (apt-get install \
elpa-markdown-mode)")))

(provide 'chatpipe-test-helpers)
;;; chatpipe-test-helpers.el ends here
