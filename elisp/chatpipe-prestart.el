;;; chatpipe-prestart.el --- Getting the backend ready for a new chat -*- lexical-binding: t; -*-


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

;; When a chat buffer opens, and Emacs is idle a moment, chatpipe has
;; the backend describe the chat's template, so that the header line
;; shows its model, and in `serve' mode starts the shared backend
;; process and has it connect to the template's endpoint, so that the
;; first answer comes sooner.  See `chatpipe-prestart'.

;;; Code:

(require 'chatpipe-backend)
(require 'chatpipe-filedata)
(require 'chatpipe-process)
(require 'chatpipe-chat-settings)

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

(provide 'chatpipe-prestart)
;;; chatpipe-prestart.el ends here
