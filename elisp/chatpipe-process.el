;;; chatpipe-process.el --- Backend process and NDJSON protocol for chatpipe -*- lexical-binding: t; -*-

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

;; The process side of chatpipe: finding the `chatpipe' backend command,
;; sending it requests and turning its stdout (one JSON event per line,
;; protocol v1) into calls of each answer's event handler.  An answer
;; streaming is a `chatpipe-stream'.
;;
;; By default (`chatpipe-backend-mode' `serve') all answers go through
;; one shared, long-lived `chatpipe serve' process, started on first use
;; and again after it ends: each request is a JSON line on its stdin with
;; an id of ours, and each event line it writes carries that id, which a
;; hash table maps to the answer's stream.  Aborting an answer writes a
;; cancel line.  When the process dies, each of its pending answers ends
;; with an `error' event saying so, with its last stderr line.  In `send'
;; mode each answer has a `chatpipe send TEMPLATE --output ndjson
;; --messages -' process of its own, the messages on its stdin.
;;
;; The process filter appends each read to a hidden input buffer of the
;; process, searches it for newlines from where the last search stopped,
;; and parses each complete line in place with `json-parse-buffer'
;; (narrowed to the line), then deletes the lines read: the work per line
;; is proportional to that line, and the partial last line is neither
;; searched nor copied again.  Consecutive `delta' (or `reasoning') events
;; of one answer in one read are joined into one event, so that a fast
;; answer is inserted in a few pieces per read.  A line that is not JSON
;; goes to the diagnostics buffer `chatpipe-log-buffer-name'.  The sentinel of a send
;; process delivers a final `error' event when it ends without a `done' or
;; `error' line of its own (a crash, a non-zero exit), with the last line
;; of its stderr, which goes to a buffer of its own.
;;
;; API keys: the environment variables a template needs (its `${env:NAME}'
;; placeholders) are taken from `process-environment' or, when not set
;; there, from `auth-source' (host: the template's URL host), and passed
;; in the request's `env' (serve) or the process environment (send),
;; never on a command line.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'url-parse)

(declare-function auth-source-search "auth-source")

;;;; Customization

(defgroup chatpipe nil
  "Streaming LLM chats in any text buffer, through the `chatpipe' backend."
  :group 'applications
  :prefix "chatpipe-")

(defcustom chatpipe-command nil
  "The `chatpipe' backend command, or nil to find it.
A string is the program: a file name, or a name to look up in the
variable `exec-path'.  A list of strings is a program and its first
arguments, for example (\"python3\" \"-m\" \"chatpipe\").  When nil,
use the `chatpipe' of `chatpipe-python-venv' if that is set, else
the `chatpipe' found in the variable `exec-path'."
  :type '(choice (const :tag "Find it" nil)
                 (string :tag "Program")
                 (repeat :tag "Program and arguments" string))
  :group 'chatpipe)

(defcustom chatpipe-python-venv nil
  "A Python virtual environment where chatpipe is installed, or nil.
Used when `chatpipe-command' is nil: the backend is then
VENV/bin/chatpipe."
  :type '(choice (const :tag "None" nil) directory)
  :group 'chatpipe)

(defcustom chatpipe-backend-mode 'serve
  "How answers are streamed from the backend.
`serve': all answers go through one shared, long-lived `chatpipe
  serve' process, started on first use, which keeps HTTP connections
  warm: the first text comes within milliseconds.
`send': each answer starts a `chatpipe send' process of its own,
  which costs the start of a Python process (a few hundred ms).
The shared process keeps the environment it was started with, but
for the API keys a template needs, which come with each request;
\[chatpipe-serve-stop] stops it, and the next answer starts it anew."
  :type '(choice (const :tag "One shared chatpipe serve process" serve)
                 (const :tag "A chatpipe send process per answer" send))
  :group 'chatpipe)

(defcustom chatpipe-auth-source-user "apikey"
  "The user name under which API keys are looked up in `auth-source'.
An entry for the template's host with this user is preferred; if
there is none, an entry for the host with any user is taken.  For
example, in ~/.authinfo.gpg:

  machine api.openai.com login apikey password sk-..."
  :type 'string
  :group 'chatpipe)

(defcustom chatpipe-log-buffer-name "*chatpipe-log*"
  "Name of the diagnostics buffer.
Lines from the backend that are not valid JSON, and errors in event
handlers, are logged there."
  :type 'string
  :group 'chatpipe)

;;;; Errors

(define-error 'chatpipe-error "Chatpipe error")
(define-error 'chatpipe-backend-missing
  "Cannot find the chatpipe backend" 'chatpipe-error)
(define-error 'chatpipe-backend-failed
  "The chatpipe backend failed" 'chatpipe-error)

;;;; Private

(defun chatpipe--log (format-string &rest args)
  "Append a line to the diagnostics buffer.
FORMAT-STRING and ARGS are as for `format'.  Return nil."
  (with-current-buffer (get-buffer-create chatpipe-log-buffer-name)
    (let ((inhibit-read-only t))
      (save-excursion
        (goto-char (point-max))
        (insert (format-time-string "%F %T ")
                (apply #'format format-string args)
                "\n"))))
  nil)

(defun chatpipe--command ()
  "Return the backend command as a list: the program, then arguments.
The program is an absolute file name.  Signal
`chatpipe-backend-missing' if it cannot be found, and
`chatpipe-error' if this Emacs cannot parse JSON."
  (unless (json-available-p)
    (signal 'chatpipe-error
            (list "This Emacs was built without JSON support (libjansson)")))
  (let* ((spec (cond (chatpipe-command chatpipe-command)
                     (chatpipe-python-venv
                      (expand-file-name "bin/chatpipe" chatpipe-python-venv))
                     (t "chatpipe")))
         (argv (if (stringp spec) (list spec) spec))
         (program (car argv))
         (found (and (stringp program)
                     (if (file-name-absolute-p program)
                         (and (file-executable-p program)
                              (not (file-directory-p program))
                              program)
                       (executable-find program)))))
    (unless found
      (signal 'chatpipe-backend-missing
              (list (format "`%s' not found: install chatpipe (pip install \
chatpipe) or set `chatpipe-command' or `chatpipe-python-venv'"
                            (or program "chatpipe")))))
    (cons found (cdr argv))))

(defun chatpipe--local-directory ()
  "Return a local, existing directory to run the backend in."
  (if (and (not (file-remote-p default-directory))
           (file-directory-p default-directory))
      default-directory
    (expand-file-name "~/")))

(defun chatpipe-call (&rest args)
  "Run the backend synchronously with the arguments ARGS.
Return a cons (EXIT-CODE . STDOUT), STDOUT decoded as UTF-8.  Signal
`chatpipe-backend-missing' if there is no backend, and
`chatpipe-backend-failed' with the backend's stderr if it exits
with a code other than 0 or 1."
  (let* ((command (chatpipe--command))
         (default-directory (chatpipe--local-directory))
         (stderr (make-temp-file "chatpipe-stderr"))
         (coding-system-for-read 'utf-8-unix)
         (coding-system-for-write 'utf-8-unix))
    (unwind-protect
        (with-temp-buffer
          (let ((code (apply #'call-process (car command) nil
                             (list t stderr) nil
                             (append (cdr command) args))))
            (unless (memq code '(0 1))
              (signal 'chatpipe-backend-failed
                      (list (format "chatpipe %s exited with %s: %s"
                                    (string-join args " ") code
                                    (with-temp-buffer
                                      (insert-file-contents stderr)
                                      (string-trim (buffer-string)))))))
            (cons code (buffer-string))))
      (delete-file stderr))))

;;;; Templates and keys

(defvar chatpipe--template-dirs-cache nil
  "The backend's template folders, as last asked: (KEY USER BUNDLED).
KEY is the backend command and the values of the variables that
decide the user's folder; USER and BUNDLED are as returned by
`chatpipe--template-dirs'.")

(defun chatpipe--template-path-p (template)
  "Return non-nil if TEMPLATE is a file name rather than a template name.
As for the backend, that is a name with a slash or a .json suffix."
  (or (string-suffix-p ".json" template) (string-search "/" template)))

(defun chatpipe--bundled-dir ()
  "Return the folder of the bundled templates, or nil.
It is where the backend's first bundled template is."
  (pcase (condition-case nil (chatpipe-call "templates" "list" "--json")
           (chatpipe-error nil))
    (`(0 . ,out)
     (let ((entry (cl-find "bundled"
                           (condition-case nil
                               (json-parse-string out :object-type 'plist
                                                  :array-type 'list
                                                  :null-object nil
                                                  :false-object nil)
                             (json-error nil))
                           :key (lambda (e) (plist-get e :source))
                           :test #'equal)))
       (and (stringp (plist-get entry :path))
            (file-name-directory (plist-get entry :path)))))))

(defun chatpipe--template-dirs ()
  "Return the backend's template folders, a list (USER BUNDLED).
USER is the user's template folder, BUNDLED the folder of the
bundled templates (nil if unknown), as the backend says: they are
asked once for each backend command and each value of the
variables XDG_CONFIG_HOME and HOME, so that no backend runs for
each answer.  Return nil if the backend cannot tell."
  (let ((key (list (chatpipe--command)
                   (getenv "XDG_CONFIG_HOME") (getenv "HOME"))))
    (if (equal key (car chatpipe--template-dirs-cache))
        (cdr chatpipe--template-dirs-cache)
      (let ((user (pcase (condition-case nil (chatpipe-call "templates" "dir")
                           (chatpipe-error nil))
                    (`(0 . ,out) (file-name-as-directory (string-trim out))))))
        (when user
          (cdr (setq chatpipe--template-dirs-cache
                     (list key user (chatpipe--bundled-dir)))))))))

(defun chatpipe-template-file (template)
  "Return the file of TEMPLATE, a template name or a file name.
A name is looked up as the backend does it: in the user's template
folder, then among the bundled templates (see
`chatpipe--template-dirs').  Return nil if it cannot be resolved."
  (if (chatpipe--template-path-p template)
      (expand-file-name template)
    (let ((dirs (chatpipe--template-dirs)))
      (if dirs
          (cl-loop for dir in dirs
                   for file = (and dir (expand-file-name
                                        (concat template ".json") dir))
                   when (and file (file-regular-p file)) return file)
        (pcase (condition-case nil (chatpipe-call "templates" "path" template)
                 (chatpipe-error nil))
          (`(0 . ,out) (string-trim out)))))))

(defun chatpipe--template-needs (file)
  "Return what the template FILE needs from the environment.
The value is a cons (HOST . NAMES): HOST is the host of the
template's URL (or nil), NAMES the variables of its `${env:NAME}'
placeholders."
  (when (and file (file-readable-p file))
    (with-temp-buffer
      (insert-file-contents file)
      (let ((names nil) (host nil))
        (goto-char (point-min))
        (while (re-search-forward
                "\\${env:\\([A-Za-z_][A-Za-z0-9_]*\\)}" nil t)
          (cl-pushnew (match-string-no-properties 1) names :test #'equal))
        (goto-char (point-min))
        (let* ((doc (condition-case nil
                        (json-parse-buffer :object-type 'alist
                                           :null-object nil
                                           :false-object nil)
                      (error nil)))
               (block (and (listp doc) (alist-get 'chatpipe doc)))
               (url (and (listp block) (alist-get 'url block))))
          (when (stringp url)
            (setq host (url-host (url-generic-parse-url url)))))
        (cons (and (stringp host) (not (string-empty-p host)) host)
              (nreverse names))))))

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

(defun chatpipe-template-env (template)
  "Return the environment variables TEMPLATE needs, an alist.
TEMPLATE is a name or a file name.  Each `${env:NAME}' variable of
the template is taken from `process-environment' if it is set
there, else from `auth-source' (host: the template's URL host).
The value is a list of (NAME . VALUE) strings, without the
variables found nowhere."
  (pcase-let ((`(,host . ,names)
               (chatpipe--template-needs (chatpipe-template-file template)))
              (env nil))
    (dolist (name names)
      (let ((value (getenv name)))
        (when (and host (member value '(nil "")))
          (setq value (chatpipe--auth-source-secret host)))
        (when (and (stringp value) (not (string-empty-p value)))
          (push (cons name value) env))))
    (nreverse env)))

(defun chatpipe-process-environment (template)
  "Return `process-environment' completed with the API keys TEMPLATE needs.
TEMPLATE is a name or a file name.  Each `${env:NAME}' variable of
the template that is not set is looked up in `auth-source' (host:
the template's URL host) and added as NAME=KEY when found."
  (let ((env process-environment))
    (pcase-dolist (`(,name . ,value) (chatpipe-template-env template))
      (unless (equal (getenv name) value)
        (push (concat name "=" value) env)))
    env))

;;;; Streams

(cl-defstruct (chatpipe-stream (:constructor chatpipe--stream-create)
                               (:copier nil))
  "One answer streaming from a backend process.
ID is its request id on a shared `chatpipe serve' process, or nil
when it has a `chatpipe send' process of its own; PROCESS is that
process.  HANDLER is called with each of its events.  FINISHED is
non-nil once its `done' or `error' event has been delivered, or
once it was aborted: nothing more is delivered then."
  id process handler finished)

(defun chatpipe--stream-name (stream)
  "Return a name for STREAM in diagnostics: its process and its id."
  (concat (process-name (chatpipe-stream-process stream))
          (and (chatpipe-stream-id stream)
               (concat " " (chatpipe-stream-id stream)))))

(defun chatpipe-stream-live-p (stream)
  "Return non-nil if STREAM may still deliver events.
That is until its `done' or `error' event, its abort, or the end of
its process."
  (and (not (chatpipe-stream-finished stream))
       (process-live-p (chatpipe-stream-process stream))))

(defun chatpipe--deliver (stream event)
  "Call the event handler of STREAM with EVENT, a plist.
After a `done' or `error' event, later events are dropped.  An
error in the handler is logged, not raised (unless `debug-on-error')."
  (unless (chatpipe-stream-finished stream)
    (when (member (plist-get event :type) '("done" "error"))
      (setf (chatpipe-stream-finished stream) t))
    (condition-case-unless-debug err
        (funcall (chatpipe-stream-handler stream) event)
      (error (chatpipe--log "%s: error in event handler: %S"
                            (chatpipe--stream-name stream) err)
             (message "chatpipe: %s" (error-message-string err))))))

(defun chatpipe--serve-route (proc event)
  "Return the stream of the serve process PROC that EVENT is for, or nil.
EVENT's `id' (the request id; `chatpipe serve' renames an event's
own ids) is looked up in PROC's table of streams; a `done' or
`error' event takes its stream out of the table."
  (let* ((streams (process-get proc 'chatpipe-streams))
         (id (plist-get event :id))
         (stream (and id streams (gethash id streams))))
    (when (and stream (member (plist-get event :type) '("done" "error")))
      (remhash id streams)
      (chatpipe--serve-maybe-close proc))
    stream))

(defun chatpipe--event-stream (proc event)
  "Return the stream of PROC that EVENT is for, or nil.
That is PROC's stream (`chatpipe send') or, on a shared `chatpipe
serve' process, the stream its `id' names (see
`chatpipe--serve-route')."
  (or (process-get proc 'chatpipe-stream)
      (chatpipe--serve-route proc event)))

(defun chatpipe--text-event-p (event)
  "Return non-nil if EVENT is text that may be joined to the next.
That is a `delta' or `reasoning' event with nothing but its type,
its content and (from `chatpipe serve') its id."
  (and (member (plist-get event :type) '("delta" "reasoning"))
       (stringp (plist-get event :content))
       (= (length event) (if (plist-member event :id) 6 4))))

(defun chatpipe--deliver-run (run)
  "Deliver RUN, text events joined, as one event.
RUN is nil or a list (STREAM TYPE . CONTENTS), CONTENTS the texts
of consecutive events of TYPE for STREAM, newest first."
  (when run
    (let ((contents (cddr run)))
      (chatpipe--deliver (car run)
                         (list :type (cadr run)
                               :content (if (cdr contents)
                                            (apply #'concat (nreverse contents))
                                          (car contents)))))))

(defun chatpipe--parse-line (proc start end)
  "Return the event on the line from START to END, or nil.
The line, one line of PROC's stdout, is in the current buffer; the
event is a plist with a string :type.  Move point to END.  A line
that is not an event is logged, but for blank lines."
  (let ((event nil))
    (narrow-to-region start end)
    (goto-char start)
    (skip-chars-forward " \t\r")
    (unless (eobp)
      (setq event (condition-case nil
                      (json-parse-buffer :object-type 'plist
                                         :null-object nil
                                         :false-object nil)
                    (error nil)))
      (skip-chars-forward " \t\r")
      (unless (and (eobp) (stringp (plist-get event :type)))
        (setq event nil)
        (chatpipe--log "%s: not a protocol event: %s" (process-name proc)
                       (buffer-substring-no-properties start end))))
    (widen)
    (goto-char end)
    event))

(defun chatpipe--input-buffer (proc)
  "Return the buffer where PROC's stdout is parsed, making it if needed.
It holds the output not parsed yet: a partial last line."
  (let ((buffer (process-get proc 'chatpipe-input)))
    (unless (buffer-live-p buffer)
      (setq buffer (generate-new-buffer
                    (format " *%s input*" (process-name proc)) t))
      (with-current-buffer buffer
        (setq buffer-undo-list t))
      (process-put proc 'chatpipe-input buffer)
      (process-put proc 'chatpipe-scanned nil))
    buffer))

(defun chatpipe--read-lines (proc)
  "Deliver the events of the complete lines in PROC's input buffer.
Delete them from the buffer, which is current.  Consecutive text
events of one stream (see `chatpipe--text-event-p') are joined
into one event, so that a fast stream is inserted in a few pieces
per read.  The newline search goes on from where it stopped the
last time, so that a long line is searched once."
  (let ((input (current-buffer))
        (start (point-min))
        (run nil)
        (done nil)
        end)
    (unwind-protect
        (progn
          (goto-char (or (process-get proc 'chatpipe-scanned) start))
          (while (setq end (search-forward "\n" nil t))
            (let* ((event (chatpipe--parse-line proc start (1- end)))
                   (stream (and event (chatpipe--event-stream proc event))))
              (cond ((null event))
                    ((null stream)
                     (chatpipe--log "%s: event for no stream: %s"
                                    (process-name proc)
                                    (buffer-substring-no-properties
                                     start (1- end))))
                    ((chatpipe--text-event-p event)
                     (let ((type (plist-get event :type))
                           (content (plist-get event :content)))
                       (if (and (eq (car run) stream) (equal (cadr run) type))
                           (setcdr (cdr run) (cons content (cddr run)))
                         (chatpipe--deliver-run run)
                         (setq run (list stream type content)))))
                    (t (chatpipe--deliver-run run)
                       (setq run nil)
                       (chatpipe--deliver stream event))))
            ;; A handler may have made another buffer current.
            (set-buffer input)
            (goto-char end)
            (setq start end))
          (chatpipe--deliver-run run)
          (setq done t))
      (when (buffer-live-p input)
        (with-current-buffer input
          (delete-region (point-min) start)
          ;; After an error, search the rest again.
          (process-put proc 'chatpipe-scanned
                       (if done (point-max) (point-min))))))))

(defun chatpipe--filter (proc string)
  "Process filter of the backend process PROC, which wrote STRING.
Append STRING to PROC's input buffer, then parse each complete line
and deliver its event (see `chatpipe--read-lines').  The work is
proportional to STRING: the partial last line waits in the buffer,
and is neither searched nor copied again.  Output that comes while
an event handler runs (if it waits for output) is read by the call
that runs it."
  (with-current-buffer (chatpipe--input-buffer proc)
    (goto-char (point-max))
    (insert string)
    (unless (process-get proc 'chatpipe-reading)
      (process-put proc 'chatpipe-reading t)
      (unwind-protect
          (chatpipe--read-lines proc)
        (process-put proc 'chatpipe-reading nil)))))

(defun chatpipe--flush-pending (proc)
  "Deliver the unfinished last line of the process PROC, which has ended.
Kill PROC's input buffer."
  (let ((buffer (process-get proc 'chatpipe-input)))
    (when (buffer-live-p buffer)
      (with-current-buffer buffer
        (goto-char (point-max))
        (unless (bobp)
          (insert "\n")
          (chatpipe--read-lines proc)))
      (kill-buffer buffer))))

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

(defun chatpipe--stderr-pipe (name buffer)
  "Return a new pipe process NAME for a backend's stderr, into BUFFER.
BUFFER is emptied first."
  (with-current-buffer buffer
    (let ((inhibit-read-only t)) (erase-buffer)))
  (make-pipe-process :name name :buffer buffer :coding 'utf-8-unix
                     :noquery t :sentinel #'ignore))

(defun chatpipe--delete-stderr (proc)
  "Delete the stderr pipe of the backend process PROC, if it is live."
  (let ((stderr (process-get proc 'chatpipe-stderr)))
    (when (process-live-p stderr)
      (delete-process stderr))))

;;;; The send process

(defun chatpipe--sentinel (proc _event)
  "Sentinel of the send process PROC.
When PROC has ended, handle its unfinished last line and, unless
a `done' or `error' event was delivered, deliver an `error' event
that says why it ended."
  (unless (process-live-p proc)
    (chatpipe--flush-pending proc)
    (let ((tail (chatpipe--stderr-tail proc))
          (code (process-exit-status proc))
          (stream (process-get proc 'chatpipe-stream)))
      (unless (chatpipe-stream-finished stream)
        (chatpipe--deliver
         stream
         (list :type "error"
               :message
               (concat (cond ((eq (process-status proc) 'signal)
                              (format "chatpipe was killed by signal %d" code))
                             ((zerop code)
                              "chatpipe ended before the answer was complete")
                             (t (format "chatpipe exited with status %d" code)))
                       (and tail (concat ": " tail)))
               :exit code))))
    (chatpipe--delete-stderr proc)))

(defun chatpipe--send-start (template messages model vars name handler)
  "Start a `chatpipe send' process for one answer; return its stream.
TEMPLATE, MESSAGES, MODEL, VARS, NAME and HANDLER are as for
`chatpipe-process-start'."
  (let* ((command (chatpipe--command))
         (args (append (list "send" template "--output" "ndjson"
                             "--messages" "-")
                       (and model (list "--model" model))
                       (mapcan (lambda (var)
                                 (list "--var" (format "%s=%s"
                                                       (car var) (cdr var))))
                               vars)))
         (default-directory (chatpipe--local-directory))
         (process-environment (chatpipe-process-environment template))
         (process-adaptive-read-buffering nil)
         (json (json-serialize (chatpipe--messages-vector messages)))
         (stderr (chatpipe--stderr-pipe
                  (concat name " stderr")
                  (get-buffer-create (format " *%s stderr*" name))))
         proc stream)
    (condition-case err
        (setq proc (make-process :name name
                                 :command (append command args)
                                 :connection-type 'pipe
                                 :coding 'utf-8-unix
                                 :noquery t
                                 :stderr stderr
                                 :filter #'chatpipe--filter
                                 :sentinel #'chatpipe--sentinel))
      (error (delete-process stderr)
             (signal (car err) (cdr err))))
    (setq stream (chatpipe--stream-create :process proc :handler handler))
    (process-put proc 'chatpipe-stream stream)
    (process-put proc 'chatpipe-stderr stderr)
    (condition-case err
        (progn (process-send-string proc json)
               (process-send-eof proc))
      ;; The process died at once: its sentinel reports why.
      (error (chatpipe--log "%s: cannot write the messages: %s"
                            name (error-message-string err))))
    stream))

;;;; The serve process

(defconst chatpipe--serve-stderr-buffer " *chatpipe serve stderr*"
  "The buffer of the stderr of the shared `chatpipe serve' process.")

(defvar chatpipe--serve-process nil
  "The shared `chatpipe serve' process, or nil.")

(defvar chatpipe--serve-counter 0
  "The number of requests sent to `chatpipe serve' processes so far.")

(defun chatpipe--serve-processes ()
  "Return the live `chatpipe serve' processes: the shared one, retired ones."
  (cl-remove-if-not (lambda (proc) (and (process-get proc 'chatpipe-streams)
                                        (process-live-p proc)))
                    (process-list)))

(defun chatpipe--serve-start (command)
  "Start a `chatpipe serve' process with COMMAND, a list; return it.
It runs in the home folder with the current `process-environment';
its stderr goes to the buffer `chatpipe--serve-stderr-buffer'."
  (let* ((default-directory (let ((default-directory (expand-file-name "~/")))
                              (chatpipe--local-directory)))
         ;; Read each line as soon as it comes: adaptive read buffering
         ;; would wait up to tens of ms for more after a short read.
         (process-adaptive-read-buffering nil)
         (stderr (chatpipe--stderr-pipe
                  "chatpipe serve stderr"
                  (get-buffer-create chatpipe--serve-stderr-buffer)))
         proc)
    (condition-case err
        (setq proc (make-process :name "chatpipe serve"
                                 :command command
                                 :connection-type 'pipe
                                 :coding 'utf-8-unix
                                 :noquery t
                                 :stderr stderr
                                 :filter #'chatpipe--filter
                                 :sentinel #'chatpipe--serve-sentinel))
      (error (delete-process stderr)
             (signal (car err) (cdr err))))
    (process-put proc 'chatpipe-stderr stderr)
    (process-put proc 'chatpipe-streams (make-hash-table :test 'equal))
    proc))

(defun chatpipe-serve-process ()
  "Return the shared `chatpipe serve' process, starting it if needed.
A new process is started on first use, after the last one ended,
and when `chatpipe-command' names another command; a process so
replaced finishes its streams, then ends.  Signal
`chatpipe-backend-missing' if there is no backend."
  (let ((command (append (chatpipe--command) '("serve")))
        (proc chatpipe--serve-process))
    (unless (and (process-live-p proc)
                 (equal (process-command proc) command))
      (when (process-live-p proc)
        (process-put proc 'chatpipe-retired t)
        (chatpipe--serve-maybe-close proc))
      (setq proc (chatpipe--serve-start command))
      (setq chatpipe--serve-process proc))
    proc))

(defun chatpipe--serve-maybe-close (proc)
  "Close the stdin of the serve process PROC if it is retired and idle.
It then ends: no stream is waiting for it."
  (when (and (process-get proc 'chatpipe-retired)
             (zerop (hash-table-count (process-get proc 'chatpipe-streams)))
             (process-live-p proc))
    (ignore-errors (process-send-eof proc))))

(defun chatpipe--serve-fail-pending (proc message)
  "End each pending stream of the serve process PROC with an error.
The `error' event has MESSAGE; the streams leave PROC's table."
  (let ((streams (process-get proc 'chatpipe-streams))
        (pending nil))
    (maphash (lambda (_id stream) (push stream pending)) streams)
    (clrhash streams)
    (dolist (stream (nreverse pending))
      (chatpipe--deliver stream (list :type "error" :message message)))))

(defun chatpipe--serve-sentinel (proc _event)
  "Sentinel of the serve process PROC.
When PROC has ended, handle its unfinished last line, and end each
of its pending streams with an `error' event saying that the
backend died, with its last stderr line.  The next request starts
a new process."
  (unless (process-live-p proc)
    (when (eq proc chatpipe--serve-process)
      (setq chatpipe--serve-process nil))
    (chatpipe--flush-pending proc)
    (let ((tail (chatpipe--stderr-tail proc))
          (code (process-exit-status proc)))
      (chatpipe--serve-fail-pending
       proc
       (concat (cond ((eq (process-status proc) 'signal)
                      (format "the chatpipe backend died: killed by signal %d"
                              code))
                     ((zerop code)
                      "the chatpipe backend ended before the answer was \
complete")
                     (t (format "the chatpipe backend died: exit status %d"
                                code)))
               (and tail (concat ": " tail)))))
    (chatpipe--delete-stderr proc)))

(defun chatpipe-serve-stop ()
  "Stop the `chatpipe serve' processes at once, without waiting for them.
Their pending answers end with an error.  The next answer starts a
new process.  Return the number of processes stopped."
  (interactive)
  (setq chatpipe--serve-process nil)
  (let ((procs (chatpipe--serve-processes)))
    (dolist (proc procs)
      (chatpipe--serve-fail-pending proc "the chatpipe backend was stopped")
      (delete-process proc)
      (chatpipe--delete-stderr proc))
    (when (called-interactively-p 'interactive)
      (message "chatpipe: stopped %d backend process%s"
               (length procs) (if (= (length procs) 1) "" "es")))
    (length procs)))

(defun chatpipe--serve-kill-on-exit ()
  "Stop the `chatpipe serve' processes as Emacs exits, without waiting.
They get SIGTERM, which ends their streams at once; nothing is
delivered any more."
  (dolist (proc (chatpipe--serve-processes))
    (set-process-sentinel proc #'ignore)
    (set-process-filter proc #'ignore)
    (ignore-errors (signal-process proc 'SIGTERM))))

(add-hook 'kill-emacs-hook #'chatpipe--serve-kill-on-exit)

(defun chatpipe--string-table (alist)
  "Return ALIST, (NAME . VALUE) pairs of strings, as a hash table for JSON."
  (let ((table (make-hash-table :test 'equal)))
    (pcase-dolist (`(,name . ,value) alist)
      (puthash name value table))
    table))

(defun chatpipe--messages-vector (messages)
  "Return MESSAGES, (ROLE . CONTENT) pairs, as a vector for JSON."
  (vconcat (mapcar (lambda (m) `((role . ,(car m)) (content . ,(cdr m))))
                   messages)))

(defun chatpipe--serve-send (template messages model vars handler)
  "Send a request to the shared `chatpipe serve' process; return its stream.
TEMPLATE, MESSAGES, MODEL, VARS and HANDLER are as for
`chatpipe-process-start'.  The variables the template needs (see
`chatpipe-template-env') go in the request's `env'."
  (let* ((env (chatpipe-template-env template))
         (proc (chatpipe-serve-process))
         (id (format "emacs-%d" (cl-incf chatpipe--serve-counter)))
         (stream (chatpipe--stream-create :id id :process proc
                                          :handler handler))
         (line (concat
                (json-serialize
                 `((id . ,id)
                   (template . ,(if (chatpipe--template-path-p template)
                                    (expand-file-name template)
                                  template))
                   (messages . ,(chatpipe--messages-vector messages))
                   ,@(and model `((model . ,model)))
                   ,@(and vars `((vars . ,(chatpipe--string-table vars))))
                   ,@(and env `((env . ,(chatpipe--string-table env))))))
                "\n")))
    (puthash id stream (process-get proc 'chatpipe-streams))
    (condition-case err
        (process-send-string proc line)
      ;; The process has died: its sentinel ends the stream.
      (error (chatpipe--log "%s: cannot write the request: %s"
                            (chatpipe--stream-name stream)
                            (error-message-string err))))
    stream))

;;;; Streams: start, abort

(cl-defun chatpipe-process-start (&key template messages model vars name
                                       handler)
  "Start streaming an answer to MESSAGES with TEMPLATE; return its stream.
TEMPLATE is a template name or a .json file name.  MESSAGES is a
list of (ROLE . CONTENT) pairs of strings, appended after the
template's own messages.  MODEL, if non-nil, overrides the
template's model; VARS is an alist of (NAME . VALUE) strings for
the template's `${NAME}' placeholders.

With `chatpipe-backend-mode' `serve', the request goes to the
shared `chatpipe serve' process (see `chatpipe-serve-process'),
with the API keys the template needs in its `env'.  With `send', a
`chatpipe send' process is started for it, named NAME (its stderr
buffer too), with the messages on its stdin and the API keys in
its environment (see `chatpipe-process-environment').  Either way
no key is ever on a command line.

HANDLER is called in turn with each event, a plist such as
\(:type \"delta\" :content \"Hi\"), until and including the first
`done' or `error' event; if the process ends without one, an
`error' event with its exit status and last stderr line is
delivered.  After `chatpipe-process-abort', nothing more is
delivered.  The value is a `chatpipe-stream'.  Signal
`chatpipe-backend-missing' if there is no backend."
  (pcase chatpipe-backend-mode
    ('send (chatpipe--send-start template messages model vars
                                 (or name "chatpipe") handler))
    (_ (chatpipe--serve-send template messages model vars handler))))

(defun chatpipe-process-abort (stream)
  "Stop STREAM at once; deliver no more of its events.
On a `chatpipe serve' process, send a cancel for it: the backend
closes its HTTP response.  A `chatpipe send' process gets SIGTERM,
and is killed if it is still there a few seconds later.  Do not
wait for either.  Return nil."
  (let ((proc (chatpipe-stream-process stream))
        (id (chatpipe-stream-id stream))
        (finished (chatpipe-stream-finished stream)))
    (setf (chatpipe-stream-finished stream) t)
    (cond ((and id (not finished) (process-live-p proc))
           ;; The stream stays in the table until the backend's last
           ;; event for it, which will be dropped.
           (condition-case err
               (process-send-string
                proc (concat (json-serialize `((id . ,id) (cancel . t)))
                             "\n"))
             (error (chatpipe--log "%s: cannot cancel: %s"
                                   (chatpipe--stream-name stream)
                                   (error-message-string err)))))
          ((and (not id) (process-live-p proc))
           (ignore-errors (signal-process proc 'SIGTERM))
           (run-at-time 3 nil (lambda ()
                                (when (process-live-p proc)
                                  (delete-process proc)))))))
  nil)

(provide 'chatpipe-process)
;;; chatpipe-process.el ends here
