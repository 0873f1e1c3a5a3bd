;;; chatpipe-chat.el --- Streaming answers into chat buffers for chatpipe -*- lexical-binding: t; -*-

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

;; Streaming answers into chat buffers.  Sending parses the turns into
;; messages, inserts an assistant heading and sends a request to the
;; backend, with the chat's tools if it has any (see
;; chatpipe-tools.el); the backend's events are inserted as they come
;; (see chatpipe-insert.el), and the `tool_request' events answered.
;; At the end, a user heading is added for the next question; an
;; aborted, failed, truncated or empty answer ends with a note, not
;; sent back.
;;
;; Undo: the heading is an ordinary undo step of the sending command.
;; The answer is inserted with undo recording off and, when it ends,
;; recorded as one undo step that deletes all of it; so one undo removes
;; the answer and only the answer, whatever the user typed elsewhere
;; meanwhile.  If nothing was recorded while it streamed, that step
;; joins the heading's.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-backend)
(require 'chatpipe-process)
(require 'chatpipe-turns)
(require 'chatpipe-org)
(require 'chatpipe-reasoning)
(require 'chatpipe-chat-settings)
(require 'chatpipe-header)
(require 'chatpipe-usage)
(require 'chatpipe-hints)
(require 'chatpipe-insert)
(require 'chatpipe-tools)
(require 'chatpipe-context-items)

;;;; The end of an answer

(defun chatpipe--job-done-kind (job)
  "Return how JOB, which ended with `done', went; see `chatpipe--done-kind'."
  (chatpipe--done-kind (chatpipe--job-finish-reason job)
                       (chatpipe--job-chars job) (chatpipe--job-tools job)))

(defun chatpipe--insert-done-note (job)
  "Insert at point the note of JOB's answer if it is truncated or empty.
See `chatpipe--done-notes'."
  (let ((note (alist-get (chatpipe--job-done-kind job) chatpipe--done-notes)))
    (when note
      (chatpipe--ensure-blank-line)
      (insert note))))

(defun chatpipe--cancel-timer (job)
  "Cancel the retry timer of JOB, if any."
  (when (chatpipe--job-timer job)
    (cancel-timer (chatpipe--job-timer job))
    (setf (chatpipe--job-timer job) nil)))

(defun chatpipe--retry-wait (job attempt)
  "Show in the status that JOB waits for the answer of retry ATTEMPT."
  (setf (chatpipe--job-timer job) nil)
  (let ((buffer (chatpipe--job-buffer job)))
    (when (buffer-live-p buffer)
      (with-current-buffer buffer
        (when (eq chatpipe--job job)
          (chatpipe--set-status "waiting... (retry %s)" attempt))))))

(defun chatpipe--release (job)
  "Let go of the markers and the timers of JOB, which has ended.
Its tool runs end too (see `chatpipe--tool-runs-stop')."
  (chatpipe--cancel-timer job)
  (chatpipe--tool-runs-stop (chatpipe--job-runs job))
  (when (chatpipe--job-status-timer job)
    (cancel-timer (chatpipe--job-status-timer job))
    (setf (chatpipe--job-status-timer job) nil))
  (dolist (marker (append (list (chatpipe--job-marker job)
                                (chatpipe--job-start job)
                                (chatpipe--job-origin job)
                                (chatpipe--job-reasoning job)
                                (chatpipe--job-escape job)
                                (chatpipe--job-tools-end job))
                          (mapcan (lambda (entry)
                                    (list (chatpipe--call-start (cdr entry))
                                          (chatpipe--call-args (cdr entry))))
                                  (chatpipe--job-tools job))))
    (when (markerp marker)
      (set-marker marker nil))))

(defun chatpipe--undo-list ()
  "Return `buffer-undo-list' without the undo boundaries at its head."
  (let ((list buffer-undo-list))
    (while (and (consp list) (null (car list)))
      (setq list (cdr list)))
    list))

(defun chatpipe--record-undo (job end deleted)
  "Record JOB's answer, from its start to END, as one undo step.
The answer was inserted with undo recording off.  DELETED is the
text that its end replaced (the blank lines after it), or \"\".
The step deletes the answer and puts DELETED back.  If nothing was
recorded since the heading was inserted, the step is the heading's
too, so that one undo undoes the whole send; else it is a step of
its own, and the user's changes meanwhile stay."
  (let ((start (marker-position (chatpipe--job-origin job)))
        (prepared (chatpipe--job-undo job)))
    (when (and (listp buffer-undo-list) prepared (listp prepared))
      (if (eq (chatpipe--undo-list) prepared)
          (setq buffer-undo-list prepared)
        (undo-boundary))
      (unless (string-empty-p deleted)
        (push (cons deleted start) buffer-undo-list))
      (when (< start end)
        (push (cons start end) buffer-undo-list))
      (undo-boundary))))

(defun chatpipe--finish (job kind &optional message)
  "End JOB as KIND: `done', `aborted' or `error' with MESSAGE.
Add the note for an aborted, failed, truncated or empty answer (see
`chatpipe--done-notes'), leave one blank line
after the answer and, at the end of the buffer, add a user heading
for the next question; record the answer as one undo step (see
`chatpipe--record-undo') and update the status."
  (chatpipe--insert-held job)
  (let ((buffer (chatpipe--job-buffer job)))
    (when (buffer-live-p buffer)
      (with-current-buffer buffer
        (let ((seconds (- (float-time) (chatpipe--job-start-time job)))
              (deleted "")
              end)
          (let ((buffer-undo-list t))
            (chatpipe--following (chatpipe--job-end job) end
              (chatpipe--end-reasoning job)
              (goto-char (chatpipe--job-end job))
              (pcase kind
                ('aborted (chatpipe--ensure-blank-line)
                          (insert chatpipe-aborted-text))
                ('error (chatpipe--ensure-blank-line)
                        ;; The message may quote the server: its text
                        ;; is broken as the model's is.
                        (let ((from (point)))
                          (insert "[error: " (replace-regexp-in-string
                                              "\n" " " message)
                                  "]")
                          (chatpipe--break-region
                           from (point) (if (derived-mode-p 'org-mode)
                                            '(file org) '(file)))))
                ('done (chatpipe--insert-done-note job)))
              ;; One blank line between the answer and what follows, if
              ;; anything; else a user heading for the next question.
              (setq deleted (delete-and-extract-region
                             (point) (progn (skip-chars-forward " \t\n")
                                            (point))))
              (chatpipe--ensure-blank-line)
              (chatpipe--open-next-turn)
              (setq end (point))))
          (chatpipe--record-undo job end deleted)
          (chatpipe--release job)
          (when (eq chatpipe--job job)
            (setq chatpipe--job nil))
          (pcase kind
            ('done
             (let ((reason (chatpipe--job-finish-reason job))
                   (usage (chatpipe--usage-text (chatpipe--job-usage job))))
               (chatpipe--set-status
                "%s: %s%.1f s"
                (chatpipe--done-label (chatpipe--job-done-kind job) reason)
                (if usage (concat usage ", ") "")
                seconds)))
            ('aborted (chatpipe--set-status "aborted after %d chars"
                                            (chatpipe--job-chars job)))
            ('error (chatpipe--set-status "error: %s" message)
                    (message "chatpipe: %s" message))))))))

(defun chatpipe--handle-event (job event)
  "Act on EVENT, a protocol event plist, for JOB.
Events of unknown types are ignored."
  (chatpipe--cancel-timer job)
  (when (buffer-live-p (chatpipe--job-buffer job))
    (with-current-buffer (chatpipe--job-buffer job)
      (let ((content (plist-get event :content)))
        (pcase (plist-get event :type)
          ("start"
           (when (stringp (plist-get event :model))
             (setq chatpipe--model-seen (plist-get event :model)))
           (chatpipe--set-status "streaming..."))
          ((or "delta" "refusal")
           (when (and (stringp content) (not (string-empty-p content)))
             (chatpipe--insert-answer job content)
             (chatpipe--progress job 'answer)))
          ("reasoning"
           (when (and (stringp content) (not (string-empty-p content)))
             (chatpipe--insert-reasoning job content)
             (chatpipe--progress job 'reasoning)))
          ("tool_call"
           (when (integerp (plist-get event :index))
             (chatpipe--insert-tool-call job event)
             (chatpipe--progress job 'tools)))
          ("tool_request" (chatpipe--job-tool-request job event))
          ("tool_result"
           (let ((name (chatpipe--insert-tool-result job event)))
             (chatpipe--set-status "tool %s %s" (or name (plist-get event :name))
                                   (cond ((plist-get event :denied) "denied")
                                         ((plist-get event :is_error) "failed")
                                         (t "done")))))
          ("step"
           (chatpipe--next-step job)
           (chatpipe--set-status "streaming..."))
          ("warning"
           (let ((text (plist-get event :message)))
             (when (stringp text)
               (chatpipe--log "%s: %s" (buffer-name) text)
               (message "chatpipe: %s" text))))
          ("retry"
           (let ((text (chatpipe--retry-text event))
                 (delay (plist-get event :delay)))
             (chatpipe--set-status "%s" text)
             (message "chatpipe: %s" text)
             (setf (chatpipe--job-timer job)
                   (run-at-time (if (numberp delay) (max 0 delay) 0) nil
                                #'chatpipe--retry-wait job
                                (plist-get event :attempt)))))
          ("usage" (setf (chatpipe--job-usage job) event)
                   (chatpipe--add-cost event))
          ("done"
           (setf (chatpipe--job-finish-reason job)
                 (plist-get event :finish_reason))
           (chatpipe--finish job 'done))
          ("error" (chatpipe--finish job (if (plist-get event :aborted)
                                             'aborted
                                           'error)
                                     (chatpipe--error-text event)))
          (_ nil))))))

;;;; Requests

(defun chatpipe--job-tool-request (job event)
  "Answer the `tool_request' EVENT of JOB: see `chatpipe--tool-request'.
The status stops showing the answer's progress meanwhile; a quit
while the user is asked, or while an Emacs tool runs, aborts JOB."
  (when (chatpipe--job-status-timer job)
    (cancel-timer (chatpipe--job-status-timer job))
    (setf (chatpipe--job-status-timer job) nil))
  (let ((buffer (chatpipe--job-buffer job)))
    (push (chatpipe--tool-request
           (chatpipe--job-stream job) event buffer
           (lambda ()
             (when (and (buffer-live-p buffer)
                        (eq (buffer-local-value 'chatpipe--job buffer) job))
               (chatpipe-abort-job buffer))))
          (chatpipe--job-runs job))))

(defun chatpipe-busy-p (&optional buffer)
  "Return non-nil if an answer is streaming into BUFFER (default: current)."
  (let ((job (buffer-local-value 'chatpipe--job (or buffer (current-buffer)))))
    (and job (chatpipe-stream-live-p (chatpipe--job-stream job)))))

(defun chatpipe--check-idle ()
  "Signal a `user-error' if an answer is streaming into this buffer."
  (when (chatpipe-busy-p)
    (user-error "An answer is streaming into this buffer; %s aborts it"
                (substitute-command-keys "\\[chatpipe-abort]"))))

(defun chatpipe--start (messages prepare)
  "Send MESSAGES and stream the answer into the current buffer.
MESSAGES is a list as `chatpipe-messages' returns.  PREPARE is
called with no arguments after the backend is found; it edits the
buffer as needed \(these edits are one undo step) and returns the
position where the answer goes.  If the request cannot be sent, its
edits are undone.  The chat's tools go with the request (see
`chatpipe--request-tools'); they need the shared serve process (a
`user-error' else).  Return the new `chatpipe--job'."
  (chatpipe--check-idle)
  (chatpipe--check-last-is-user messages)
  (let ((tools (chatpipe--request-tools))
        (group (prepare-change-group))
        (inhibit-read-only t)
        (started nil)
        job)
    (when (and tools (eq chatpipe-backend-mode 'send))
      (user-error "Tools need the shared backend process: set \
`chatpipe-backend-mode' to `serve', or take this chat's tools away \
\(M-x chatpipe-set-tools)"))
    (condition-case err
        (chatpipe--command)
      (chatpipe-backend-missing
       (chatpipe--set-status "error: %s" (cadr err))
       (signal (car err) (cdr err))))
    (unwind-protect
        (progn
          (activate-change-group group)
          (let ((pos (funcall prepare)))
            (setq job (chatpipe--job-create
                       :buffer (current-buffer) :marker (copy-marker pos t)
                       :start (copy-marker pos) :origin (copy-marker pos)
                       :start-time (float-time) :tool-mode (and tools t)
                       :display chatpipe-reasoning-display
                       :org (chatpipe-org-maybe-converter
                             (chatpipe--heading 'assistant))))
            (setf (chatpipe--job-stream job)
                  (chatpipe-process-start
                   :template (or chatpipe-template chatpipe-default-template)
                   :messages (chatpipe--with-system messages)
                   :model chatpipe-model
                   :url chatpipe-url
                   :vars chatpipe-template-vars
                   :params (chatpipe--params)
                   :tools tools
                   :context (chatpipe-context-request-items (current-buffer))
                   :name (format "chatpipe %s" (buffer-name))
                   :handler (lambda (event)
                              (chatpipe--handle-event job event))))
            (undo-amalgamate-change-group group)
            (accept-change-group group)
            (setf (chatpipe--job-undo job) (chatpipe--undo-list))
            (setq chatpipe--job job)
            (chatpipe-context-sent (current-buffer))
            (chatpipe--clear-reasoning-buffer)
            (chatpipe--set-status "waiting...")
            (setq started t)
            job))
      (unless started
        (cancel-change-group group)))))

(defun chatpipe-abort-job (&optional buffer)
  "Stop the answer streaming into BUFFER (default: current), if any.
The text streamed so far stays, followed by `chatpipe-aborted-text'.
Tool calls stop too: a question being asked in the minibuffer ends,
and the result of an Emacs tool still running is dropped.
Return non-nil if there was an answer to stop."
  (with-current-buffer (or buffer (current-buffer))
    (let ((job chatpipe--job))
      (when job
        (chatpipe-process-abort (chatpipe--job-stream job))
        (chatpipe--finish job 'aborted)
        (chatpipe--tool-prompt-exit (chatpipe--job-runs job))
        t))))

(defun chatpipe--kill-buffer ()
  "Stop the answer streaming into the current buffer, without waiting.
Kill the buffer's reasoning buffer too."
  (when chatpipe--job
    (chatpipe-process-abort (chatpipe--job-stream chatpipe--job))
    (chatpipe--release chatpipe--job))
  (when (buffer-live-p chatpipe--reasoning-buffer)
    (kill-buffer chatpipe--reasoning-buffer)))

(provide 'chatpipe-chat)
;;; chatpipe-chat.el ends here
