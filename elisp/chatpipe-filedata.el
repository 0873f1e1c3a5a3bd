;;; chatpipe-filedata.el --- Chat settings read from files: data, with consent -*- lexical-binding: t; -*-

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

;; A chat file (its Local Variables, or an Org file's properties, see
;; chatpipe-state.el) and a folder's .dir-locals.el may set a chat's
;; settings.  What they give is plain data, checked here before use:
;; strings without text properties, the symbols nil, t and `none',
;; numbers, and lists and pairs of those, finite and shallow.  The
;; settings that choose where a request goes (a template given as a
;; file, template variables, a URL), what runs (tools) or which files
;; are sent (context) are applied only with the user's consent: see
;; `chatpipe--file-settings-consent'.
;;
;; A file cannot set the approvals (`chatpipe-approved-file-settings'
;; is risky), and a value allowed once is not remembered.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-backend)

;;;; Plain data

(defconst chatpipe--file-value-limits '(:depth 4 :items 2000 :chars 100000)
  "How big a setting read from a file may be.
DEPTH is how deeply its lists may nest, ITEMS how many strings,
numbers, symbols and list cells it may have in all, CHARS how long
any of its strings may be.")

(defun chatpipe--plain-copy (value)
  "Return (t . COPY) if VALUE is plain data, else nil.
COPY is VALUE made again of fresh strings without text properties.
Plain data is strings, numbers, the symbols nil, t and `none', and
conses of those, within `chatpipe--file-value-limits'; a circular
or deeper structure is not, and is never walked past the limits."
  (let ((budget (plist-get chatpipe--file-value-limits :items))
        (max-depth (plist-get chatpipe--file-value-limits :depth))
        (max-chars (plist-get chatpipe--file-value-limits :chars)))
    (catch 'chatpipe--not-plain
      (cl-labels
          ((copy (x depth)
             (when (< (cl-decf budget) 0)
               (throw 'chatpipe--not-plain nil))
             (cond ((stringp x)
                    (if (> (length x) max-chars)
                        (throw 'chatpipe--not-plain nil)
                      (substring-no-properties x)))
                   ((or (numberp x) (memq x '(nil t none))) x)
                   ((and (consp x) (< depth max-depth))
                    (let ((items nil))
                      (while (consp x)
                        (push (copy (car x) (1+ depth)) items)
                        (setq x (cdr x))
                        (when (< (cl-decf budget) 0)
                          (throw 'chatpipe--not-plain nil)))
                      (nconc (nreverse items) (copy x (1+ depth)))))
                   (t (throw 'chatpipe--not-plain nil)))))
        (cons t (copy value 0))))))

(defun chatpipe--plain-data-p (value)
  "Return non-nil if VALUE is plain data with no text property anywhere.
See `chatpipe--plain-copy'."
  (let ((copy (chatpipe--plain-copy value)))
    (and copy (equal-including-properties (cdr copy) value))))

(defun chatpipe--plain-string-p (value &optional max)
  "Return non-nil if VALUE is a string of MAX characters at most, plain.
Plain: without text properties.  MAX defaults to 1000."
  (and (stringp value) (<= (length value) (or max 1000))
       (chatpipe--plain-data-p value)))

(defun chatpipe-template-name-p (template)
  "Return non-nil if TEMPLATE, a string, is the name of a template.
A name is looked up in the user's template folder, then among the
bundled templates (`chatpipe templates list' shows them); anything
else, such as \"./evil.json\", \"~/t.json\", \"/tmp/t\" or \"C:t\", is
a path to a template file, which may be anywhere."
  (and (stringp template)
       (<= 1 (length template) 200)
       (not (string-match-p "[/\\\\:[:cntrl:]]" template))
       (not (string-match-p "\\`[.~]" template))
       (not (string-match-p "\\.json\\'" (downcase template)))))

(defun chatpipe--url-value-p (value)
  "Return non-nil if VALUE is a value of `chatpipe-url' a file may give.
That is nil or a plain http or https URL (it still needs consent)."
  (or (null value)
      (and (chatpipe--plain-string-p value 2000)
           (string-match-p "\\`https?://[^[:space:][:cntrl:]]+\\'" value))))

(defun chatpipe--template-vars-value-p (value)
  "Return non-nil if VALUE is a value of `chatpipe-template-vars'.
That is a list of at most 100 (NAME . VALUE) pairs of plain strings."
  (and (proper-list-p value) (<= (length value) 100)
       (chatpipe--plain-data-p value)
       (cl-every (lambda (x) (and (consp x) (stringp (car x))
                                  (stringp (cdr x))))
                 value)))

(defun chatpipe--tools-value-p (value)
  "Return non-nil if VALUE is a value of `chatpipe-tools'.
That is the symbol `none', or a list of at most 100 plain strings."
  (or (eq value 'none)
      (and (proper-list-p value) (<= (length value) 100)
           (chatpipe--plain-data-p value)
           (cl-every (lambda (x) (and (stringp x) (<= (length x) 200)))
                     value))))

(defun chatpipe--context-value-p (value)
  "Return non-nil if VALUE is a value of `chatpipe-context'.
That is a list of at most 200 entries (\"file\" PATH), (\"file\"
PATH LINES) or (\"dir\" PATH): PATH a plain string of at most 4096
characters, no control characters and no remote file name; LINES a
string \"START-END\", line numbers, START <= END."
  (and (proper-list-p value) (<= (length value) 200)
       (chatpipe--plain-data-p value)
       (cl-every
        (lambda (entry)
          (pcase entry
            (`(,(or "file" "dir") ,(and (pred stringp) path) . ,lines)
             (and (<= 1 (length path) 4096)
                  (not (string-match-p "[[:cntrl:]]" path))
                  (not (file-remote-p path))
                  (or (null lines)
                      (and (equal (car entry) "file") (consp lines)
                           (null (cdr lines)) (stringp (car lines))
                           (save-match-data
                             (and (string-match
                                   (rx bos (group (any "1-9") (** 0 8 digit))
                                       "-" (group (any "1-9") (** 0 8 digit)) eos)
                                   (car lines))
                                  (<= (string-to-number (match-string 1 (car lines)))
                                      (string-to-number
                                       (match-string 2 (car lines))))))))))))
        value)))

(defvar-local chatpipe-context nil
  "The files and folders saved with this chat as its context, or nil.
A list of (\"file\" PATH), (\"file\" PATH \"START-END\") (lines)
and (\"dir\" PATH), PATH relative to the chat file's folder or
absolute: see `chatpipe--context-value-p'.  Saving a chat sets it
from the chat's context, and visiting the file again restores that
\(see chatpipe-context-items.el), with your consent, since it
chooses files that are read and sent (see
`chatpipe--file-settings-consent').")
(put 'chatpipe-context 'safe-local-variable #'chatpipe--context-value-p)
(put 'chatpipe-context 'permanent-local t)

;;;; Consent

(defconst chatpipe--file-variables
  '(chatpipe-template chatpipe-model chatpipe-temperature chatpipe-max-tokens
    chatpipe-system chatpipe-template-vars chatpipe-tools chatpipe-url
    chatpipe-context)
  "The chat settings a file may give.")

(defconst chatpipe--endpoint-variables
  '(chatpipe-template chatpipe-template-vars chatpipe-url)
  "The chat settings that choose where requests go.")

(defcustom chatpipe-approved-file-settings nil
  "The settings of chat files you allowed: a list of (FILE . HASH).
FILE is the true name of a file; HASH stands for the settings of it
you allowed that choose where requests go or what runs (see
`chatpipe--file-settings-consent').  Answering \"!\" (always) to the
question about a file's settings adds an entry, and so does saving
a chat with settings you chose; a file whose settings change is
asked about again."
  :type '(repeat (cons (file :tag "File") (string :tag "Hash")))
  :group 'chatpipe)
(put 'chatpipe-approved-file-settings 'risky-local-variable t)

(defvar-local chatpipe--withheld-settings nil
  "The settings of this buffer's file that were not applied: (VAR . VALUE).
They needed the user's consent and did not get it.")
(put 'chatpipe--withheld-settings 'permanent-local t)

(defvar-local chatpipe--once-hash nil
  "The hash of the file settings allowed once only for this buffer, or nil.
Saving the chat with those same settings does not remember them.")
(put 'chatpipe--once-hash 'permanent-local t)

(defun chatpipe--risky-setting-p (var value)
  "Return non-nil if VALUE for VAR needs the user's consent from a file.
That is a template that is no name (see `chatpipe-template-name-p'),
template variables, a URL, tools (not `none'), and context."
  (pcase var
    ('chatpipe-template (and value (not (chatpipe-template-name-p value))))
    ((or 'chatpipe-template-vars 'chatpipe-url 'chatpipe-context) value)
    ('chatpipe-tools (consp value))))

(defun chatpipe--file-setting (var value)
  "Return (t . COPY) if VALUE is a valid value of VAR from a file, else nil.
COPY is plain data (see `chatpipe--plain-copy'); it passes VAR's
`safe-local-variable' predicate."
  (let ((copy (chatpipe--plain-copy value))
        (valid (get var 'safe-local-variable)))
    (and copy (functionp valid) (funcall valid (cdr copy)) copy)))

(defun chatpipe--file-key ()
  "Return the true name of the buffer's file, or nil if it has none."
  (and buffer-file-name (file-truename buffer-file-name)))

(defun chatpipe--settings-hash (settings)
  "Return a hash of SETTINGS, an alist of (VAR . VALUE)."
  (let ((print-length nil) (print-level nil) (print-circle nil)
        (print-escape-newlines t) (print-escape-control-characters t))
    (secure-hash 'sha256
                 (prin1-to-string
                  (sort (copy-sequence settings)
                        (lambda (a b) (string< (car a) (car b))))))))

(defun chatpipe--file-settings-approved-p (file settings)
  "Return non-nil if the user allowed SETTINGS of FILE already.
FILE is a true name or nil; SETTINGS an alist of (VAR . VALUE).
They are allowed if `chatpipe-approved-file-settings' has them for
FILE, or if each is one of `safe-local-variable-values'."
  (or (and file (member (cons file (chatpipe--settings-hash settings))
                        chatpipe-approved-file-settings))
      (cl-every (lambda (s) (member s safe-local-variable-values)) settings)))

(declare-function custom-file "cus-edit" (&optional no-error))

(defun chatpipe--approve-file-settings (file settings)
  "Remember that the user allowed SETTINGS of FILE, a true name.
The entry replaces FILE's older one in `chatpipe-approved-file-settings',
saved with Customize for future sessions when Emacs has a custom file."
  (let ((entry (cons file (chatpipe--settings-hash settings))))
    (unless (member entry chatpipe-approved-file-settings)
      (let ((value (cons entry (cl-remove file chatpipe-approved-file-settings
                                          :key #'car :test #'equal))))
        (require 'cus-edit)
        (if (and after-init-time (custom-file t))
            (let ((coding-system-for-read nil))
              (customize-save-variable 'chatpipe-approved-file-settings value))
          (setq chatpipe-approved-file-settings value))))))

(defun chatpipe--show-value (value)
  "Return VALUE printed to be read by a person: no control or bidi characters."
  (let ((print-escape-newlines t) (print-escape-control-characters t)
        (print-length 20) (print-level 4))
    (replace-regexp-in-string
     "[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
     (lambda (c) (format "\\\\x%x" (aref c 0)))
     (prin1-to-string value) t)))

(defun chatpipe--describe-setting (setting)
  "Return a line telling what SETTING, a (VAR . VALUE), would do.
Context (`chatpipe-context') takes a line for each file or folder,
its path expanded against `default-directory', the file's folder."
  (let ((value (chatpipe--show-value (cdr setting))))
    (pcase (car setting)
      ('chatpipe-template
       (format "  template file %s: requests go where it says, with the \
API keys it names\n" value))
      ('chatpipe-template-vars
       (format "  template variables %s: they may change where requests \
go\n" value))
      ('chatpipe-url (format "  endpoint URL %s: requests go there, with \
the template's API keys\n" value))
      ('chatpipe-tools (format "  tools %s: the model may run them\n" value))
      ('chatpipe-context
       (concat "  context: these files and folders are read and sent with \
each question:\n"
               (mapconcat
                (lambda (entry)
                  (format "    %s %s%s\n"
                          (if (equal (car entry) "dir") "folder" "file")
                          (chatpipe--show-value
                           (abbreviate-file-name (expand-file-name (nth 1 entry))))
                          (if (nth 2 entry) (format ", lines %s" (nth 2 entry)) "")))
                (cdr setting) "")))
      (var (format "  %s: %s\n" var value)))))

(defun chatpipe--ask-file-settings (where settings)
  "Ask whether to apply SETTINGS of WHERE; return `always', `once' or nil.
WHERE names the file or buffer; SETTINGS is an alist of (VAR . VALUE)."
  (let ((buffer (get-buffer-create "*chatpipe file settings*"))
        (described (mapconcat #'chatpipe--describe-setting settings "")))
    (unwind-protect
        (save-window-excursion
          (with-current-buffer buffer
            (let ((inhibit-read-only t))
              (erase-buffer)
              (insert (format "%s sets where chatpipe sends requests, what \
runs or which files it sends:\n\n" where)
                      described
                      "\ny: apply them this time\n\
!: apply them, and do not ask again for this file while they stay the same\n\
n: do not apply them (the chat uses your defaults)\n")
              (goto-char (point-min))
              (setq buffer-read-only t)))
          (pop-to-buffer buffer)
          (pcase (car (read-multiple-choice
                       "Apply the chat file's settings?"
                       '((?y "yes" "apply them this time")
                         (?! "always" "apply them, and remember for this file")
                         (?n "no" "do not apply them"))))
            (?y 'once)
            (?! 'always)
            (_ nil)))
      (kill-buffer buffer))))

(defun chatpipe--file-settings-consent (file settings)
  "Return non-nil if SETTINGS, read from FILE, may be applied.
FILE is the file's true name, or nil for a buffer without one;
SETTINGS is an alist of (VAR . VALUE) of the settings that need
consent (see `chatpipe--risky-setting-p').  They may if the user
allowed them already (see `chatpipe--file-settings-approved-p') or
`enable-local-variables' is :all.  Else, if Emacs may ask (not in
batch mode, `enable-local-variables' neither nil nor :safe), ask:
y applies them this time, ! always (remembered in
`chatpipe-approved-file-settings'), n not.  Settings not applied
are said in a warning."
  (let ((where (if file (abbreviate-file-name file) (buffer-name))))
    (cond
     ((null settings) t)
     ((chatpipe--file-settings-approved-p file settings) t)
     ((eq enable-local-variables :all) t)
     ((or noninteractive (memq enable-local-variables '(nil :safe)))
      (display-warning
       'chatpipe
       (format "%s: not applied without your consent: %s" where
               (mapconcat (lambda (s) (format "%s %s" (car s)
                                              (chatpipe--show-value (cdr s))))
                          settings "; ")))
      nil)
     (t
      (pcase (chatpipe--ask-file-settings where settings)
        ('always
         (if file (chatpipe--approve-file-settings file settings)
           (setq chatpipe--once-hash (chatpipe--settings-hash settings)))
         t)
        ('once (setq chatpipe--once-hash (chatpipe--settings-hash settings))
               t)
        (_ (message "chatpipe: the settings of %s were not applied" where)
           nil))))))

(defun chatpipe--check-file-local-variables ()
  "Let the chat settings of a file apply only as plain data, with consent.
A function of `before-hack-local-variables-hook': it edits
`file-local-variables-alist' before Emacs applies it.  Each chat
setting (see `chatpipe--file-variables') is replaced by a plain
copy (see `chatpipe--plain-copy'), or dropped if it is no valid
value; those that need consent (see `chatpipe--risky-setting-p')
are dropped unless `chatpipe--file-settings-consent' allows them,
and kept in `chatpipe--withheld-settings'."
  (kill-local-variable 'chatpipe--withheld-settings)
  (when (cl-some (lambda (elt) (memq (car-safe elt) chatpipe--file-variables))
                 file-local-variables-alist)
    (let ((kept nil) (risky nil))
      (dolist (elt file-local-variables-alist)
        (if (not (memq (car-safe elt) chatpipe--file-variables))
            (push elt kept)
          (let ((copy (chatpipe--file-setting (car elt) (cdr elt))))
            (if (null copy)
                (display-warning
                 'chatpipe (format "%s: ignored %s: not a valid value"
                                   (buffer-name) (car elt)))
              (let ((setting (cons (car elt) (cdr copy))))
                (push setting kept)
                (when (chatpipe--risky-setting-p (car setting) (cdr setting))
                  (push setting risky)))))))
      (setq risky (nreverse risky))
      (when (and risky (not (chatpipe--file-settings-consent
                             (chatpipe--file-key) risky)))
        (setq kept (cl-remove-if (lambda (elt) (memq elt risky)) kept))
        (setq chatpipe--withheld-settings risky))
      (setq file-local-variables-alist (nreverse kept)))))

(add-hook 'before-hack-local-variables-hook
          #'chatpipe--check-file-local-variables)

(defun chatpipe--withheld-endpoint-p ()
  "Return non-nil if a setting of the file that chooses the endpoint was withheld.
See `chatpipe--withheld-settings'."
  (cl-some (lambda (s) (memq (car s) chatpipe--endpoint-variables))
           chatpipe--withheld-settings))

(provide 'chatpipe-filedata)
;;; chatpipe-filedata.el ends here
