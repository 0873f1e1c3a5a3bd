;;; chatpipe-insert.el --- An answer's pieces inserted into its chat buffer -*- lexical-binding: t; -*-

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

;; The pieces of an answer, inserted into its chat buffer as they
;; stream: the text at a marker (nothing inserted is parsed again),
;; reasoning in a folded block before it, and the tool calls after
;; it, "[tool call: NAME(ARGS)]".  Point and windows at the end of the
;; answer follow it.  The status shows how far the answer has come,
;; updated at most every `chatpipe--status-interval' seconds.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-backend)
(require 'chatpipe-process)
(require 'chatpipe-turns)
(require 'chatpipe-toolblocks)
(require 'chatpipe-org)
(require 'chatpipe-reasoning)
(require 'chatpipe-status)

(cl-defstruct (chatpipe--job (:constructor chatpipe--job-create)
                             (:copier nil))
  "One answer being streamed into a chat buffer.
BUFFER is the chat buffer, STREAM the answer's `chatpipe-stream'.
MARKER is the end of the answer's text (insertion type t), START
its start, where a reasoning block goes (insertion type nil).  UNDO
is the `buffer-undo-list' after the heading was inserted, to know
at the end whether the user changed anything meanwhile.
DISPLAY is the `chatpipe-reasoning-display' of the answer.
REASONING is the marker where reasoning goes in a block, ESCAPE the
start of the block's first line not yet checked for escapes.  TOOLS
is an alist (INDEX . MARKER) of where the arguments of each tool
call go, TOOLS-END the end of the tool call lines, and TOOLS-SEP
non-nil once a blank line separates them from the answer.  TIMER
is the timer of a pending retry.  PROGRESS is what streamed last
\(`answer', `reasoning' or `tools'), STATUS-TIME when the status
last showed it, and STATUS-TIMER the timer that will show it next.
ORG is the answer's Markdown to Org converter, in Org buffers only."
  buffer stream marker start undo start-time (chars 0) usage display
  reasoning escape (reasoning-chars 0) tools tools-end tools-sep
  finish-reason timer progress (status-time 0.0) status-timer org)

(defvar-local chatpipe--job nil
  "The `chatpipe--job' streaming into this buffer, or nil.")

;;;; Status

(defconst chatpipe--status-interval 0.1
  "Seconds between two updates of the status while an answer streams.
A long, fast answer is then not slowed down by status updates.")

(defun chatpipe--progress-text (job)
  "Return the status text for how far JOB has streamed."
  (pcase (chatpipe--job-progress job)
    ('reasoning (format "reasoning... %d chars"
                        (chatpipe--job-reasoning-chars job)))
    ('tools (format "streaming... %d tool call%s"
                    (length (chatpipe--job-tools job))
                    (if (cdr (chatpipe--job-tools job)) "s" "")))
    (_ (format "streaming... %d chars" (chatpipe--job-chars job)))))

(defun chatpipe--show-progress (job)
  "Show how far JOB has streamed in its buffer's status.
Do nothing if JOB no longer streams into its buffer."
  (setf (chatpipe--job-status-timer job) nil)
  (setf (chatpipe--job-status-time job) (float-time))
  (let ((buffer (chatpipe--job-buffer job)))
    (when (buffer-live-p buffer)
      (with-current-buffer buffer
        (when (eq chatpipe--job job)
          (chatpipe--set-status "%s" (chatpipe--progress-text job)))))))

(defun chatpipe--progress (job kind)
  "Note that JOB has streamed text of KIND, and show it in the status.
KIND is `answer', `reasoning' or `tools'.  The status is updated at
once if it was not for `chatpipe--status-interval' seconds, else by
a timer when that time has passed."
  (setf (chatpipe--job-progress job) kind)
  (unless (chatpipe--job-status-timer job)
    (let ((wait (- (+ (chatpipe--job-status-time job)
                      chatpipe--status-interval)
                   (float-time))))
      (if (<= wait 0)
          (chatpipe--show-progress job)
        (setf (chatpipe--job-status-timer job)
              (run-at-time wait nil #'chatpipe--show-progress job))))))

;;;; Editing

(defun chatpipe--windows-at (pos)
  "Return the windows on the current buffer whose point is at POS."
  (let ((windows nil))
    (dolist (window (get-buffer-window-list nil nil t))
      (when (= (window-point window) pos)
        (push window windows)))
    windows))

(defmacro chatpipe--following (at end &rest body)
  "Run BODY in `save-excursion'; point and windows at AT follow to END.
AT is evaluated before BODY and END after it: positions in the
current buffer.  When `chatpipe-auto-scroll' is non-nil, point, if
it was at AT, moves to END, and so does the point of each window
on the buffer that was at AT; other windows and point stay.
`inhibit-read-only' is t in BODY.  Return nil."
  (declare (indent 2) (debug (form form body)))
  (let ((pos (make-symbol "pos"))
        (follow (make-symbol "follow"))
        (windows (make-symbol "windows"))
        (to (make-symbol "to")))
    `(let* ((,pos ,at)
            (,follow (and chatpipe-auto-scroll (= (point) ,pos)))
            (,windows (and chatpipe-auto-scroll (chatpipe--windows-at ,pos)))
            (inhibit-read-only t))
       (save-excursion ,@body)
       (when (or ,follow ,windows)
         (let ((,to ,end))
           (when ,follow (goto-char ,to))
           (dolist (window ,windows)
             (set-window-point window ,to))))
       nil)))

;;;; Streaming into the buffer

(defun chatpipe--job-end (job)
  "Return the marker at the end of what JOB has inserted so far.
That is the end of its tool call lines if any, else of its answer."
  (or (chatpipe--job-tools-end job) (chatpipe--job-marker job)))

(defmacro chatpipe--edit (job &rest body)
  "Run BODY to insert text for JOB in its buffer, if that is live.
BODY runs in JOB's buffer as for `chatpipe--following', the end of
JOB's text (see `chatpipe--job-end') followed, and with undo
recording off: the whole answer is recorded when it ends (see
`chatpipe--record-undo')."
  (declare (indent 1) (debug (form body)))
  (let ((j (make-symbol "job")))
    `(let ((,j ,job))
       (when (buffer-live-p (chatpipe--job-buffer ,j))
         (with-current-buffer (chatpipe--job-buffer ,j)
           (let ((buffer-undo-list t))
             (chatpipe--following (chatpipe--job-end ,j)
                 (chatpipe--job-end ,j)
               ,@body)))))))

(defun chatpipe--insert-answer (job text)
  "Insert TEXT, a piece of JOB's answer, at the end of the answer.
In an Org buffer, TEXT is converted to Org: see `chatpipe-org-convert'.
If tool call lines came before any text, a blank line is put
between the answer and them."
  (chatpipe--edit job
    (let ((marker (chatpipe--job-marker job)))
      (goto-char marker)
      (insert (chatpipe-org-convert (chatpipe--job-org job) text))
      (when (and (chatpipe--job-tools-end job)
                 (not (chatpipe--job-tools-sep job)))
        (insert "\n\n")
        (set-marker marker (- (point) 2))
        (setf (chatpipe--job-tools-sep job) t))))
  (cl-incf (chatpipe--job-chars job) (length text)))

(defun chatpipe--insert-tool-call (job event)
  "Show the `tool_call' EVENT of JOB after its answer.
The first fragment of a call adds a line \"[tool call: NAME(ARGS)]\"
after the answer and the calls before it; later fragments of the
same call are inserted at the end of its ARGS.  Line breaks in the
arguments (JSON white space) are shown as spaces."
  (let* ((index (plist-get event :index))
         (arguments (plist-get event :arguments))
         (text (if (stringp arguments)
                   (replace-regexp-in-string "[\r\n]" " " arguments)
                 ""))
         (marker (cdr (assoc index (chatpipe--job-tools job)))))
    (chatpipe--edit job
       (if marker
           (progn (goto-char marker)
                  (insert text))
         (let ((answer-end (chatpipe--job-marker job))
               (tools-end (chatpipe--job-tools-end job))
               (name (plist-get event :name))
               pos)
           (if tools-end
               (progn (goto-char tools-end)
                      (insert "\n"))
             (goto-char answer-end)
             (setq pos (point))
             (when (> (chatpipe--job-chars job) 0)
               (chatpipe--ensure-blank-line)
               (setf (chatpipe--job-tools-sep job) t)))
           (insert "[tool call: "
                   (if (stringp name) (replace-regexp-in-string "\n" " " name)
                     "?")
                   "(" text ")]")
           (push (cons index (copy-marker (- (point) 2) t))
                 (chatpipe--job-tools job))
           (unless tools-end
             (setf (chatpipe--job-tools-end job) (copy-marker (point) t))
             (set-marker answer-end pos)))))))

(defun chatpipe--insert-reasoning (job text)
  "Show TEXT, a piece of JOB's reasoning, where JOB's display wants it.
See `chatpipe-reasoning-display'."
  (pcase (chatpipe--job-display job)
    ('fold
     (chatpipe--edit job
       (unless (chatpipe--job-reasoning job)
         (let ((markers (chatpipe--open-reasoning-block
                         (chatpipe--job-start job))))
           (setf (chatpipe--job-reasoning job) (car markers))
           (setf (chatpipe--job-escape job) (cdr markers))))
       (goto-char (chatpipe--job-reasoning job))
       (let ((from (point)))
         (insert text)
         (chatpipe--escape-reasoning (chatpipe--job-reasoning job)
                                     (chatpipe--job-escape job) from))))
    ('buffer
     (with-current-buffer (chatpipe--reasoning-buffer-of
                           (chatpipe--job-buffer job) t)
       (chatpipe--following (point-max) (point-max)
         (goto-char (point-max))
         (insert text)))))
  (cl-incf (chatpipe--job-reasoning-chars job) (length text)))

(defun chatpipe--insert-held (job)
  "Insert, at the end of JOB's answer, what its Org converter held back.
See `chatpipe-org-finish'.  Do nothing if JOB has no converter."
  (when (chatpipe--job-org job)
    (let ((text (chatpipe-org-finish (chatpipe--job-org job))))
      (unless (string-empty-p text)
        (chatpipe--edit job
          (goto-char (chatpipe--job-marker job))
          (insert text))))))

;;;; Tool calls

(defun chatpipe-hide-tool-result (block hide)
  "Fold the tool BLOCK if HIDE is non-nil, else unfold it.
BLOCK is as for `chatpipe-tool-blocks'.  Only its first line, the
call, shows when it is folded.  Return HIDE."
  (chatpipe--fold block 'chatpipe-tool hide))

;;;###autoload
(defun chatpipe-toggle-tool-result (&optional all)
  "Fold or unfold the tool block at point: a tool call and its result.
Point may be anywhere in the block, its first line included.  With
a prefix argument ALL, or when point is in no block, unfold all the
tool blocks of the buffer if one of them is folded, else fold them
all.  Return non-nil if the block (or the blocks) are now folded."
  (interactive "P")
  (chatpipe--toggle-folds 'chatpipe-tool
                          (and (not all) (chatpipe-tool-block-at (point)))
                          #'chatpipe-tool-blocks "tool block"))

(provide 'chatpipe-insert)
;;; chatpipe-insert.el ends here
