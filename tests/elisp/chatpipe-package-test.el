;;; chatpipe-package-test.el --- ERT tests: package checks and the real local model -*- lexical-binding: t; -*-

;;; Commentary:

;; Byte-compilation, checkdoc and package-lint of the package's files,
;; and an answer from the real local llama.cpp server.

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)

;; From checkdoc and package-lint, loaded by the tests that use them.
(defvar checkdoc-create-error-function)
(defvar checkdoc-autofix-flag)
(defvar package-lint-main-file)
(declare-function checkdoc-current-buffer "checkdoc")
(declare-function package-lint-buffer "package-lint")

(defconst chatpipe-test-files
  '("chatpipe-modeltext.el" "chatpipe-org-stream.el" "chatpipe-org.el" "chatpipe-backend.el"
    "chatpipe-events.el" "chatpipe-process.el" "chatpipe-headings.el"
    "chatpipe-toolblocks.el" "chatpipe-media-links.el" "chatpipe-turns.el"
    "chatpipe-media.el" "chatpipe-fold.el"
    "chatpipe-reasoning.el" "chatpipe-filedata.el"
    "chatpipe-chat-settings.el" "chatpipe-context-items.el" "chatpipe-context.el"
    "chatpipe-header.el" "chatpipe-usage.el" "chatpipe-hints.el" "chatpipe-prestart.el"
    "chatpipe-insert.el" "chatpipe-tool-ask.el" "chatpipe-tools.el" "chatpipe-chat.el"
    "chatpipe-install.el"
    "chatpipe-templates.el" "chatpipe-models.el" "chatpipe-state.el"
    "chatpipe-rewrite-input.el" "chatpipe-rewrite.el" "chatpipe-rewrite-review.el"
    "chatpipe-settings.el" "chatpipe.el")
  "The package's files, in dependency order.")

(ert-deftest chatpipe-test-files-listed ()
  "The package's files are all in `chatpipe-test-files', none too long."
  (should (equal (sort (copy-sequence chatpipe-test-files) #'string<)
                 (directory-files (expand-file-name "elisp" chatpipe-test-root)
                                  nil "\\.el\\'")))
  (dolist (file (append (mapcar #'chatpipe-test--source chatpipe-test-files)
                        (directory-files (expand-file-name "tests/elisp"
                                                           chatpipe-test-root)
                                         t "\\.el\\'")))
    (with-temp-buffer
      (insert-file-contents file)
      (should (<= (count-lines (point-min) (point-max)) 500)))))

(defun chatpipe-test--source (file)
  "Return the source file name of FILE in elisp/."
  (expand-file-name (concat "elisp/" file) chatpipe-test-root))

(ert-deftest chatpipe-test-byte-compile ()
  "Each file byte-compiles with no warnings."
  (let* ((dir (make-temp-file "chatpipe-compile" t))
         (load-path (cons dir load-path))
         (byte-compile-error-on-warn t))
    (unwind-protect
        (dolist (file chatpipe-test-files)
          (copy-file (chatpipe-test--source file) (expand-file-name file dir))
          (should (byte-compile-file (expand-file-name file dir))))
      (delete-directory dir t))))

(ert-deftest chatpipe-test-checkdoc ()
  "Each file is checkdoc clean."
  (require 'checkdoc)
  (dolist (file chatpipe-test-files)
    (let* ((problems nil)
           (checkdoc-create-error-function
            (lambda (text start _end &optional _unfixable)
              (push (format "%s:%d: %s" file
                            (if start (line-number-at-pos start) 0) text)
                    problems)
              nil))
           (checkdoc-autofix-flag 'never))
      (with-temp-buffer
        (insert-file-contents (chatpipe-test--source file) t)
        (emacs-lisp-mode)
        (checkdoc-current-buffer t))
      (should (equal (nreverse problems) nil)))))

(ert-deftest chatpipe-test-package-lint ()
  "The main file is package-lint clean."
  (let ((dir (or (getenv "PACKAGE_LINT_DIR")
                 (car (last (file-expand-wildcards
                             "/usr/share/emacs/site-lisp/elpa-src/package-lint-[0-9]*"))))))
    (should dir)
    (add-to-list 'load-path dir)
    (require 'package-lint)
    (with-temp-buffer
      (insert-file-contents (chatpipe-test--source "chatpipe.el") t)
      (emacs-lisp-mode)
      (let ((package-lint-main-file (chatpipe-test--source "chatpipe.el")))
        (should (equal (cl-remove-if
                        ;; package-lint 0.16 (Debian's) predates Emacs 28.1,
                        ;; which this package needs and which is released.
                        (lambda (problem)
                          (string-prefix-p "This makes the package \
uninstallable in all released Emacs versions" (nth 3 problem)))
                        (package-lint-buffer))
                       nil))))))

;;;; The real local model

(defun chatpipe-test--local-template (url)
  "Write a copy of the bundled `local' template for URL; return its name."
  (let ((doc (json-parse-string
              (with-temp-buffer
                (insert-file-contents (expand-file-name
                                       "request-templates/local.json"
                                       chatpipe-test-root))
                (buffer-string))))
        (name (format "local%d" (cl-incf chatpipe-test--counter))))
    (puthash "url" url (gethash "chatpipe" doc))
    (with-temp-file (expand-file-name (concat name ".json")
                                      chatpipe-test-template-dir)
      (insert (json-serialize doc)))
    name))

(ert-deftest chatpipe-test-local-llama ()
  "A streamed answer from the real local llama.cpp server."
  :tags '(:llama)
  (skip-unless (not (equal (getenv "CHATPIPE_SKIP_LLAMA") "1")))
  (let* ((script (expand-file-name "scripts/local-server" chatpipe-test-root))
         (output (generate-new-buffer " *local-server*"))
         (server (make-process :name "local-server" :buffer output
                               :command (list script "serve" "--port" "0")
                               :connection-type 'pipe :noquery t
                               :stderr (get-buffer-create
                                        " *local-server stderr*")))
         url)
    (unwind-protect
        (progn
          (should (chatpipe-test--wait
                   (lambda ()
                     (or (not (process-live-p server))
                         (with-current-buffer output
                           (string-match "^ready \\(http://[^\n]+\\)\n"
                                         (buffer-string)))))
                   300))
          (setq url (with-current-buffer output
                      (and (string-match "^ready \\(http://[^\n]+\\)\n"
                                         (buffer-string))
                           (match-string 1 (buffer-string)))))
          (unless url
            (ert-fail (list "local-server did not start"
                            (with-current-buffer " *local-server stderr*"
                              (buffer-string)))))
          (let ((template (chatpipe-test--local-template
                           (concat url "/v1/chat/completions"))))
            (chatpipe-test--with-chat (buffer template)
              (chatpipe-test--ask "Say hello in one short sentence.")
              (chatpipe-test--wait-idle buffer 300)
              (should (string-match
                       "\\`### User\n\nSay hello in one short sentence.\n\n\
### Assistant\n\n\\(\\(?:.\\|\n\\)+\\)\n\n### User\n\n\\'"
                       (buffer-string)))
              (let ((answer (match-string 1 (buffer-string))))
                (message "The local model answered: %S" answer)
                (should (string-match-p "[[:alpha:]]" answer)))
              ;; llama-cpp-python's server may not send usage; a long
              ;; answer may end at the template's max_tokens, and says so.
              (should (string-match-p
                       "\\`\\(?:done\\|truncated at the token limit\\): \
\\([1-9][0-9]* in\\(?: ([0-9]+ cached)\\)?, [1-9][0-9]* out, \\)?[0-9.]+ s\\'"
                       chatpipe--status)))))
      (when (process-live-p server)
        (signal-process server 'SIGTERM)
        (chatpipe-test--wait (lambda () (not (process-live-p server))) 20))
      (when (process-live-p server) (delete-process server)))))

(provide 'chatpipe-package-test)
;;; chatpipe-package-test.el ends here
