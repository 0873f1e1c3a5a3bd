;;; chatpipe-hints.el --- Error, retry and finish texts for chatpipe -*- lexical-binding: t; -*-


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

;; What the status of a chat says of an answer that did not go as
;; usual: the text of the backend's `retry' and `error' events, with a
;; hint on what to do for an error of a known `kind' (add a missing
;; API key, start the local server, choose a model), and the word for
;; an answer that ended cut, empty or filtered.

;;; Code:

(require 'subr-x)
(require 'chatpipe-backend)
(require 'chatpipe-chat-settings)

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

(provide 'chatpipe-hints)
;;; chatpipe-hints.el ends here
