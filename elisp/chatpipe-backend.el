;;; chatpipe-backend.el --- The chatpipe command, its templates and API keys -*- lexical-binding: t; -*-

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

;; Finding the `chatpipe' backend command and running it synchronously
;; (`chatpipe-call'), in a folder of its own (`chatpipe--process-directory',
;; `chatpipe--isolate'), and what the backend says of its templates.
;;
;; The backend owns the templates: where they are, how a name resolves,
;; and what is in them.  Emacs asks it once, with `chatpipe templates
;; list --json' (and `chatpipe templates info FILE --json' for a
;; template given as a file name), and keeps the answers until a
;; template is saved from `chatpipe-template-mode', until one of the
;; files or the user's template folder changes on disk (their
;; modification times, sizes and inodes are compared at each use), or
;; until the backend command or the variables XDG_CONFIG_HOME and HOME
;; change.

;;; Code:

(require 'cl-lib)
(require 'subr-x)

;;;; Customization

(defgroup chatpipe nil
  "Streaming LLM chats in any text buffer, through the `chatpipe' backend."
  :group 'applications
  :prefix "chatpipe-")

(defcustom chatpipe-command nil
  "The `chatpipe' backend command, or nil to find it.
A string is the program: a file name, or a name to look up in the
variable `exec-path'.  A list of strings is a program and its first
arguments, for example (\"python3\" \"-m\" \"chatpipe\").  When nil,
use the `chatpipe' of `chatpipe-python-venv' if that is set, else
the venv `chatpipe-install-backend' makes by default (chatpipe/venv
in the user's Emacs directory) if it exists, else the `chatpipe'
found in the variable `exec-path'.

The command runs in the home folder, never in the current buffer's
\(see `chatpipe--process-directory'), and a Python started with
\"-m\" or \"-c\" gets \"-I\" (see `chatpipe--isolate'): it runs the
chatpipe installed for that Python, never a chatpipe/ folder next
to the file being edited, and ignores PYTHONPATH and the other
PYTHON* variables."
  :type '(choice (const :tag "Find it" nil)
                 (string :tag "Program")
                 (repeat :tag "Program and arguments" string))
  :group 'chatpipe)

(defcustom chatpipe-python-venv nil
  "A Python virtual environment where chatpipe is installed, or nil.
Used when `chatpipe-command' is nil: the backend is then
VENV/bin/chatpipe.  When nil, the backend is the one in the venv
`chatpipe-install-backend' makes by default (chatpipe/venv in the
user's Emacs directory) if it exists, else the `chatpipe' found in
the variable `exec-path'."
  :type '(choice (const :tag "None" nil) directory)
  :group 'chatpipe)

(defcustom chatpipe-default-template "local"
  "The template of new chats: a template name or a .json file name.
`chatpipe templates list' shows the known names."
  :type 'string
  :group 'chatpipe)

(defcustom chatpipe-backend-mode 'serve
  "How answers are streamed from the backend.
`serve': all answers go through one shared, long-lived `chatpipe
  serve' process, started on first use, which keeps HTTP connections
  warm: the first text comes within milliseconds.
`send': each answer starts a `chatpipe send' process of its own,
  which costs the start of a Python process (a few hundred ms).
The shared process keeps the environment it was started with, but
for the API keys a template needs, which come with each request;
\\[chatpipe-serve-stop] stops it, and the next answer starts it anew."
  :type '(choice (const :tag "One shared chatpipe serve process" serve)
                 (const :tag "A chatpipe send process per answer" send))
  :group 'chatpipe)

(defcustom chatpipe-prestart t
  "Whether a chat buffer gets the backend ready before its first question.
When non-nil and `chatpipe-backend-mode' is `serve', opening a chat
buffer (turning `chatpipe-mode' on) starts the shared `chatpipe
serve' process as soon as Emacs is idle, and has it open a
connection to the endpoint of the chat's template, so that the
first answer comes as fast as the next ones.  Nothing is sent to the
endpoint but the connection's handshakes."
  :type 'boolean
  :group 'chatpipe)

(defcustom chatpipe-auth-source-user "apikey"
  "The user name under which API keys are looked up in `auth-source'.
An entry for the template's host with this user is preferred; if
there is none, an entry for the host with any user is taken.  For
example, in ~/.authinfo.gpg:

  machine api.openai.com login apikey password sk-..."
  :type 'string
  :group 'chatpipe)

(defcustom chatpipe-log-buffer-name "*chatpipe-log*"
  "Name of the diagnostics buffer.
Lines from the backend that are not valid JSON, and errors in event
handlers, are logged there."
  :type 'string
  :group 'chatpipe)

;;;; Errors

(define-error 'chatpipe-error "Chatpipe error")
(define-error 'chatpipe-backend-missing
  "Cannot find the chatpipe backend" 'chatpipe-error)
(define-error 'chatpipe-backend-failed
  "The chatpipe backend failed" 'chatpipe-error)

;;;; The command

(defun chatpipe--log (format-string &rest args)
  "Append a line to the diagnostics buffer.
FORMAT-STRING and ARGS are as for `format'.  Return nil."
  (with-current-buffer (get-buffer-create chatpipe-log-buffer-name)
    (let ((inhibit-read-only t))
      (save-excursion
        (goto-char (point-max))
        (insert (format-time-string "%F %T ")
                (apply #'format format-string args)
                "\n"))))
  nil)

(defun chatpipe--command ()
  "Return the backend command as a list: the program, then arguments.
The program is an absolute file name, expanded, and so is each
argument that is a file name starting with \"~\" (see
`chatpipe--expand-home'), as a process takes them.  Signal
`chatpipe-backend-missing' if it cannot be found, and
`chatpipe-error' if this Emacs cannot parse JSON."
  (unless (json-available-p)
    (signal 'chatpipe-error
            (list "This Emacs was built without JSON support (libjansson)")))
  (let* ((default-directory (chatpipe--process-directory))
         (spec (cond (chatpipe-command chatpipe-command)
                     (chatpipe-python-venv
                      (expand-file-name "bin/chatpipe" chatpipe-python-venv))
                     ((let ((default (locate-user-emacs-file
                                      "chatpipe/venv/bin/chatpipe")))
                        (and (file-executable-p default) default)))
                     (t "chatpipe")))
         (argv (if (stringp spec) (list spec) spec))
         (program (car argv))
         (found (and (stringp program)
                     (if (file-name-absolute-p program)
                         (and (file-executable-p program)
                              (not (file-directory-p program))
                              (expand-file-name program))
                       (executable-find program)))))
    (unless found
      (signal 'chatpipe-backend-missing
              (list (chatpipe--backend-missing-text (or program "chatpipe")))))
    (chatpipe--isolate
     (cons (expand-file-name found)
           (mapcar #'chatpipe--expand-home (cdr argv))))))

(defun chatpipe--isolate (argv)
  "Return ARGV, a command line (a list of strings), safe from the folder.
If its program is a Python (a file named python, python3,
python3.12...) and its first argument is \"-m\" or \"-c\", the
value is ARGV with \"-I\" (isolated mode) put before that argument:
the folder the process runs in is not put on `sys.path', and
PYTHONPATH, PYTHONSTARTUP and the other PYTHON* variables are
ignored, so that a venv.py or a chatpipe/ package in that folder
never runs instead of the module meant.  A venv's Python keeps its
site-packages.  Any other ARGV is returned as it is."
  (if (and (string-match-p "\\`python[0-9.]*\\'"
                           (file-name-nondirectory (car argv)))
           (member (cadr argv) '("-m" "-c")))
      (cons (car argv) (cons "-I" (cdr argv)))
    argv))

(defun chatpipe--expand-home (arg)
  "Return ARG, a string, expanded if it is a file name under a home folder.
That is one that starts with \"~\" (\"~/venv\", \"~user/x\"): no
shell expands it for a process.  Other strings are returned as they
are."
  (if (and (string-prefix-p "~" arg) (file-name-absolute-p arg))
      (expand-file-name arg)
    arg))

(defun chatpipe--checkout-dir ()
  "Return the chatpipe checkout this package was loaded from, or nil.
That is the folder above the package's folder, if it has the
backend's pyproject.toml and scripts/local-server."
  (let* ((library (locate-library "chatpipe"))
         (dir (and library (file-name-directory
                            (directory-file-name
                             (file-name-directory library))))))
    (and dir
         (file-exists-p (expand-file-name "pyproject.toml" dir))
         (file-exists-p (expand-file-name "scripts/local-server" dir))
         (abbreviate-file-name dir))))

(defun chatpipe--backend-missing-text (program)
  "Return what to say when the backend PROGRAM cannot be found.
It says how to install the backend from Emacs."
  (let ((venv (format "set `chatpipe-python-venv' to a venv with chatpipe \
installed (python3 -m venv DIR && DIR/bin/pip install %s)"
                      (or (chatpipe--checkout-dir) "/path/to/chatpipe"))))
    (format "the chatpipe backend `%s' was not found: %s" program
            (cond ((fboundp 'chatpipe-install-backend)
                   "M-x chatpipe-install-backend installs it")
                  (chatpipe-command
                   (concat "set `chatpipe-command' to the chatpipe program, \
or set it to nil and " venv))
                  (t venv)))))

(defun chatpipe--local-directory ()
  "Return the folder relative file names of the user are read from.
That is `default-directory' if it is local and exists, else the
home folder; expanded.  No process runs there: see
`chatpipe--process-directory'."
  (expand-file-name
   (if (and (not (file-remote-p default-directory))
            (file-directory-p default-directory))
       default-directory
     "~/")))

(defun chatpipe--process-directory ()
  "Return the folder that processes of chatpipe run in, expanded.
It is the user's home folder if that is a local, existing folder,
else the root folder: never the current buffer's folder, where a
file of someone else's (a venv.py, a chatpipe/ package next to a
chat file) could take the place of what the user meant to run.
Each process of chatpipe runs there (`default-directory' bound to
it), a Python isolated by `chatpipe--isolate'."
  (let* ((default-directory "/")
         (home (expand-file-name "~/")))
    (if (and (not (file-remote-p home)) (file-directory-p home))
        (file-name-as-directory home)
      "/")))

(defun chatpipe-call (&rest args)
  "Run the backend synchronously with the arguments ARGS.
It runs in `chatpipe--process-directory'.  Return a cons (EXIT-CODE
. STDOUT), STDOUT decoded as UTF-8.  Signal `chatpipe-backend-missing'
if there is no backend, and `chatpipe-backend-failed' with the
backend's stderr if it exits with a code other than 0 or 1.  Emacs
waits for it: use it for what the backend answers at once, without
the network (its templates, their check); see
`chatpipe-call-waiting' for the rest."
  (let* ((command (chatpipe--command))
         (default-directory (chatpipe--process-directory))
         (stderr (make-temp-file "chatpipe-stderr"))
         (coding-system-for-read 'utf-8-unix)
         (coding-system-for-write 'utf-8-unix))
    (unwind-protect
        (with-temp-buffer
          (let ((code (apply #'call-process (car command) nil
                             (list t stderr) nil
                             (append (cdr command) args))))
            (chatpipe--call-result args code (buffer-string)
                                   (with-temp-buffer
                                     (insert-file-contents stderr)
                                     (buffer-string)))))
      (delete-file stderr))))

(defun chatpipe--call-result (args code stdout stderr)
  "Return (CODE . STDOUT), what the backend run with ARGS gave.
Signal `chatpipe-backend-failed' with STDERR if CODE, its exit
status, is not 0 or 1."
  (unless (memq code '(0 1))
    (signal 'chatpipe-backend-failed
            (list (format "chatpipe %s exited with %s: %s"
                          (string-join args " ") code (string-trim stderr)))))
  (cons code stdout))

(defun chatpipe--json-read (string)
  "Return the JSON value in STRING: objects as plists, arrays as lists.
JSON null and false are nil."
  (json-parse-string string :object-type 'plist :array-type 'list
                     :null-object nil :false-object nil))

(defun chatpipe--string-table (alist)
  "Return ALIST, (NAME . VALUE) pairs of strings, as a hash table for JSON."
  (let ((table (make-hash-table :test 'equal)))
    (pcase-dolist (`(,name . ,value) alist)
      (puthash name value table))
    table))

(defun chatpipe--messages-vector (messages)
  "Return MESSAGES as a vector for JSON.
Each is a (ROLE . CONTENT) pair of strings, or an alist already in
the JSON shape (the neutral shape of tool turns)."
  (vconcat (mapcar (lambda (m)
                     (if (stringp (car m))
                         `((role . ,(car m)) (content . ,(cdr m)))
                       m))
                   messages)))

;;;; What the backend says of its templates

(cl-defstruct (chatpipe--catalog (:constructor chatpipe--catalog-create)
                                 (:copier nil))
  "What the backend said of its templates, and when.
KEY is what the answers depend on (see `chatpipe--catalog-key-now').
ENTRIES is the list of `chatpipe templates list --json', TABLE the
same by name; FILES maps a (DIRECTORY . TEMPLATE) pair, a template
given as a file name, to its entry.  DIR is the user's template
folder.  STAMPS is an alist (FILE . STAMP) of the files the answers
came from and of DIR, with their `chatpipe--file-stamp' then."
  key entries table files dir stamps)

(defvar chatpipe--catalog nil
  "The `chatpipe--catalog' last asked of the backend, or nil.")

(defun chatpipe--catalog-key-now ()
  "Return what the backend's templates depend on, to compare with `equal'.
That is the backend command and the values of the variables that
decide the user's template folder."
  (list (chatpipe--command) (getenv "XDG_CONFIG_HOME") (getenv "HOME")))

(defun chatpipe--file-stamp (file)
  "Return the modification time, size and inode number of FILE.
Return nil if FILE does not exist.  A change of any of them
means that FILE changed."
  (let ((attributes (file-attributes file 'integer)))
    (and attributes
         (list (file-attribute-modification-time attributes)
               (file-attribute-size attributes)
               (file-attribute-inode-number attributes)))))

(defun chatpipe--catalog-current-p (catalog)
  "Return non-nil if CATALOG, a `chatpipe--catalog', is up to date.
It is if the backend command and its environment are the same and
none of its files and folders changed."
  (and catalog
       (equal (chatpipe--catalog-key catalog) (chatpipe--catalog-key-now))
       (cl-loop for (file . stamp) in (chatpipe--catalog-stamps catalog)
                always (equal stamp (chatpipe--file-stamp file)))))

(defun chatpipe--catalog-ask ()
  "Ask the backend for its templates; return a new `chatpipe--catalog'.
Signal `chatpipe-backend-failed' if it cannot tell."
  (let* ((key (chatpipe--catalog-key-now))
         (entries (pcase (chatpipe-call "templates" "list" "--json")
                    (`(0 . ,out) (condition-case nil (chatpipe--json-read out)
                                   (json-error :invalid)))
                    (`(,code . ,out)
                     (signal 'chatpipe-backend-failed
                             (list (format "chatpipe templates list exited \
with %s: %s" code (string-trim out)))))))
         (table (if (and (listp entries)
                         (cl-every (lambda (entry)
                                     (stringp (plist-get entry :name)))
                                   entries))
                    (make-hash-table :test 'equal)
                  (signal 'chatpipe-backend-failed
                          (list "chatpipe templates list --json gave no \
list of templates"))))
         (user (cl-find "user" entries :test #'equal
                        :key (lambda (entry) (plist-get entry :source))))
         (dir (file-name-as-directory
               (if user
                   (file-name-directory (plist-get user :path))
                 (pcase (chatpipe-call "templates" "dir")
                   (`(0 . ,out) (string-trim out))
                   (_ (signal 'chatpipe-backend-failed
                              (list "chatpipe templates dir failed"))))))))
    (dolist (entry entries)
      (puthash (plist-get entry :name) entry table))
    (chatpipe--catalog-create
     :key key :entries entries :table table :dir dir
     :files (make-hash-table :test 'equal)
     :stamps (cons (cons dir (chatpipe--file-stamp dir))
                   (mapcar (lambda (entry)
                             (let ((file (plist-get entry :path)))
                               (cons file (chatpipe--file-stamp file))))
                           entries)))))

(defun chatpipe--catalog-fresh ()
  "Return the backend's templates, a `chatpipe--catalog', asking if needed.
Signal `chatpipe-backend-missing' or `chatpipe-backend-failed' if
the backend cannot tell."
  (unless (chatpipe--catalog-current-p chatpipe--catalog)
    (setq chatpipe--catalog nil)
    (setq chatpipe--catalog (chatpipe--catalog-ask)))
  chatpipe--catalog)

(defun chatpipe-templates-refresh ()
  "Forget what the backend said of its templates; the next use asks again.
Return nil."
  (interactive)
  (setq chatpipe--catalog nil))

(defun chatpipe-templates ()
  "Return the known templates, from `chatpipe templates list --json'.
Each is a plist with :name, :source (\"user\" or \"bundled\"),
:path, :api, :url, :model, :description, :env (the environment
variables it needs) and :host (where its API key is looked up in
`auth-source', or nil), or :name, :source, :path and :error for a
broken file.  The list is kept until a template changes; see
`chatpipe-templates-refresh'."
  (chatpipe--catalog-entries (chatpipe--catalog-fresh)))

(defun chatpipe--template-file-info (catalog template)
  "Return the entry for TEMPLATE, a file name, adding it to CATALOG.
Ask `chatpipe templates info TEMPLATE --json' unless CATALOG
already knows it.  The entry's :path is absolute.  Return nil if
TEMPLATE is no template file."
  (let* ((dir (chatpipe--local-directory))
         (key (cons dir template))
         (files (chatpipe--catalog-files catalog)))
    (or (gethash key files)
        ;; The backend runs in another folder: a relative file name is
        ;; made absolute here, from the buffer's folder.
        (let* ((out (condition-case err
                        (cdr (chatpipe-call "templates" "info"
                                            (expand-file-name
                                             (chatpipe--expand-home template)
                                             dir)
                                            "--json"))
                      (chatpipe-backend-failed
                       (chatpipe--log "%s" (error-message-string err))
                       nil)))
               (entry (and out (condition-case nil (chatpipe--json-read out)
                                 (json-error nil)))))
          (when (stringp (plist-get entry :path))
            (let ((file (expand-file-name (plist-get entry :path) dir)))
              (setq entry (plist-put entry :path file))
              (push (cons file (chatpipe--file-stamp file))
                    (chatpipe--catalog-stamps catalog))
              (puthash key entry files)))))))

(defun chatpipe-template-info (template)
  "Return the backend's description of TEMPLATE, a name or a file name.
The value is an entry as for `chatpipe-templates'; for a template
given as a file name its :source is \"file\" and its :path
absolute.  Return nil if TEMPLATE resolves to no template file or
the backend cannot tell."
  (let ((catalog (condition-case err (chatpipe--catalog-fresh)
                   (chatpipe-backend-failed
                    (chatpipe--log "%s" (error-message-string err))
                    nil))))
    (when catalog
      (or (gethash template (chatpipe--catalog-table catalog))
          (chatpipe--template-file-info catalog template)))))

(defun chatpipe--template-argument (template entry)
  "Return TEMPLATE as the backend should get it, from any folder.
ENTRY is TEMPLATE's `chatpipe-template-info'.  The value is the
absolute file name of a template given as a file name, else
TEMPLATE (expanded if it is a file name starting with \"~\")."
  (if (equal (plist-get entry :source) "file")
      (plist-get entry :path)
    (chatpipe--expand-home template)))

(defun chatpipe--user-template-dir ()
  "Return the user's template folder, as the backend has it."
  (chatpipe--catalog-dir (chatpipe--catalog-fresh)))

(provide 'chatpipe-backend)
;;; chatpipe-backend.el ends here
