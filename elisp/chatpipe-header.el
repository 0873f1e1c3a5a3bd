;;; chatpipe-header.el --- The header line of chat buffers for chatpipe -*- lexical-binding: t; -*-


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

;; The header line of a chat buffer: its template, its model (named
;; short, see `chatpipe-model-name'), the settings set for the chat
;; (see chatpipe-chat-settings.el) and the status of its last answer
;; (`chatpipe--set-status').

;;; Code:

(require 'subr-x)
(require 'chatpipe-backend)
(require 'chatpipe-chat-settings)
(require 'chatpipe-context)

(defvar-local chatpipe--status nil
  "The status shown in the header line, a string, or nil.")

(defvar-local chatpipe--model-seen nil
  "The model named by the backend's last `start' event, or nil.")

(dolist (var '(chatpipe--status chatpipe--model-seen))
  (put var 'permanent-local t))

(defun chatpipe--set-status (format-string &rest args)
  "Set the header line status to FORMAT-STRING formatted with ARGS."
  (setq chatpipe--status (apply #'format format-string args))
  (force-mode-line-update))

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
tools set for this chat, its context (see
`chatpipe-context-header-text') and the status.  The text of the settings
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
            (let ((context (chatpipe-context-header-text (current-buffer))))
              (if context (concat " " context) ""))
            (if chatpipe--status (concat " | " chatpipe--status) ""))))

(provide 'chatpipe-header)
;;; chatpipe-header.el ends here
