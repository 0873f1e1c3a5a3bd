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
;; and sends a request to the backend (see chatpipe-process.el); each
;; `delta' is inserted at a marker of insertion type t, inside
;; `save-excursion', and nothing inserted is parsed or rendered again.
;; While the answer streams, the status in the header line is updated at
;; most every `chatpipe--status-interval' seconds; the final status is
;; exact.  All the changes of one answer are one change group, so the
;; answer undoes in one step.
;; When the answer ends, a user heading is added for the next question.
;; An aborted answer keeps its text and ends with `chatpipe-aborted-text';
;; a failed one with "[error: MESSAGE]".  These notes are not sent back to
;; the model.
;;
;; The model's reasoning goes where `chatpipe-reasoning-display' says:
;; by default into a folded block at the start of the answer, between
;; the lines of `chatpipe-reasoning-delimiters' (Org buffers:
;; `chatpipe-org-reasoning-delimiters'), at a marker of its own.  Such
;; blocks are never sent back, and headings inside them start no turn.
;; Each tool call is shown on a line of its own after the answer,
;; "[tool call: NAME(ARGUMENTS)]", its arguments appended at a marker as
;; they stream; like the notes, these lines are not sent back.

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

(defcustom chatpipe-reasoning-display 'fold
  "Where the model's reasoning (its \"thinking\") is shown.
`fold': in the chat buffer, in a block before the answer, between
  the lines of `chatpipe-reasoning-delimiters' (in Org buffers,
  `chatpipe-org-reasoning-delimiters').  The block is folded;
  \\[chatpipe-toggle-reasoning], or TAB on its first line, unfolds it.
`buffer': in a buffer of its own, \"*chatpipe-reasoning: CHAT*\",
  which \\[chatpipe-show-reasoning] displays; it holds the reasoning
  of the last answer.
nil: nowhere; the reasoning is dropped.
Reasoning is never sent back to the model."
  :type '(choice (const :tag "Folded block before the answer" fold)
                 (const :tag "Buffer of its own" buffer)
                 (const :tag "Drop it" nil))
  :safe (lambda (value) (memq value '(fold buffer nil)))
  :group 'chatpipe)

(defcustom chatpipe-reasoning-delimiters
  '("<details><summary>Reasoning</summary>" . "</details>")
  "The lines around reasoning blocks in buffers other than Org buffers.
A cons (BEGIN . END) of strings: a block runs from a line that is
exactly BEGIN to the next line that is exactly END (but for
trailing spaces).  The default is an HTML details element, which
Markdown viewers show folded.  Lines of the reasoning that look
like BEGIN or END get a backslash in front."
  :type '(cons (string :tag "First line") (string :tag "Last line"))
  :group 'chatpipe)

(defcustom chatpipe-org-reasoning-delimiters
  '("#+begin_reasoning" . "#+end_reasoning")
  "The lines around reasoning blocks in Org buffers.
See `chatpipe-reasoning-delimiters'.  Lines of the reasoning that
Org would take for headlines or block lines get a comma in front."
  :type '(cons (string :tag "First line") (string :tag "Last line"))
  :group 'chatpipe)

(defface chatpipe-heading
  '((t :inherit bold))
  "Face of role headings in chat buffers that do not fontify them."
  :group 'chatpipe)

(defface chatpipe-reasoning
  '((t :inherit shadow))
  "Face of the reasoning in an unfolded reasoning block."
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
  "One answer being streamed into a chat buffer.
BUFFER is the chat buffer, STREAM the answer's `chatpipe-stream'.
MARKER is the end of the answer's text (insertion type t), START
its start, where a reasoning block goes (insertion type nil).
DISPLAY is the `chatpipe-reasoning-display' of the answer.
REASONING is the marker where reasoning goes in a block, ESCAPE the
start of the block's first line not yet checked for escapes.  TOOLS
is an alist (INDEX . MARKER) of where the arguments of each tool
call go, TOOLS-END the end of the tool call lines, and TOOLS-SEP
non-nil once a blank line separates them from the answer.  TIMER
is the timer of a pending retry.  PROGRESS is what streamed last
\(`answer', `reasoning' or `tools'), STATUS-TIME when the status
last showed it, and STATUS-TIMER the timer that will show it next."
  buffer stream marker start group start-time (chars 0) usage display
  reasoning escape (reasoning-chars 0) tools tools-end tools-sep
  finish-reason timer progress (status-time 0.0) status-timer)

(defvar-local chatpipe--job nil
  "The `chatpipe--job' streaming into this buffer, or nil.")

(defvar-local chatpipe--reasoning-buffer nil
  "The buffer that shows this chat's reasoning, or nil.")

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
  "Return a regexp matching the note lines that end some answers.
They are the aborted and error notes and the tool call lines."
  (concat "^\\(?:" (regexp-quote chatpipe-aborted-text)
          "\\|\\[error: .*\\]\\|\\[tool call: .*\\]\\)[ \t]*\\'"))

(defun chatpipe--reasoning-delimiters ()
  "Return the reasoning block delimiters of the current buffer.
The value is a cons (BEGIN . END) of strings."
  (if (derived-mode-p 'org-mode)
      chatpipe-org-reasoning-delimiters
    chatpipe-reasoning-delimiters))

(defun chatpipe--line-regexp (line)
  "Return a regexp matching a whole line that is LINE but for trailing spaces."
  (concat "^" (regexp-quote line) "[ \t]*$"))

(defun chatpipe--reasoning-block-from (start body end)
  "Return the reasoning block with the first line from START to BODY.
Look for its last line between BODY and END.  Return the block as
a list (START BODY BLOCK-END), BLOCK-END the end of its last line,
and move point there; if there is no last line, return nil and
move point to BODY."
  (goto-char body)
  (let ((case-fold-search nil))
    (when (re-search-forward
           (chatpipe--line-regexp (cdr (chatpipe--reasoning-delimiters)))
           end t)
      (list start body (match-end 0)))))

(defun chatpipe--next-reasoning-block (end)
  "Find the next reasoning block beginning between point and END.
Return it as for `chatpipe--reasoning-block-from' and move point to
its end, or return nil.  A first line without a last line before
END starts no block."
  (let ((regexp (chatpipe--line-regexp (car (chatpipe--reasoning-delimiters))))
        (case-fold-search nil)
        block)
    (while (and (not block) (re-search-forward regexp end t))
      (setq block (chatpipe--reasoning-block-from
                   (match-beginning 0) (match-end 0) end)))
    block))

(defun chatpipe-reasoning-blocks (&optional beg end)
  "Return the reasoning blocks between BEG and END (default: all).
Each is a list (START BODY-START BLOCK-END) of buffer positions:
the beginning and end of the block's first line and the end of its
last line; see `chatpipe-reasoning-delimiters'."
  (let ((end (or end (point-max)))
        blocks block)
    (save-excursion
      (goto-char (or beg (point-min)))
      (unless (bolp) (forward-line 1))
      (while (and (< (point) end)
                  (setq block (chatpipe--next-reasoning-block end)))
        (push block blocks)))
    (nreverse blocks)))

(defun chatpipe-reasoning-block-at (pos)
  "Return the reasoning block at POS, or nil.
POS may be anywhere from the beginning of the block's first line to
the end of its last line.  The value is as for
`chatpipe-reasoning-blocks'."
  (save-excursion
    (goto-char pos)
    (end-of-line)
    (let ((case-fold-search nil))
      (when (re-search-backward
             (chatpipe--line-regexp (car (chatpipe--reasoning-delimiters)))
             nil t)
        (let ((block (chatpipe--reasoning-block-from
                      (match-beginning 0) (match-end 0) (point-max))))
          (and block (<= pos (nth 2 block)) block))))))

(defun chatpipe-turns (&optional beg end)
  "Return the list of turn positions between BEG and END (default: all).
Each turn is a list (ROLE HEADING-START CONTENT-START CONTENT-END),
ROLE a symbol and the rest buffer positions; a turn's content runs
to the next heading or END.  Text before the first heading is not
part of any turn, and a heading inside a reasoning block starts no
turn."
  (let ((beg (or beg (point-min)))
        (end (or end (point-max)))
        (headings (chatpipe--role-headings))
        (regexp (concat (chatpipe--heading-regexp) "\\|"
                        (chatpipe--line-regexp
                         (car (chatpipe--reasoning-delimiters)))))
        (case-fold-search nil)
        turns)
    (save-excursion
      (goto-char beg)
      (unless (bolp) (forward-line 1))
      (while (and (< (point) end) (re-search-forward regexp end t))
        (if (not (match-beginning 1))
            ;; The first line of a reasoning block: skip the block.
            (chatpipe--reasoning-block-from (match-beginning 0) (match-end 0)
                                            end)
          (let ((role (car (rassoc (match-string-no-properties 1) headings)))
                (heading-start (match-beginning 0))
                (content-start (min end (1+ (match-end 0)))))
            (when turns
              (setf (nth 3 (car turns)) heading-start))
            (push (list role heading-start content-start end) turns)
            (goto-char content-start)))))
    (nreverse turns)))

(defun chatpipe--turn-text (turn)
  "Return the text of TURN as sent: trimmed.
An assistant turn's text is without its reasoning blocks and
without the notes and tool call lines at its end."
  (let ((pos (nth 2 turn))
        (end (nth 3 turn))
        (pieces nil))
    (when (eq (car turn) 'assistant)
      (dolist (block (chatpipe-reasoning-blocks pos end))
        (push (buffer-substring-no-properties pos (car block)) pieces)
        (setq pos (nth 2 block))))
    (push (buffer-substring-no-properties pos end) pieces)
    (let ((text (string-trim (apply #'concat (nreverse pieces)))))
      (when (eq (car turn) 'assistant)
        (let ((note (chatpipe--note-regexp)))
          (while (string-match note text)
            (setq text (string-trim-right
                        (substring text 0 (match-beginning 0)))))))
      text)))

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

(defun chatpipe-header-line ()
  "Return the text of the chat header line: template, model and status."
  (let ((model (or chatpipe-model chatpipe--model-seen)))
    (concat (propertize "chatpipe" 'face 'bold) " "
            (or chatpipe-template chatpipe-default-template)
            (if model (format " [%s]" model) "")
            (if chatpipe--status (concat " | " chatpipe--status) ""))))

(defun chatpipe--usage-text (usage)
  "Return a short text for USAGE, a `usage' event plist, or nil.
Cached input tokens and reasoning tokens are mentioned when there
are any."
  (when usage
    (let ((in (plist-get usage :input_tokens))
          (out (plist-get usage :output_tokens))
          (cached (plist-get usage :cached_tokens))
          (reasoning (plist-get usage :reasoning_tokens)))
      (concat (format "%s in" (or in "?"))
              (if (and (numberp cached) (> cached 0))
                  (format " (%s cached)" cached)
                "")
              (format ", %s out" (or out "?"))
              (if (and (numberp reasoning) (> reasoning 0))
                  (format " (%s reasoning)" reasoning)
                "")))))

(defun chatpipe--retry-text (event)
  "Return the status text for the `retry' EVENT.
For example \"retrying in 2.5 s (attempt 1): HTTP 429: Too many\"."
  (let* ((delay (plist-get event :delay))
         (status (plist-get event :status))
         (reason (plist-get event :reason))
         (why (string-join (delq nil (list (and status
                                                (format "HTTP %s" status))
                                           (and (stringp reason)
                                                (not (string-empty-p reason))
                                                (replace-regexp-in-string
                                                 "\n" " " reason))))
                           ": ")))
    (format "retrying in %.1f s (attempt %s)%s"
            (if (numberp delay) delay 0)
            (or (plist-get event :attempt) "?")
            (if (string-empty-p why) "" (concat ": " why)))))

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

(defun chatpipe--job-end (job)
  "Return the marker at the end of what JOB has inserted so far.
That is the end of its tool call lines if any, else of its answer."
  (or (chatpipe--job-tools-end job) (chatpipe--job-marker job)))

(defun chatpipe--edit (job function)
  "Call FUNCTION with no arguments to insert text for JOB in its buffer.
FUNCTION is called in JOB's buffer, inside `save-excursion', with
`inhibit-read-only' bound to t.  Point and windows that were at the
end of JOB's text (see `chatpipe--job-end') follow it when
`chatpipe-auto-scroll' is non-nil; other windows and point stay.
Do nothing if the buffer is dead.  Return nil."
  (let ((buffer (chatpipe--job-buffer job)))
    (when (buffer-live-p buffer)
      (with-current-buffer buffer
        (let* ((pos (marker-position (chatpipe--job-end job)))
               (follow (and chatpipe-auto-scroll (= (point) pos)))
               (windows (and chatpipe-auto-scroll
                             (cl-remove-if-not
                              (lambda (w) (= (window-point w) pos))
                              (get-buffer-window-list nil nil t))))
               (inhibit-read-only t))
          (save-excursion (funcall function))
          (when follow (goto-char (chatpipe--job-end job)))
          (dolist (window windows)
            (set-window-point window (chatpipe--job-end job)))))))
  nil)

(defun chatpipe--insert-answer (job text)
  "Insert TEXT, a piece of JOB's answer, at the end of the answer.
If tool call lines came before any text, a blank line is put
between the answer and them."
  (chatpipe--edit
   job
   (lambda ()
     (let ((marker (chatpipe--job-marker job)))
       (goto-char marker)
       (insert text)
       (when (and (chatpipe--job-tools-end job)
                  (not (chatpipe--job-tools-sep job)))
         (insert "\n\n")
         (set-marker marker (- (point) 2))
         (setf (chatpipe--job-tools-sep job) t)))))
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
    (chatpipe--edit
     job
     (lambda ()
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
             (set-marker answer-end pos))))))))

(defun chatpipe--ensure-invisibility-spec ()
  "Make text whose `invisible' property is `chatpipe-reasoning' hidden."
  (unless (and (listp buffer-invisibility-spec)
               (assq 'chatpipe-reasoning buffer-invisibility-spec))
    (add-to-invisibility-spec '(chatpipe-reasoning . t))))

(defun chatpipe--reasoning-overlay (block)
  "Return the overlay that folds the reasoning BLOCK, making it if needed.
BLOCK is as for `chatpipe-reasoning-blocks'.  The overlay covers the
block but for its first line, and is new if there was none; a new
overlay does not hide the block."
  (let ((beg (nth 1 block))
        (end (nth 2 block))
        (ov (cl-find-if (lambda (ov) (overlay-get ov 'chatpipe-reasoning))
                        (overlays-in (nth 1 block) (nth 2 block)))))
    (if ov
        (unless (and (= (overlay-start ov) beg) (= (overlay-end ov) end))
          (move-overlay ov beg end))
      (setq ov (make-overlay beg end))
      (overlay-put ov 'chatpipe-reasoning t)
      (overlay-put ov 'evaporate t)
      (overlay-put ov 'face 'chatpipe-reasoning)
      (overlay-put ov 'isearch-open-invisible #'chatpipe--show-overlay))
    (chatpipe--ensure-invisibility-spec)
    ov))

(defun chatpipe--show-overlay (overlay)
  "Unfold the reasoning block folded by OVERLAY."
  (overlay-put overlay 'invisible nil))

(defun chatpipe-reasoning-hidden-p (block)
  "Return non-nil if the reasoning BLOCK is folded.
BLOCK is as for `chatpipe-reasoning-blocks'."
  (cl-some (lambda (ov) (and (overlay-get ov 'chatpipe-reasoning)
                             (overlay-get ov 'invisible)))
           (overlays-in (nth 1 block) (nth 2 block))))

(defun chatpipe-hide-reasoning (block hide)
  "Fold the reasoning BLOCK if HIDE is non-nil, else unfold it.
BLOCK is as for `chatpipe-reasoning-blocks'.  Only its first line
shows when it is folded.  Return HIDE."
  (overlay-put (chatpipe--reasoning-overlay block) 'invisible
               (and hide 'chatpipe-reasoning))
  hide)

(defun chatpipe--open-reasoning-block (job)
  "Insert an empty, folded reasoning block at the start of JOB's answer.
Set JOB's reasoning marker inside it."
  (let* ((delimiters (chatpipe--reasoning-delimiters))
         (org (derived-mode-p 'org-mode))
         (padding (if org "\n" "\n\n"))
         body inside)
    (goto-char (chatpipe--job-start job))
    (insert (car delimiters))
    (setq body (point))
    (insert padding)
    (setq inside (point))
    (insert padding (cdr delimiters))
    (chatpipe-hide-reasoning (list nil body (point)) t)
    (insert "\n\n")
    (setf (chatpipe--job-reasoning job) (copy-marker inside t))
    (setf (chatpipe--job-escape job) (copy-marker inside))))

(defun chatpipe--reasoning-escape ()
  "Return how reasoning lines are escaped in the current buffer.
The value is a cons (REGEXP . PREFIX): a line of reasoning at whose
start REGEXP matches gets PREFIX in front.  In Org buffers, those
are lines that Org would take for headlines or block lines, such as
the block's own last line, and the prefix is a comma, as in Org's
source blocks.  In other buffers, they are the lines that look like
the block's first or last line, and the prefix is a backslash,
which keeps Markdown from taking them for HTML."
  (if (derived-mode-p 'org-mode)
      '("\\*+\\(?:[ \t]\\|$\\)\\|[ \t]*#\\+" . ",")
    (let ((delimiters (chatpipe--reasoning-delimiters)))
      (cons (concat "\\(?:" (regexp-quote (car delimiters)) "\\|"
                    (regexp-quote (cdr delimiters)) "\\)[ \t]*$")
            "\\"))))

(defun chatpipe--escape-reasoning (job from &optional final)
  "Escape the lines of JOB's reasoning that its newest text completed.
FROM is where the newest text starts.  A line is looked at once,
when the newline that ends it arrives, or when FINAL is non-nil (at
the end of the answer); JOB's escape marker is at the start of the
first line not looked at yet.  See `chatpipe--reasoning-escape'."
  (let ((end (chatpipe--job-reasoning job))
        (check (chatpipe--job-escape job))
        (escape (chatpipe--reasoning-escape))
        (case-fold-search nil))
    (cl-flet ((escape-line ()
                (save-excursion
                  (goto-char check)
                  (when (looking-at (car escape))
                    (insert (cdr escape))))))
      (goto-char from)
      (while (search-forward "\n" end t)
        (escape-line)
        (set-marker check (point)))
      (when (and final (< check end))
        (escape-line)
        (set-marker check end)))))

(define-derived-mode chatpipe-reasoning-mode special-mode "Chatpipe-Reasoning"
  "Major mode of the buffers that show the reasoning of a chat's answer.
The reasoning streams in here when `chatpipe-reasoning-display' is
`buffer'; each new answer of the chat starts the buffer afresh."
  (setq buffer-undo-list t)
  (visual-line-mode 1))

(defun chatpipe--reasoning-buffer-of (chat &optional create)
  "Return the reasoning buffer of the chat buffer CHAT, or nil.
With CREATE non-nil, make it if there is none."
  (with-current-buffer chat
    (if (buffer-live-p chatpipe--reasoning-buffer)
        chatpipe--reasoning-buffer
      (when create
        (let ((buffer (get-buffer-create
                       (format "*chatpipe-reasoning: %s*" (buffer-name)))))
          (with-current-buffer buffer
            (unless (derived-mode-p 'chatpipe-reasoning-mode)
              (chatpipe-reasoning-mode)))
          (setq chatpipe--reasoning-buffer buffer))))))

(defun chatpipe--append-reasoning (job text)
  "Append TEXT to the reasoning buffer of JOB's chat buffer.
Point and windows at its end follow the text."
  (let ((buffer (chatpipe--reasoning-buffer-of (chatpipe--job-buffer job) t)))
    (with-current-buffer buffer
      (let* ((end (point-max))
             (follow (= (point) end))
             (windows (cl-remove-if-not
                       (lambda (w) (= (window-point w) end))
                       (get-buffer-window-list nil nil t)))
             (inhibit-read-only t))
        (save-excursion
          (goto-char end)
          (insert text))
        (when follow (goto-char (point-max)))
        (dolist (window windows)
          (set-window-point window (point-max)))))))

(defun chatpipe--insert-reasoning (job text)
  "Show TEXT, a piece of JOB's reasoning, where JOB's display wants it.
See `chatpipe-reasoning-display'."
  (pcase (chatpipe--job-display job)
    ('fold
     (chatpipe--edit
      job
      (lambda ()
        (unless (chatpipe--job-reasoning job)
          (chatpipe--open-reasoning-block job))
        (goto-char (chatpipe--job-reasoning job))
        (let ((from (point)))
          (insert text)
          (chatpipe--escape-reasoning job from)))))
    ('buffer (chatpipe--append-reasoning job text)))
  (cl-incf (chatpipe--job-reasoning-chars job) (length text)))

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
  "Let go of the markers and the timers of JOB, which has ended."
  (chatpipe--cancel-timer job)
  (when (chatpipe--job-status-timer job)
    (cancel-timer (chatpipe--job-status-timer job))
    (setf (chatpipe--job-status-timer job) nil))
  (dolist (marker (append (list (chatpipe--job-marker job)
                                (chatpipe--job-start job)
                                (chatpipe--job-reasoning job)
                                (chatpipe--job-escape job)
                                (chatpipe--job-tools-end job))
                          (mapcar #'cdr (chatpipe--job-tools job))))
    (when (markerp marker)
      (set-marker marker nil))))

(defun chatpipe--finish (job kind &optional message)
  "End JOB as KIND: `done', `aborted' or `error' with MESSAGE.
Add the note for an aborted or failed answer, leave one blank line
after the answer and, at the end of the buffer, add a user heading
for the next question; close the change group of the answer and
update the status."
  (let ((buffer (chatpipe--job-buffer job)))
    (when (buffer-live-p buffer)
      (with-current-buffer buffer
        (let* ((marker (chatpipe--job-end job))
               (follow (and chatpipe-auto-scroll (= (point) marker)))
               (windows (and chatpipe-auto-scroll
                             (cl-remove-if-not
                              (lambda (w) (= (window-point w) marker))
                              (get-buffer-window-list nil nil t))))
               (seconds (- (float-time) (chatpipe--job-start-time job)))
               (inhibit-read-only t)
               end)
          (when (chatpipe--job-escape job)
            (save-excursion
              (chatpipe--escape-reasoning job (chatpipe--job-reasoning job) t)))
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
          (chatpipe--release job)
          (when (eq chatpipe--job job)
            (setq chatpipe--job nil))
          (pcase kind
            ('done
             (let ((reason (chatpipe--job-finish-reason job))
                   (usage (chatpipe--usage-text (chatpipe--job-usage job))))
               (chatpipe--set-status
                "done%s: %s%.1f s"
                (if (and (stringp reason) (not (equal reason "stop")))
                    (format " (%s)" reason)
                  "")
                (if usage (concat usage ", ") "")
                seconds)))
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
          ("retry"
           (let ((text (chatpipe--retry-text event))
                 (delay (plist-get event :delay)))
             (chatpipe--set-status "%s" text)
             (message "chatpipe: %s" text)
             (setf (chatpipe--job-timer job)
                   (run-at-time (if (numberp delay) (max 0 delay) 0) nil
                                #'chatpipe--retry-wait job
                                (plist-get event :attempt)))))
          ("usage" (setf (chatpipe--job-usage job) event))
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
                       :buffer (current-buffer) :marker marker
                       :start (copy-marker pos) :group group
                       :start-time (float-time)
                       :display chatpipe-reasoning-display))
            (setf (chatpipe--job-stream job)
                  (chatpipe-process-start
                   :template (or chatpipe-template chatpipe-default-template)
                   :messages messages
                   :model chatpipe-model
                   :vars chatpipe-template-vars
                   :name (format "chatpipe %s" (buffer-name))
                   :handler (lambda (event)
                              (chatpipe--handle-event job event))))
            (setq chatpipe--job job)
            (chatpipe--clear-reasoning-buffer)
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
        (chatpipe-process-abort (chatpipe--job-stream job))
        (chatpipe--finish job 'aborted)
        t))))

(defun chatpipe--clear-reasoning-buffer ()
  "Empty the reasoning buffer of the current chat buffer, if it has one."
  (let ((buffer (chatpipe--reasoning-buffer-of (current-buffer))))
    (when buffer
      (with-current-buffer buffer
        (let ((inhibit-read-only t))
          (erase-buffer))))))

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
