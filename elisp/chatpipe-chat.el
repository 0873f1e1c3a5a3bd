;;; chatpipe-chat.el --- Chat buffers and turns for chatpipe -*- lexical-binding: t; -*-

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

;; A chat is plain text in any buffer: turns separated by role headings,
;; one line each, such as "### User" and "### Assistant" (or "* User" and
;; "* Assistant" in Org buffers; see `chatpipe-headings' and
;; `chatpipe-org-headings').  Text before the first heading is not part of
;; the chat.  A "### System" turn, if any, is sent as a system message.
;;
;; Sending parses the turns into messages, inserts an assistant heading
;; and starts a backend process (see chatpipe-process.el); each `delta'
;; is inserted at a marker of insertion type t, inside `save-excursion',
;; and nothing inserted is parsed or rendered again.  All the changes of
;; one answer are one change group, so the answer undoes in one step.
;; When the answer ends, a user heading is added for the next question.
;; An aborted answer keeps its text and ends with `chatpipe-aborted-text';
;; a failed one with "[error: MESSAGE]".  These notes are not sent back to
;; the model.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-process)

;;;; Customization

(defcustom chatpipe-default-template "local"
  "The template of new chats: a template name or a .json file name.
`chatpipe templates list' shows the known names."
  :type 'string
  :group 'chatpipe)

(defcustom chatpipe-headings
  '((system . "### System")
    (user . "### User")
    (assistant . "### Assistant"))
  "The role headings of chats in buffers other than Org buffers.
An alist of (ROLE . HEADING): a line that is exactly HEADING (but
for trailing spaces) starts a turn of ROLE."
  :type '(alist :key-type (choice (const system) (const user)
                                  (const assistant))
                :value-type string)
  :group 'chatpipe)

(defcustom chatpipe-org-headings
  '((system . "* System")
    (user . "* User")
    (assistant . "* Assistant"))
  "The role headings of chats in Org buffers; see `chatpipe-headings'."
  :type '(alist :key-type (choice (const system) (const user)
                                  (const assistant))
                :value-type string)
  :group 'chatpipe)

(defcustom chatpipe-auto-scroll t
  "Whether point follows the answer while it streams.
When non-nil, point and windows that are at the end of the answer
move along with it; point elsewhere never moves."
  :type 'boolean
  :group 'chatpipe)

(defcustom chatpipe-aborted-text "[aborted]"
  "The line that ends an answer stopped by `chatpipe-abort'."
  :type 'string
  :group 'chatpipe)

(defface chatpipe-heading
  '((t :inherit bold))
  "Face of role headings in chat buffers that do not fontify them."
  :group 'chatpipe)

;;;; Variables

(defvar-local chatpipe-template nil
  "The template of this chat buffer, or nil for `chatpipe-default-template'.")
(put 'chatpipe-template 'safe-local-variable #'stringp)
(put 'chatpipe-template 'permanent-local t)

(defvar-local chatpipe-model nil
  "The model of this chat buffer, or nil for the template's.")
(put 'chatpipe-model 'safe-local-variable #'stringp)
(put 'chatpipe-model 'permanent-local t)

(defvar-local chatpipe-template-vars nil
  "Values of the template's `${NAME}' placeholders: an alist of strings.")
(put 'chatpipe-template-vars 'safe-local-variable
     (lambda (value)
       (and (listp value)
            (cl-every (lambda (x) (and (consp x) (stringp (car x))
                                       (stringp (cdr x))))
                      value))))

(cl-defstruct (chatpipe--job (:constructor chatpipe--job-create)
                             (:copier nil))
  "One answer being streamed into a chat buffer."
  buffer process marker group start-time (chars 0) usage)

(defvar-local chatpipe--job nil
  "The `chatpipe--job' streaming into this buffer, or nil.")

(defvar-local chatpipe--status nil
  "The status shown in the header line, a string, or nil.")

(defvar-local chatpipe--model-seen nil
  "The model named by the backend's last `start' event, or nil.")

;;;; Turns

(defun chatpipe--role-headings ()
  "Return the role headings of the current buffer, an alist.
Each element is (ROLE . HEADING)."
  (if (derived-mode-p 'org-mode) chatpipe-org-headings chatpipe-headings))

(defun chatpipe--heading (role)
  "Return the heading line for ROLE in the current buffer."
  (alist-get role (chatpipe--role-headings)))

(defun chatpipe--heading-regexp ()
  "Return a regexp matching a whole heading line; group 1 is the heading."
  (concat "^" (regexp-opt (mapcar #'cdr (chatpipe--role-headings)) t) "[ \t]*$"))

(defun chatpipe--note-regexp ()
  "Return a regexp matching the note lines that end some answers."
  (concat "^\\(?:" (regexp-quote chatpipe-aborted-text)
          "\\|\\[error: .*\\]\\)[ \t]*\\'"))

(defun chatpipe-turns (&optional beg end)
  "Return the list of turn positions between BEG and END (default: all).
Each turn is a list (ROLE HEADING-START CONTENT-START CONTENT-END),
ROLE a symbol and the rest buffer positions; a turn's content runs
to the next heading or END.  Text before the first heading is not
part of any turn."
  (let ((beg (or beg (point-min)))
        (end (or end (point-max)))
        (headings (chatpipe--role-headings))
        (regexp (chatpipe--heading-regexp))
        (case-fold-search nil)
        turns)
    (save-excursion
      (goto-char beg)
      (unless (bolp) (forward-line 1))
      (while (and (< (point) end) (re-search-forward regexp end t))
        (let ((role (car (rassoc (match-string-no-properties 1) headings)))
              (heading-start (match-beginning 0))
              (content-start (min end (1+ (match-end 0)))))
          (when turns
            (setf (nth 3 (car turns)) heading-start))
          (push (list role heading-start content-start end) turns)
          (goto-char content-start))))
    (nreverse turns)))

(defun chatpipe--turn-text (turn)
  "Return the text of TURN as sent: trimmed, without answer notes."
  (let ((text (string-trim (buffer-substring-no-properties
                            (nth 2 turn) (nth 3 turn)))))
    (when (eq (car turn) 'assistant)
      (let ((note (chatpipe--note-regexp)))
        (while (string-match note text)
          (setq text (string-trim-right (substring text 0 (match-beginning 0)))))))
    text))

(defun chatpipe-messages (&optional beg end)
  "Return the messages of the chat between BEG and END (default: all).
The value is a list of (ROLE . CONTENT) pairs of strings, in order;
empty turns are left out."
  (cl-loop for turn in (chatpipe-turns beg end)
           for text = (chatpipe--turn-text turn)
           unless (string-empty-p text)
           collect (cons (symbol-name (car turn)) text)))

(defun chatpipe--check-last-is-user (messages)
  "Signal a `user-error' unless the last of MESSAGES is the user's."
  (unless (equal (car (car (last messages))) "user")
    (user-error "Nothing to send: write a question under \"%s\""
                (chatpipe--heading 'user))))

;;;; Status

(defun chatpipe--set-status (format-string &rest args)
  "Set the header line status to FORMAT-STRING formatted with ARGS."
  (setq chatpipe--status (apply #'format format-string args))
  (force-mode-line-update))

(defun chatpipe-header-line ()
  "Return the text of the chat header line: template, model and status."
  (let ((model (or chatpipe-model chatpipe--model-seen)))
    (concat (propertize "chatpipe" 'face 'bold) " "
            (or chatpipe-template chatpipe-default-template)
            (if model (format " [%s]" model) "")
            (if chatpipe--status (concat " | " chatpipe--status) ""))))

(defun chatpipe--usage-text (usage)
  "Return a short text for USAGE, a `usage' event plist, or nil."
  (when usage
    (let ((in (plist-get usage :input_tokens))
          (out (plist-get usage :output_tokens)))
      (format "%s in, %s out" (or in "?") (or out "?")))))

;;;; Streaming into the buffer

(defun chatpipe--ensure-blank-line ()
  "Insert newlines at point so that a blank line comes before it.
Insert nothing at the beginning of the buffer."
  (let ((n (cond ((bobp) 0)
                 ((not (eq (char-before) ?\n)) 2)
                 ((or (= (1- (point)) (point-min))
                      (eq (char-before (1- (point))) ?\n))
                  0)
                 (t 1))))
    (insert (make-string n ?\n))))

(defun chatpipe--insert (job text)
  "Insert TEXT at the marker of JOB, moving only point that is there.
Point and windows at the end of the answer follow it when
`chatpipe-auto-scroll' is non-nil; other windows and point stay."
  (let ((marker (chatpipe--job-marker job)))
    (when (buffer-live-p (marker-buffer marker))
      (with-current-buffer (marker-buffer marker)
        (let* ((pos (marker-position marker))
               (follow (and chatpipe-auto-scroll (= (point) pos)))
               (windows (and chatpipe-auto-scroll
                             (cl-remove-if-not
                              (lambda (w) (= (window-point w) pos))
                              (get-buffer-window-list nil nil t))))
               (inhibit-read-only t))
          (save-excursion
            (goto-char marker)
            (insert text))
          (when follow (goto-char marker))
          (dolist (window windows)
            (set-window-point window marker)))))))

(defun chatpipe--finish (job kind &optional message)
  "End JOB as KIND: `done', `aborted' or `error' with MESSAGE.
Add the note for an aborted or failed answer, leave one blank line
after the answer and, at the end of the buffer, add a user heading
for the next question; close the change group of the answer and
update the status."
  (let ((buffer (chatpipe--job-buffer job)))
    (when (buffer-live-p buffer)
      (with-current-buffer buffer
        (let* ((marker (chatpipe--job-marker job))
               (follow (and chatpipe-auto-scroll (= (point) marker)))
               (windows (and chatpipe-auto-scroll
                             (cl-remove-if-not
                              (lambda (w) (= (window-point w) marker))
                              (get-buffer-window-list nil nil t))))
               (seconds (- (float-time) (chatpipe--job-start-time job)))
               (inhibit-read-only t)
               end)
          (save-excursion
            (goto-char marker)
            (pcase kind
              ('aborted (chatpipe--ensure-blank-line)
                        (insert chatpipe-aborted-text))
              ('error (chatpipe--ensure-blank-line)
                      (insert "[error: " (replace-regexp-in-string
                                          "\n" " " message)
                              "]")))
            ;; One blank line between the answer and what follows, if
            ;; anything; else a user heading for the next question.
            (delete-region (point) (progn (skip-chars-forward " \t\n")
                                          (point)))
            (chatpipe--ensure-blank-line)
            (when (eobp)
              (insert (chatpipe--heading 'user) "\n\n"))
            (setq end (point)))
          (when follow (goto-char end))
          (dolist (window windows)
            (set-window-point window end))
          (let ((group (chatpipe--job-group job)))
            (undo-amalgamate-change-group group)
            (accept-change-group group))
          (set-marker marker nil)
          (when (eq chatpipe--job job)
            (setq chatpipe--job nil))
          (pcase kind
            ('done (chatpipe--set-status
                    "done: %s%.1f s"
                    (let ((usage (chatpipe--usage-text
                                  (chatpipe--job-usage job))))
                      (if usage (concat usage ", ") ""))
                    seconds))
            ('aborted (chatpipe--set-status "aborted after %d chars"
                                            (chatpipe--job-chars job)))
            ('error (chatpipe--set-status "error: %s" message)
                    (message "chatpipe: %s" message))))))))

(defun chatpipe--error-text (event)
  "Return the message of the `error' EVENT, with the HTTP status if any."
  (let ((status (plist-get event :status))
        (message (or (plist-get event :message) "unknown error")))
    (if status (format "HTTP %s: %s" status message) message)))

(defun chatpipe--handle-event (job event)
  "Act on EVENT, a protocol event plist, for JOB."
  (when (buffer-live-p (chatpipe--job-buffer job))
    (with-current-buffer (chatpipe--job-buffer job)
      (pcase (plist-get event :type)
        ("start"
         (when (stringp (plist-get event :model))
           (setq chatpipe--model-seen (plist-get event :model)))
         (chatpipe--set-status "streaming..."))
        ("delta"
         (let ((text (plist-get event :content)))
           (when (and (stringp text) (not (string-empty-p text)))
             (chatpipe--insert job text)
             (cl-incf (chatpipe--job-chars job) (length text))
             (chatpipe--set-status "streaming... %d chars"
                                   (chatpipe--job-chars job)))))
        ("usage" (setf (chatpipe--job-usage job) event))
        ("done" (chatpipe--finish job 'done))
        ("error" (chatpipe--finish job (if (plist-get event :aborted)
                                           'aborted
                                         'error)
                                   (chatpipe--error-text event)))
        (_ nil)))))

;;;; Requests

(defun chatpipe-busy-p (&optional buffer)
  "Return non-nil if an answer is streaming into BUFFER (default: current)."
  (let ((job (buffer-local-value 'chatpipe--job (or buffer (current-buffer)))))
    (and job (process-live-p (chatpipe--job-process job)))))

(defun chatpipe--check-idle ()
  "Signal a `user-error' if an answer is streaming into this buffer."
  (when (chatpipe-busy-p)
    (user-error "An answer is streaming into this buffer; %s aborts it"
                (substitute-command-keys "\\[chatpipe-abort]"))))

(defun chatpipe--start (messages prepare)
  "Send MESSAGES and stream the answer into the current buffer.
MESSAGES is a list of (ROLE . CONTENT).  PREPARE is called with no
arguments inside the answer's change group, after the backend is
found; it edits the buffer as needed and returns the position where
the answer goes.  Return the new `chatpipe--job'."
  (chatpipe--check-idle)
  (chatpipe--check-last-is-user messages)
  (condition-case err
      (chatpipe--command)
    (chatpipe-backend-missing
     (chatpipe--set-status "error: %s" (cadr err))
     (signal (car err) (cdr err))))
  (let ((group (prepare-change-group))
        (inhibit-read-only t)
        (started nil)
        job)
    (unwind-protect
        (progn
          (activate-change-group group)
          (let* ((pos (funcall prepare))
                 (marker (copy-marker pos t)))
            (setq job (chatpipe--job-create
                       :buffer (current-buffer) :marker marker :group group
                       :start-time (float-time)))
            (setf (chatpipe--job-process job)
                  (chatpipe-process-start
                   :template (or chatpipe-template chatpipe-default-template)
                   :messages messages
                   :model chatpipe-model
                   :vars chatpipe-template-vars
                   :name (format "chatpipe %s" (buffer-name))
                   :handler (lambda (event)
                              (chatpipe--handle-event job event))))
            (setq chatpipe--job job)
            (chatpipe--set-status "waiting...")
            (setq started t)
            job))
      (unless started
        (cancel-change-group group)))))

(defun chatpipe-send-turns (&optional beg end)
  "Send the chat between BEG and END and stream the answer after it.
BEG and END default to the whole buffer.  If the text has no role
heading, it is the user's question and a user heading is inserted
before it.  The answer goes after END, under an assistant heading.
Return the new job."
  (let* ((beg (copy-marker (or beg (point-min))))
         (end (copy-marker (or end (point-max))))
         (messages (chatpipe-messages beg end))
         (headless (null (chatpipe-turns beg end))))
    (when headless
      (let ((text (string-trim (buffer-substring-no-properties beg end))))
        (setq messages (unless (string-empty-p text)
                         (list (cons "user" text))))))
    (unwind-protect
        (chatpipe--start messages (chatpipe--send-preparer beg end headless))
      (set-marker beg nil)
      (set-marker end nil))))

(defun chatpipe--send-preparer (beg end headless)
  "Return a function to make room for an answer after END.
BEG and END are markers around the chat sent.  If HEADLESS, the
text has no heading: insert a user heading at BEG.  The function
returns the position of the answer; see `chatpipe--start'."
  (lambda ()
    (let* ((text-end (save-excursion
                       (goto-char end)
                       (skip-chars-backward " \t\n" beg)
                       (point)))
           (follow (<= text-end (point) end))
           (orig (point-marker)))
      (when headless
        (save-excursion
          (goto-char beg)
          (skip-chars-forward " \t\n" end)
          (insert (chatpipe--heading 'user) "\n\n")))
      (goto-char end)
      (skip-chars-backward " \t\n" beg)
      (delete-region (point) end)
      (chatpipe--ensure-blank-line)
      (insert (chatpipe--heading 'assistant) "\n\n")
      (prog1 (point)
        (unless follow (goto-char orig))
        (set-marker orig nil)))))

(defun chatpipe-retry-last ()
  "Send the chat again without its last answer, and stream a new one.
The text of the last assistant turn is replaced by the new answer.
Return the new job."
  (let* ((turns (chatpipe-turns))
         (turn (car (last (cl-remove-if-not
                           (lambda (turn) (eq (car turn) 'assistant))
                           turns)))))
    (unless turn
      (user-error "No answer to retry: there is no \"%s\" heading"
                  (chatpipe--heading 'assistant)))
    (chatpipe--start
     (chatpipe-messages (point-min) (nth 1 turn))
     (lambda ()
       (let ((start (nth 2 turn))
             (end (nth 3 turn))
             (follow (<= (nth 1 turn) (point) (nth 3 turn)))
             (orig (point-marker)))
         (delete-region start end)
         (goto-char start)
         (unless (bolp) (insert "\n"))
         (insert "\n")
         (prog1 (point)
           (unless (eobp)
             (insert "\n\n")
             (forward-char -2))
           (unless follow (goto-char orig))
           (set-marker orig nil)))))))

(defun chatpipe-abort-job (&optional buffer)
  "Stop the answer streaming into BUFFER (default: current), if any.
The text streamed so far stays, followed by `chatpipe-aborted-text'.
Return non-nil if there was an answer to stop."
  (with-current-buffer (or buffer (current-buffer))
    (let ((job chatpipe--job))
      (when job
        (chatpipe-process-abort (chatpipe--job-process job))
        (chatpipe--finish job 'aborted)
        t))))

(defun chatpipe--kill-buffer ()
  "Stop the process of the current buffer without waiting for it."
  (when chatpipe--job
    (chatpipe-process-abort (chatpipe--job-process chatpipe--job))))

(provide 'chatpipe-chat)
;;; chatpipe-chat.el ends here
