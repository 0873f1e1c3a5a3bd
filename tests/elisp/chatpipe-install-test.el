;;; chatpipe-install-test.el --- ERT tests: installing the package and its backend -*- lexical-binding: t; -*-

;;; Commentary:

;; `chatpipe-install-backend' with fake Pythons (fast: the steps, reuse,
;; upgrade, failure, saving the setting), and the whole story for real:
;; the package built from the working tree as MELPA would
;; (scripts/build-emacs-package, from recipes/chatpipe), installed with
;; `package-install-file' in a fresh `emacs --batch -Q' with only
;; package.el, the backend installed by `chatpipe-install-backend' in a
;; real venv with a real pip, and an answer streamed from the replay
;; server.  That one takes a minute; CHATPIPE_SKIP_INSTALL=1 skips it.

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)
(require 'chatpipe-install)

(defvar chatpipe-test-install--calls nil
  "The (VENV ERROR) of each call of the install callback, newest first.")

(defun chatpipe-test-install--callback (venv error)
  "Record the end of an install: VENV and ERROR."
  (push (list venv error) chatpipe-test-install--calls))

(defun chatpipe-test-install--source (version)
  "Make a fake backend tree of VERSION with an elisp/ folder; return it.
The variable `chatpipe-install--library-directory' should be bound
to its elisp/ folder."
  (let ((dir (make-temp-file "chatpipe-source" t)))
    (make-directory (expand-file-name "elisp" dir))
    (make-directory (expand-file-name "backend/chatpipe" dir) t)
    (with-temp-file (expand-file-name "pyproject.toml" dir)
      (insert "[project]\nname = \"chatpipe\"\nversion = \"0.0.0\"\n"))
    (chatpipe-test-install--set-version dir version)
    (file-name-as-directory dir)))

(defun chatpipe-test-install--set-version (dir version)
  "Make VERSION the version of the fake backend tree DIR."
  (with-temp-file (expand-file-name "backend/chatpipe/__init__.py" dir)
    (insert "\"\"\"Fake.\"\"\"\n\n__version__ = \"" version "\"\n")))

(defun chatpipe-test-install--fake-python ()
  "Write a fake python3 and pip; return the python's file name.
The python says it is $FAKE_PYTHON_VERSION (default 3.12); its `-m
venv [--clear] DIR' makes DIR/bin/python and DIR/bin/pip.  The pip's `install
DIR' writes a bin/chatpipe that says DIR's version, or fails when
FAKE_PIP_FAIL is set."
  (let ((pip (chatpipe-test--write-script
              "fake-pip"
              "#!/bin/sh
echo \"fake pip $*\"
if [ -n \"$FAKE_PIP_FAIL\" ]; then echo 'ERROR: no luck' >&2; exit 1; fi
v=$(sed -n 's/^__version__ = \"\\(.*\\)\"/\\1/p' \"$2/backend/chatpipe/__init__.py\")
printf '#!/bin/sh\\necho \"chatpipe %s\"\\n' \"$v\" > \"$(dirname \"$0\")/chatpipe\"
chmod +x \"$(dirname \"$0\")/chatpipe\"
echo \"Successfully installed chatpipe-$v\"
")))
    (chatpipe-test--write-script
     "fake-python"
     (format "#!/bin/sh
if [ \"$1\" = -I ]; then shift; fi
case \"$1\" in
  -c) echo \"${FAKE_PYTHON_VERSION:-(3, 12)}\" ;;
  -m) for d; do :; done
      mkdir -p \"$d/bin\" && cp \"$0\" \"$d/bin/python\" && cp %s \"$d/bin/pip\"
      echo \"fake venv $*\" ;;
  *) exit 2 ;;
esac
" (shell-quote-argument pip)))))

(defmacro chatpipe-test-install--with-fakes (spec &rest body)
  "Run BODY with a fake backend tree and a fake Python; SPEC is (SOURCE VENV).
SOURCE is bound to the tree (version 1.0.0), VENV to a venv folder
that does not exist yet.  The install settings are bound for the
session only, and the temporary folders deleted afterwards."
  (declare (indent 1) (debug ((symbolp symbolp) body)))
  `(let* ((,(car spec) (chatpipe-test-install--source "1.0.0"))
          (,(cadr spec) (expand-file-name "venv/" (make-temp-file "chatpipe-venv" t)))
          (chatpipe-install--library-directory
           (expand-file-name "elisp/" ,(car spec)))
          (chatpipe-install-python (chatpipe-test-install--fake-python))
          (chatpipe-install-save nil)
          (chatpipe-python-venv nil)
          (chatpipe-install-functions nil)
          (chatpipe-test-install--calls nil))
     (unwind-protect (progn ,@body)
       (delete-directory ,(car spec) t)
       (delete-directory (file-name-directory (directory-file-name ,(cadr spec))) t))))

(defun chatpipe-test-install--wait-calls (n)
  "Wait until the install callback was called N times; return the last call."
  (should (chatpipe-test--wait
           (lambda () (>= (length chatpipe-test-install--calls) n)) 30))
  (car chatpipe-test-install--calls))

(defun chatpipe-test-install--log ()
  "Return the text of the install's progress buffer."
  (with-current-buffer chatpipe-install-buffer-name (buffer-string)))

(ert-deftest chatpipe-test-install-source ()
  "The backend next to the elisp: a checkout's root, or the package's own folder."
  (let ((chatpipe-install--library-directory
         (expand-file-name "elisp/" chatpipe-test-root)))
    (should (file-equal-p (chatpipe-install-source-directory) chatpipe-test-root))
    (let ((version (chatpipe-install-source-version chatpipe-test-root)))
      (should (string-match-p "\\`[0-9]+\\.[0-9]+" version))
      ;; pyproject.toml and backend/chatpipe/__init__.py agree.
      (should (equal version (chatpipe-install--read-version
                              (expand-file-name "pyproject.toml" chatpipe-test-root)
                              "^version *= *\"\\([^\"]+\\)\"")))))
  ;; An installed package: pyproject.toml next to the .el files.
  (let* ((dir (chatpipe-test-install--source "2.0.0"))
         (chatpipe-install--library-directory dir))
    (unwind-protect
        (progn
          (should (file-equal-p (chatpipe-install-source-directory) dir))
          (should (equal (chatpipe-install-source-version dir) "2.0.0"))
          ;; A folder of links to the files (straight.el's build folder).
          (let ((links (make-temp-file "chatpipe-links" t)))
            (make-symbolic-link (expand-file-name "elisp/x.el" dir)
                                (expand-file-name "chatpipe-install.el" links))
            (let ((chatpipe-install--library-directory
                   (file-name-as-directory links)))
              (should (file-equal-p (chatpipe-install-source-directory) dir)))
            (delete-directory links t)))
      (delete-directory dir t)))
  ;; No backend anywhere above: a clear error, before anything runs.
  (let* ((dir (make-temp-file "chatpipe-nothing" t))
         (chatpipe-install--library-directory (file-name-as-directory dir)))
    (unwind-protect
        (progn
          (should-not (chatpipe-install-source-directory))
          (should (string-match-p "backend .*was not found"
                                  (cadr (should-error (chatpipe-install-backend
                                                       (expand-file-name "v" dir))
                                                      :type 'chatpipe-error)))))
      (delete-directory dir t))))

(ert-deftest chatpipe-test-install-python ()
  "Python is checked: missing, too old, new enough."
  (let ((python (chatpipe-test-install--fake-python))
        (process-environment (copy-sequence process-environment)))
    (should (string-match-p
             "Python `no-such-python3' was not found.*3\\.11 or newer.*chatpipe-install-python"
             (cadr (should-error (chatpipe-install--check-python "no-such-python3")
                                 :type 'chatpipe-error))))
    (setenv "FAKE_PYTHON_VERSION" "(3, 9)")
    (should (string-match-p "is Python 3\\.9: the chatpipe backend needs Python 3\\.11"
                            (cadr (should-error (chatpipe-install--check-python python)
                                                :type 'chatpipe-error))))
    (setenv "FAKE_PYTHON_VERSION" "(3, 11)")
    (should (equal (chatpipe-install--check-python python) python))
    ;; The real one (the tests' venv's) is new enough.
    (should (chatpipe-install--check-python chatpipe-test-python))
    ;; A fresh install with a Python too old signals before running anything.
    (setenv "FAKE_PYTHON_VERSION" "(3, 10)")
    (chatpipe-test-install--with-fakes (source venv)
      (should-error (chatpipe-install-backend venv #'chatpipe-test-install--callback)
                    :type 'chatpipe-error)
      (should-not (file-exists-p venv))
      (should-not chatpipe-test-install--calls))))

(ert-deftest chatpipe-test-install-steps ()
  "Install into a new venv, reuse it, upgrade it, fail, repair it."
  (chatpipe-test-install--with-fakes (source venv)
    (let ((chatpipe-command nil)
          (hooked nil))
      (add-hook 'chatpipe-install-functions (lambda (v e) (push (list v e) hooked)))
      ;; A new venv: python -m venv, then pip install SOURCE.
      (should (processp (chatpipe-install-backend
                         venv #'chatpipe-test-install--callback)))
      (should (equal (chatpipe-test-install--wait-calls 1) (list venv nil)))
      (should (equal hooked (list (list venv nil))))
      (let ((log (chatpipe-test-install--log)))
        (should (string-match-p "^Installing the chatpipe backend 1\\.0\\.0 from " log))
        (should (string-match-p (concat "-m venv " (regexp-quote (directory-file-name venv)))
                                log))
        (should (string-match-p (concat "^fake pip install "
                                        (regexp-quote (directory-file-name source)) "$")
                                log))
        (should (string-match-p "bin/chatpipe --version: 1\\.0\\.0" log)))
      (should (file-equal-p chatpipe-python-venv venv))
      (should (equal (chatpipe--command)
                     (list (expand-file-name "bin/chatpipe" venv))))
      ;; The same version: reused at once, nothing runs.
      (should-not (chatpipe-install-backend venv #'chatpipe-test-install--callback))
      (should (equal (length chatpipe-test-install--calls) 2))
      (should (equal (car chatpipe-test-install--calls) (list venv nil)))
      ;; Another version: pip upgrades the venv, which is not made again.
      (chatpipe-test-install--set-version source "1.1.0")
      (should (processp (chatpipe-install-backend
                         venv #'chatpipe-test-install--callback)))
      (should (equal (chatpipe-test-install--wait-calls 3) (list venv nil)))
      (let ((log (chatpipe-test-install--log)))
        (should (string-match-p "^Upgrading (from 1\\.0\\.0) the chatpipe backend 1\\.1\\.0"
                                log))
        (should-not (string-match-p "-m venv" log)))
      (should (equal (chatpipe-install-installed-version venv) "1.1.0"))
      ;; pip fails: the callback and the hook get the error; the
      ;; buffer has pip's output.
      (chatpipe-test-install--set-version source "1.2.0")
      (let ((process-environment (cons "FAKE_PIP_FAIL=1" process-environment)))
        (chatpipe-install-backend venv #'chatpipe-test-install--callback))
      (pcase-let ((`(,v ,error) (chatpipe-test-install--wait-calls 4)))
        (should (equal v venv))
        (should (string-match-p "pip install .*' failed (exit status 1)" error))
        (should (equal (car hooked) (list venv error))))
      (should (string-match-p "^ERROR: no luck$" (chatpipe-test-install--log)))
      (should (equal (chatpipe-install-installed-version venv) "1.1.0"))
      ;; A venv whose Python is gone is made anew.
      (delete-file (expand-file-name "bin/python" venv))
      (with-temp-file (expand-file-name "pyvenv.cfg" venv))
      (chatpipe-install-backend venv #'chatpipe-test-install--callback)
      (should (equal (chatpipe-test-install--wait-calls 5) (list venv nil)))
      (should (string-match-p "-m venv --clear " (chatpipe-test-install--log)))
      (should (equal (chatpipe-install-installed-version venv) "1.2.0")))))

(ert-deftest chatpipe-test-install-save ()
  "`chatpipe-install-save': saved with Customize, asked, or for the session."
  (chatpipe-test-install--with-fakes (source venv)
    (let* ((init (make-temp-file "chatpipe-init" nil ".el"))
           (user-init-file init)
           (custom-file init))
      (unwind-protect
          (progn
            ;; `ask', answered no: set for the session, not saved.
            (let ((chatpipe-install-save 'ask)
                  (asked nil))
              (cl-letf (((symbol-function 'y-or-n-p)
                         (lambda (prompt) (setq asked prompt) nil)))
                (chatpipe-install-backend venv #'chatpipe-test-install--callback)
                (chatpipe-test-install--wait-calls 1))
              (should (string-match-p "\\`Save `chatpipe-python-venv' as .*venv for \
future sessions\\? \\'" asked))
              (should (file-equal-p chatpipe-python-venv venv))
              (should (equal (with-temp-buffer (insert-file-contents init)
                                               (buffer-string))
                             "")))
            ;; t: saved in the custom file.
            (setq chatpipe-python-venv nil)
            (let ((chatpipe-install-save t))
              (should-not (chatpipe-install-backend
                           venv #'chatpipe-test-install--callback)))
            (should (file-equal-p chatpipe-python-venv venv))
            (should (string-match-p
                     (concat "'(chatpipe-python-venv \""
                             (regexp-quote (abbreviate-file-name
                                            (directory-file-name venv)))
                             "\")")
                     (with-temp-buffer (insert-file-contents init)
                                       (buffer-string)))))
        (put 'chatpipe-python-venv 'saved-value nil)
        (delete-file init)))))

;;;; Under the home folder, and a new run

(defmacro chatpipe-test-install--with-home (home &rest body)
  "Run BODY with HOME bound to a new temporary home folder.
The environment's HOME is that folder (so that `abbreviate-file-name'
gives \"~/...\" for the files under it, as for a user's), and so are
`temporary-file-directory' and `user-emacs-directory' (its .emacs.d)."
  (declare (indent 1) (debug (symbolp body)))
  `(let* ((,home (file-name-as-directory (make-temp-file "chatpipe-home" t)))
          (process-environment (cons (concat "HOME=" (directory-file-name ,home))
                                     process-environment))
          (abbreviated-home-dir nil)
          (temporary-file-directory ,home)
          (user-emacs-directory "~/.emacs.d/"))
     (unwind-protect (progn ,@body)
       (delete-directory ,home t))))

(ert-deftest chatpipe-test-install-home ()
  "Under the home folder, every file name reaches pip and python expanded.
`locate-dominating-file' gives \"~/...\" there, and pip takes
\"~/src\" for an invalid requirement: no shell expands it."
  (chatpipe-test-install--with-home home
    (chatpipe-test-install--with-fakes (source venv)
      (let ((chatpipe-command nil)
            (python (expand-file-name "python3" home))
            (default (expand-file-name ".emacs.d/chatpipe/venv/" home)))
        (copy-file chatpipe-install-python python)
        (set-file-modes python #o755)
        (setq chatpipe-install-python (abbreviate-file-name python))
        (should (string-prefix-p "~/" (abbreviate-file-name source)))
        ;; The default venv, ~/.emacs.d/chatpipe/venv.
        (should (processp (chatpipe-install-backend
                           nil #'chatpipe-test-install--callback)))
        (should (equal (chatpipe-test-install--wait-calls 1) (list default nil)))
        (let ((log (chatpipe-test-install--log)))
          (should (string-search (format "\n$ %s -I -m venv %s\n" python
                                         (directory-file-name default))
                                 log))
          (should (string-search (format "\nfake pip install %s\n"
                                         (directory-file-name source))
                                 log))
          (should-not (string-search "~" log)))
        (should (equal (chatpipe-install-source-directory) source))
        (should (equal (chatpipe-install-default-venv) default))
        (should (equal (chatpipe-install-installed-version default) "1.0.0"))
        (should (file-equal-p chatpipe-python-venv default))
        (should (equal (chatpipe--command)
                       (list (expand-file-name "bin/chatpipe" default))))))))

(ert-deftest chatpipe-test-install-buffer-new-run ()
  "The progress buffer shows the run going on, never an earlier one's failure."
  (chatpipe-test-install--with-fakes (source venv)
    (let ((chatpipe-command nil)
          (process-environment (copy-sequence process-environment)))
      (chatpipe-install-backend venv #'chatpipe-test-install--callback)
      (should (equal (chatpipe-test-install--wait-calls 1) (list venv nil)))
      ;; pip fails: the buffer says so, and its mode line.
      (chatpipe-test-install--set-version source "1.2.0")
      (setenv "FAKE_PIP_FAIL" "1")
      (chatpipe-install-backend venv #'chatpipe-test-install--callback)
      (should (cadr (chatpipe-test-install--wait-calls 2)))
      (should (string-match-p "^Failed: .*pip install" (chatpipe-test-install--log)))
      (should (equal (buffer-local-value 'mode-line-process
                                         (get-buffer chatpipe-install-buffer-name))
                     ":failed"))
      ;; The next run reuses the venv: done, and the failure is gone.
      (setenv "FAKE_PIP_FAIL")
      (chatpipe-test-install--set-version source "1.0.0")
      (should-not (chatpipe-install-backend venv #'chatpipe-test-install--callback))
      (should (equal (chatpipe-test-install--wait-calls 3) (list venv nil)))
      (let ((log (chatpipe-test-install--log)))
        (should (string-match-p (concat "\\`chatpipe-install-backend, .*\n\
The chatpipe backend 1\\.0\\.0 is installed in "
                                        (regexp-quote venv) " already")
                                log))
        (should-not (string-match-p "Failed\\|no luck\\|fake pip" log)))
      (should (equal (buffer-local-value 'mode-line-process
                                         (get-buffer chatpipe-install-buffer-name))
                     ":done"))
      ;; A run that stops before running anything says why, in the buffer.
      (delete-directory venv t)
      (setenv "FAKE_PYTHON_VERSION" "(3, 9)")
      (should-error (chatpipe-install-backend venv) :type 'chatpipe-error)
      (should (string-match-p "\\`chatpipe-install-backend, .*\nFailed: .* is Python 3\\.9"
                              (chatpipe-test-install--log)))
      (should (equal (buffer-local-value 'mode-line-process
                                         (get-buffer chatpipe-install-buffer-name))
                     ":failed")))))

;;;; The package, installed with package.el in a fresh Emacs

(defun chatpipe-test-install--script (file form)
  "Write FORM to FILE as an Emacs Lisp file with lexical binding."
  (with-temp-file file
    (insert ";; -*- lexical-binding: t -*-\n")
    (let ((print-length nil) (print-level nil) (print-escape-newlines t))
      (prin1 form (current-buffer)))
    (insert "\n")))

(defun chatpipe-test-install--sub-emacs-form (tar template question result)
  "Return the program of the fresh Emacs, whose HOME is a temporary folder.
Its package folder is ~/.emacs.d/elpa there, as a user's is (so that
the package's files are \"~/...\" to `abbreviate-file-name').  It
installs the package TAR with `package-install-file', its backend
with `chatpipe-install-backend', asks QUESTION in a chat of TEMPLATE
and writes what it saw to the file RESULT, as an alist; file names
in it are expanded."
  `(let ((out nil) (done nil) (start (float-time)))
     (condition-case err
         (progn
           (setq user-emacs-directory "~/.emacs.d/"
                 package-user-dir "~/.emacs.d/elpa"
                 package-archives nil
                 user-init-file "~/.emacs.d/init.el"
                 custom-file user-init-file
                 chatpipe-major-mode 'text-mode)
           (make-directory package-user-dir t)
           (require 'package)
           (package-initialize)
           (package-install-file ,tar)
           (push (cons 'package-seconds (- (float-time) start)) out)
           (push (cons 'library (expand-file-name (locate-library "chatpipe")))
                 out)
           (push (cons 'fboundp (fboundp 'chatpipe-install-backend)) out)
           (setq chatpipe-install-save nil start (float-time))
           (chatpipe-install-backend nil (lambda (venv error)
                                           (setq done (list venv error))))
           (while (and (not done) (< (- (float-time) start) 900))
             (accept-process-output nil 0.1))
           (push (cons 'install done) out)
           (push (cons 'source (chatpipe-install-source-directory)) out)
           (push (cons 'install-seconds (- (float-time) start)) out)
           (push (cons 'install-log (with-current-buffer chatpipe-install-buffer-name
                                      (buffer-string)))
                 out)
           (push (cons 'python-venv (and chatpipe-python-venv
                                         (expand-file-name chatpipe-python-venv)))
                 out)
           (push (cons 'command (chatpipe--command)) out)
           (setq done nil start (float-time))
           (push (cons 'reused (chatpipe-install-backend
                                nil (lambda (venv error) (setq done (list venv error)))))
                 out)
           (push (cons 'reuse (list done (- (float-time) start))) out)
           (with-current-buffer (chatpipe ,template)
             (goto-char (point-max))
             (insert ,question)
             (chatpipe-send)
             (setq start (float-time))
             (while (and chatpipe--job (< (- (float-time) start) 60))
               (accept-process-output nil 0.05))
             (push (cons 'chat (buffer-substring-no-properties (point-min) (point-max)))
                   out)
             (set-buffer-modified-p nil))
           (chatpipe-serve-stop))
       (error (push (cons 'error (error-message-string err)) out)))
     (with-temp-file ,result
       (let ((print-length nil) (print-level nil)) (prin1 out (current-buffer))))
     (kill-emacs (if (assq 'error out) 1 0))))

(ert-deftest chatpipe-test-install-package ()
  "The package, built as MELPA would, installs with package.el and works alone.
A fresh `emacs --batch -Q' with only package.el, its HOME a temporary
folder and its packages in ~/.emacs.d/elpa there, installs the tarball
with `package-install-file', the backend with `chatpipe-install-backend'
(a real venv and pip), and streams an answer from the replay server."
  :tags '(:install)
  (skip-unless (not (equal (getenv "CHATPIPE_SKIP_INSTALL") "1")))
  (load (expand-file-name "scripts/build-emacs-package" chatpipe-test-root) nil t)
  (let* ((tmp (make-temp-file "chatpipe-package" t))
         (tar (funcall 'chatpipe-build-package tmp))
         (template (chatpipe-test--template "/replay/openai-chat/text-with-usage.sse"))
         (result (expand-file-name "result.eld" tmp))
         (script (expand-file-name "install.el" tmp))
         (output (generate-new-buffer " *chatpipe package emacs*"))
         (start (float-time))
         (home (expand-file-name "home" tmp))
         (process-environment (append (list "EMACSLOADPATH" "EMACSDATA"
                                            (concat "HOME=" home))
                                      process-environment))
         emacs)
    (unwind-protect
        (progn
          (chatpipe-test--http "DELETE" "/requests")
          (make-directory home)
          (chatpipe-test-install--script
           script (chatpipe-test-install--sub-emacs-form
                   tar template chatpipe-test--question result))
          (setq emacs (make-process
                       :name "chatpipe-package-emacs" :buffer output :noquery t
                       :connection-type 'pipe
                       :command (list (expand-file-name invocation-name
                                                        invocation-directory)
                                      "--batch" "-Q" "-l" script)))
          (chatpipe-test--wait (lambda () (not (process-live-p emacs))) 1000)
          (let* ((out (and (file-exists-p result)
                           (with-temp-buffer (insert-file-contents result)
                                             (read (current-buffer)))))
                 (venv (file-name-as-directory
                        (expand-file-name ".emacs.d/chatpipe/venv" home))))
            (unless (and out (not (assq 'error out)))
              (ert-fail (list "the fresh Emacs failed" (alist-get 'error out)
                              (alist-get 'install-log out)
                              (with-current-buffer output (buffer-string)))))
            (message "Package installed in %.1f s, backend in %.1f s, \
reused in %.2f s; all in %.1f s"
                     (alist-get 'package-seconds out)
                     (alist-get 'install-seconds out)
                     (cadr (alist-get 'reuse out)) (- (float-time) start))
            ;; The package came from package.el's folder, not the checkout.
            (should (string-prefix-p (expand-file-name ".emacs.d/elpa/chatpipe-"
                                                       home)
                                     (alist-get 'library out)))
            ;; Its backend, given to pip expanded (pip takes "~/..." for
            ;; an invalid requirement).
            (should (equal (alist-get 'source out)
                           (file-name-directory (alist-get 'library out))))
            (should (alist-get 'fboundp out))
            ;; The backend: installed, set, found; then reused.
            (should (equal (alist-get 'install out) (list venv nil)))
            (should (string-match-p "Successfully installed .*chatpipe-"
                                    (alist-get 'install-log out)))
            (should (file-equal-p (alist-get 'python-venv out) venv))
            (should (equal (alist-get 'command out)
                           (list (expand-file-name "bin/chatpipe" venv))))
            (should (equal (alist-get 'reused out) nil))
            (should (equal (car (alist-get 'reuse out)) (list venv nil)))
            ;; The answer streamed from the replay server.
            (should (equal (alist-get 'chat out)
                           (chatpipe-test--chat-text
                            (cons 'user chatpipe-test--question)
                            (cons 'assistant (chatpipe-test--expected
                                              "openai-chat/text-with-usage.sse")))))
            (should (equal (mapcar #'chatpipe-test--request-messages
                                   (chatpipe-test--requests))
                           (list (list (cons "user" chatpipe-test--question)))))))
      (when (process-live-p emacs) (delete-process emacs))
      (kill-buffer output)
      (delete-directory tmp t))))

(provide 'chatpipe-install-test)
;;; chatpipe-install-test.el ends here
