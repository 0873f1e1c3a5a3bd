;;; chatpipe-models.el --- The models of a chatpipe template's endpoint -*- lexical-binding: t; -*-

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

;; Completing model names: `chatpipe-models' returns the models the
;; endpoint of a template offers, as the backend lists them (`chatpipe
;; models TEMPLATE --json', which asks the endpoint's own model list
;; and caches it for an hour), and `chatpipe-read-model' reads a model
;; name with completion over them.  A name that is not in the list is
;; accepted too; when the endpoint has no list or cannot be reached,
;; the name is read without completion and the prompt says why.
;;
;; The API keys the template needs go to the backend in its
;; environment, as for an answer (see `chatpipe-process-environment'),
;; never on its command line.  The lists are kept for the Emacs
;; session, per template; `chatpipe-models-refresh' forgets them.
;;
;; Asking the endpoint never freezes Emacs: the backend runs
;; asynchronously (`chatpipe-call-waiting'), timers and answers
;; streaming elsewhere go on meanwhile, the backend gives up at the
;; template's deadline (at most a minute for the list, every page
;; included), Emacs after `chatpipe-models-timeout' seconds, and C-g
;; in `chatpipe-read-model' stops waiting and reads the name without
;; completion.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-backend)
(require 'chatpipe-process)
(require 'chatpipe-header)

(define-error 'chatpipe-models-failed
  "Cannot list the models" 'chatpipe-error)

(defcustom chatpipe-models-timeout 75
  "Seconds Emacs waits at most for the list of a template's models.
The backend itself gives up at the template's `deadline', at most 60
seconds for a model list, every page included; this bounds the wait
for the backend too.  While it waits, Emacs runs its timers and
other processes, and \\[keyboard-quit] stops the wait."
  :type 'number
  :group 'chatpipe)

(defvar chatpipe-model-history nil
  "Minibuffer history of model names.")

(defvar chatpipe--models-cache (make-hash-table :test 'equal)
  "The model lists of this session.
The keys are (TEMPLATE PATH URL), a template and the file and
endpoint it resolved to; the values are lists of model ids.")

(defun chatpipe-models-refresh ()
  "Forget the model lists of this session; the next use asks again.
The backend keeps its own lists for an hour: the next
`chatpipe-models' with REFRESH asks the endpoints themselves.
Return nil."
  (interactive)
  (clrhash chatpipe--models-cache)
  nil)

(defun chatpipe--models-error (output)
  "Return the error message in OUTPUT, the backend's JSON error line.
Return nil if OUTPUT holds none."
  (let ((event (condition-case nil
                   (chatpipe--json-read (car (split-string output "\n" t)))
                 ((json-error wrong-type-argument) nil))))
    (and (equal (plist-get event :type) "error")
         (stringp (plist-get event :message))
         (plist-get event :message))))

(defun chatpipe--models-ask (template entry refresh)
  "Ask the backend for the models of TEMPLATE; return their ids.
ENTRY is TEMPLATE's `chatpipe-template-info', or nil.  With REFRESH,
the backend asks the endpoint even if it has the list.  Signal
`chatpipe-models-failed' with the backend's message if the
endpoint has no list, cannot be reached or does not answer in
time.  Emacs is not blocked meanwhile (see `chatpipe-call-waiting');
\\[keyboard-quit] stops the backend and quits."
  (let* ((process-environment (chatpipe-process-environment template))
         (result (apply #'chatpipe-call-waiting chatpipe-models-timeout "models"
                        (chatpipe--template-argument template entry)
                        "--json" (and refresh '("--refresh"))))
         (output (cdr result))
         (models (and (eq (car result) 0)
                      (condition-case nil (chatpipe--json-read output)
                        (json-error :invalid)))))
    (unless (eq (car result) 0)
      (signal 'chatpipe-models-failed
              (list (or (chatpipe--models-error output)
                        (format "chatpipe models %s exited with %s"
                                template (car result))))))
    (unless (and (listp models)
                 (cl-every (lambda (model) (stringp (plist-get model :id)))
                           models))
      (signal 'chatpipe-models-failed
              (list "chatpipe models --json gave no list of models")))
    (mapcar (lambda (model) (plist-get model :id)) models)))

(defun chatpipe-models (template &optional refresh)
  "Return the ids of the models of TEMPLATE's endpoint, a list.
TEMPLATE is a template name or a .json file name.  The list comes
from `chatpipe models TEMPLATE --json', with the API keys the
template needs in the backend's environment, and is kept for the
session.  With REFRESH non-nil, ask again, and make the backend
ask the endpoint.  Asking takes at most the template's deadline
\(a minute at most) and `chatpipe-models-timeout'; timers and other
processes run meanwhile.  Signal `chatpipe-models-failed' with the
backend's message if the endpoint has no model list, cannot be
reached or runs past the deadline, and `chatpipe-backend-failed'
for a template that the backend cannot use."
  (let* ((entry (chatpipe-template-info template))
         (key (list template (plist-get entry :path) (plist-get entry :url)))
         (cached (gethash key chatpipe--models-cache :none)))
    (if (and (not refresh) (listp cached))
        cached
      (puthash key (chatpipe--models-ask template entry refresh)
               chatpipe--models-cache))))

(defun chatpipe--models-cached-p (template)
  "Return non-nil if this session has the model list of TEMPLATE."
  (let ((entry (chatpipe-template-info template)))
    (listp (gethash (list template (plist-get entry :path) (plist-get entry :url))
                    chatpipe--models-cache :none))))

(defun chatpipe--models-reason (err)
  "Return a short text for the error ERR, for a prompt.
That is the backend's own message, without what `chatpipe-call'
puts before it, on one line of at most 100 characters."
  (let ((text (replace-regexp-in-string
               "[ \t\n]+" " "
               (if (eq (car err) 'chatpipe-models-failed)
                   (format "%s" (cadr err))
                 (error-message-string err)))))
    (when (string-match "exited with [0-9]+: \\(?:chatpipe: error: \\)?" text)
      (setq text (substring text (match-end 0))))
    (truncate-string-to-width text 100 nil nil "...")))

(defun chatpipe--model-candidates (models)
  "Return the completion candidates of MODELS, a list of model ids.
The value is an alist of (NAME . ID): NAME is the short name of
`chatpipe-model-name' (a llama.cpp server's file name without its
folders), or the id itself where two models would have the same."
  (let ((names (mapcar #'chatpipe-model-name models)))
    (cl-mapcar (lambda (id name)
                 (cons (if (= 1 (cl-count name names :test #'equal)) name id)
                       id))
               models names)))

;;;###autoload
(defun chatpipe-read-model (prompt template &optional default)
  "Read a model name in the minibuffer with PROMPT, and return its id.
Complete over the models of TEMPLATE's endpoint (see
`chatpipe-models'), shown by their short names (see
`chatpipe-model-name'): the id of the model chosen is returned, the
long file name a llama.cpp server gives for one.  A name not in the
list is accepted too, and returned as it is.  DEFAULT is the
default id, shown in the prompt.  If the models cannot be listed,
read the name without completion: the prompt says why, and the
message is logged in `chatpipe-log-buffer-name'.

Listing the models asks the endpoint unless this session has its
list already: Emacs is not blocked meanwhile (timers run, answers
go on streaming), the wait ends at the template's deadline, and
\\[keyboard-quit] while it lasts stops it: the name is then read
without completion."
  (let* ((failure nil)
         (models (condition-case err
                     (let ((message-log-max nil))
                       (unless (chatpipe--models-cached-p template)
                         (message "Listing the models of %s... (C-g: type a name)"
                                  template))
                       (prog1 (chatpipe-models template)
                         (message nil)))
                   (chatpipe-error
                    (message nil)
                    (setq failure (chatpipe--models-reason err))
                    (chatpipe--log "chatpipe models %s: %s" template
                                   (error-message-string err))
                    nil)
                   (quit
                    (message nil)
                    (setq failure "interrupted")
                    nil)))
         (candidates (chatpipe--model-candidates models))
         (default (and default (or (car (rassoc default candidates)) default)))
         (answer (completing-read
                  (format-prompt (if failure
                                     (format "%s (no model list: %s)" prompt
                                             failure)
                                   prompt)
                                 default)
                  (mapcar #'car candidates) nil nil nil 'chatpipe-model-history
                  default)))
    (or (cdr (assoc answer candidates)) answer)))

(provide 'chatpipe-models)
;;; chatpipe-models.el ends here
