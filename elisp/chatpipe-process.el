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
;; starting `chatpipe send TEMPLATE --output ndjson --messages -', writing
;; the messages to its stdin as JSON, and turning its stdout (one JSON
;; event per line, protocol v1) into calls of an event handler.
;;
;; The process filter keeps the partial last line between calls (as a list
;; of pieces, joined once the newline arrives), splits on newlines and
;; parses each complete line with `json-parse-string': the work per line is
;; proportional to that line.  A line that is not JSON goes to the
;; diagnostics buffer `chatpipe-log-buffer-name'.  The sentinel delivers a
;; final `error' event when the process ends without a `done' or `error'
;; line of its own (a crash, a non-zero exit), with the last line of its
;; stderr, which goes to a buffer of its own.
;;
;; API keys: the environment variables a template needs (its `${env:NAME}'
;; placeholders) that are not set are looked up in `auth-source' (host:
;; the template's URL host) and passed in the process environment, never
;; on the command line.

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

(defun chatpipe-template-file (template)
  "Return the file of TEMPLATE, a template name or a file name.
A name is resolved by the backend (`chatpipe templates path').
Return nil if it cannot be resolved."
  (if (or (string-suffix-p ".json" template) (string-search "/" template))
      (expand-file-name template)
    (pcase (condition-case nil (chatpipe-call "templates" "path" template)
             (chatpipe-error nil))
      (`(0 . ,out) (string-trim out)))))

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

(defun chatpipe-process-environment (template)
  "Return `process-environment' completed with the API keys TEMPLATE needs.
TEMPLATE is a name or a file name.  Each `${env:NAME}' variable of
the template that is not set is looked up in `auth-source' (host:
the template's URL host) and added as NAME=KEY when found."
  (pcase-let ((`(,host . ,names)
               (chatpipe--template-needs (chatpipe-template-file template)))
              (env process-environment))
    (dolist (name names)
      (when (and host (member (getenv name) '(nil "")))
        (when-let ((secret (chatpipe--auth-source-secret host)))
          (push (concat name "=" secret) env))))
    env))

;;;; The send process

(defun chatpipe--deliver (proc event)
  "Call the event handler of PROC with EVENT, a plist.
After a `done' or `error' event, later events are dropped.  An
error in the handler is logged, not raised (unless `debug-on-error')."
  (unless (process-get proc 'chatpipe-finished)
    (when (member (plist-get event :type) '("done" "error"))
      (process-put proc 'chatpipe-finished t))
    (condition-case-unless-debug err
        (funcall (process-get proc 'chatpipe-handler) event)
      (error (chatpipe--log "%s: error in event handler: %S"
                            (process-name proc) err)
             (message "chatpipe: %s" (error-message-string err))))))

(defun chatpipe--handle-line (proc line)
  "Parse LINE, one line of PROC's stdout, and deliver its event."
  (unless (string-empty-p (string-trim line))
    (let ((event (condition-case nil
                     (json-parse-string line :object-type 'plist
                                        :null-object nil
                                        :false-object nil)
                   (json-error nil))))
      (if (and (plist-member event :type) (stringp (plist-get event :type)))
          (chatpipe--deliver proc event)
        (chatpipe--log "%s: not a protocol event: %s"
                       (process-name proc) line)))))

(defun chatpipe--filter (proc string)
  "Process filter of the send process PROC, which wrote STRING.
Keep the partial last line between calls; parse and deliver each
complete line."
  (let ((start 0) newline)
    (while (setq newline (string-search "\n" string start))
      (let ((piece (substring string start newline))
            (pending (process-get proc 'chatpipe-pending)))
        (process-put proc 'chatpipe-pending nil)
        (chatpipe--handle-line
         proc (if pending
                  (apply #'concat (nreverse (cons piece pending)))
                piece)))
      (setq start (1+ newline)))
    (when (< start (length string))
      (process-put proc 'chatpipe-pending
                   (cons (substring string start)
                         (process-get proc 'chatpipe-pending))))))

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

(defun chatpipe--sentinel (proc _event)
  "Sentinel of the send process PROC.
When PROC has ended, handle its unfinished last line and, unless
a `done' or `error' event was delivered, deliver an `error' event
that says why it ended."
  (unless (process-live-p proc)
    (let ((pending (process-get proc 'chatpipe-pending)))
      (when pending
        (process-put proc 'chatpipe-pending nil)
        (chatpipe--handle-line proc (apply #'concat (nreverse pending)))))
    (let ((tail (chatpipe--stderr-tail proc))
          (code (process-exit-status proc)))
      (unless (process-get proc 'chatpipe-finished)
        (chatpipe--deliver
         proc
         (list :type "error"
               :message
               (concat (cond ((eq (process-status proc) 'signal)
                              (format "chatpipe was killed by signal %d" code))
                             ((zerop code)
                              "chatpipe ended before the answer was complete")
                             (t (format "chatpipe exited with status %d" code)))
                       (and tail (concat ": " tail)))
               :exit code))))
    (let ((stderr (process-get proc 'chatpipe-stderr)))
      (when (process-live-p stderr)
        (delete-process stderr)))))

(cl-defun chatpipe-process-start (&key template messages model vars name
                                       handler)
  "Start a backend process that sends MESSAGES with TEMPLATE.
TEMPLATE is a template name or a .json file name.  MESSAGES is a
list of (ROLE . CONTENT) pairs of strings, appended after the
template's own messages.  MODEL, if non-nil, overrides the
template's model; VARS is an alist of (NAME . VALUE) strings for
the template's `${NAME}' placeholders.  NAME names the process and
its stderr buffer.

HANDLER is called in turn with each event, a plist such as
\(:type \"delta\" :content \"Hi\"), until and including the first
`done' or `error' event; if the process ends without one, an
`error' event with its exit status and last stderr line is
delivered.  After `chatpipe-process-abort', nothing more is
delivered.

The messages are written to the process's stdin as JSON, and API
keys are passed in its environment (see
`chatpipe-process-environment'), never on its command line.
Return the process.  Signal `chatpipe-backend-missing' if there
is no backend."
  (let* ((command (chatpipe--command))
         (name (or name "chatpipe"))
         (args (append (list "send" template "--output" "ndjson"
                             "--messages" "-")
                       (and model (list "--model" model))
                       (mapcan (lambda (var)
                                 (list "--var" (format "%s=%s"
                                                       (car var) (cdr var))))
                               vars)))
         (default-directory (chatpipe--local-directory))
         (process-environment (chatpipe-process-environment template))
         (stderr-buffer (get-buffer-create (format " *%s stderr*" name)))
         (json (json-serialize
                (vconcat (mapcar (lambda (m)
                                   `((role . ,(car m)) (content . ,(cdr m))))
                                 messages))))
         stderr proc)
    (with-current-buffer stderr-buffer
      (let ((inhibit-read-only t)) (erase-buffer)))
    (setq stderr (make-pipe-process :name (concat name " stderr")
                                    :buffer stderr-buffer
                                    :coding 'utf-8-unix
                                    :noquery t
                                    :sentinel #'ignore))
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
    (process-put proc 'chatpipe-handler handler)
    (process-put proc 'chatpipe-stderr stderr)
    (condition-case err
        (progn (process-send-string proc json)
               (process-send-eof proc))
      ;; The process died at once: its sentinel reports why.
      (error (chatpipe--log "%s: cannot write the messages: %s"
                            name (error-message-string err))))
    proc))

(defun chatpipe-process-abort (proc)
  "Stop the send process PROC at once; deliver no more of its events.
Send it SIGTERM, so that it closes the HTTP response, and kill it
if it is still there a few seconds later.  Do not wait for it.
Return nil."
  (process-put proc 'chatpipe-finished t)
  (when (process-live-p proc)
    (ignore-errors (signal-process proc 'SIGTERM))
    (run-at-time 3 nil (lambda ()
                         (when (process-live-p proc)
                           (delete-process proc)))))
  nil)

(provide 'chatpipe-process)
;;; chatpipe-process.el ends here
