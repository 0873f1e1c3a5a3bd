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

;; The settings of a chat buffer (its template, model and template
;; variables) and its status, shown in the header line: the template,
;; the model, and how the last answer went.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-backend)

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

(defvar-local chatpipe--status nil
  "The status shown in the header line, a string, or nil.")

(defvar-local chatpipe--model-seen nil
  "The model named by the backend's last `start' event, or nil.")

(defun chatpipe--current-template ()
  "Return the template of the current buffer."
  (or chatpipe-template chatpipe-default-template))

;;;; Status

(defun chatpipe--set-status (format-string &rest args)
  "Set the header line status to FORMAT-STRING formatted with ARGS."
  (setq chatpipe--status (apply #'format format-string args))
  (force-mode-line-update))

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

(defun chatpipe--error-text (event)
  "Return the message of the `error' EVENT, with the HTTP status if any."
  (let ((status (plist-get event :status))
        (message (or (plist-get event :message) "unknown error")))
    (if status (format "HTTP %s: %s" status message) message)))

(provide 'chatpipe-status)
;;; chatpipe-status.el ends here
