;;; chatpipe-settings.el --- A chat's template, model, parameters and menu -*- lexical-binding: t; -*-

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

;; The commands that set what a chat sends: its template, model,
;; temperature, token limit, system prompt (one of
;; `chatpipe-directives', or any text), template variables and tools
;; (defined in Emacs, or MCP servers).  They
;; are shown in the header line and saved with the chat (see
;; chatpipe-state.el).  And the transient menu `chatpipe-menu', which
;; has them all, with the chat commands.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'transient)
(require 'chatpipe-backend)
(require 'chatpipe-chat-settings)
(require 'chatpipe-header)
(require 'chatpipe-templates)
(require 'chatpipe-state)
(require 'chatpipe-tools)

(defvar chatpipe-mode)
(declare-function chatpipe-mode "chatpipe")
(declare-function chatpipe-read-model "chatpipe-models"
                  (prompt template &optional default))

(defcustom chatpipe-buffer-name-format "*chatpipe: %s*"
  "Format of the names of chat buffers; %s is the template.
A second chat of a template gets a name such as \"*chatpipe: local*<2>\"."
  :type 'string
  :group 'chatpipe)

(defun chatpipe--ensure-mode ()
  "Turn `chatpipe-mode' on in this buffer if it is off."
  (unless chatpipe-mode (chatpipe-mode 1)))

;;;; Template and model

(defun chatpipe--rename-chat-buffer (old new)
  "Rename this chat buffer, named after template OLD, after template NEW.
Only a buffer made by the command `chatpipe', not visiting a file and
still named after OLD, is renamed."
  (let ((prefix (format chatpipe-buffer-name-format old)))
    (when (and chatpipe--dedicated (not buffer-file-name)
               (string-prefix-p prefix (buffer-name))
               (string-match-p "\\`\\(?:<[0-9]+>\\)?\\'"
                               (substring (buffer-name) (length prefix))))
      (rename-buffer (format chatpipe-buffer-name-format new) t))))

;;;###autoload
(defun chatpipe-select-template (template)
  "Use TEMPLATE, a template name or file, for the chat in this buffer.
Interactively, complete over `chatpipe templates list'.  The model
goes back to the template's, the status is cleared, and a chat
buffer made by \\[chatpipe] is renamed after TEMPLATE.  Outside a
chat buffer, set `chatpipe-default-template' for this session.
Return TEMPLATE."
  (interactive (list (chatpipe-read-template
                      "Template" (and chatpipe-mode
                                      (chatpipe--current-template)))))
  (if chatpipe-mode
      (let ((old (chatpipe--current-template)))
        (setq chatpipe-template template)
        (unless (equal old template)
          (setq chatpipe-model nil))
        (setq chatpipe--model-seen nil)
        (setq chatpipe--status nil)
        (chatpipe--rename-chat-buffer old template)
        (force-mode-line-update))
    (setq chatpipe-default-template template))
  (message "chatpipe: template %s" template)
  template)

;;;###autoload
(defun chatpipe-set-model (model)
  "Use MODEL instead of the template's model in this chat buffer.
Interactively, complete over the models of the template's endpoint
\(see `chatpipe-read-model'); any name is accepted.  An empty or nil
MODEL goes back to the template's.  Return MODEL or nil."
  (interactive
   (let ((prompt "Model (empty: the template's)"))
     (require 'chatpipe-models nil t)
     (list (if (fboundp 'chatpipe-read-model)
               (chatpipe-read-model prompt (chatpipe--current-template)
                                    chatpipe-model)
             (read-string (format-prompt prompt chatpipe-model)
                          nil nil chatpipe-model)))))
  (chatpipe--ensure-mode)
  (setq chatpipe-model (and model (not (string-empty-p model)) model))
  (force-mode-line-update)
  chatpipe-model)

;;;; Parameters and system prompt

(defun chatpipe--read-number (prompt current &optional integer)
  "Read a number with PROMPT; return it, or nil for empty input.
CURRENT is the value now, shown in the prompt.  With INTEGER, the
number must be a whole number."
  (let ((text (string-trim
               (read-string (format "%s (%sempty: the template's): " prompt
                                    (if current (format "now %s; " current)
                                      ""))))))
    (cond ((string-empty-p text) nil)
          ((string-match-p (if integer "\\`[0-9]+\\'"
                             "\\`[0-9]*\\.?[0-9]+\\'")
                           text)
           (string-to-number text))
          (t (user-error "Not a %snumber: %s" (if integer "whole " "") text)))))

;;;###autoload
(defun chatpipe-set-temperature (temperature)
  "Use TEMPERATURE, a number from 0 to 2, for the answers of this chat.
Nil goes back to the template's.  The backend sets it in the API's
own field.  Return TEMPERATURE."
  (interactive (list (chatpipe--read-number "Temperature, 0 to 2"
                                            chatpipe-temperature)))
  (unless (or (null temperature) (and (numberp temperature)
                                      (<= 0 temperature 2)))
    (user-error "The temperature is a number from 0 to 2"))
  (chatpipe--ensure-mode)
  (setq chatpipe-temperature temperature)
  (force-mode-line-update)
  temperature)

;;;###autoload
(defun chatpipe-set-max-tokens (max-tokens)
  "Let the answers of this chat have at most MAX-TOKENS tokens.
MAX-TOKENS is a whole number, 1 or more; nil goes back to the
template's limit.  The backend sets it in the API's own field.
Return MAX-TOKENS."
  (interactive (list (chatpipe--read-number "Maximum tokens per answer"
                                            chatpipe-max-tokens t)))
  (unless (or (null max-tokens) (and (natnump max-tokens) (> max-tokens 0)))
    (user-error "The token limit is a whole number, 1 or more"))
  (chatpipe--ensure-mode)
  (setq chatpipe-max-tokens max-tokens)
  (force-mode-line-update)
  max-tokens)

;;;###autoload
(defun chatpipe-set-system-prompt (prompt)
  "Use PROMPT as the system prompt of this chat.
PROMPT is the name of one of `chatpipe-directives' or the text of
a prompt; nil or empty goes back to the template's.  It is sent as
a system message before the chat's turns and replaces the
template's system prompt; a system turn in the buffer (\"### System\")
wins over it.  Interactively, choose a directive or type a prompt.
Return the prompt's text, or nil."
  (interactive
   (list (let ((completion-extra-properties
                (list :annotation-function
                      (lambda (name)
                        (let ((text (cdr (assoc name chatpipe-directives))))
                          (and text (concat "  " (truncate-string-to-width
                                                  text 60 nil nil "...")))))))
               (now (and chatpipe-system (chatpipe--system-name chatpipe-system))))
           (completing-read (format "System prompt: a name or a text (%sempty: \
the template's): " (if now (format "now %s; " now) ""))
                            chatpipe-directives))))
  (chatpipe--ensure-mode)
  (setq chatpipe-system
        (and prompt (not (string-blank-p prompt))
             (or (cdr (assoc prompt chatpipe-directives)) prompt)))
  (force-mode-line-update)
  chatpipe-system)

;;;###autoload
(defun chatpipe-set-template-var (name value)
  "Fill the template's ${NAME} placeholder with VALUE in this chat.
An empty or nil VALUE removes it.  The values are in
`chatpipe-template-vars'.  Return the new alist."
  (interactive
   (let ((name (read-string "Placeholder name (without ${}): ")))
     (list name (read-string (format "Value of ${%s}: " name) nil nil
                             (cdr (assoc name chatpipe-template-vars))))))
  (chatpipe--ensure-mode)
  (setq chatpipe-template-vars
        (append (cl-remove name chatpipe-template-vars :key #'car :test #'equal)
                (and value (not (string-empty-p value))
                     (list (cons name value)))))
  chatpipe-template-vars)

;;;; Tools

(defun chatpipe--tool-candidates ()
  "Return the tools a chat may offer, for completion: (NAME . NOTE).
They are the tools defined in Emacs and \"mcp:NAME\" for each MCP
server of the backend's mcp.json that is not disabled (if the
backend cannot list them, a message says why)."
  (append
   (mapcar (lambda (name)
             (cons name (chatpipe-tool-description (chatpipe-get-tool name))))
           (chatpipe-tool-names))
   (condition-case err
       (delq nil (mapcar (lambda (server)
                           (unless (plist-get server :disabled)
                             (cons (concat "mcp:" (plist-get server :name))
                                   (or (plist-get server :description)
                                       (format "MCP server (%s)"
                                               (plist-get server :transport))))))
                         (chatpipe-mcp-servers)))
     (error (message "chatpipe: cannot list the MCP servers: %s"
                     (error-message-string err))
            nil))))

;;;###autoload
(defun chatpipe-set-tools (tools)
  "Let the model call TOOLS in this chat.
TOOLS is a list of strings: names of tools defined in Emacs (see
`chatpipe-define-tool') and \"mcp:NAME\" for the tools of the MCP
server NAME of the backend's mcp.json; nil means none; the symbol
`default' goes back to `chatpipe-default-tools'.  Interactively,
choose them with completion, separated by commas (an empty answer
for none); with a prefix argument, go back to the default.  The
tools are saved with the chat.  Return the new `chatpipe-tools'."
  (interactive
   (list (if current-prefix-arg
             'default
           (let* ((candidates (chatpipe--tool-candidates))
                  (completion-extra-properties
                   (list :annotation-function
                         (lambda (name)
                           (let ((note (cdr (assoc name candidates))))
                             (and note (not (string-empty-p note))
                                  (concat "  " (truncate-string-to-width
                                                note 60 nil nil "..."))))))))
             (completing-read-multiple
              "Tools (comma-separated; empty: none): " candidates nil nil
              (string-join (chatpipe--chat-tools) ","))))))
  (chatpipe--ensure-mode)
  (setq chatpipe-tools
        (cond ((eq tools 'default) nil)
              ((null tools) 'none)
              (t (delete-dups (mapcar #'string-trim tools)))))
  (force-mode-line-update)
  chatpipe-tools)

;;;; Menu

(defun chatpipe--menu-template ()
  "Return the menu's description of the template command."
  (format "Template: %s" (chatpipe--current-template)))

(defun chatpipe--menu-model ()
  "Return the menu's description of the model command."
  (format "Model: %s" (if chatpipe-model (chatpipe-model-name chatpipe-model)
                        "the template's")))

(defun chatpipe--menu-temperature ()
  "Return the menu's description of the temperature command."
  (format "Temperature: %s" (or chatpipe-temperature "the template's")))

(defun chatpipe--menu-max-tokens ()
  "Return the menu's description of the token limit command."
  (format "Max tokens: %s" (or chatpipe-max-tokens "the template's")))

(defun chatpipe--menu-tools ()
  "Return the menu's description of the tools command."
  (format "Tools: %s" (if (chatpipe--chat-tools)
                          (string-join (chatpipe--chat-tools) " ")
                        "none")))

(defun chatpipe--menu-system ()
  "Return the menu's description of the system prompt command."
  (format "System prompt: %s" (if chatpipe-system
                                  (chatpipe--system-name chatpipe-system)
                                "the template's")))

;;;###autoload (autoload 'chatpipe-menu "chatpipe-settings" nil t)
(transient-define-prefix chatpipe-menu ()
  "Show the chatpipe menu: the chat commands and this chat's settings.
The settings (template, model, temperature, token limit, system
prompt, tools) are shown in the header line and saved with the chat,
as are the files and folders of its context (see chatpipe-context.el)."
  [["Chat"
    ("RET" "Send (up to point)" chatpipe-send)
    ("k" "Abort the answer" chatpipe-abort)
    ("r" "Retry the last answer" chatpipe-retry)
    ("R" "Send region with instruction" chatpipe-send-region)
    ("n" "New chat buffer" chatpipe-new)]
   ["This chat"
    ("t" chatpipe-select-template :description chatpipe--menu-template
     :transient t)
    ("m" chatpipe-set-model :description chatpipe--menu-model :transient t)
    ("T" chatpipe-set-temperature :description chatpipe--menu-temperature
     :transient t)
    ("M" chatpipe-set-max-tokens :description chatpipe--menu-max-tokens
     :transient t)
    ("s" chatpipe-set-system-prompt :description chatpipe--menu-system
     :transient t)
    ("$" "Template variable" chatpipe-set-template-var :transient t)
    ("u" chatpipe-set-tools :description chatpipe--menu-tools :transient t)
    ("a" "Tool approvals (list, revoke)" chatpipe-tool-approvals)]
   ["Context"
    ("c" "Add or remove region/buffer" chatpipe-context-toggle)
    ("f" "Add a file or folder" chatpipe-context-add-file)
    ("o" "Next question only" chatpipe-context-next-only)
    ("l" "List (tokens, request)" chatpipe-context-list)
    ("x" "Clear" chatpipe-context-clear)
    ("i" "Attach image or PDF" chatpipe-attach)]
   ["Rewrite"
    ("w" "Rewrite region/defun/paragraph" chatpipe-rewrite)
    ("A" "Accept rewrite" chatpipe-rewrite-accept)
    ("X" "Reject rewrite" chatpipe-rewrite-reject)
    ("N" "Iterate rewrite" chatpipe-rewrite-iterate)
    ("D" "Rewrite diff" chatpipe-rewrite-diff)
    ("]" "Next rewrite" chatpipe-rewrite-next)
    ("[" "Previous rewrite" chatpipe-rewrite-previous)]
   ["More"
    ("v" "Fold or unfold reasoning" chatpipe-toggle-reasoning)
    ("U" "Fold or unfold tool results" chatpipe-toggle-tool-result)
    ("V" "Show reasoning buffer" chatpipe-show-reasoning)
    ("e" "Edit template" chatpipe-edit-template)
    ("S" "Stop the backend process" chatpipe-serve-stop)
    ("I" "Install the backend" chatpipe-install-backend)]])

(provide 'chatpipe-settings)
;;; chatpipe-settings.el ends here
