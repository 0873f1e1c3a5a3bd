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
(require 'chatpipe-chat-settings)
(require 'chatpipe-header)
(require 'chatpipe-tool-ask)

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

(provide 'chatpipe-tools)
;;; chatpipe-tools.el ends here
