;;; chatpipe-install.el --- Install the chatpipe backend from Emacs -*- lexical-binding: t; -*-

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

;; M-x chatpipe-install-backend installs the Python backend that ships
;; with this package into a virtual environment of its own, by default
;; in the user's Emacs directory (chatpipe/venv), and sets
;; `chatpipe-python-venv' to it.
;;
;; The backend is the same tree as the Emacs Lisp: an installed package
;; holds backend/, pyproject.toml and request-templates/ next to its
;; .el files; a checkout used from its elisp/ folder has them one level
;; up.  The command runs `python3 -I -m venv VENV' (if VENV has no pip
;; yet) and `VENV/bin/pip install DIR' as asynchronous processes, their
;; output in the buffer *chatpipe install*.  A venv whose `chatpipe
;; --version' is already the version being installed is reused as it
;; is; one with another version is upgraded.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-backend)

(declare-function chatpipe-serve-stop "chatpipe-process" ())

;;;; Customization

(defcustom chatpipe-install-python "python3"
  "The Python that creates the backend's venv: a program name or file.
It must be Python 3.11 or newer.  A name is looked up in the
variable `exec-path'."
  :type 'string
  :group 'chatpipe)

(defcustom chatpipe-install-save 'ask
  "Whether `chatpipe-install-backend' saves `chatpipe-python-venv'.
t: save it with `customize-save-variable', for future sessions.
`ask': ask whether to save it.
nil: set it for this session only."
  :type '(choice (const :tag "Save it" t)
                 (const :tag "Ask" ask)
                 (const :tag "This session only" nil))
  :group 'chatpipe)

(defcustom chatpipe-install-functions nil
  "Functions called when `chatpipe-install-backend' ends.
Each is called with two arguments: the venv (a directory name) and
nil when the backend is installed there, or else a string saying
what went wrong."
  :type 'hook
  :group 'chatpipe)

;;;; Variables

(defconst chatpipe-install-buffer-name "*chatpipe install*"
  "The name of the buffer that shows the progress of an install.")

(defconst chatpipe-install-minimum-python '(3 11)
  "The oldest Python (major minor) that runs the backend.")

(defvar chatpipe-install--library-directory
  (let ((file (or load-file-name buffer-file-name)))
    (and file (file-name-directory file)))
  "The folder this file was loaded from, or nil if not known.")

(defvar chatpipe-install--process nil
  "The process of the install under way, or nil.")

;;;; The backend that ships with the package

(defun chatpipe-install--source-p (dir)
  "Return non-nil if DIR has the backend's pyproject.toml and sources."
  (and (file-regular-p (expand-file-name "pyproject.toml" dir))
       (file-regular-p (expand-file-name "backend/chatpipe/__init__.py" dir))))

(defun chatpipe-install-source-directory ()
  "Return the folder of the backend that ships with this package, or nil.
That is the nearest folder, from this file's folder up, holding
pyproject.toml and backend/: the package's own folder when it is
installed with package.el, the checkout when it is used from its
elisp/ folder.  If this file's folder is a build folder of symbolic
links (as straight.el makes), the search starts from the real file.
The value is an absolute directory name, never abbreviated (it goes
to pip as it is)."
  (let* ((dir (or chatpipe-install--library-directory
                  (let ((library (locate-library "chatpipe-install")))
                    (and library (file-name-directory library)))))
         (source (and dir (expand-file-name "chatpipe-install.el" dir)))
         (found (cl-some (lambda (start)
                           (and start (locate-dominating-file
                                       start #'chatpipe-install--source-p)))
                         (list dir (and source (file-symlink-p source)
                                        (file-name-directory
                                         (file-truename source)))))))
    ;; `locate-dominating-file' abbreviates (~/.emacs.d/elpa/...), and
    ;; no shell expands the ~ for pip.
    (and found (file-name-as-directory (expand-file-name found)))))

(defun chatpipe-install--read-version (file regexp)
  "Return the first group of REGEXP's first match in FILE, or nil."
  (when (file-readable-p file)
    (with-temp-buffer
      (insert-file-contents file)
      (goto-char (point-min))
      (and (re-search-forward regexp nil t) (match-string 1)))))

(defun chatpipe-install-source-version (dir)
  "Return the version of the backend in DIR, a string.
It is `__version__' of DIR/backend/chatpipe/__init__.py, or else the
version of DIR/pyproject.toml.  Signal `chatpipe-error' if neither
says."
  (or (chatpipe-install--read-version
       (expand-file-name "backend/chatpipe/__init__.py" dir)
       "^__version__ *= *[\"']\\([^\"']+\\)[\"']")
      (chatpipe-install--read-version
       (expand-file-name "pyproject.toml" dir)
       "^version *= *\"\\([^\"]+\\)\"")
      (signal 'chatpipe-error
              (list (format "no backend version found in %s" dir)))))

;;;; Python and the venv

(defun chatpipe-install-default-venv ()
  "Return the default venv of the backend, an absolute directory name.
It is chatpipe/venv in the user's Emacs directory."
  (file-name-as-directory
   (expand-file-name (locate-user-emacs-file "chatpipe/venv"))))

(defun chatpipe-install--environment ()
  "Return `process-environment' for Python processes of an install.
Python and pip variables that would reach into other environments
are removed; output is unbuffered."
  (append '("PYTHONPATH" "PYTHONHOME" "VIRTUAL_ENV" "PIP_USER"
            "PYTHONUNBUFFERED=1" "PIP_DISABLE_PIP_VERSION_CHECK=1")
          process-environment))

(defun chatpipe-install--output (program &rest args)
  "Run PROGRAM with ARGS; return (EXIT-CODE . OUTPUT), or nil.
It runs in `chatpipe--process-directory', a Python isolated (see
`chatpipe--isolate').  OUTPUT is stdout and stderr together,
trimmed.  Return nil if PROGRAM cannot be run."
  (with-temp-buffer
    (let* ((process-environment (chatpipe-install--environment))
           (default-directory (chatpipe--process-directory))
           (argv (chatpipe--isolate (cons program args)))
           (code (condition-case nil
                     (apply #'call-process (car argv) nil t nil (cdr argv))
                   (file-error nil))))
      (and (integerp code) (cons code (string-trim (buffer-string)))))))

(defun chatpipe-install--check-python (program)
  "Signal `chatpipe-error' unless PROGRAM is Python 3.11 or newer.
PROGRAM is a file name or a name to look up in the variable
`exec-path'.  Return its absolute file name, expanded (\"~\" too)."
  (let* ((found (if (file-name-absolute-p program)
                    (and (file-executable-p program) (expand-file-name program))
                  (let ((file (let ((default-directory
                                     (chatpipe--process-directory)))
                                (executable-find program))))
                    (and file (expand-file-name file)))))
         (result (and found (chatpipe-install--output
                             found "-c" "import sys; print(sys.version_info[:2])")))
         (version (and result (eql (car result) 0)
                       (string-match "(\\([0-9]+\\), *\\([0-9]+\\))" (cdr result))
                       (list (string-to-number (match-string 1 (cdr result)))
                             (string-to-number (match-string 2 (cdr result))))))
         (needed (mapconcat #'number-to-string chatpipe-install-minimum-python ".")))
    (cond ((not found)
           (signal 'chatpipe-error
                   (list (format "Python `%s' was not found: the chatpipe backend \
needs Python %s or newer; install it or set `chatpipe-install-python'"
                                 program needed))))
          ((not version)
           (signal 'chatpipe-error
                   (list (format "`%s' did not say its version: %s" found
                                 (if result (cdr result) "it could not be run")))))
          ((version-list-< version chatpipe-install-minimum-python)
           (signal 'chatpipe-error
                   (list (format "`%s' is Python %d.%d: the chatpipe backend \
needs Python %s or newer; set `chatpipe-install-python' to a newer one"
                                 found (car version) (cadr version) needed)))))
    found))

(defun chatpipe-install-installed-version (venv)
  "Return the version of the chatpipe backend installed in VENV, or nil.
It is what VENV/bin/chatpipe --version says; nil if there is no
such program or it fails."
  (let* ((program (expand-file-name "bin/chatpipe" venv))
         (result (and (file-executable-p program)
                      (chatpipe-install--output program "--version"))))
    (and result (eql (car result) 0)
         (string-match "\\`chatpipe \\([^ \n]+\\)" (cdr result))
         (match-string 1 (cdr result)))))

;;;; The progress buffer

(define-derived-mode chatpipe-install-mode special-mode "Chatpipe-Install"
  "Major mode of the buffer that shows an install of the chatpipe backend.
The output of its commands is appended as it comes.")

(defun chatpipe-install--buffer ()
  "Return the progress buffer, made if needed."
  (or (get-buffer chatpipe-install-buffer-name)
      (with-current-buffer (get-buffer-create chatpipe-install-buffer-name)
        (chatpipe-install-mode)
        (current-buffer))))

(defun chatpipe-install--insert (&rest strings)
  "Append STRINGS to the progress buffer.
Windows that showed its end go on showing it."
  (with-current-buffer (chatpipe-install--buffer)
    (let* ((inhibit-read-only t)
           (end (point-max))
           (windows (cl-remove-if-not (lambda (w) (= (window-point w) end))
                                      (get-buffer-window-list nil nil t)))
           (follow (= (point) end)))
      (save-excursion
        (goto-char end)
        (apply #'insert strings))
      (when follow (goto-char (point-max)))
      (dolist (window windows) (set-window-point window (point-max))))))

(defun chatpipe-install--status (status)
  "Show STATUS, a string, in the progress buffer's mode line."
  (with-current-buffer (chatpipe-install--buffer)
    (setq mode-line-process (concat ":" status))
    (force-mode-line-update)))

;;;; Installing

(defun chatpipe-install--finish (venv error callback &optional installed)
  "End the install into VENV: ERROR is nil on success, else a string.
On success set `chatpipe-python-venv' to VENV, saved or not as
`chatpipe-install-save' says; INSTALLED non-nil means the backend
was installed or upgraded (not reused), so that the shared `chatpipe
serve' process, if any, is stopped.  Then call CALLBACK, if non-nil,
and `chatpipe-install-functions' with VENV and ERROR."
  (setq chatpipe-install--process nil)
  (if error
      (progn
        (chatpipe-install--insert "\nFailed: " error "\n")
        (chatpipe-install--status "failed")
        (message "Installing the chatpipe backend failed: %s" error))
    (let* ((value (abbreviate-file-name (directory-file-name venv)))
           (changed (not (and chatpipe-python-venv
                              (equal (directory-file-name
                                      (expand-file-name chatpipe-python-venv))
                                     (directory-file-name venv))))))
      (cond ((not changed))
            ((or (eq chatpipe-install-save t)
                 (and chatpipe-install-save
                      (y-or-n-p (format "Save `chatpipe-python-venv' as %s \
for future sessions? " value))))
             (condition-case err
                 (customize-save-variable 'chatpipe-python-venv value)
               (error
                (customize-set-variable 'chatpipe-python-venv value)
                (chatpipe-install--insert
                 (format "Could not save `chatpipe-python-venv' (%s): it is \
set for this session\n" (error-message-string err))))))
            (t (customize-set-variable 'chatpipe-python-venv value)))
      (when chatpipe-command
        (chatpipe-install--insert
         (format "Note: `chatpipe-command' is %S, which comes first: set it to \
nil to use this venv\n" chatpipe-command)))
      ;; The shared `chatpipe serve' process may be an older backend.
      (when (and (or changed installed) (fboundp 'chatpipe-serve-stop))
        (chatpipe-serve-stop))
      (chatpipe-install--status "done")))
  (when callback (funcall callback venv error))
  (run-hook-with-args 'chatpipe-install-functions venv error))

(defun chatpipe-install--run (steps venv version start callback)
  "Run the commands of an install into VENV, one after the other.
They are STEPS, a list of command lines (lists of strings), run
asynchronously in `chatpipe--process-directory', never the current
buffer's folder, a Python isolated (see `chatpipe--isolate').  When
they all succeed, check that VENV has the backend VERSION and
finish.  START is the `float-time' the install
started at; CALLBACK is passed to `chatpipe-install--finish'.
Return the process of the first step, or nil if there are none."
  (if (null steps)
      (let ((installed (chatpipe-install-installed-version venv)))
        (chatpipe-install--insert
         (format "\n%s/bin/chatpipe --version: %s (%.1f s)\n"
                 (directory-file-name venv) (or installed "none")
                 (- (float-time) start)))
        (if (equal installed version)
            (message "The chatpipe backend %s is installed in %s" version venv)
          (setq installed nil))
        (chatpipe-install--finish
         venv (unless installed
                (format "%sbin/chatpipe is not the backend %s" venv version))
         callback t)
        nil)
    (let ((argv (chatpipe--isolate (car steps)))
          (process-environment (chatpipe-install--environment))
          (default-directory (chatpipe--process-directory)))
      (chatpipe-install--insert "\n$ " (mapconcat #'shell-quote-argument argv " ")
                                "\n")
      (setq chatpipe-install--process
            (make-process
             :name "chatpipe-install" :command argv :noquery t
             :connection-type 'pipe :coding 'utf-8
             :filter (lambda (_process output) (chatpipe-install--insert output))
             :sentinel
             (lambda (process _event)
               (unless (process-live-p process)
                 (let ((code (process-exit-status process)))
                   (if (and (eq (process-status process) 'exit) (eql code 0))
                       (chatpipe-install--run (cdr steps) venv version start
                                              callback)
                     (chatpipe-install--finish
                      venv (chatpipe-install--failure argv code) callback))))))))))

(defun chatpipe-install--failure (argv code)
  "Return what to say when the command ARGV ended with the exit CODE."
  (format "`%s' failed (exit status %s)%s: see the buffer %s"
          (mapconcat #'identity argv " ") code
          (if (with-current-buffer (chatpipe-install--buffer)
                (save-excursion (goto-char (point-min))
                                (search-forward "ensurepip" nil t)))
              " (on Debian and Ubuntu, install python3-venv)"
            "")
          chatpipe-install-buffer-name))

;;;###autoload
(defun chatpipe-install-backend (&optional venv callback)
  "Install the chatpipe backend into the Python venv VENV.
VENV defaults to `chatpipe-install-default-venv' (chatpipe/venv in
the user's Emacs directory); interactively, with a prefix argument,
ask for it.  The backend is the one that ships with this package (see
`chatpipe-install-source-directory').

If VENV already has that version of the backend, use it as it is.
Else create VENV with `chatpipe-install-python' if it has no pip,
and install the backend with VENV/bin/pip, asynchronously, showing
the output in the buffer named by `chatpipe-install-buffer-name',
which each run empties first (it shows this run only).
At the end set `chatpipe-python-venv' to VENV (see
`chatpipe-install-save'), then call CALLBACK, if non-nil, and the
functions of `chatpipe-install-functions', with VENV and nil, or
with VENV and a string saying what went wrong.

Signal `chatpipe-error' at once if there is no backend next to this
package, or if Python is missing or older than 3.11.  Return the
process of the first command, or nil if VENV was reused."
  (interactive
   (list (and current-prefix-arg
              (read-directory-name "Install the chatpipe backend into venv: "
                                   nil (chatpipe-install-default-venv)))
         nil))
  (when (process-live-p chatpipe-install--process)
    (user-error "An install of the chatpipe backend is already running"))
  (let ((venv (file-name-as-directory
               (expand-file-name (or venv (chatpipe-install-default-venv))))))
    ;; The progress buffer shows this run only, from its start.
    (chatpipe-install--begin)
    (condition-case err
        (chatpipe-install--start venv callback)
      (chatpipe-error
       (chatpipe-install--insert "Failed: " (cadr err) "\n")
       (chatpipe-install--status "failed")
       (signal (car err) (cdr err))))))

(defun chatpipe-install--begin ()
  "Start a new run in the progress buffer: empty it, status \"run\".
What an earlier run wrote, its failure for one, goes away, so that
the buffer and its mode line always tell of the same run."
  (with-current-buffer (chatpipe-install--buffer)
    (let ((inhibit-read-only t)) (erase-buffer)))
  (chatpipe-install--status "run")
  (chatpipe-install--insert
   (format-time-string "chatpipe-install-backend, %F %T\n")))

(defun chatpipe-install--start (venv callback)
  "Install the backend into VENV, or reuse it; see `chatpipe-install-backend'.
VENV is an absolute directory name; CALLBACK is as for
`chatpipe-install-backend'.  Signal `chatpipe-error' before running
anything if there is no backend or no Python that can run it.
Return the process of the first command, or nil if VENV was reused."
  (let* ((source (or (chatpipe-install-source-directory)
                     (signal 'chatpipe-error
                             (list "the chatpipe backend (pyproject.toml, \
backend/) was not found next to chatpipe-install.el: install the package \
with its backend files (see its README), or install the backend with pip \
and set `chatpipe-python-venv'"))))
         (version (chatpipe-install-source-version source))
         (installed (chatpipe-install-installed-version venv))
         (start (float-time)))
    (if (equal installed version)
        (progn
          (chatpipe-install--insert
           (format "The chatpipe backend %s is installed in %s already: it \
is used as it is\n" version venv))
          (message "The chatpipe backend %s is installed in %s" version venv)
          (chatpipe-install--finish venv nil callback)
          nil)
      (let* ((venv-python (expand-file-name "bin/python" venv))
             (pip (expand-file-name "bin/pip" venv))
             ;; A venv whose Python is gone (the system's was upgraded)
             ;; is made anew.
             (broken (and (file-exists-p (expand-file-name "pyvenv.cfg" venv))
                          (not (file-executable-p venv-python))))
             (fresh (or broken (not (file-executable-p pip))))
             (python (chatpipe-install--check-python
                      (if fresh chatpipe-install-python venv-python))))
        (chatpipe-install--insert
         (format "%s the chatpipe backend %s from %s into %s\n"
                 (if installed (format "Upgrading (from %s)" installed)
                   "Installing")
                 version (directory-file-name source) venv))
        (display-buffer (chatpipe-install--buffer))
        (chatpipe-install--run
         (append (and fresh `((,python "-m" "venv" ,@(and broken '("--clear"))
                                       ,(directory-file-name venv))))
                 (list (list pip "install" (directory-file-name source))))
         venv version start callback)))))

(provide 'chatpipe-install)
;;; chatpipe-install.el ends here
