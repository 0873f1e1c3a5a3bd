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
;; it.  Point and windows at the end of the answer follow it.  The
;; status shows how far the answer has come, updated at most every
;; `chatpipe--status-interval' seconds.
;;
;; A chat that offers no tools shows the model's tool calls as lines,
;; "[tool call: NAME(ARGS)]", never sent.  A chat that offers tools
;; (see chatpipe-tools.el) shows each call as a tool block (see
;; chatpipe-toolblocks.el), folded, its first line the call, which
;; gets the call's result when it comes; then, after a `step' event,
;; the model's next answer streams on below the blocks, and so on
;; until the last answer.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-backend)
(require 'chatpipe-process)
(require 'chatpipe-turns)
(require 'chatpipe-toolblocks)
(require 'chatpipe-org)
(require 'chatpipe-reasoning)
(require 'chatpipe-chat-settings)
(require 'chatpipe-header)
(require 'chatpipe-fold)

(cl-defstruct (chatpipe--job (:constructor chatpipe--job-create)
                             (:copier nil))
  "One answer being streamed into a chat buffer.
BUFFER is the chat buffer, STREAM the answer's `chatpipe-stream'.
ORIGIN is the start of the whole answer (insertion type nil), and
MARKER the end of the text of the answer streaming now (insertion
type t), START its start, where its reasoning block goes (insertion
type nil): after a `step', the next answer of the request starts
after the tool blocks of the last.  UNDO is the `buffer-undo-list'
after the heading was inserted, to know at the end whether the user
changed anything meanwhile.  DISPLAY is the
`chatpipe-reasoning-display' of the answer.  REASONING is the
marker where reasoning goes in a block, ESCAPE the start of the
block's first line not yet checked for escapes.  TOOLS is an alist
\(INDEX . CALL) of the tool calls, each a `chatpipe--call';
TOOL-MODE non-nil if the request offers tools, so that calls are
tool blocks, not lines; TOOLS-END the end of the calls of the
answer streaming now, and TOOLS-SEP non-nil once a blank line
separates them from its text.  RUNS are the tool runs of the
request (see `chatpipe--tool-request').  TIMER is the timer of a
pending retry.  PROGRESS is what streamed last \(`answer',
`reasoning' or `tools'), STATUS-TIME when the status last showed
it, and STATUS-TIMER the timer that will show it next.  ORG is the
answer's Markdown to Org converter, in Org buffers only."
  buffer stream origin marker start undo start-time (chars 0) usage display
  reasoning escape (reasoning-chars 0) tools tool-mode tools-end tools-sep
  runs finish-reason timer progress (status-time 0.0) status-timer org)

(cl-defstruct (chatpipe--call (:constructor chatpipe--call-create)
                              (:copier nil))
  "A tool call of an answer, as shown in its chat buffer.
ID, NAME and SIGNATURE are those of its first `tool_call' event,
ARGUMENTS the fragments of its arguments so far, joined.  START is
a marker at the start of its tool block (nil for a tool call line),
ARGS a marker where its arguments go, and BEGUN non-nil once some
of them are shown."
  id name signature (arguments "") start args begun)

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

;;;; Model text that must not become structure

(defun chatpipe--answer-breaks (job)
  "Return the kinds of constructs to break in the answer text of JOB.
See `chatpipe--breaks-regexp'.  They are `file' and the role
headings (see `chatpipe--heading-breaks'); in an Org buffer where
the answer is not converted from Markdown, Org's are broken too;
when it is, the converter breaks them (see `chatpipe--org-emit')."
  (append (if (and (derived-mode-p 'org-mode) (not (chatpipe--job-org job)))
              '(file org org-line)
            '(file))
          (chatpipe--heading-breaks)))

(defun chatpipe--break-assistant-turns ()
  "Break the Org constructs of the answers in this Org buffer.
That is for a chat that was not in Org when its answers came, now
converted to Org (see `chatpipe--convert-chat'): their Markdown
text, whose fences are no src blocks, and their reasoning are
broken as for `chatpipe--break-region', the text with kinds `file',
`org' and `org-line' and the role headings, the reasoning with
`file' and `org'.  Tool
blocks are left alone: converting them broke their results.
Return nil."
  (save-excursion
    (save-restriction
      (widen)
      (let ((regexp (chatpipe--block-start-regexp))
            (kinds (append '(file org org-line) (chatpipe--heading-breaks)))
            (case-fold-search nil)
            pieces)
        (dolist (turn (chatpipe-turns))
          (when (eq (car turn) 'assistant)
            (let ((pos (nth 2 turn))
                  (end (nth 3 turn)))
              (goto-char pos)
              (while (re-search-forward regexp end t)
                (let* ((line (goto-char (match-beginning 0)))
                       (block (chatpipe--block-at-line end)))
                  (when block
                    (push (list (copy-marker pos) (copy-marker line) kinds)
                          pieces)
                    (when (eq (car block) 'reasoning)
                      (push (list (copy-marker (nth 2 block))
                                  (copy-marker (save-excursion
                                                 (goto-char (nth 3 block))
                                                 (line-beginning-position)))
                                  '(file org))
                            pieces))
                    (setq pos (nth 3 block)))))
              (push (list (copy-marker pos) (copy-marker end) kinds)
                    pieces))))
        (pcase-dolist (`(,beg ,end ,kinds) pieces)
          (when (< beg end)
            (chatpipe--break-region beg end kinds))
          (set-marker beg nil)
          (set-marker end nil)))))
  nil)

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
The constructs in it that would be structure are broken: see
`chatpipe--break-region'.  If tool call lines came before any
text, a blank line is put between the answer and them."
  (chatpipe--edit job
    (let ((marker (chatpipe--job-marker job)))
      (goto-char marker)
      (let ((from (point)))
        (insert (chatpipe-org-convert (chatpipe--job-org job) text))
        (chatpipe--break-region from (point) (chatpipe--answer-breaks job)))
      (when (and (chatpipe--job-tools-end job)
                 (not (chatpipe--job-tools-sep job)))
        (insert "\n\n")
        (set-marker marker (- (point) 2))
        (setf (chatpipe--job-tools-sep job) t))))
  (cl-incf (chatpipe--job-chars job) (length text)))

(defun chatpipe--insert-reasoning (job text)
  "Show TEXT, a piece of JOB's reasoning, where JOB's display wants it.
See `chatpipe-reasoning-display'.  The constructs in it that would
be structure are broken: see `chatpipe--break-region'."
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
         (chatpipe--break-region from (point)
                                 (if (derived-mode-p 'org-mode) '(file org)
                                   '(file)))
         (chatpipe--escape-reasoning (chatpipe--job-reasoning job)
                                     (chatpipe--job-escape job) from))))
    ('buffer
     (with-current-buffer (chatpipe--reasoning-buffer-of
                           (chatpipe--job-buffer job) t)
       (chatpipe--following (point-max) (point-max)
         (goto-char (point-max))
         (let ((from (point)))
           (insert text)
           (chatpipe--break-region from (point) '(file)))))))
  (cl-incf (chatpipe--job-reasoning-chars job) (length text)))

(defun chatpipe--insert-held (job)
  "Insert, at the end of JOB's answer, what its Org converter held back.
See `chatpipe-org-finish'.  Do nothing if JOB has no converter."
  (when (chatpipe--job-org job)
    (let ((text (chatpipe-org-finish (chatpipe--job-org job))))
      (unless (string-empty-p text)
        (chatpipe--edit job
          (goto-char (chatpipe--job-marker job))
          (let ((from (point)))
            (insert text)
            (chatpipe--break-region from (point)
                                    (chatpipe--answer-breaks job))))))))


(defun chatpipe--end-reasoning (job)
  "Escape the last line of JOB's reasoning block, and let go of its markers.
The next reasoning of JOB, if any, opens a new block."
  (let ((reasoning (chatpipe--job-reasoning job))
        (escape (chatpipe--job-escape job)))
    (when escape
      (chatpipe--escape-reasoning reasoning escape reasoning t))
    (dolist (marker (list reasoning escape))
      (when (markerp marker) (set-marker marker nil)))
    (setf (chatpipe--job-reasoning job) nil)
    (setf (chatpipe--job-escape job) nil)))

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

(defun chatpipe--call-plist (call &rest more)
  "Return CALL, a `chatpipe--call', as a plist for its tool block.
MORE are keys and values to add, such as :flag and :content."
  (append (list :name (chatpipe--call-name call)
                :arguments (chatpipe--call-arguments call)
                :id (chatpipe--call-id call)
                :signature (chatpipe--call-signature call))
          more))

(defun chatpipe--open-tool-call (job call)
  "Insert the start of CALL, a new tool call of JOB, at point.
In a chat with tools, that is a folded tool block whose call has no
result yet; else a line \"[tool call: NAME()]\".  Set CALL's markers."
  (let ((start (point)))
    (if (chatpipe--job-tool-mode job)
        (let* ((org (chatpipe--tool-org-p))
               (args (+ start (length (car (chatpipe--tool-syntax org)))
                        (length (chatpipe--call-name call)))))
          (insert (chatpipe--tool-block-string
                   org (chatpipe--call-plist call :flag 'pending)))
          (chatpipe-hide-tool-result
           (list start (save-excursion (goto-char start) (line-end-position))
                 (point))
           t)
          (setf (chatpipe--call-start call) (copy-marker start t))
          (setf (chatpipe--call-args call) (copy-marker args t)))
      (insert "[tool call: ")
      (let ((from (point)))
        (insert (chatpipe--call-name call))
        (chatpipe--break-region from (point) '(file)))
      (insert "()]")
      (setf (chatpipe--call-args call) (copy-marker (- (point) 2) t)))))

(defun chatpipe--insert-tool-call (job event)
  "Show the `tool_call' EVENT of JOB after the text of its answer.
The first fragment of a call adds the call after the answer's text
and the calls before it: a tool block in a chat that offers tools,
else a line \"[tool call: NAME(ARGS)]\" (see
`chatpipe--open-tool-call'); later fragments of the same call are
added to its arguments.  Line breaks in the arguments (JSON white
space) are shown as spaces, and the constructs in them and in the
name that would be structure are broken (see
`chatpipe--break-region').  In a tool block, the name's white space
and control characters are \"_\"."
  (let* ((index (plist-get event :index))
         (arguments (plist-get event :arguments))
         (arguments (if (stringp arguments) arguments ""))
         (call (cdr (assoc index (chatpipe--job-tools job)))))
    (chatpipe--edit job
      (unless call
        (let ((name (plist-get event :name))
              (answer-end (chatpipe--job-marker job))
              (tools-end (chatpipe--job-tools-end job))
              pos)
          (setq call (chatpipe--call-create
                      :id (let ((id (plist-get event :call_id)))
                            (if (stringp id) id (format "call_%s" index)))
                      :name (cond ((not (and (stringp name)
                                             (not (string-empty-p name))))
                                   "?")
                                  ((chatpipe--job-tool-mode job)
                                   (replace-regexp-in-string
                                    "[[:space:][:cntrl:]]" "_" name))
                                  (t (replace-regexp-in-string "\n" " " name)))
                      :signature (let ((sig (plist-get event :signature)))
                                   (and (stringp sig) sig))))
          (push (cons index call) (chatpipe--job-tools job))
          (if tools-end
              (progn (goto-char tools-end)
                     (insert (if (chatpipe--job-tool-mode job) "\n\n" "\n")))
            (goto-char answer-end)
            (setq pos (point))
            (when (> (chatpipe--job-chars job) 0)
              (chatpipe--ensure-blank-line)
              (setf (chatpipe--job-tools-sep job) t)))
          (chatpipe--open-tool-call job call)
          (unless tools-end
            (setf (chatpipe--job-tools-end job) (copy-marker (point) t))
            (set-marker answer-end pos))))
      (unless (string-empty-p arguments)
        (goto-char (chatpipe--call-args call))
        (when (and (chatpipe--call-start call) (not (chatpipe--call-begun call)))
          (insert " "))
        (setf (chatpipe--call-begun call) t)
        (let ((from (point)))
          (insert (replace-regexp-in-string "[\r\n]" " " arguments))
          (chatpipe--break-region from (point) '(file)))
        (setf (chatpipe--call-arguments call)
              (concat (chatpipe--call-arguments call) arguments))))))

(defun chatpipe--insert-tool-result (job event)
  "Put the result of the `tool_result' EVENT of JOB in its call's block.
The block, folded as it was, gets the result as its body and the
call's first line says whether it is an error or was denied.
Return the call's name, or nil if JOB shows no block for the call."
  (let* ((id (plist-get event :call_id))
         (call (cdr (cl-find-if (lambda (entry)
                                  (equal (chatpipe--call-id (cdr entry)) id))
                                (chatpipe--job-tools job))))
         (start (and call (chatpipe--call-start call))))
    (when start
      (chatpipe--edit job
        (let ((org (chatpipe--tool-org-p))
              (case-fold-search nil))
          (goto-char start)
          (when (looking-at (chatpipe--tool-begin-regexp org))
            (let* ((block (chatpipe--tool-block-from start (match-end 0)
                                                     (point-max) org))
                   (hide (or (null block)
                             (chatpipe--folded-p block 'chatpipe-tool)))
                   (content (plist-get event :content))
                   (pos (marker-position start)))
              (when block
                (delete-region pos (nth 2 block))
                (goto-char pos)
                (insert (chatpipe--tool-block-string
                         org (chatpipe--call-plist
                              call
                              :flag (cond ((plist-get event :denied) 'denied)
                                          ((plist-get event :is_error) 'error))
                              :content (if (stringp content) content ""))))
                (set-marker start pos)
                (chatpipe-hide-tool-result
                 (list pos (save-excursion (goto-char pos) (line-end-position))
                       (point))
                 hide))))))
      (chatpipe--call-name call))))

(defun chatpipe--next-step (job)
  "Make room in JOB's buffer for the next answer of its request.
That is a `step' event: the calls of the last answer were answered.
The next answer's text, reasoning and calls go after the last
answer's tool blocks, a blank line between them."
  (chatpipe--insert-held job)
  (chatpipe--edit job
    (chatpipe--end-reasoning job)
    (goto-char (chatpipe--job-end job))
    (chatpipe--ensure-blank-line)
    (set-marker (chatpipe--job-marker job) (point))
    (set-marker (chatpipe--job-start job) (point))
    (when (chatpipe--job-tools-end job)
      (set-marker (chatpipe--job-tools-end job) nil))
    (setf (chatpipe--job-tools-end job) nil)
    (setf (chatpipe--job-tools-sep job) nil)
    (setf (chatpipe--job-org job)
          (chatpipe-org-maybe-converter (chatpipe--heading 'assistant)))))

(provide 'chatpipe-insert)
;;; chatpipe-insert.el ends here
