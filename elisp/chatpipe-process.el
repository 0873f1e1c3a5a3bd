;;; chatpipe-process.el --- Backend processes and the NDJSON protocol for chatpipe -*- lexical-binding: t; -*-

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

;; Requests to the `chatpipe' backend, and its stdout (one JSON event
;; per line, protocol v2) turned into calls of each answer's handler.
;; One process layer (`chatpipe--start-process', `chatpipe--filter',
;; `chatpipe--sentinel', a table of pending `chatpipe-stream's) serves
;; the shared `chatpipe serve' process, whose events carry our request
;; id as `id', and one-shot `chatpipe send' processes (one stream each).
;; A process that ends ends its pending streams with an `error' event.
;; The filter parses complete lines in place, in linear time; text
;; events of one answer in one read are joined.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-backend)

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
That is until its `done' or `error' event, abort or process end."
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

(defun chatpipe--event-stream (proc event)
  "Return the pending stream of PROC that EVENT is for, or nil.
On a `chatpipe serve' process that is the stream EVENT's `id'
names (the request id: the backend renames an event's own ids);
on a `chatpipe send' process, its one stream.  A `done' or `error'
event takes its stream out of PROC's table."
  (let* ((streams (process-get proc 'chatpipe-streams))
         (id (and (process-get proc 'chatpipe-serve) (plist-get event :id)))
         (stream (and streams (gethash id streams))))
    (when (and stream (member (plist-get event :type) '("done" "error")))
      (remhash id streams)
      (chatpipe--maybe-close proc))
    stream))

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

(defun chatpipe--delete-stderr (proc)
  "Delete the stderr pipe of the backend process PROC, if it is live."
  (let ((stderr (process-get proc 'chatpipe-stderr)))
    (when (process-live-p stderr) (delete-process stderr))))

;;;; Processes

(defvar chatpipe--serve-process nil
  "The shared `chatpipe serve' process, or nil.")

(defvar chatpipe--serve-counter 0
  "The number of requests sent to `chatpipe serve' processes so far.")

(defun chatpipe--start-process (name command stderr-buffer &optional serve)
  "Start a backend process NAME running COMMAND, a list; return it.
Its stderr goes to STDERR-BUFFER, emptied first; its stdout to
`chatpipe--filter'.  SERVE non-nil means a `chatpipe serve'
process, whose events are routed by their `id'; else a one-shot
`chatpipe send' process.  It runs in `default-directory' with
`process-environment'.  It has a table of pending streams, empty
until `chatpipe--request'."
  (let* (;; Read each line as soon as it comes: adaptive read buffering
         ;; would wait up to tens of ms for more after a short read.
         (process-adaptive-read-buffering nil)
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

(defun chatpipe--request (stream input &optional eof)
  "Make STREAM pending on its process and write INPUT to it.
With EOF non-nil, close the process's stdin then.  If the process
cannot be written to, log it: its sentinel ends STREAM.  Return
STREAM."
  (let ((proc (chatpipe-stream-process stream)))
    (puthash (chatpipe-stream-id stream) stream
             (process-get proc 'chatpipe-streams))
    (condition-case err
        (progn (process-send-string proc input)
               (when eof (process-send-eof proc)))
      (error (chatpipe--log "%s: cannot write the request: %s"
                            (chatpipe--stream-name stream)
                            (error-message-string err))))
    stream))

(defun chatpipe--fail-pending (proc message &optional code)
  "End each pending stream of PROC with an `error' event with MESSAGE.
CODE, if non-nil, is the process's exit status, given as :exit.
The streams leave PROC's table."
  (let ((streams (process-get proc 'chatpipe-streams))
        (pending nil))
    (when streams
      (maphash (lambda (_id stream) (push stream pending)) streams)
      (clrhash streams))
    (dolist (stream (nreverse pending))
      (chatpipe--deliver stream `(:type "error" :message ,message
                                        ,@(and code (list :exit code)))))))

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

(defun chatpipe--maybe-close (proc)
  "Close the stdin of the serve process PROC if retired and idle (it ends)."
  (when (and (process-get proc 'chatpipe-retired)
             (zerop (hash-table-count (process-get proc 'chatpipe-streams)))
             (process-live-p proc))
    (ignore-errors (process-send-eof proc))))

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
      (setq proc (let ((default-directory
                        (let ((default-directory (expand-file-name "~/")))
                          (chatpipe--local-directory))))
                   (chatpipe--start-process
                    "chatpipe serve" command
                    (get-buffer-create " *chatpipe serve stderr*") t)))
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

(cl-defun chatpipe-process-start (&key template messages model vars params
                                       name handler)
  "Start streaming an answer to MESSAGES with TEMPLATE; return its stream.
TEMPLATE is a template name or a .json file name.  MESSAGES is a
list of (ROLE . CONTENT) pairs of strings, appended after the
template's own (a system message replaces their system prompt).
MODEL, if non-nil, overrides the template's model; VARS is an alist
of (NAME . VALUE) strings for its `${NAME}' placeholders; PARAMS an
alist such as ((temperature . 0.7) (max_tokens . 500)), given as
the request's \"params\" or as options.  The request goes to the
shared serve process, or to a send process named NAME (see
`chatpipe-backend-mode'); the API keys the template needs (see
`chatpipe-template-env') go in the request or the process
environment, never on a command line.

HANDLER is called with each event, a plist such as \(:type
\"delta\" :content \"Hi\"), up to the first `done' or `error'
event; if the process ends without one, an `error' event is
delivered.  After `chatpipe-process-abort', nothing more is.  The
value is a `chatpipe-stream'.  Signal `chatpipe-backend-missing'
if there is no backend."
  (let* ((entry (chatpipe-template-info template))
         (template (chatpipe--template-argument template entry))
         (env (chatpipe--entry-env entry))
         (json-messages (chatpipe--messages-vector messages)))
    (if (eq chatpipe-backend-mode 'send)
        (let* ((name (or name "chatpipe"))
               (default-directory (chatpipe--local-directory))
               (process-environment (chatpipe--environment-with env))
               (proc (chatpipe--start-process
                      name
                      (append (chatpipe--command)
                              (list "send" template "--output" "ndjson"
                                    "--messages" "-")
                              (and model (list "--model" model))
                              (mapcan (lambda (var)
                                        (list "--var" (format "%s=%s" (car var)
                                                              (cdr var))))
                                      vars)
                              (chatpipe--param-options params))
                      (get-buffer-create (format " *%s stderr*" name)))))
          (chatpipe--request
           (chatpipe--stream-create :process proc :handler handler)
           (json-serialize json-messages) t))
      (let ((id (format "emacs-%d" (cl-incf chatpipe--serve-counter))))
        (chatpipe--request
         (chatpipe--stream-create :id id :process (chatpipe-serve-process)
                                  :handler handler)
         (concat (json-serialize
                  `((id . ,id)
                    (template . ,template)
                    (messages . ,json-messages)
                    ,@(and model `((model . ,model)))
                    ,@(and vars `((vars . ,(chatpipe--string-table vars))))
                    ,@(and params `((params . ,params)))
                    ,@(and env `((env . ,(chatpipe--string-table env))))))
                 "\n"))))))

(defun chatpipe-process-abort (stream)
  "Stop STREAM at once; deliver no more of its events.
On a `chatpipe serve' process, send a cancel for it: the backend
closes its HTTP response.  A `chatpipe send' process gets SIGTERM,
and is killed if it is still there a few seconds later.  Do not
wait for either.  Return nil."
  (let ((proc (chatpipe-stream-process stream))
        (finished (chatpipe-stream-finished stream)))
    (setf (chatpipe-stream-finished stream) t)
    (cond ((not (process-live-p proc)))
          ((process-get proc 'chatpipe-serve)
           ;; The stream stays in the table until the backend's last
           ;; event for it, which will be dropped.
           (unless finished
             (condition-case err
                 (process-send-string
                  proc (concat (json-serialize
                                `((id . ,(chatpipe-stream-id stream))
                                  (cancel . t)))
                               "\n"))
               (error (chatpipe--log "%s: cannot cancel: %s"
                                     (chatpipe--stream-name stream)
                                     (error-message-string err))))))
          (t (ignore-errors (signal-process proc 'SIGTERM))
             (run-at-time 3 nil (lambda ()
                                  (when (process-live-p proc)
                                    (delete-process proc)))))))
  nil)

(provide 'chatpipe-process)
;;; chatpipe-process.el ends here
