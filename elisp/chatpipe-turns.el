;;; chatpipe-turns.el --- Chat turns, role headings and messages for chatpipe -*- lexical-binding: t; -*-

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
;; This file finds the turns of a buffer (the headings are in
;; chatpipe-headings.el) and makes messages of them.
;; Reasoning blocks (between the lines of `chatpipe-reasoning-delimiters',
;; or `chatpipe-org-reasoning-delimiters' in Org buffers) are never sent,
;; and headings inside them start no turn; nor are the notes that end
;; some answers (`chatpipe-aborted-text', "[error: ...]", "[truncated:
;; ...]", "[empty answer: ...]", "[stopped: ...]") and the tool call
;; lines, "[tool call: NAME(ARGUMENTS)]" (calls shown, not run, when a
;; chat offers no tools).  Tool blocks (see chatpipe-toolblocks.el)
;; split an assistant turn into the messages of its rounds: the text
;; and the calls of each answer, each call's result as a `tool'
;; message, then the last answer's text.  A file's Local Variables
;; block (where a saved chat keeps its settings), after a page break,
;; ends the chat.  Text from the model and tools has the constructs
;; that would be structure broken when it is inserted (see
;; `chatpipe--breaks'); the breaks are taken out when it is sent.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-modeltext)
(require 'chatpipe-org)
(require 'chatpipe-headings)
(require 'chatpipe-toolblocks)
(require 'chatpipe-media-links)

;;;; Customization

(defcustom chatpipe-aborted-text "[aborted]"
  "The line that ends an answer stopped by `chatpipe-abort'."
  :type 'string
  :group 'chatpipe)

(defconst chatpipe--done-notes
  '((length . "[truncated: the token limit was reached]")
    (empty . "[empty answer: the model sent no text]")
    (empty-filtered . "[empty answer: the provider's content filter \
stopped it]")
    (filtered . "[stopped: the provider's content filter]"))
  "The notes that end a finished answer that is not a normal one.
An alist (KIND . NOTE): `length' for an answer cut at the token
limit, `empty' for one with no text and no tool call,
`empty-filtered' for one stopped so by a content filter, `filtered'
for one with text stopped by a content filter.  Notes are never
sent back.")

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

(defcustom chatpipe-auto-scroll t
  "Whether point follows the answer while it streams.
When non-nil, point and windows that are at the end of the answer
move along with it; point elsewhere never moves."
  :type 'boolean
  :group 'chatpipe)

;;;; Turns

(defun chatpipe--note-regexp ()
  "Return a regexp matching the note lines that end some answers.
They are the aborted, error, truncated, empty and stopped notes (see
`chatpipe--done-notes') and the tool call lines."
  (concat "^\\(?:" (regexp-quote chatpipe-aborted-text)
          "\\|\\[\\(?:error\\|truncated\\|empty answer\\|stopped\\): .*\\]"
          "\\|\\[tool call: .*\\]\\)[ \t]*\\'"))

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

(defun chatpipe--block-start-regexp ()
  "Return a regexp matching the start of a reasoning or tool block's line.
It has no groups; see `chatpipe--block-at-line'."
  (concat (chatpipe--line-regexp (car (chatpipe--reasoning-delimiters)))
          "\\|^" (regexp-quote (car (chatpipe--tool-syntax
                                       (chatpipe--tool-org-p))))))

(defun chatpipe--block-at-line (end)
  "Return the reasoning or tool block whose first line is at point.
Look for its last line before END.  Return (KIND START BODY
BLOCK-END), KIND `reasoning' or `tool' and the rest as for
`chatpipe-reasoning-blocks', and move point to its end; if there is
no such block, return nil and move point to the end of the line."
  (let ((start (point))
        (org (chatpipe--tool-org-p))
        (case-fold-search nil)
        block)
    (cond ((looking-at (chatpipe--line-regexp
                        (car (chatpipe--reasoning-delimiters))))
           (setq block (cons 'reasoning (chatpipe--reasoning-block-from
                                         start (match-end 0) end))))
          ((looking-at (chatpipe--tool-begin-regexp org))
           (setq block (cons 'tool (chatpipe--tool-block-from
                                    start (match-end 0) end org)))))
    (if (cdr block)
        block
      (goto-char start)
      (end-of-line)
      nil)))

(defun chatpipe--settings-block ()
  "Return the Local Variables block that ends the chat, or nil.
The value is as for `chatpipe--local-variables-block'.  The block
ends the chat if only blank lines follow it or, for the block of a
saved chat (one that names `chatpipe-mode' or a chatpipe- variable),
if no role heading follows it: text typed after such a block, at
the end of the file, is still the chat's (sending moves it before
the block, see `chatpipe--take-text-after-block')."
  (let ((block (chatpipe--local-variables-block)))
    (save-excursion
      (save-restriction
        (widen)
        (and block
             (progn (goto-char (nth 1 block))
                    (skip-chars-forward " \t\n")
                    (or (eobp)
                        (and (not (let ((case-fold-search nil))
                                    (re-search-forward (chatpipe--heading-regexp)
                                                       nil t)))
                             (progn (goto-char (nth 0 block))
                                    (search-forward "chatpipe-" (nth 1 block) t)))))
             block)))))

(defun chatpipe--local-variables-start ()
  "Return the start of the Local Variables block that ends the chat, or nil.
See `chatpipe--settings-block'."
  (car (chatpipe--settings-block)))

(defun chatpipe--chat-end ()
  "Return the end of the chat: the start of the file's Local Variables.
That is the block where a saved chat keeps its settings (see
`chatpipe--local-variables-start'); without one, the end of the
accessible part of the buffer."
  (let ((start (chatpipe--local-variables-start)))
    (if start (max (point-min) (min start (point-max))) (point-max))))

(defun chatpipe--at-chat-end-p ()
  "Return non-nil if only blank space is between point and the chat's end."
  (save-excursion
    (skip-chars-forward " \t\n")
    (>= (point) (chatpipe--chat-end))))

(defun chatpipe--open-next-turn ()
  "At the end of the chat, insert a user heading for the next question.
Do nothing elsewhere.  If the file's Local Variables follow, leave a
blank line before them.  Point ends after the heading's blank line."
  (when (chatpipe--at-chat-end-p)
    (insert (chatpipe--heading 'user) "\n\n")
    (unless (eobp)
      (save-excursion
        (delete-region (point) (progn (skip-chars-forward " \t\n") (point)))
        (insert "\n\n")))))

(defun chatpipe-turns (&optional beg end)
  "Return the list of turn positions between BEG and END (default: all).
Each turn is a list (ROLE HEADING-START CONTENT-START CONTENT-END),
ROLE a symbol and the rest buffer positions; a turn's content runs
to the next heading or END.  Text before the first heading is not
part of any turn, a heading inside a reasoning or tool block starts
no turn, and the file's Local Variables are no turn's (see
`chatpipe--chat-end')."
  (let* ((chat-end (chatpipe--chat-end))
         (beg (min (or beg (point-min)) chat-end))
         (end (min (or end chat-end) chat-end))
         (headings (chatpipe--role-headings))
         (regexp (concat (chatpipe--heading-regexp) "\\|"
                         (chatpipe--block-start-regexp)))
         (case-fold-search nil)
         turns)
    (save-excursion
      (goto-char beg)
      (unless (bolp) (forward-line 1))
      (while (and (< (point) end) (re-search-forward regexp end t))
        (if (not (match-beginning 1))
            ;; The first line of a block: skip the block.
            (progn (goto-char (match-beginning 0))
                   (chatpipe--block-at-line end))
          (let ((role (car (rassoc (match-string-no-properties 1) headings)))
                (heading-start (match-beginning 0))
                (content-start (min end (1+ (match-end 0)))))
            (when turns
              (setf (nth 3 (car turns)) heading-start))
            (push (list role heading-start content-start end) turns)
            (goto-char content-start)))))
    (nreverse turns)))

(defun chatpipe--turn-pieces (turn)
  "Return the pieces of TURN's content, in order.
They are strings of text and, for each tool block with a result,
its call and result (a plist, see `chatpipe-tool-block-data').
Reasoning blocks and tool blocks without a result are left out."
  (let ((pos (nth 2 turn))
        (end (nth 3 turn))
        (regexp (chatpipe--block-start-regexp))
        (case-fold-search nil)
        pieces)
    (save-excursion
      (goto-char pos)
      (while (re-search-forward regexp end t)
        (let* ((line (goto-char (match-beginning 0)))
               (block (chatpipe--block-at-line end)))
          (when block
            (push (buffer-substring-no-properties pos line) pieces)
            (setq pos (nth 3 block))
            (when (eq (car block) 'tool)
              (let ((call (chatpipe-tool-block-data (cdr block))))
                (unless (eq (plist-get call :flag) 'pending)
                  (push call pieces))))))))
    (push (buffer-substring-no-properties pos end) pieces)
    (nreverse pieces)))

;;;; Messages

(defun chatpipe--assistant-text (text)
  "Return TEXT, of an assistant turn, as sent: trimmed.
The notes and tool call lines at its end are left out; in an Org
buffer, it is converted back to Markdown (see
`chatpipe-org-to-markdown'); the breaks put in the model's text
when it was inserted are taken out (see
`chatpipe--restore-model-text'), so the model gets its text back."
  (let ((text (string-trim text))
        (note (chatpipe--note-regexp)))
    (while (string-match note text)
      (setq text (string-trim-right (substring text 0 (match-beginning 0)))))
    (chatpipe--restore-model-text
     (if (and chatpipe-org-convert-markdown (derived-mode-p 'org-mode))
         (chatpipe-org-to-markdown text (chatpipe-org-heading-level
                                         (chatpipe--heading 'assistant)))
       text)
     (chatpipe--heading-breaks))))

(defun chatpipe--turn-text (turn)
  "Return the text of TURN as sent: trimmed.
An assistant turn's text is without its reasoning and tool blocks
and without the notes and tool call lines at its end; in an Org
buffer, it is converted back to Markdown (see
`chatpipe-org-to-markdown').  The breaks in model text (see
`chatpipe--restore-model-text') are taken out of all turns: text
copied from an answer into a question is sent as the model wrote it."
  (if (eq (car turn) 'assistant)
      (chatpipe--assistant-text
       (apply #'concat (cl-remove-if-not #'stringp (chatpipe--turn-pieces turn))))
    (chatpipe--restore-model-text
     (string-trim (buffer-substring-no-properties (nth 2 turn) (nth 3 turn)))
     (chatpipe--heading-breaks))))

(defun chatpipe--tool-messages (text items)
  "Return the messages of the answer TEXT and of its tool call ITEMS.
Each item is a plist as `chatpipe-tool-block-data' returns.
The messages are alists in the neutral shape of docs/protocol.md:
the assistant's, with `tool_calls', then a `tool' message for each
call's result."
  (cons `((role . "assistant") (content . ,(chatpipe--assistant-text text))
          (tool_calls
           . ,(vconcat
               (mapcar (lambda (call)
                         `((id . ,(plist-get call :id))
                           (name . ,(plist-get call :name))
                           (arguments . ,(plist-get call :arguments))
                           ,@(and (plist-get call :signature)
                                  `((signature . ,(plist-get call :signature))))))
                       items))))
        (mapcar (lambda (call)
                  `((role . "tool") (tool_call_id . ,(plist-get call :id))
                    (name . ,(plist-get call :name))
                    (content . ,(plist-get call :content))
                    (is_error . ,(if (memq (plist-get call :flag) '(error denied))
                                     t :false))))
                items)))

(defun chatpipe--assistant-messages (turn)
  "Return the messages of the assistant TURN, a list.
A turn without tool blocks is one message (\"assistant\" . TEXT),
or none if its text is empty.  With tool blocks, each round (the
text before some calls, the calls, their results) gives the
messages of `chatpipe--tool-messages', and the text after the last
round, if any, a last (\"assistant\" . TEXT)."
  (let ((text "") calls messages)
    (dolist (piece (chatpipe--turn-pieces turn))
      (cond ((not (stringp piece)) (push piece calls))
            ((and calls (string-blank-p piece)))
            (t (when calls
                 (setq messages (append (reverse (chatpipe--tool-messages
                                                  text (nreverse calls)))
                                        messages))
                 (setq text "" calls nil))
               (setq text (concat text piece)))))
    (when calls
      (setq messages (append (reverse (chatpipe--tool-messages
                                       text (nreverse calls)))
                             messages)
            text ""))
    (let ((last (chatpipe--assistant-text text)))
      (unless (string-empty-p last)
        (push (cons "assistant" last) messages)))
    (nreverse messages)))

(defun chatpipe-messages (&optional beg end)
  "Return the messages of the chat between BEG and END (default: all).
The value is a list, in order, of (ROLE . CONTENT) pairs of strings
and, for the tool calls of answers and their results, alists in the
neutral shape of docs/protocol.md (see `chatpipe--tool-messages'):
an assistant message with `tool_calls', whose items have `id',
`name' and `arguments', and a `tool' message for each result, with
`tool_call_id', `name', `content' and `is_error' (t or :false).
Empty turns are left out, user turns that follow each other are
one message (see `chatpipe--join-user-messages'), and a user
message that links images or PDFs has them as content parts (see
`chatpipe-media-messages')."
  (chatpipe-media-messages
   (chatpipe--join-user-messages
    (mapcan (lambda (turn)
              (if (eq (car turn) 'assistant)
                  (chatpipe--assistant-messages turn)
                (let ((text (chatpipe--turn-text turn)))
                  (unless (string-empty-p text)
                    (list (cons (symbol-name (car turn)) text))))))
            (chatpipe-turns beg end)))))

(defun chatpipe--join-user-messages (messages)
  "Return MESSAGES, (ROLE . CONTENT) pairs, with no two user messages in a row.
An answer that failed or was stopped before any text sends nothing
\(its note, such as \"[error: ...]\", is never sent), so the question
before it and the next one would follow each other.  Each run of
user messages is one: a text that is the same as the one before it
\(the question typed again after the failure) is sent once, other
texts are joined by a blank line, in order.  The buffer keeps every
turn as it is."
  (let (out)
    (dolist (message messages)
      (let ((last (car out)))
        (if (and (equal (car-safe message) "user") (stringp (cdr message))
                 (equal (car-safe last) "user") (stringp (cdr last)))
            (unless (equal (cdr message) (cdr last))
              (setcar out (cons "user" (concat (cdr last) "\n\n"
                                               (cdr message)))))
          (push message out))))
    (nreverse out)))

(defun chatpipe--question-start (beg end)
  "Return the start of the question in the text from BEG to END.
The text has no heading.  In Org buffers, the keyword lines (such
as \"#+title: Notes\") and the property drawer at its start are no
part of the question."
  (save-excursion
    (goto-char beg)
    (when (derived-mode-p 'org-mode)
      (while (and (< (point) end)
                  (cond ((looking-at "[ \t]*\\(?:#\\+\\|$\\)")
                         (forward-line 1))
                        ((looking-at "[ \t]*:PROPERTIES:[ \t]*$")
                         (re-search-forward "^[ \t]*:END:[ \t]*$" end 'move)
                         (forward-line 1))
                        (t nil)))))
    (min (point) end)))

(defun chatpipe--separate-rest (end)
  "Put the text after END, if any, under a user heading of its own.
Do nothing if it starts with a heading or is the end of the chat.
The text after the chat sent then stays a turn of the user's."
  (save-excursion
    (goto-char end)
    (skip-chars-forward " \t\n")
    (unless (or (>= (point) (chatpipe--chat-end))
                (let ((case-fold-search nil))
                  (looking-at (chatpipe--heading-regexp))))
      (delete-region end (point))
      (insert "\n\n" (chatpipe--heading 'user) "\n\n"))))

(defun chatpipe--check-last-is-user (messages)
  "Signal a `user-error' unless the last of MESSAGES is the user's."
  (unless (equal (car (car (last messages))) "user")
    (user-error "Nothing to send: write a question under \"%s\""
                (chatpipe--heading 'user))))

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

(provide 'chatpipe-turns)
;;; chatpipe-turns.el ends here
