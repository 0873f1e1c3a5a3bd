;;; chatpipe-tools.el --- Tools the model may call, defined in Emacs or MCP -*- lexical-binding: t; -*-

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

;; A chat may offer the model tools: tools defined in Emacs Lisp with
;; `chatpipe-define-tool', and the tools of MCP servers, which the
;; backend starts and calls (they are configured in its mcp.json;
;; `chatpipe-mcp-servers' lists them).  `chatpipe-default-tools' names
;; the tools of all chats, `chatpipe-tools' (set with
;; `chatpipe-set-tools') those of one chat.
;;
;; The request carries the chat's tools (`chatpipe--request-tools').
;; When the model calls a tool, the backend's `chatpipe serve' asks
;; Emacs with a `tool_request' event (docs/protocol.md, "Tools"):
;;
;; - to confirm a call of an MCP tool: the user is asked in the
;;   minibuffer (y: this once, a: always, n: no, with a reason, which
;;   goes to the model), and the answer is a `tool_confirm' line;
;; - to run an Emacs tool: after asking the user, if the tool says so,
;;   the tool runs, and its result (cut to
;;   `chatpipe-tool-max-result-bytes'), its error or the user's denial
;;   goes back as a `tool_result' line.
;;
;; The question shows the whole arguments, pretty-printed (in a buffer
;; of their own when they are long), through `chatpipe--tool-shown':
;; no bidi control or control character of the model's or a server's
;; reaches the screen as it is.  "Always" approves one tool of one
;; source (an MCP server, or Emacs) in one chat, its buffer
;; (`chatpipe--tool-approvals'); `chatpipe-tool-approvals' lists and
;; revokes them.
;;
;; The question is asked from a timer, not from the process filter;
;; C-g at the question, or while a tool runs, aborts the answer, and
;; so does `chatpipe-abort' while the question is asked.  The backend
;; then sends the results to the model, and its next answer streams
;; into the buffer (see chatpipe-insert.el).

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'json)
(require 'chatpipe-backend)
(require 'chatpipe-process)
(require 'chatpipe-status)

;;;; Tools defined in Emacs

(cl-defstruct (chatpipe-tool (:constructor chatpipe-tool--create)
                             (:copier nil))
  "A tool defined in Emacs that the model may call.
See `chatpipe-define-tool' for NAME, DESCRIPTION, PARAMETERS,
FUNCTION, CONFIRM and ASYNC."
  name description parameters function confirm async)

(defvar chatpipe--tool-registry nil
  "The tools defined with `chatpipe-define-tool': an alist (NAME . TOOL).")

(defcustom chatpipe-tool-max-result-bytes 100000
  "The largest result of an Emacs tool sent to the model, in bytes.
A longer one is cut (at a character) and ends with
\"[truncated: N of M bytes]\".  The backend caps the results of MCP
tools with its template's `chatpipe.max_tool_result_bytes'.  nil
means no limit."
  :type '(choice (const :tag "No limit" nil) natnum)
  :group 'chatpipe)

(defvar-local chatpipe--tool-approvals nil
  "The tools approved with \"always\" in this chat, newest first.
Each is (SOURCE . NAME): SOURCE \"mcp:SERVER\" for an MCP server's
tool, \"emacs\" for a tool defined in Emacs; NAME the tool's name
there.  Never saved with the chat, nor read from a file; see
`chatpipe-tool-approvals'.")

;;;###autoload
(cl-defun chatpipe-define-tool (name &key description parameters function
                                     confirm async)
  "Define the tool NAME that chats may offer the model; return it.
NAME is a string of 1 to 64 letters, digits, \"_\" and \"-\".

DESCRIPTION says what the tool does, for the model (a string).

PARAMETERS are its arguments, as a JSON Schema of an object (a
plist, an alist or a hash table that `json-serialize' takes), such
as (:type \"object\" :properties (:city (:type \"string\"))
:required [\"city\"]); nil for a tool without arguments.

FUNCTION runs a call, with the chat buffer current.  It is called
with one argument, the call's arguments: a plist with keyword keys,
such as (:city \"Paris\"), JSON arrays as lists, null and false as
nil.  It returns the result: a string, or a value that
`json-serialize' takes (sent as JSON), or anything else (sent as
printed).  An error it signals goes to the model as an error result,
with the error's message.

ASYNC non-nil means that FUNCTION calls back: it is called with a
callback first, then the arguments, and calls the callback once,
with the result, or with a message and a non-nil second argument
for an error.  Until it does, the answer waits (`chatpipe-abort'
stops it).

CONFIRM non-nil means that the user is asked before each call (and
may answer \"always\", which holds for this tool in that chat).

Defining a tool of the same name again replaces it.  Signal an error
if NAME, FUNCTION, DESCRIPTION or PARAMETERS is not as described."
  (unless (and (stringp name)
               (string-match-p "\\`[A-Za-z0-9_-]\\{1,64\\}\\'" name))
    (error "A tool's name is 1 to 64 letters, digits, `_' and `-': %S" name))
  (unless (functionp function)
    (error "Tool %s: :function must be a function" name))
  (unless (or (null description) (stringp description))
    (error "Tool %s: :description must be a string" name))
  (when parameters
    (condition-case err
        (ignore (json-serialize parameters))
      (error (error "Tool %s: :parameters is no JSON object: %s" name
                    (error-message-string err)))))
  (let ((tool (chatpipe-tool--create :name name :description (or description "")
                                     :parameters parameters :function function
                                     :confirm confirm :async async)))
    (setq chatpipe--tool-registry
          (cons (cons name tool)
                (cl-remove name chatpipe--tool-registry :key #'car :test #'equal)))
    tool))

(defun chatpipe-get-tool (name)
  "Return the Emacs tool NAME (see `chatpipe-define-tool'), or nil."
  (cdr (assoc name chatpipe--tool-registry)))

(defun chatpipe-tool-names ()
  "Return the names of the tools defined in Emacs, sorted."
  (sort (mapcar #'car chatpipe--tool-registry) #'string<))

(defun chatpipe--tool-definition (tool)
  "Return TOOL's neutral definition, an alist for JSON.
That is ((name . NAME) (description . TEXT) (parameters . SCHEMA))."
  `((name . ,(chatpipe-tool-name tool))
    (description . ,(chatpipe-tool-description tool))
    (parameters . ,(or (chatpipe-tool-parameters tool)
                       '(:type "object" :properties nil)))))

(defun chatpipe--request-tools ()
  "Return the tools of this chat for a request to the backend.
The value is a list of neutral definitions of its Emacs tools and
of its \"mcp:NAME\" strings (see `chatpipe--chat-tools'), or nil.
Signal a `user-error' for a tool that is not defined in Emacs."
  (mapcar (lambda (name)
            (if (string-prefix-p "mcp:" name)
                name
              (chatpipe--tool-definition
               (or (chatpipe-get-tool name)
                   (user-error "%s" (format "This chat's tool %s is not \
defined in this Emacs (chatpipe-define-tool); M-x chatpipe-set-tools changes \
the chat's tools" name))))))
          (chatpipe--chat-tools)))

;;;; MCP servers

(defun chatpipe-mcp-servers ()
  "Return the MCP servers configured in the backend's mcp.json.
The value is a list of plists with :name, :transport (\"stdio\" or
\"http\"), :disabled and, when the entry has one, :description, as
`chatpipe mcp list --json' gives them.  Signal
`chatpipe-backend-missing' if there is no backend, and
`chatpipe-backend-failed' (with the backend's message) if mcp.json
cannot be read."
  (pcase-let ((`(,code . ,out) (chatpipe-call "mcp" "list" "--json")))
    (unless (zerop code)
      (signal 'chatpipe-backend-failed
              (list (format "chatpipe mcp list failed: %s" (string-trim out)))))
    (chatpipe--json-read out)))

;;;; Answering the backend

(cl-defstruct (chatpipe--tool-run (:constructor chatpipe--tool-run-create)
                                  (:copier nil))
  "A `tool_request' of the backend that Emacs answers.
STREAM is the answer's stream, BUFFER its chat buffer; CALL-ID,
NAME, ARGUMENTS, CONFIRM and SOURCE come from the event, and TOOL
\(the tool's name at SOURCE, when it is not NAME).  ON-QUIT
is called with no arguments if the user quits while asked, or while
the tool runs.  TIMER is the timer that will start the run; ENDED is
non-nil once it is answered, or its answer is no longer wanted."
  stream buffer call-id name arguments confirm source tool on-quit timer
  ended)

(defvar chatpipe--tool-prompting nil
  "The tool runs whose question is being asked, innermost first.
Bound around the question (see `chatpipe--tool-ask'), so that
`chatpipe--tool-prompt-exit' can tell whether it may end it.")

(defconst chatpipe--tool-busy-delay 0.5
  "Seconds until a question is tried again while the minibuffer is busy.")

(defun chatpipe--tool-request (stream event buffer on-quit)
  "Answer EVENT, a `tool_request' of STREAM, for the chat BUFFER.
The question or the tool runs as soon as Emacs is back in its
command loop (a timer), not in the process filter; ON-QUIT is
called if the user quits meanwhile (see `chatpipe--tool-run').
Return the new `chatpipe--tool-run', to give
`chatpipe--tool-runs-stop' when the answer ends."
  (let ((run (chatpipe--tool-run-create
              :stream stream :buffer buffer
              :call-id (plist-get event :call_id) :name (plist-get event :name)
              :arguments (or (plist-get event :arguments) "")
              :confirm (plist-get event :confirm)
              :source (plist-get event :source) :tool (plist-get event :tool)
              :on-quit on-quit)))
    (setf (chatpipe--tool-run-timer run)
          (run-at-time 0 nil #'chatpipe--tool-run-start run))
    run))

(defun chatpipe--tool-status (run format-string &rest args)
  "Show FORMAT-STRING with ARGS as the status of RUN's chat buffer."
  (let ((buffer (chatpipe--tool-run-buffer run)))
    (when (and (buffer-live-p buffer) (not (chatpipe--tool-run-ended run)))
      (with-current-buffer buffer
        (apply #'chatpipe--set-status format-string args)))))

(defun chatpipe--tool-run-start (run)
  "Answer RUN, from its timer: ask the user, run the tool, or both.
A run that must ask while the minibuffer is in use waits until it
is free."
  (setf (chatpipe--tool-run-timer run) nil)
  (unless (chatpipe--tool-run-ended run)
    (let* ((name (chatpipe--tool-run-name run))
           (mcp (chatpipe--tool-run-confirm run))
           (tool (and (not mcp) (chatpipe-get-tool name))))
      (cond
       ((and (not mcp) (not tool))
        (chatpipe--tool-answer
         run (format "there is no tool named %s in this Emacs" name) t))
       ((and (or mcp (chatpipe-tool-confirm tool))
             (chatpipe--tool-approved-p run))
        (if mcp
            (chatpipe--tool-confirm-mcp run '(once))
          (chatpipe--tool-call run tool)))
       ((and (or mcp (chatpipe-tool-confirm tool))
             (active-minibuffer-window))
        (chatpipe--tool-status run "waiting for confirmation of %s (the \
minibuffer is in use)" (chatpipe--tool-shown name t))
        (setf (chatpipe--tool-run-timer run)
              (run-at-time chatpipe--tool-busy-delay nil
                           #'chatpipe--tool-run-start run)))
       (mcp (chatpipe--tool-confirm-mcp run))
       ((not (chatpipe-tool-confirm tool))
        (chatpipe--tool-call run tool))
       (t (let ((answer (chatpipe--tool-ask run)))
            (pcase (car answer)
              ('once (chatpipe--tool-call run tool))
              ('always (chatpipe--tool-approve run)
                       (chatpipe--tool-call run tool))
              ('deny (chatpipe--tool-deny run (cdr answer))))))))))

(defun chatpipe--tool-key (run)
  "Return what \"always\" approves for RUN: (SOURCE . NAME).
SOURCE is the tool's source (\"emacs\" for a tool defined in Emacs),
NAME its name there."
  (cons (or (chatpipe--tool-run-source run) "emacs")
        (or (chatpipe--tool-run-tool run) (chatpipe--tool-run-name run))))

(defun chatpipe--tool-approved-p (run)
  "Return non-nil if RUN's tool was approved \"always\" in its chat."
  (let ((buffer (chatpipe--tool-run-buffer run)))
    (and (buffer-live-p buffer)
         (member (chatpipe--tool-key run)
                 (buffer-local-value 'chatpipe--tool-approvals buffer)))))

(defun chatpipe--tool-approve (run)
  "Approve RUN's tool \"always\" in its chat (see `chatpipe--tool-key')."
  (let ((buffer (chatpipe--tool-run-buffer run))
        (key (chatpipe--tool-key run)))
    (when (buffer-live-p buffer)
      (with-current-buffer buffer
        (unless (member key chatpipe--tool-approvals)
          (push key chatpipe--tool-approvals))))))

(defun chatpipe--tool-approval-name (key)
  "Return KEY, a (SOURCE . NAME) approval, as shown: \"NAME of SOURCE\"."
  (format "%s of %s" (chatpipe--tool-shown (cdr key) t)
          (chatpipe--tool-shown (car key) t)))

;;;###autoload
(defun chatpipe-tool-approvals (&optional revoke)
  "Show the tools approved with \"always\" in this chat; revoke some.
Each is one tool of one source (an MCP server, or Emacs), approved
for this chat buffer only.  Interactively, ask which to revoke
\(several, separated by commas; \"all\" for all of them; empty for
none).  From Lisp, REVOKE is a list of (SOURCE . NAME) keys to
revoke, or t for all.  Return the approvals left."
  (interactive
   (list (if (null chatpipe--tool-approvals)
             (progn (message "No tool is approved \"always\" in this chat")
                    nil)
           (let* ((names (mapcar (lambda (key)
                                   (cons (chatpipe--tool-approval-name key) key))
                                 chatpipe--tool-approvals))
                  (chosen (completing-read-multiple
                           (format "Approved in this chat: %s.  Revoke (\
\"all\", or empty for none): "
                                   (mapconcat #'car names ", "))
                           (cons "all" (mapcar #'car names)) nil t)))
             (if (member "all" chosen)
                 t
               (delq nil (mapcar (lambda (name) (cdr (assoc name names)))
                                 chosen)))))))
  (setq chatpipe--tool-approvals
        (and (not (eq revoke t))
             (cl-remove-if (lambda (key) (member key revoke))
                           chatpipe--tool-approvals)))
  (when (called-interactively-p 'interactive)
    (message "%s" (if chatpipe--tool-approvals
                      (format "Approved in this chat: %s"
                              (mapconcat #'chatpipe--tool-approval-name
                                         chatpipe--tool-approvals ", "))
                    "No tool is approved \"always\" in this chat")))
  chatpipe--tool-approvals)

(defun chatpipe--tool-confirm-mcp (run &optional answer)
  "Ask whether the MCP tool call of RUN may run; tell the backend.
With ANSWER, a (DECISION . REASON) pair, tell it that instead of
asking.  \"Always\" is remembered in the chat, and the backend told
\"once\", so that a revoked approval holds from the next call on."
  (let ((answer (or answer (chatpipe--tool-ask run))))
    (when (eq (car answer) 'always)
      (chatpipe--tool-approve run)
      (setq answer '(once)))
    (when answer
      (unless (eq (car answer) 'deny)
        (chatpipe--tool-status run "running tool %s (%s)"
                               (chatpipe--tool-shown (chatpipe--tool-run-name run) t)
                               (chatpipe--tool-shown (chatpipe--tool-run-source run) t)))
      (chatpipe--tool-send
       run 'tool_confirm
       `((call_id . ,(chatpipe--tool-run-call-id run))
         (decision . ,(symbol-name (car answer)))
         ,@(and (cdr answer) `((reason . ,(cdr answer)))))))))

(defconst chatpipe--tool-hidden-regexp
  (concat "[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c"
          "\0-\b\v-\x1f\u007f-\u009f]")
  "What `chatpipe--tool-shown' shows escaped: bidi controls, controls.")

(defun chatpipe--tool-shown (text &optional one-line)
  "Return TEXT as it may be shown when asking about a tool call.
Each bidi control (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F,
U+061C) and control character (but tab, and newline unless
ONE-LINE) is shown as its escape \"\\uXXXX\", so that what the user
reads is what runs.  The text has no properties.  nil is \"\"."
  (let ((case-fold-search nil)
        (text (substring-no-properties (or text ""))))
    (replace-regexp-in-string
     (if one-line
         (concat "\n\\|" chatpipe--tool-hidden-regexp)
       chatpipe--tool-hidden-regexp)
     (lambda (char) (format "\\u%04x" (aref char 0)))
     text t t)))

(defun chatpipe--tool-pretty-arguments (arguments)
  "Return ARGUMENTS, a call's JSON text, as shown: all of it.
Pretty-printed when it is JSON (as written else), through
`chatpipe--tool-shown'."
  (chatpipe--tool-shown
   (condition-case nil
       (if (string-blank-p arguments)
           "{}"
         (let ((json-null :null) (json-false :false)
               (json-encoding-pretty-print t))
           (json-encode (json-parse-string arguments :object-type 'hash-table
                                           :array-type 'array :null-object :null
                                           :false-object :false))))
     (error arguments))))

(defconst chatpipe--tool-question-max-lines 10
  "Arguments of more lines than this are shown in a buffer, not asked with.")

(defconst chatpipe--tool-arguments-buffer "*chatpipe tool call*"
  "The buffer that shows long arguments while their call is asked about.")

(defun chatpipe--tool-what (run)
  "Return what RUN runs, as shown: \"NAME of SOURCE\", or \"NAME\".
NAME is the tool's name at its source, then the name the model used
if that differs."
  (let ((name (chatpipe--tool-shown (chatpipe--tool-run-name run) t))
        (tool (and (chatpipe--tool-run-tool run)
                   (chatpipe--tool-shown (chatpipe--tool-run-tool run) t))))
    (concat (or tool name)
            (if (chatpipe--tool-run-source run)
                (concat " of " (chatpipe--tool-shown (chatpipe--tool-run-source run) t))
              "")
            (if (and tool (not (equal tool name)))
                (format " (the model calls it %s)" name)
              ""))))

(defun chatpipe--tool-question (run &optional in-buffer)
  "Return the question that asks whether RUN's call may run.
It holds RUN's whole arguments, pretty-printed, unless IN-BUFFER,
when it says that they are shown in `chatpipe--tool-arguments-buffer'.
\"Always\" is said to hold for that tool of that source in this chat."
  (let ((key (chatpipe--tool-approval-name (chatpipe--tool-key run))))
    (format "chatpipe: run %s with %s\ny: yes, a: always for %s in this \
chat, n: no "
            (chatpipe--tool-what run)
            (if in-buffer
                (format "the arguments shown in %s?" chatpipe--tool-arguments-buffer)
              (concat "these arguments?\n"
                      (chatpipe--tool-pretty-arguments
                       (chatpipe--tool-run-arguments run))))
            key)))

(defun chatpipe--tool-show-arguments (run)
  "Show RUN's whole arguments in a buffer if they are too long to ask with.
Return the window that shows them, or nil when they are short."
  (let ((text (chatpipe--tool-pretty-arguments (chatpipe--tool-run-arguments run))))
    (when (or (> (cl-count ?\n text) chatpipe--tool-question-max-lines)
              (> (length text) (* 2 (frame-width))))
      (with-current-buffer (get-buffer-create chatpipe--tool-arguments-buffer)
        (let ((inhibit-read-only t))
          (erase-buffer)
          (insert (format "The model asks to run %s with these arguments:\n\n"
                          (chatpipe--tool-what run))
                  text "\n")
          (goto-char (point-min))
          (setq buffer-read-only t)))
      (display-buffer chatpipe--tool-arguments-buffer
                      '(nil (inhibit-same-window . t))))))

(defun chatpipe--tool-ask (run)
  "Ask the user in the minibuffer whether RUN's call may run.
Return (DECISION . REASON): DECISION `once', `always' or `deny', and
REASON the user's reason for a denial (a string, or nil for none).
Return nil if the run ended meanwhile (see
`chatpipe--tool-prompt-exit'), or if the user quit, which calls the
run's ON-QUIT."
  (chatpipe--tool-status run "waiting for confirmation of %s"
                         (chatpipe--tool-shown (chatpipe--tool-run-name run) t))
  (let ((window (chatpipe--tool-show-arguments run)))
    (unwind-protect
        (chatpipe--tool-ask-1 run (chatpipe--tool-question run window))
      (when (window-live-p window)
        (quit-restore-window window 'bury)))))

(defun chatpipe--tool-ask-1 (run question)
  "Ask QUESTION for RUN; see `chatpipe--tool-ask'."
  (catch run
    (let ((chatpipe--tool-prompting (cons run chatpipe--tool-prompting))
          (inhibit-quit nil)
          char)
      (condition-case nil
          (progn
            (while (not (memq char '(?y ?a ?n)))
              (setq char (read-char-from-minibuffer question '(?y ?a ?n))))
            (pcase char
              (?y '(once))
              (?a '(always))
              (_ (let ((reason (string-trim
                                (read-string "Why not (the model reads it; \
empty for no reason)? "))))
                   (cons 'deny (and (not (string-empty-p reason)) reason))))))
        (quit (funcall (chatpipe--tool-run-on-quit run))
              nil)))))

(defun chatpipe--tool-prompt-exit (list)
  "Stop at once the question asked for a tool run of LIST, if any.
Call it only where leaving the current command is fine, such as at
the end of a command: it throws out of the minibuffer."
  (dolist (run list)
    (when (memq run chatpipe--tool-prompting)
      (throw run nil))))

(defun chatpipe--tool-runs-stop (list)
  "Stop each tool run of LIST: its answer is no longer wanted.
A run that has not started does not start; a question being asked
for one ends as soon as Emacs waits for input; the result of a tool
that is still running is dropped."
  (dolist (run list)
    (setf (chatpipe--tool-run-ended run) t)
    (when (chatpipe--tool-run-timer run)
      (cancel-timer (chatpipe--tool-run-timer run))
      (setf (chatpipe--tool-run-timer run) nil))
    (when (memq run chatpipe--tool-prompting)
      (run-at-time 0 nil #'chatpipe--tool-prompt-exit (list run)))))

;;;; Running Emacs tools

(defun chatpipe--tool-arguments (run)
  "Return the arguments of RUN's call as a plist.
Signal an error if they are not JSON."
  (let ((text (string-trim (chatpipe--tool-run-arguments run))))
    (and (not (string-empty-p text))
         (json-parse-string text :object-type 'plist :array-type 'list
                            :null-object nil :false-object nil))))

(defun chatpipe--tool-call (run tool)
  "Run TOOL for RUN's call, and answer with its result or its error.
TOOL's function runs with the chat buffer current.  A quit while it
runs calls RUN's ON-QUIT."
  (chatpipe--tool-status run "running tool %s" (chatpipe-tool-name tool))
  (let ((function (chatpipe-tool-function tool))
        (inhibit-quit nil))
    (condition-case err
        (let ((arguments (chatpipe--tool-arguments run)))
          (with-current-buffer (if (buffer-live-p (chatpipe--tool-run-buffer run))
                                   (chatpipe--tool-run-buffer run)
                                 (current-buffer))
            (if (chatpipe-tool-async tool)
                (funcall function
                         (lambda (result &optional is-error)
                           (chatpipe--tool-answer run result is-error))
                         arguments)
              (chatpipe--tool-answer run (funcall function arguments)))))
      (error (chatpipe--tool-answer run (error-message-string err) t))
      (quit (funcall (chatpipe--tool-run-on-quit run))))))

(defun chatpipe--tool-content (result)
  "Return RESULT, what a tool gave, as the text sent to the model.
A string is itself, nil is empty, a value `json-serialize' takes is
its JSON, anything else is printed."
  (cond ((stringp result) result)
        ((null result) "")
        (t (condition-case nil
               (json-serialize result)
             (error (prin1-to-string result))))))

(defun chatpipe--tool-capped (content)
  "Return CONTENT in at most `chatpipe-tool-max-result-bytes' of UTF-8.
When it is longer: its start, cut at a character, and \"\\n[truncated:
N of M bytes]\" (N the bytes of CONTENT kept, M all of them), the two
together no longer than the limit, as the backend caps results."
  (let ((limit chatpipe-tool-max-result-bytes))
    (if (or (null limit) (<= (length content) (/ limit 4))
            (<= (length (encode-coding-string content 'utf-8 t)) limit))
        content
      (let* ((bytes (encode-coding-string content 'utf-8 t))
             (room (max 0 (- limit (length (format "\n[truncated: %d of %d bytes]"
                                                   limit (length bytes))))))
             (kept (decode-coding-string (substring bytes 0 room) 'utf-8 t)))
        ;; A character cut in two decodes to raw bytes: drop them.
        (while (and (> (length kept) 0)
                    (eq (char-charset (aref kept (1- (length kept)))) 'eight-bit))
          (setq kept (substring kept 0 -1)))
        (format "%s\n[truncated: %d of %d bytes]" kept
                (length (encode-coding-string kept 'utf-8 t)) (length bytes))))))

(defun chatpipe--tool-answer (run result &optional is-error)
  "Send RESULT of RUN's call to the backend, an error if IS-ERROR.
RESULT is capped (see `chatpipe--tool-capped').  Do nothing if RUN
was answered already, or ended."
  (chatpipe--tool-send
   run 'tool_result
   `((call_id . ,(chatpipe--tool-run-call-id run))
     (content . ,(chatpipe--tool-capped (chatpipe--tool-content result)))
     (is_error . ,(if is-error t :false)))))

(defun chatpipe--tool-deny (run reason)
  "Tell the backend that the user denied RUN's call, for REASON (or nil)."
  (chatpipe--tool-send
   run 'tool_result
   `((call_id . ,(chatpipe--tool-run-call-id run)) (denied . t)
     ,@(and reason `((reason . ,reason))))))

(defun chatpipe--tool-send (run key answer)
  "Send ANSWER, the KEY line of RUN, unless RUN has ended; then it has.
See `chatpipe-process-answer'."
  (unless (chatpipe--tool-run-ended run)
    (setf (chatpipe--tool-run-ended run) t)
    (chatpipe-process-answer (chatpipe--tool-run-stream run) key answer)))

(provide 'chatpipe-tools)
;;; chatpipe-tools.el ends here
