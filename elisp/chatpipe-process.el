;;; chatpipe-process.el --- Backend processes and requests for chatpipe -*- lexical-binding: t; -*-

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

;; Requests to the `chatpipe' backend.  One process layer
;; (`chatpipe--start-process', `chatpipe--sentinel', a table of pending
;; `chatpipe-stream's, whose events chatpipe-events.el routes) serves
;; the shared `chatpipe serve' process, whose events carry our request
;; id as `id', and one-shot `chatpipe send' processes (one stream each).
;; A process that ends ends its pending streams with an `error' event.
;;
;; The shared process can be started ahead of the first question, and
;; asked to open a connection to a template's endpoint then (a
;; `preconnect' request), so that the first answer comes as soon as
;; the next ones: see `chatpipe-process-preconnect'.
;;
;; A request is one JSON object, built by `chatpipe-process-request'
;; and sent the same way to both: as a line (with its id) to the serve
;; process, on stdin to `chatpipe send --request -'.  It asks for the
;; answer's price, which the `usage' event then carries as `cost' when
;; the backend knows it.
;;
;; API keys: each environment variable a template needs (its
;; `${env:NAME}' placeholders, which the backend lists) is taken from
;; `process-environment' or, when not set there, from `auth-source'
;; under the host of the template's endpoint, which the backend names
;; too.  `chatpipe-call-waiting' runs the backend for what reaches the
;; network (the model list) without blocking Emacs.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-backend)
(require 'chatpipe-events)

(declare-function auth-source-search "auth-source")

(defun chatpipe--stderr-tail (proc)
  "Return the last non-blank line of PROC's stderr, or nil."
  (let ((stderr (process-get proc 'chatpipe-stderr)))
    (when (process-live-p stderr)
      ;; The child has exited: what is left in the pipe can be read now.
      (let ((n 0))
        (while (and (< n 100) (accept-process-output stderr 0 nil t))
          (setq n (1+ n)))))
    (let ((buffer (and stderr (process-buffer stderr))))
      (when (buffer-live-p buffer)
        (with-current-buffer buffer
          (save-excursion
            (goto-char (point-max))
            (skip-chars-backward " \t\n")
            (let ((line (buffer-substring-no-properties
                         (line-beginning-position) (point))))
              (unless (string-empty-p line)
                (truncate-string-to-width line 300 nil nil "...")))))))))

(defun chatpipe--delete-stderr (proc)
  "Delete the stderr pipe of the backend process PROC, if it is live."
  (let ((stderr (process-get proc 'chatpipe-stderr)))
    (when (process-live-p stderr) (delete-process stderr))))

;;;; API keys

(defun chatpipe--auth-source-secret (host)
  "Return the API key for HOST from `auth-source', or nil."
  (require 'auth-source)
  (let* ((entry (or (car (auth-source-search
                          :host host :user chatpipe-auth-source-user
                          :require '(:secret) :max 1))
                    (car (auth-source-search
                          :host host :require '(:secret) :max 1))))
         (secret (plist-get entry :secret)))
    (if (functionp secret) (funcall secret) secret)))

(defun chatpipe--entry-env (entry)
  "Return the environment variables the template ENTRY needs, an alist.
See `chatpipe-template-env'."
  (let ((host (plist-get entry :host))
        (env nil))
    (dolist (name (plist-get entry :env))
      (let ((value (getenv name)))
        (when (and (stringp host) (member value '(nil "")))
          (setq value (chatpipe--auth-source-secret host)))
        (when (and (stringp value) (not (string-empty-p value)))
          (push (cons name value) env))))
    (nreverse env)))

(defun chatpipe-template-env (template)
  "Return the environment variables TEMPLATE needs, an alist.
TEMPLATE is a name or a file name.  Each `${env:NAME}' variable of
the template (see `chatpipe-template-info') is taken from
`process-environment' if it is set there, else from `auth-source'
under the host of the template's endpoint.  The value is a list of
\(NAME . VALUE) strings, without the variables found nowhere."
  (chatpipe--entry-env (chatpipe-template-info template)))

(defun chatpipe--environment-with (env)
  "Return `process-environment' with ENV, an alist of strings, added.
Variables of ENV that are set to the same value already are not
added again."
  (let ((environment process-environment))
    (pcase-dolist (`(,name . ,value) env)
      (unless (equal (getenv name) value)
        (push (concat name "=" value) environment)))
    environment))

(defun chatpipe-process-environment (template)
  "Return `process-environment' completed with the API keys TEMPLATE needs.
TEMPLATE is a name or a file name.  Each variable of
`chatpipe-template-env' that is not set already is added as
NAME=VALUE."
  (chatpipe--environment-with (chatpipe-template-env template)))

;;;; Processes

(defvar chatpipe--serve-counter 0
  "The number of requests sent to `chatpipe serve' processes so far.")

(defun chatpipe--start-process (name command stderr-buffer &optional serve)
  "Start a backend process NAME running COMMAND, a list; return it.
Its stderr goes to STDERR-BUFFER, emptied first; its stdout to
`chatpipe--filter'.  SERVE non-nil means a `chatpipe serve'
process, whose events are routed by their `id'; else a one-shot
`chatpipe send' process.  It runs in `chatpipe--process-directory'
\(never the current buffer's folder), with `process-environment'.
It has a table of pending streams, empty until `chatpipe--request'.

A serve process's output is read with adaptive read buffering: after
a short read Emacs waits a little (10 to 70 ms) before it reads
again, so that a fast answer is read, and the screen redisplayed, a
few dozen times a second rather than once per line; each write to the
process ends the wait (see `chatpipe--stream-read-now'), so that the
first text of an answer is read as soon as it comes.  A send
process's output is read as soon as it comes."
  (let* ((process-adaptive-read-buffering (and serve t))
         (default-directory (chatpipe--process-directory))
         (stderr (with-current-buffer stderr-buffer
                   (let ((inhibit-read-only t)) (erase-buffer))
                   (make-pipe-process :name (concat name " stderr")
                                      :buffer stderr-buffer :noquery t
                                      :coding 'utf-8-unix :sentinel #'ignore)))
         proc)
    (condition-case err
        (setq proc (make-process :name name
                                 :command command
                                 :connection-type 'pipe
                                 :coding 'utf-8-unix
                                 :noquery t
                                 :stderr stderr
                                 :filter #'chatpipe--filter
                                 :sentinel #'chatpipe--sentinel))
      (error (delete-process stderr)
             (signal (car err) (cdr err))))
    (process-put proc 'chatpipe-stderr stderr)
    (process-put proc 'chatpipe-serve serve)
    (process-put proc 'chatpipe-streams (make-hash-table :test 'equal))
    proc))

(defun chatpipe--write (stream input &optional eof what)
  "Write INPUT, a string, to the process of STREAM.
With EOF non-nil, close the process's stdin then.  If the process
cannot be written to, log it, saying what INPUT is: WHAT (default
\"the request\"); its sentinel ends STREAM.  Every line of a stream
that Emacs writes goes through here."
  (condition-case err
      (let ((proc (chatpipe-stream-process stream)))
        (process-send-string proc input)
        (when eof (process-send-eof proc)))
    (error (chatpipe--log "%s: cannot write %s: %s"
                          (chatpipe--stream-name stream)
                          (or what "the request")
                          (error-message-string err)))))

(defun chatpipe--request (stream input &optional eof)
  "Make STREAM pending on its process and write INPUT to it.
With EOF non-nil, close the process's stdin then (see
`chatpipe--write').  Return STREAM."
  (puthash (chatpipe-stream-id stream) stream
           (process-get (chatpipe-stream-process stream) 'chatpipe-streams))
  (chatpipe--write stream input eof)
  stream)

(defun chatpipe--sentinel (proc _event)
  "Sentinel of the backend process PROC.
When PROC has ended, handle its unfinished last line, and end each
of its pending streams with an `error' event saying that the
backend died or ended, with its exit status or signal and its last
stderr line.  The next request to a serve process starts a new one."
  (unless (process-live-p proc)
    (when (eq proc chatpipe--serve-process)
      (setq chatpipe--serve-process nil))
    (chatpipe--flush-pending proc)
    (let ((tail (chatpipe--stderr-tail proc))
          (code (process-exit-status proc)))
      (chatpipe--fail-pending
       proc
       (concat (cond ((eq (process-status proc) 'signal)
                      (format "the chatpipe backend died: killed by signal %d"
                              code))
                     ((zerop code)
                      "the chatpipe backend ended before the answer was \
complete")
                     (t (format "the chatpipe backend died: exit status %d"
                                code)))
               (and tail (concat ": " tail)))
       code))
    (chatpipe--delete-stderr proc)))

(defun chatpipe--backend-processes (&optional serve)
  "Return the live backend processes; with SERVE, the serve ones only."
  (cl-remove-if-not (lambda (proc)
                      (and (process-get proc 'chatpipe-streams)
                           (or (not serve) (process-get proc 'chatpipe-serve))
                           (process-live-p proc)))
                    (process-list)))

(defun chatpipe-serve-process ()
  "Return the shared `chatpipe serve' process, starting it if needed.
A new process is started on first use, after the last one ended,
and when `chatpipe-command' names another command; a process so
replaced finishes its streams, then ends.  It runs in the home
folder; its stderr goes to the buffer \" *chatpipe serve stderr*\".
Signal `chatpipe-backend-missing' if there is no backend."
  (let ((command (append (chatpipe--command) '("serve")))
        (proc chatpipe--serve-process))
    (unless (and (process-live-p proc)
                 (equal (process-command proc) command))
      (when (process-live-p proc)
        (process-put proc 'chatpipe-retired t)
        (chatpipe--maybe-close proc))
      (setq proc (chatpipe--start-process
                  "chatpipe serve" command
                  (get-buffer-create " *chatpipe serve stderr*") t))
      (setq chatpipe--serve-process proc))
    proc))

(defun chatpipe-serve-stop ()
  "Stop the `chatpipe serve' processes at once, without waiting for them.
Their pending answers end with an error.  The next answer starts a
new process.  Return the number of processes stopped."
  (interactive)
  (setq chatpipe--serve-process nil)
  (let ((procs (chatpipe--backend-processes t)))
    (dolist (proc procs)
      (chatpipe--fail-pending proc "the chatpipe backend was stopped")
      (delete-process proc)
      (chatpipe--delete-stderr proc))
    (when (called-interactively-p 'interactive)
      (message "chatpipe: stopped %d backend process(es)" (length procs)))
    (length procs)))

(defun chatpipe--kill-on-exit ()
  "Stop the backend processes as Emacs exits, without waiting.
They get SIGTERM, which ends their streams at once; nothing is
delivered any more."
  (dolist (proc (chatpipe--backend-processes))
    (set-process-sentinel proc #'ignore)
    (set-process-filter proc #'ignore)
    (ignore-errors (signal-process proc 'SIGTERM))))

(add-hook 'kill-emacs-hook #'chatpipe--kill-on-exit)

;;;; Requests

(defvar chatpipe-call-input nil
  "A string `chatpipe-call-waiting' writes to the backend's stdin, or nil.
Bind it around a call that reads its input, such as `chatpipe send
--request -'; stdin is closed after it either way.")

(defun chatpipe-call-waiting (timeout &rest args)
  "Run the backend with the arguments ARGS; wait for it, Emacs not blocked.
Like `chatpipe-call', but the backend runs asynchronously and Emacs
waits with `accept-process-output': timers run and other processes'
output (answers streaming into other buffers) keeps coming
meanwhile, and \[keyboard-quit] stops the wait and the process (the
`quit' goes on to the caller).  Use it for what reaches the
network.  After TIMEOUT seconds the process is killed and
`chatpipe-backend-failed' signaled.  Return (EXIT-CODE . STDOUT),
and signal as `chatpipe-call' does."
  (let* ((command (chatpipe--command))
         (default-directory (chatpipe--process-directory))
         (out (generate-new-buffer " *chatpipe call*"))
         (err (generate-new-buffer " *chatpipe call stderr*"))
         (stderr nil)
         (proc nil))
    (unwind-protect
        (progn
          (setq stderr (make-pipe-process :name "chatpipe call stderr" :buffer err
                                          :noquery t :coding 'utf-8-unix
                                          :sentinel #'ignore))
          (setq proc (make-process :name "chatpipe call" :buffer out
                                   :command (append command args)
                                   :connection-type 'pipe :coding 'utf-8-unix
                                   :noquery t :stderr stderr :sentinel #'ignore))
          (when chatpipe-call-input
            (process-send-string proc chatpipe-call-input))
          (process-send-eof proc)
          (let ((limit (+ (float-time) timeout)))
            (while (and (process-live-p proc) (< (float-time) limit))
              (accept-process-output proc 0.05)))
          (when (process-live-p proc)
            (signal 'chatpipe-backend-failed
                    (list (format "chatpipe %s did not end within %s s"
                                  (string-join args " ") timeout))))
          ;; What is left in the pipes after the exit.
          (while (accept-process-output proc 0 nil t))
          (while (accept-process-output stderr 0 nil t))
          (chatpipe--call-result args (process-exit-status proc)
                                 (with-current-buffer out (buffer-string))
                                 (with-current-buffer err (buffer-string))))
      (when (process-live-p proc) (delete-process proc))
      (when (process-live-p stderr) (delete-process stderr))
      (kill-buffer out)
      (kill-buffer err))))


(cl-defun chatpipe-process-request (&key template messages model url vars
                                         params tools context rewrite)
  "Return the request for an answer with TEMPLATE, an alist for JSON.
It is the one shape of a request for both backend modes (the
request fields of docs/protocol.md): a `chatpipe serve' line
without its id, and what `chatpipe send --request -' reads.
TEMPLATE, MESSAGES, MODEL, URL, VARS, PARAMS, TOOLS, CONTEXT and
REWRITE are as for `chatpipe-process-start'; the API keys TEMPLATE needs (see
`chatpipe-template-env') are its \"env\", and it asks for the
answer's price.  Fields that are nil or empty are left out."
  (let* ((entry (chatpipe-template-info template))
         (env (chatpipe--entry-env entry)))
    `((template . ,(chatpipe--template-argument template entry))
      (messages . ,(chatpipe--messages-vector messages))
      ,@(and model `((model . ,model)))
      ,@(and url `((url . ,url)))
      ,@(and vars `((vars . ,(chatpipe--string-table vars))))
      ,@(and params `((params . ,params)))
      ,@(and tools `((tools . ,(vconcat tools))))
      ,@(and (> (length context) 0) `((context . ,(vconcat context))))
      ,@(and rewrite `((rewrite . ,rewrite)))
      ,@(and env `((env . ,(chatpipe--string-table env))))
      (price . t))))

(cl-defun chatpipe-process-start (&key template messages model url vars
                                       params tools context rewrite name handler)
  "Start streaming an answer to MESSAGES with TEMPLATE; return its stream.
TEMPLATE is a template name or a .json file name.  MESSAGES is a
list of (ROLE . CONTENT) pairs of strings, appended after the
template's own (a system message replaces their system prompt).
MESSAGES may also hold alists in the neutral shape of tool turns
\(see `chatpipe-messages').  MODEL and URL, if non-nil, override the
template's model and endpoint; VARS is an alist of (NAME . VALUE)
strings for its `${NAME}' placeholders; PARAMS an alist such as
\((temperature . 0.7) (max_tokens . 500)), the request's
\"params\".  TOOLS, a list of neutral tool definitions
\(alists) and \"mcp:NAME\" strings, is the request's \"tools\": it
needs the serve process, whose `tool_request' events HANDLER answers
with `chatpipe-process-answer'.  CONTEXT, a vector of context items
\(alists: files, folders, named text; see docs/protocol.md and
`chatpipe-context-request-items'), is the request's \"context\",
which the backend reads and renders.  REWRITE, an alist (the text
to rewrite, the instruction, its path, language and the lines around
it; see docs/protocol.md), makes the request a rewrite, whose answer
is the replacement text.  The request, which
`chatpipe-process-request' builds, goes to the shared serve process
as a line, or on stdin to a send process named NAME (`chatpipe send
--request -'; see `chatpipe-backend-mode'); the API keys the
template needs (see `chatpipe-template-env') go in the request,
never on a command line.  The answer's `usage' event carries its
`cost' (US dollars) when the backend knows the model's price.

HANDLER is called with each event, a plist such as \(:type
\"delta\" :content \"Hi\"), up to the first `done' or `error'
event; if the process ends without one, an `error' event is
delivered.  Text may be handed on joined, at most every
`chatpipe-insert-interval' seconds (see chatpipe-events.el).  After
`chatpipe-process-abort', nothing more is.  The value is a
`chatpipe-stream'.  Signal `chatpipe-backend-missing' if there is
no backend."
  (let ((request (chatpipe-process-request
                  :template template :messages messages :model model :url url
                  :vars vars :params params :tools tools :context context
                  :rewrite rewrite)))
    (if (eq chatpipe-backend-mode 'send)
        (let ((name (or name "chatpipe")))
          (chatpipe--request
           (chatpipe--stream-create
            :process (chatpipe--start-process
                      name
                      (append (chatpipe--command)
                              '("send" "--output" "ndjson" "--request" "-"))
                      (get-buffer-create (format " *%s stderr*" name)))
            :handler handler)
           (json-serialize request) t))
      (let ((id (format "emacs-%d" (cl-incf chatpipe--serve-counter))))
        (chatpipe--request
         (chatpipe--stream-create :id id :process (chatpipe-serve-process)
                                  :handler handler)
         (chatpipe--serve-line `((id . ,id) ,@request)))))))

(defun chatpipe--serve-line (request)
  "Return REQUEST, an alist, as a line for `chatpipe serve'."
  (concat (json-serialize request) "\n"))

(defun chatpipe-process-answer (stream key answer)
  "Answer the `tool_request' that STREAM is waiting on.
KEY is `tool_result' (ANSWER an alist such as ((call_id . \"c1\")
\(content . \"22 C\") (is_error . :false)), or ((call_id . \"c1\")
\(denied . t) (reason . \"...\"))) or `tool_confirm' (ANSWER such as
\((call_id . \"c1\") (decision . \"once\"))); see docs/protocol.md.
The line goes to STREAM's `chatpipe serve' process, unless STREAM
has ended.  Return non-nil if it was written."
  (when (chatpipe-stream-live-p stream)
    (chatpipe--write stream (chatpipe--serve-line
                             `((id . ,(chatpipe-stream-id stream)) (,key . ,answer)))
                     nil (format "the %s" key))
    t))

(cl-defun chatpipe-process-preconnect (&key template url vars)
  "Make the shared serve process ready for a first answer with TEMPLATE.
Start the process if needed, and ask it to open a connection (TCP
and TLS) to TEMPLATE's endpoint now, so that the first request
there skips the handshakes: a `preconnect' request, with the API
keys TEMPLATE needs (see `chatpipe-template-env') and URL and VARS
as for `chatpipe-process-start'.  The backend sends nothing and
answers nothing; the next request reports any error.  Signal
`chatpipe-backend-missing' if there is no backend.  Return the
process."
  (let ((proc (chatpipe-serve-process)))
    (process-send-string
     proc (chatpipe--serve-line
           `((id . ,(format "emacs-%d" (cl-incf chatpipe--serve-counter)))
             (preconnect . t)
             ,@(chatpipe-process-request :template template :url url
                                         :vars vars))))
    proc))

(defun chatpipe-process-abort (stream)
  "Stop STREAM at once; deliver no more of its events.
The text it holds back is handed on first (see
`chatpipe-insert-interval').  On a `chatpipe serve' process, send a
cancel for it: the backend closes its HTTP response.  A `chatpipe
send' process gets SIGTERM, and is killed if it is still there a few
seconds later.  Do not wait for either.  Return nil."
  (chatpipe--stream-release stream)
  (let ((proc (chatpipe-stream-process stream))
        (finished (chatpipe-stream-finished stream)))
    (setf (chatpipe-stream-finished stream) t)
    (cond ((not (process-live-p proc)))
          ((process-get proc 'chatpipe-serve)
           ;; The stream stays in the table until the backend's last
           ;; event for it, which will be dropped.
           (unless finished
             (chatpipe--write stream (chatpipe--serve-line
                                      `((id . ,(chatpipe-stream-id stream))
                                        (cancel . t)))
                              nil "the cancel")))
          (t (ignore-errors (signal-process proc 'SIGTERM))
             (run-at-time 3 nil (lambda ()
                                  (when (process-live-p proc)
                                    (delete-process proc)))))))
  nil)

(provide 'chatpipe-process)
;;; chatpipe-process.el ends here
