;;; chatpipe-chat-settings.el --- The settings of a chat buffer for chatpipe -*- lexical-binding: t; -*-


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

;; The settings of a chat buffer, what it sends: its template, model,
;; endpoint URL, template variables, temperature, token limit, system
;; prompt (`chatpipe-directives' names some) and tools; and the request
;; parameters and system message made of them.  A chat file may set
;; them (see chatpipe-filedata.el); the commands that set them, and
;; the menu, are in chatpipe-settings.el, which needs the files that
;; read these settings (templates, tools, saved chats) and so cannot
;; hold them.

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

(defun chatpipe--system-name (prompt)
  "Return a short name for the system PROMPT: its directive's, or \"custom\"."
  (or (car (rassoc prompt chatpipe-directives)) "custom"))

;;;; What a chat sends

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

(provide 'chatpipe-chat-settings)
;;; chatpipe-chat-settings.el ends here
