;;; chatpipe-status.el --- Chat buffer settings and status for chatpipe -*- lexical-binding: t; -*-

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

;; The settings of a chat buffer (its template, model, template
;; variables, temperature, token limit, system prompt and tools) and its
;; status, shown in the header line: the template, the model, the
;; parameters and how the last answer went.  Also the hints that the
;; backend's `error' events get, by their `kind': how to add a missing
;; API key, start the local server or choose a model.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-backend)
(require 'chatpipe-filedata)

;;;; Variables

(defvar-local chatpipe-template nil
  "The template of this chat buffer, or nil for `chatpipe-default-template'.
A template name (see `chatpipe-template-name-p') or a template file.
A chat file may set it: a name is applied as it is, a file (\"./t.json\")
only with your consent, since the template says where requests go
and which API keys they carry (see `chatpipe--file-settings-consent').")
(put 'chatpipe-template 'safe-local-variable #'chatpipe--plain-string-p)
(put 'chatpipe-template 'permanent-local t)

(defvar-local chatpipe-model nil
  "The model of this chat buffer, or nil for the template's.
A chat file may set it (a string, applied as it is).")
(put 'chatpipe-model 'safe-local-variable #'chatpipe--plain-string-p)
(put 'chatpipe-model 'permanent-local t)

(defvar-local chatpipe-url nil
  "The endpoint URL of this chat, or nil for its template's.
The request goes there with the template's headers, API keys
included: set it only to a URL you trust.  It is not saved with
the chat; a file that sets it gets it applied only with your
consent (see `chatpipe--file-settings-consent').")
(put 'chatpipe-url 'safe-local-variable #'chatpipe--url-value-p)
(put 'chatpipe-url 'permanent-local t)

(defvar-local chatpipe-template-vars nil
  "Values of the template's `${NAME}' placeholders: an alist of strings.
A placeholder may be in the template's URL or headers: a file
that sets this gets it applied only with your consent (see
`chatpipe--file-settings-consent').")
(put 'chatpipe-template-vars 'safe-local-variable
     #'chatpipe--template-vars-value-p)

(defvar-local chatpipe-temperature nil
  "The sampling temperature of this chat, 0 to 2, or nil for the template's.")
(put 'chatpipe-temperature 'safe-local-variable
     (lambda (value) (and (numberp value) (<= 0 value 2))))

(defvar-local chatpipe-max-tokens nil
  "The most tokens an answer of this chat may have, or nil for the template's.")
(put 'chatpipe-max-tokens 'safe-local-variable
     (lambda (value) (and (natnump value) (> value 0))))

(defvar-local chatpipe-system nil
  "The system prompt of this chat, a string, or nil for the template's.
It is sent as a system message before the chat's turns; a system
turn in the buffer (\"### System\") wins over it.  See
`chatpipe-directives'.  A chat file may set it (applied as it is).")
(put 'chatpipe-system 'safe-local-variable
     (lambda (value) (chatpipe--plain-string-p value 100000)))

(defcustom chatpipe-default-tools nil
  "The tools that chats offer the model, unless a chat has its own.
A list of strings: names of tools defined in Emacs with
`chatpipe-define-tool', and \"mcp:NAME\" for the tools of the MCP
server NAME of the backend's mcp.json.  \\[chatpipe-set-tools] sets a
chat's own (see `chatpipe-tools')."
  :type '(repeat (string :tag "Tool name or mcp:SERVER"))
  :group 'chatpipe)

(defvar-local chatpipe-tools nil
  "The tools this chat offers the model.
Nil for `chatpipe-default-tools'; the symbol `none' for no tools;
else a list of strings, as for `chatpipe-default-tools'.  Set it
with \\[chatpipe-set-tools]; it is saved with the chat.  A file
that turns tools on gets them applied only with your consent (see
`chatpipe--file-settings-consent'); `none' needs none.")
(put 'chatpipe-tools 'safe-local-variable #'chatpipe--tools-value-p)

(dolist (var '(chatpipe-temperature chatpipe-max-tokens chatpipe-system
               chatpipe-template-vars chatpipe-tools))
  (put var 'permanent-local t))

(defun chatpipe--chat-tools ()
  "Return the names of the tools of this chat, a list of strings.
See `chatpipe-tools'."
  (pcase chatpipe-tools
    ('none nil)
    ('nil chatpipe-default-tools)
    (tools tools)))

(defvar-local chatpipe--status nil
  "The status shown in the header line, a string, or nil.")

(defvar-local chatpipe--model-seen nil
  "The model named by the backend's last `start' event, or nil.")

(defvar-local chatpipe--chat-cost nil
  "What the answers of this chat cost so far, in US dollars, or nil.
The sum of the costs the backend gave (see `chatpipe--add-cost');
answers whose price it does not know are not in it.  Not saved.")

(dolist (var '(chatpipe--status chatpipe--model-seen chatpipe--chat-cost))
  (put var 'permanent-local t))

(defcustom chatpipe-directives
  '(("concise" . "You are a helpful assistant.  Answer concisely.")
    ("programmer" . "You are a careful programmer.  Answer with working \
code and a short explanation; put code in fenced blocks that name the \
language.")
    ("writer" . "You are a writing assistant.  Make the text clearer and \
shorter; keep the author's voice and meaning.")
    ("tutor" . "You are a patient tutor.  Explain step by step, with a \
small example, and end with a question that checks understanding."))
  "Named system prompts for chats: an alist of (NAME . PROMPT).
\\[chatpipe-set-system-prompt] (or the menu) chooses one for a chat."
  :type '(alist :key-type (string :tag "Name") :value-type (string :tag "Prompt"))
  :group 'chatpipe)
(defun chatpipe--current-template ()
  "Return the template of the current buffer."
  (or chatpipe-template chatpipe-default-template))

;;;; Status

(defun chatpipe--set-status (format-string &rest args)
  "Set the header line status to FORMAT-STRING formatted with ARGS."
  (setq chatpipe--status (apply #'format format-string args))
  (force-mode-line-update))

(defun chatpipe--system-name (prompt)
  "Return a short name for the system PROMPT: its directive's, or \"custom\"."
  (or (car (rassoc prompt chatpipe-directives)) "custom"))

(defun chatpipe--settings-text ()
  "Return the chat's parameters and system prompt as a short text, or nil."
  (let ((parts (delq nil (list (and chatpipe-temperature
                                    (format "temperature %s" chatpipe-temperature))
                               (and chatpipe-max-tokens
                                    (format "max %s tokens" chatpipe-max-tokens))
                               (and chatpipe-system
                                    (concat "system: " (chatpipe--system-name
                                                        chatpipe-system)))
                               (and (chatpipe--chat-tools)
                                    (concat "tools: " (string-join
                                                       (chatpipe--chat-tools)
                                                       " ")))))))
    (and parts (substring-no-properties (string-join parts ", ")))))

(defconst chatpipe--model-name-width 40
  "The most characters of a model's name that the header line shows.")

(defun chatpipe-model-name (model)
  "Return a short name of MODEL, a model id, to show; see `chatpipe-model'.
A model id that is a file name, as a llama.cpp server gives (an
absolute one, or one that ends in .gguf), is shown as the file's
name without its folders; other ids, such as \"gpt-4o\" or
\"meta-llama/Llama-3-8B\", as they are.  A name longer than
`chatpipe--model-name-width' is cut, with \"...\" at its end.
Requests always send the id itself."
  (truncate-string-to-width
   (if (or (string-match-p "\\`\\(?:[/~]\\|[A-Za-z]:[/\\]\\)" model)
           (string-match-p "\\.gguf\\'" model))
       (replace-regexp-in-string "\\`.*[/\\]" "" model)
     model)
   chatpipe--model-name-width nil nil "..."))

(defvar-local chatpipe--template-model nil
  "The model of the chat's template, kept: (TEMPLATE CATALOG MODEL), or nil.
CATALOG is the `chatpipe--catalog' MODEL was read from.")

(defun chatpipe--template-model ()
  "Return the model of this chat's template, or nil if it is not known yet.
It is read from what the backend said of its templates, if it said
it already (see `chatpipe-template-info'): the header line never
runs the backend.  Opening a chat has it said soon (see
`chatpipe--prestart-soon')."
  (let ((template (chatpipe--current-template))
        (catalog chatpipe--catalog))
    (unless (and (equal (nth 0 chatpipe--template-model) template)
                 (eq (nth 1 chatpipe--template-model) catalog))
      (setq chatpipe--template-model
            (list template catalog
                  (and catalog
                       (plist-get (or (gethash template
                                               (chatpipe--catalog-table catalog))
                                      (gethash (cons (chatpipe--local-directory)
                                                     template)
                                               (chatpipe--catalog-files catalog)))
                                  :model)))))
    (nth 2 chatpipe--template-model)))

(defun chatpipe-header-line ()
  "Return the text of the chat header line.
It shows the template, the model (the one chosen for this chat, else
the one the last answer came from, else the template's; as
`chatpipe-model-name' shows it), the parameters, system prompt and
tools set for this chat, and the status.  The text of the settings
has no text properties: only chatpipe's own face is shown."
  (let ((model (or chatpipe-model chatpipe--model-seen (chatpipe--template-model)))
        (settings (chatpipe--settings-text))
        (template (or chatpipe-template chatpipe-default-template)))
    (concat (propertize "chatpipe" 'face 'bold) " "
            (if (stringp template) (substring-no-properties template) "")
            (if (stringp model)
                (format " [%s]" (substring-no-properties
                                 (chatpipe-model-name model)))
              "")
            (if settings (format " (%s)" settings) "")
            (if chatpipe--status (concat " | " chatpipe--status) ""))))

(defun chatpipe--params ()
  "Return the request parameters set for this chat, an alist for the backend."
  (delq nil (list (and chatpipe-temperature
                       (cons 'temperature chatpipe-temperature))
                  (and chatpipe-max-tokens
                       (cons 'max_tokens chatpipe-max-tokens)))))

(defun chatpipe--with-system (messages)
  "Return MESSAGES with the chat's system prompt first, if it has one.
MESSAGES is a list of (ROLE . CONTENT); if it has a system message
already (a system turn in the buffer), it is returned as it is."
  (if (and chatpipe-system (not (string-blank-p chatpipe-system))
           (not (assoc "system" messages)))
      (cons (cons "system" chatpipe-system) messages)
    messages))

(defun chatpipe--usage-text (usage)
  "Return a short text for USAGE, a `usage' event plist, or nil.
Cached input tokens and reasoning tokens are mentioned when there
are any, and the answer's cost, with what the chat cost so far
\(`chatpipe--chat-cost'), when the backend gave it: for example
\"14 in, 30 out, $0.00002 (chat $0.0013)\"."
  (when usage
    (let ((in (plist-get usage :input_tokens))
          (out (plist-get usage :output_tokens))
          (cached (plist-get usage :cached_tokens))
          (reasoning (plist-get usage :reasoning_tokens))
          (cost (plist-get usage :cost)))
      (concat (format "%s in" (or in "?"))
              (if (and (numberp cached) (> cached 0))
                  (format " (%s cached)" cached)
                "")
              (format ", %s out" (or out "?"))
              (if (and (numberp reasoning) (> reasoning 0))
                  (format " (%s reasoning)" reasoning)
                "")
              (if (numberp cost)
                  (format ", %s (chat %s)" (chatpipe--dollars cost)
                          (chatpipe--dollars (or chatpipe--chat-cost cost)))
                "")))))

(defun chatpipe--add-cost (usage)
  "Add the cost of USAGE, a `usage' event plist, to `chatpipe--chat-cost'.
Do nothing if it has no cost (the backend does not know the price)."
  (let ((cost (plist-get usage :cost)))
    (when (numberp cost)
      (setq chatpipe--chat-cost (+ (or chatpipe--chat-cost 0) cost)))))

(defun chatpipe--dollars (amount)
  "Return AMOUNT, in US dollars, as a short text such as \"$0.0013\".
Amounts under a dollar keep two significant digits; others have
two decimals."
  (let* ((decimals (if (and (> amount 0) (< amount 1))
                       (- 1 (floor (log amount 10)))
                     2))
         (text (format (format "%%.%df" decimals) amount)))
    (while (and (> decimals 2) (string-suffix-p "0" text))
      (setq text (substring text 0 -1)
            decimals (1- decimals)))
    (concat "$" text)))

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

(defun chatpipe--error-text (event)
  "Return the message of the `error' EVENT, with the HTTP status if any.
An error of a known `kind' gets a hint instead; see `chatpipe--hint'."
  (let ((status (plist-get event :status))
        (message (or (plist-get event :message) "unknown error")))
    (or (chatpipe--hint event)
        (if status (format "HTTP %s: %s" status message) message))))

(defun chatpipe--local-server-p (template entry)
  "Return non-nil if TEMPLATE, with the backend's ENTRY, is the local model's.
That is the bundled `local' template, or one that names
scripts/local-server (such as a copy of it)."
  (or (equal template "local")
      (string-search "local-server" (or (plist-get entry :description) ""))))

(defun chatpipe--hint (event)
  "Return what to do about the `error' EVENT, or nil if its kind is unknown.
The backend gives the kind: `missing_env' (a variable the template
needs is not set), `connect' (no connection to the server) and
`placeholder' (a `${NAME}' without a value)."
  (let* ((template (chatpipe--current-template))
         (entry (ignore-errors (chatpipe-template-info template)))
         (host (plist-get entry :host))
         (checkout (chatpipe--checkout-dir)))
    (pcase (plist-get event :kind)
      ("missing_env"
       (let ((var (plist-get event :variable)))
         (when (stringp var)
           (concat
            (format "%s is not set (template %s needs it): " var template)
            (if (stringp host)
                (format "add the key to auth-source (a line \"machine %s \
login %s password YOUR-KEY\" in ~/.authinfo.gpg) or " host
                        chatpipe-auth-source-user)
              "")
            (format "set the variable: (setenv \"%s\" \"...\")" var)))))
      ("connect"
       (let* ((where (or (plist-get event :host) host "the server"))
              (port (and (string-match ":\\([0-9]+\\)\\'" where)
                         (match-string 1 where))))
         (if (chatpipe--local-server-p template entry)
             (format "cannot connect to %s: the local model server is not \
running; start it with \"scripts/local-server serve --port %s\" in %s"
                     where (or port "8080")
                     (if checkout (concat "the chatpipe checkout " checkout)
                       "the chatpipe checkout"))
           (format "cannot connect to %s: is the server running, and is the \
template's URL right? (M-x chatpipe-edit-template)" where))))
      ("placeholder"
       (let ((name (plist-get event :placeholder)))
         (when (stringp name)
           (if (equal name "model")
               (format "template %s names no model: choose one with M-x \
chatpipe-set-model" template)
             (format "template %s needs a value for ${%s}: set it with M-x \
chatpipe-set-template-var" template name))))))))

(defun chatpipe--done-kind (reason chars tools)
  "Return how an answer that ended with `done' went, if not normally.
REASON is its finish reason, CHARS the length of its text, TOOLS
non-nil if it made tool calls.  The value is a key of
`chatpipe--done-notes', or nil for a normal answer."
  (let ((empty (and (= chars 0) (null tools)))
        (filtered (equal reason "content_filter")))
    (cond ((equal reason "length") 'length)
          ((and empty filtered) 'empty-filtered)
          (empty 'empty)
          (filtered 'filtered))))

(defun chatpipe--done-label (kind reason)
  "Return the status word for an answer done as KIND with finish REASON.
KIND is as for `chatpipe--done-kind'."
  (pcase kind
    ('length "truncated at the token limit")
    ('empty "empty answer")
    ('empty-filtered "empty answer (content filter)")
    ('filtered "stopped by the content filter")
    (_ (if (and (stringp reason) (not (equal reason "stop")))
           (format "done (%s)" reason)
         "done"))))

;;;; Getting the backend ready

(declare-function chatpipe-process-preconnect "chatpipe-process" (&rest args))
(defvar chatpipe-mode)
(defvar chatpipe--job)

(defconst chatpipe--prestart-delay 0.2
  "Seconds Emacs is idle before a new chat gets the backend ready.")

(defun chatpipe--prestart-soon ()
  "Get the backend ready for this chat once Emacs is idle a moment.
See `chatpipe-prestart' and `chatpipe--prestart'."
  (when chatpipe-prestart
    (run-with-idle-timer chatpipe--prestart-delay nil
                         #'chatpipe--prestart (current-buffer))))

(defun chatpipe--prestart (buffer)
  "Get the backend ready for the chat in BUFFER, if it is one still.
Have the backend describe the chat's template, so that the header
line shows its model (see the function `chatpipe--template-model'),
and, if `chatpipe-backend-mode' is `serve', start the shared `chatpipe
serve' process and have it connect to the endpoint of the template (see
`chatpipe-process-preconnect'), unless an answer was asked for
already.  A chat whose file set where requests go, and did not get
the user's consent for it (see `chatpipe--withheld-settings'), gets
no prestart: nothing connects anywhere before the user sends.  A
missing backend or any other error is logged, not shown: sending
will say it."
  (when (and (buffer-live-p buffer) chatpipe-prestart)
    (with-current-buffer buffer
      (when (and chatpipe-mode (not chatpipe--job)
                 (not (chatpipe--withheld-endpoint-p)))
        (condition-case err
            (if (eq chatpipe-backend-mode 'serve)
                (chatpipe-process-preconnect
                 :template (chatpipe--current-template)
                 :url chatpipe-url :vars chatpipe-template-vars)
              (chatpipe-template-info (chatpipe--current-template)))
          (error (chatpipe--log "cannot get the backend ready for %s: %s"
                                (buffer-name)
                                (error-message-string err))))
        (force-mode-line-update)))))

(provide 'chatpipe-status)
;;; chatpipe-status.el ends here
