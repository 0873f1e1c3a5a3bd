;;; chatpipe-tool-ask.el --- Asking before a tool runs, and what "always" approved -*- lexical-binding: t; -*-

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

;; The questions chatpipe-tools.el asks before a tool runs: a tool run
;; (`chatpipe--tool-run', one `tool_request' of the backend), the
;; question with the whole arguments shown through
;; `chatpipe--tool-shown' (no bidi control or control character
;; reaches the screen as it is; long arguments in a buffer of their
;; own), and the approvals "always" gives: one tool of one source in
;; one chat (`chatpipe--tool-approvals'), listed and revoked with
;; `chatpipe-tool-approvals'.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'json)
(require 'chatpipe-process)
(require 'chatpipe-chat-settings)
(require 'chatpipe-header)


(defvar-local chatpipe--tool-approvals nil
  "The tools approved with \"always\" in this chat, newest first.
Each is (SOURCE . NAME): SOURCE \"mcp:SERVER\" for an MCP server's
tool, \"emacs\" for a tool defined in Emacs; NAME the tool's name
there.  Never saved with the chat, nor read from a file; see
`chatpipe-tool-approvals'.")

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

(defun chatpipe--tool-status (run format-string &rest args)
  "Show FORMAT-STRING with ARGS as the status of RUN's chat buffer."
  (let ((buffer (chatpipe--tool-run-buffer run)))
    (when (and (buffer-live-p buffer) (not (chatpipe--tool-run-ended run)))
      (with-current-buffer buffer
        (apply #'chatpipe--set-status format-string args)))))

(defun chatpipe--tool-send (run key answer)
  "Send ANSWER, the KEY line of RUN, unless RUN has ended; then it has.
See `chatpipe-process-answer'."
  (unless (chatpipe--tool-run-ended run)
    (setf (chatpipe--tool-run-ended run) t)
    (chatpipe-process-answer (chatpipe--tool-run-stream run) key answer)))

(defvar chatpipe--tool-prompting nil
  "The tool runs whose question is being asked, innermost first.
Bound around the question (see `chatpipe--tool-ask'), so that
`chatpipe--tool-prompt-exit' can tell whether it may end it.")

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
  "Return the name of the tool RUN is for: \"NAME of SOURCE\", or \"NAME\".
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

(provide 'chatpipe-tool-ask)
;;; chatpipe-tool-ask.el ends here
