;;; chatpipe-events.el --- The backend's events, routed to their streams -*- lexical-binding: t; -*-

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

;; The stdout of a backend process (one JSON event per line, protocol
;; v2) turned into calls of each answer's handler: the process filter
;; (`chatpipe--filter'), which parses complete lines in place, in
;; linear time, and routes each event to its `chatpipe-stream' (by the
;; request id `id' on the shared `chatpipe serve' process; a `chatpipe
;; send' process has one stream).
;;
;; One place decides when text reaches the handler (and so the chat
;; buffer): `chatpipe--deliver-text'.  The first text of an answer is
;; handed on at once, later text at most every
;; `chatpipe-insert-interval' seconds (a timer hands on what came
;; meanwhile, joined); any other event of the answer hands on the text
;; held first, so that the order stays.  A fast answer is then
;; inserted, and the buffer redisplayed, a few dozen times a second,
;; not once per read.  Nothing else holds text back: the backend
;; writes the text of each of its network reads at once, joined, and
;; the filter joins the text events of one read of Emacs.
;;
;; Emacs reads the serve process's output with adaptive read buffering
;; (see `chatpipe--start-process'): after a short read it waits up to
;; tens of ms before it reads again, so that a paced answer is read in
;; few reads.  Each write to the process ends that wait: an empty line
;; (`chatpipe--stream-read-now'), until an answer's first text and
;; each time text is handed on, so that the wait never keeps text
;; longer than `chatpipe--deliver-text' would.  Read at once instead,
;; without the empty lines, a paced answer costs Emacs a quarter more
;; CPU (2,000 deltas 1 ms apart into a visible chat: 0.55 s instead of
;; 0.43 s, one read and redisplay per delta).
;;
;; The protocol check: `chatpipe serve' says first which protocol it
;; speaks (its `ready' line), and every answer's `start' event says it
;; too.  A backend that speaks another protocol than
;; `chatpipe-protocol-version' ends its pending answers with an error
;; that says how to update it, and is stopped.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-backend)

(defcustom chatpipe-insert-interval 0.02
  "Seconds between two insertions of an answer's text, at the least.
The first text of an answer is inserted as soon as it arrives; text
that arrives less than this after the last insertion waits, and is
inserted with what follows when the time has passed, or at once
when the answer ends or anything else comes (a tool call, reasoning
after answer text...), so that the order stays.  Fewer insertions
make fewer redisplays and less fontification while a fast answer
streams; 0 inserts each piece as it is read."
  :type 'number
  :group 'chatpipe)

(defconst chatpipe-protocol-version 2
  "The version of the backend's protocol that this package speaks.")

(defvar chatpipe--serve-process nil
  "The shared `chatpipe serve' process, or nil.")

;;;; Streams

(cl-defstruct (chatpipe-stream (:constructor chatpipe--stream-create)
                               (:copier nil))
  "One answer streaming from a backend process.
ID is its request id on a shared `chatpipe serve' process, or nil
when it has a `chatpipe send' process of its own; PROCESS is that
process.  HANDLER is called with each of its events.  FINISHED is
non-nil once its `done' or `error' event has been delivered, or
once it was aborted: nothing more is delivered then.  HELD is the
text waiting to be handed on, (TYPE . CONTENTS) with CONTENTS newest
first, and TIMER the timer that will hand it on; TEXT-TIME is when
text was last handed on, TYPES the types of text handed on so far."
  id process handler finished held timer (text-time 0.0) types)

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

(defun chatpipe--call-handler (stream event)
  "Call the event handler of STREAM with EVENT, a plist.
An error in the handler is logged, not raised (unless `debug-on-error')."
  (condition-case-unless-debug err
      (funcall (chatpipe-stream-handler stream) event)
    (error (chatpipe--log "%s: error in event handler: %S"
                          (chatpipe--stream-name stream) err)
           (message "chatpipe: %s" (error-message-string err)))))

(defun chatpipe--stream-read-now (stream)
  "Have Emacs read the next output for STREAM as soon as it comes.
The output of the serve process is read with adaptive read
buffering (see `chatpipe--start-process'), which after a short read
waits up to tens of ms before it reads again; a write to the process
ends the wait: an empty line, which `chatpipe serve' ignores.  The
output of a `chatpipe send' process is read at once: nothing is
written to it."
  (let ((proc (chatpipe-stream-process stream)))
    (when (and (process-get proc 'chatpipe-serve) (process-live-p proc))
      (ignore-errors (process-send-string proc "\n")))))

(defun chatpipe--hand-text (stream type content)
  "Hand CONTENT, text of TYPE, to the handler of STREAM now.
The text that follows is read as soon as it comes, and handed on at
once or after `chatpipe-insert-interval' (see
`chatpipe--stream-read-now')."
  (setf (chatpipe-stream-text-time stream) (float-time))
  (unless (member type (chatpipe-stream-types stream))
    (push type (chatpipe-stream-types stream)))
  (chatpipe--call-handler stream (list :type type :content content))
  (chatpipe--stream-read-now stream))

(defun chatpipe--stream-release (stream)
  "Hand on now the text held back for STREAM (see `chatpipe-insert-interval').
Do nothing if it holds none."
  (when (chatpipe-stream-timer stream)
    (cancel-timer (chatpipe-stream-timer stream))
    (setf (chatpipe-stream-timer stream) nil))
  (let ((held (chatpipe-stream-held stream)))
    (when held
      (setf (chatpipe-stream-held stream) nil)
      (unless (chatpipe-stream-finished stream)
        (chatpipe--hand-text stream (car held)
                             (if (cddr held)
                                 (apply #'concat (nreverse (cdr held)))
                               (cadr held)))))))

(defun chatpipe--deliver-text (stream type content)
  "Hand CONTENT, text of TYPE, to the handler of STREAM, now or soon.
The first text of each TYPE goes at once, and so does text that
comes `chatpipe-insert-interval' seconds or more after the last;
other text is held and handed on, joined, by a timer when that time
has passed (see `chatpipe--stream-release')."
  (unless (chatpipe-stream-finished stream)
    (let ((held (chatpipe-stream-held stream)))
      (if (and held (equal (car held) type))
          (setcdr held (cons content (cdr held)))
        (when held (chatpipe--stream-release stream))
        (let ((wait (- (+ (chatpipe-stream-text-time stream)
                          chatpipe-insert-interval)
                       (float-time))))
          (if (or (<= wait 0)
                  (not (member type (chatpipe-stream-types stream))))
              (chatpipe--hand-text stream type content)
            (setf (chatpipe-stream-held stream) (list type content))
            (setf (chatpipe-stream-timer stream)
                  (run-at-time wait nil #'chatpipe--stream-release stream))))))))

(defun chatpipe--deliver (stream event)
  "Call the event handler of STREAM with EVENT, a plist.
The text STREAM holds goes first.  After a `done' or `error' event,
later events are dropped.  Until STREAM's first text, its next
output is read as soon as it comes (see `chatpipe--stream-read-now')."
  (unless (chatpipe-stream-finished stream)
    (chatpipe--stream-release stream)
    (if (member (plist-get event :type) '("done" "error"))
        (setf (chatpipe-stream-finished stream) t)
      ;; The first text must not wait.
      (unless (chatpipe-stream-types stream)
        (chatpipe--stream-read-now stream)))
    (chatpipe--call-handler stream event)))

(defun chatpipe--maybe-close (proc)
  "Close the stdin of the serve process PROC if retired and idle (it ends)."
  (when (and (process-get proc 'chatpipe-retired)
             (zerop (hash-table-count (process-get proc 'chatpipe-streams)))
             (process-live-p proc))
    (ignore-errors (process-send-eof proc))))

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

;;;; The protocol version

(defun chatpipe--protocol-error-text (protocol)
  "Return the error message for a backend of another PROTOCOL than ours."
  (format "the chatpipe backend speaks protocol %s, this package speaks %d%s"
          protocol chatpipe-protocol-version
          (if (fboundp 'chatpipe-install-backend)
              ": M-x chatpipe-install-backend updates it"
            ": update it")))

(defun chatpipe--protocol-event (proc event)
  "Act on EVENT of PROC if it names the protocol PROC speaks.
A `ready' line (from `chatpipe serve', its first) gives PROC's
properties `chatpipe-protocol' and `chatpipe-version'.  If a `ready'
or `start' event names another protocol than
`chatpipe-protocol-version', PROC's pending streams end with an
error that says so, and PROC is stopped.  Return non-nil if EVENT
is no event for a stream: a `ready' line, or a `start' of the
wrong protocol."
  (let ((type (plist-get event :type)))
    (when (member type '("ready" "start"))
      (let ((protocol (plist-get event :protocol)))
        (when (equal type "ready")
          (process-put proc 'chatpipe-protocol protocol)
          (process-put proc 'chatpipe-version (plist-get event :version)))
        (when (and (numberp protocol) (/= protocol chatpipe-protocol-version))
          (let ((message (chatpipe--protocol-error-text protocol)))
            (chatpipe--log "%s: %s" (process-name proc) message)
            (process-put proc 'chatpipe-mismatch message)
            (when (eq proc chatpipe--serve-process)
              (setq chatpipe--serve-process nil))
            (chatpipe--fail-pending proc message)
            ;; Not `delete-process', which would run the sentinel now.
            (ignore-errors (signal-process proc 'SIGTERM))))
        (or (equal type "ready") (process-get proc 'chatpipe-mismatch))))))

;;;; Lines to events

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
  "Deliver RUN, text events joined, as one piece of text.
RUN is nil or a list (STREAM TYPE . CONTENTS), CONTENTS the texts
of consecutive events of TYPE for STREAM, newest first.  See
`chatpipe--deliver-text'."
  (when run
    (let ((contents (cddr run)))
      (chatpipe--deliver-text (car run) (cadr run)
                              (if (cdr contents)
                                  (apply #'concat (nreverse contents))
                                (car contents))))))

(defconst chatpipe--text-line-regexp
  (concat "{\\(?:\"id\":\"\\([-_.:[:alnum:]]+\\)\",\\)?"
          "\"type\":\"\\(?:\\(delta\\)\\|reasoning\\)\",\"content\":")
  "The start of a line of text as the backend writes it, to its content.
That is {\"id\":ID,\"type\":TYPE,\"content\": (`chatpipe send' writes
no id).  Group 1 is the id; group 2 matches if TYPE is \"delta\".")

(defun chatpipe--text-line-stream (proc run id-beg id-end)
  "Return the pending stream of PROC that a line of text is for, or nil.
The line's id, if it has one, is the text from ID-BEG to ID-END; RUN
is as for `chatpipe--deliver-run'.  See `chatpipe--event-stream'.
Move point."
  (let ((streams (process-get proc 'chatpipe-streams)))
    (cond ((not (process-get proc 'chatpipe-serve)) (gethash nil streams))
          ((null id-beg) nil)
          ;; The stream of the last line, without a string made for the id.
          ((let ((id (and run (chatpipe-stream-id (car run)))))
             (and (stringp id) (= (length id) (- id-end id-beg))
                  (progn (goto-char id-beg) (search-forward id id-end t))))
           (car run))
          (t (gethash (buffer-substring-no-properties id-beg id-end)
                      streams)))))

(defun chatpipe--read-text-line (proc run start end)
  "Add the line from START to END to RUN if it is a line of text.
That is a line of PROC's stdout, in the current buffer, of the form
`chatpipe--text-line-regexp', its content a JSON string and nothing
after it, for a pending stream: the most common line by far, read
here without a JSON object (and its keys) made for it.  RUN is as for
`chatpipe--deliver-run'; it is delivered first if the line is for
another stream or of another type.  Return the run the line is in,
or nil if it is no such line.  Move point."
  (goto-char start)
  (when (looking-at chatpipe--text-line-regexp)
    (let* ((id-beg (match-beginning 1))
           (id-end (match-end 1))
           (type (if (match-beginning 2) "delta" "reasoning"))
           (content (save-restriction
                      (narrow-to-region (match-end 0) end)
                      (goto-char (point-min))
                      (ignore-errors (json-parse-buffer))))
           (stream (and (stringp content) (eq (char-after) ?\})
                        (progn (forward-char 1)
                               (skip-chars-forward " \t\r" end)
                               (= (point) end))
                        (chatpipe--text-line-stream proc run id-beg id-end))))
      (when stream
        (if (and (eq (car run) stream) (equal (cadr run) type))
            (progn (setcdr (cdr run) (cons content (cddr run)))
                   run)
          (chatpipe--deliver-run run)
          (list stream type content))))))

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

(defun chatpipe--log-stray (proc start end)
  "Log the line of PROC's output from START to END: an event for no stream."
  (chatpipe--log "%s: event for no stream: %s" (process-name proc)
                 (buffer-substring-no-properties start (1- end))))

(defun chatpipe--read-lines (proc)
  "Deliver the events of the complete lines in PROC's input buffer.
Delete them from the buffer, which is current.  Consecutive text
events of one stream (see `chatpipe--text-event-p') are joined
into one piece of text, so that a fast stream is inserted in a few
pieces per read.  The newline search goes on from where it stopped
the last time, so that a long line is searched once."
  (let ((input (current-buffer))
        (start (point-min))
        (run nil)
        (done nil)
        end)
    (unwind-protect
        (progn
          (goto-char (or (process-get proc 'chatpipe-scanned) start))
          (while (setq end (search-forward "\n" nil t))
            (let* ((text (chatpipe--read-text-line proc run start (1- end)))
                   (event (and (not text)
                               (chatpipe--parse-line proc start (1- end)))))
              (cond (text (setq run text))
                    ((null event))
                    ((chatpipe--text-event-p event)
                     (let ((stream (chatpipe--event-stream proc event))
                           (type (plist-get event :type))
                           (content (plist-get event :content)))
                       (cond ((null stream)
                              (chatpipe--log-stray proc start end))
                             ((and (eq (car run) stream)
                                   (equal (cadr run) type))
                              (setcdr (cdr run) (cons content (cddr run))))
                             (t (chatpipe--deliver-run run)
                                (setq run (list stream type content))))))
                    (t (chatpipe--deliver-run run)
                       (setq run nil)
                       (unless (chatpipe--protocol-event proc event)
                         (let ((stream (chatpipe--event-stream proc event)))
                           (if stream
                               (chatpipe--deliver stream event)
                             (chatpipe--log-stray proc start end)))))))
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

(provide 'chatpipe-events)
;;; chatpipe-events.el ends here
