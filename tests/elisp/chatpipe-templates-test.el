;;; chatpipe-templates-test.el --- ERT tests: templates and API keys -*- lexical-binding: t; -*-

;;; Commentary:

;; Templates as the backend lists them, editing them, and the API
;; keys they need, from the environment or auth-source.

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)

(ert-deftest chatpipe-test-templates ()
  "Templates are listed by the backend and selected per buffer."
  (let* ((template (chatpipe-test--template "/error/500"))
         (names (mapcar (lambda (e) (plist-get e :name)) (chatpipe-templates))))
    (should (member "local" names))
    (should (member "openai" names))
    (should (member template names))
    (chatpipe-test--with-chat (buffer "local")
      (should (equal (chatpipe-select-template template) template))
      (should (equal chatpipe-template template))
      (should (string-match-p (concat "\\`chatpipe " template)
                              (chatpipe-header-line)))
      (chatpipe-set-model "other-model")
      (should (string-search "[other-model]" (chatpipe-header-line)))
      (chatpipe-test--http "DELETE" "/requests")
      (chatpipe-test--ask "Hi")
      (chatpipe-test--wait-idle buffer)
      (should (equal (alist-get 'model (alist-get 'body
                                                  (car (chatpipe-test--requests))))
                     "other-model")))))

(ert-deftest chatpipe-test-edit-template-broken-json ()
  "Editing a bundled template copies it; broken JSON is shown at its line."
  (let* ((copy (expand-file-name "local.json" chatpipe-test-template-dir))
         (bundled (expand-file-name "request-templates/local.json"
                                    chatpipe-test-root))
         (buffer (chatpipe-edit-template "local")))
    (unwind-protect
        (with-current-buffer buffer
          (should (equal buffer-file-name copy))
          (should chatpipe-template-mode)
          (should (equal (buffer-string)
                         (with-temp-buffer (insert-file-contents bundled)
                                           (buffer-string))))
          (goto-char (point-min))
          (search-forward "\"stream\": true,")
          (let ((line (line-number-at-pos)))
            (insert ",")
            (save-buffer)
            ;; Saving made Emacs forget what the backend said; it now
            ;; says that the file is broken.
            (should-not chatpipe--catalog)
            (should (string-search "invalid JSON"
                                   (plist-get (chatpipe-template-info "local")
                                              :error)))
            (should (equal chatpipe-template-errors
                           `((,line 18 "invalid JSON: Expecting property name \
enclosed in double quotes"))))
            (let ((overlays (cl-remove-if-not
                             (lambda (ov) (overlay-get ov 'chatpipe-template-error))
                             (overlays-in (point-min) (point-max)))))
              (should (= 1 (length overlays)))
              (should (= line (line-number-at-pos
                               (overlay-start (car overlays))))))
            (should (string-search (format "local.json:%d:18: invalid JSON" line)
                                   (with-current-buffer "*Messages*"
                                     (buffer-string)))))
          (delete-char -1)
          (save-buffer)
          (should (equal (plist-get (chatpipe-template-info "local") :source)
                         "user"))
          (should-not (plist-get (chatpipe-template-info "local") :error))
          (should (null chatpipe-template-errors))
          (should-not (cl-some (lambda (ov) (overlay-get ov 'chatpipe-template-error))
                               (overlays-in (point-min) (point-max)))))
      (kill-buffer buffer)
      (delete-file copy))))

(defun chatpipe-test--last-header (name)
  "Return the header NAME, a symbol, of the replay server's last request."
  (alist-get name (alist-get 'headers (car (last (chatpipe-test--requests))))))

(defun chatpipe-test--rewrite (file from to)
  "Replace FROM with TO in FILE, writing it in place."
  (with-temp-buffer
    (insert-file-contents file)
    (goto-char (point-min))
    (should (search-forward from nil t))
    (replace-match to t t)
    (write-region nil nil file nil 'silent)))

(defun chatpipe-test--count-calls (function thunk)
  "Call THUNK; return how many times FUNCTION was called meanwhile."
  (let* ((calls 0)
         (count (lambda (&rest _) (cl-incf calls))))
    (advice-add function :before count)
    (unwind-protect (funcall thunk)
      (advice-remove function count))
    calls))

(ert-deftest chatpipe-test-template-env-follows-file ()
  "A template rewritten on disk to need another key: Emacs passes that one.
The backend is asked once, and again only when a file changed; the
serve process goes on."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((template (chatpipe-test--template
                    "/replay/openai-chat/text-with-usage.sse"
                    '((X-Key . "${env:CHATPIPE_KEY_A}"))))
         (file (expand-file-name (concat template ".json")
                                 chatpipe-test-template-dir))
         ;; Started before the keys are set: they can only come with
         ;; the requests.
         (proc (chatpipe-serve-process))
         (process-environment (append '("CHATPIPE_KEY_A=key-a"
                                        "CHATPIPE_KEY_B=key-b")
                                      process-environment)))
    (should (equal (chatpipe-template-env template)
                   '(("CHATPIPE_KEY_A" . "key-a"))))
    (let ((info (chatpipe-template-info template)))
      (should (equal (plist-get info :source) "user"))
      (should (equal (plist-get info :path) file))
      (should (equal (plist-get info :host) "127.0.0.1")))
    ;; Nothing changed: no backend runs.
    (should (= 0 (chatpipe-test--count-calls
                  'chatpipe-call
                  (lambda () (chatpipe-template-env template)))))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--ask "Hi")
      (chatpipe-test--wait-idle buffer)
      (should (string-suffix-p "weather app.\n\n### User\n\n" (buffer-string))))
    (should (equal (chatpipe-test--last-header 'X-Key) "key-a"))
    ;; The file now needs CHATPIPE_KEY_B instead.
    (chatpipe-test--rewrite file "CHATPIPE_KEY_A" "CHATPIPE_KEY_B")
    (should (= 1 (chatpipe-test--count-calls
                  'chatpipe-call
                  (lambda ()
                    (should (equal (chatpipe-template-env template)
                                   '(("CHATPIPE_KEY_B" . "key-b"))))))))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--ask "Hi")
      (chatpipe-test--wait-idle buffer)
      (should (string-suffix-p "weather app.\n\n### User\n\n" (buffer-string))))
    (should (equal (chatpipe-test--last-header 'X-Key) "key-b"))
    (should (eq (chatpipe-serve-process) proc))
    ;; A new file in the user's folder is seen too.
    (let ((new (chatpipe-test--template "/error/500")))
      (should (equal (plist-get (chatpipe-template-info new) :source)
                     "user")))))

(ert-deftest chatpipe-test-template-as-file ()
  "A template given as a relative file name: the backend describes it."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((dir (file-name-as-directory
               (make-temp-file (expand-file-name "chat" chatpipe-test-tmp) t)))
         (file (expand-file-name "my.json" dir))
         (default-directory dir)
         (process-environment (cons "CHATPIPE_KEY_C=key-c"
                                    process-environment)))
    (copy-file (expand-file-name
                (concat (chatpipe-test--template
                         "/replay/openai-chat/text-with-usage.sse"
                         '((X-Key . "${env:CHATPIPE_KEY_C}")))
                        ".json")
                chatpipe-test-template-dir)
               file)
    (let ((info (chatpipe-template-info "my.json")))
      (should (equal (plist-get info :source) "file"))
      (should (equal (plist-get info :path) file))
      (should (equal (plist-get info :env) '("CHATPIPE_KEY_C"))))
    (should (= 0 (chatpipe-test--count-calls
                  'chatpipe-call
                  (lambda () (chatpipe-template-info "my.json")))))
    (should-not (chatpipe-template-info "nothing-here.json"))
    (dolist (mode '(serve send))
      (let ((chatpipe-backend-mode mode))
        (with-temp-buffer
          (setq default-directory dir)
          (insert "### User\n\nHi\n")
          (setq chatpipe-template "my.json")
          (chatpipe-send)
          (chatpipe-test--wait-idle (current-buffer))
          (should (string-suffix-p "weather app.\n\n### User\n\n"
                                   (buffer-string)))))
      (should (equal (chatpipe-test--last-header 'X-Key) "key-c")))
    ;; A broken file: an entry with the error.
    (chatpipe-test--rewrite file "{" "[")
    (should (string-match-p "my\\.json:[0-9]+:[0-9]+: invalid JSON"
                            (plist-get (chatpipe-template-info "my.json")
                                       :error)))))

(ert-deftest chatpipe-test-home-file-names ()
  "File names under the home folder reach the backend's processes expanded.
The command (\"/bin/sh\" \"~/chatpipe-wrapper\"), a template given as
\"~/chat.json\", a `default-directory' of \"~/\": no shell expands
the ~ for a process, so Emacs must."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((home (file-name-as-directory (make-temp-file "chatpipe-home" t)))
         (process-environment (cons (concat "HOME=" (directory-file-name home))
                                    process-environment))
         (abbreviated-home-dir nil)
         (chatpipe-command '("/bin/sh" "~/chatpipe-wrapper"))
         (log-file (expand-file-name "argv" home)))
    (unwind-protect
        (progn
          (with-temp-file (expand-file-name "chatpipe-wrapper" home)
            (insert (format "echo \"$@\" >> %s\nexec %s \"$@\"\n"
                            (shell-quote-argument log-file)
                            (shell-quote-argument chatpipe-test-command))))
          (copy-file (expand-file-name
                      (concat (chatpipe-test--template
                               "/replay/openai-chat/text-with-usage.sse")
                              ".json")
                      chatpipe-test-template-dir)
                     (expand-file-name "chat.json" home))
          (should (equal (chatpipe--command)
                         (list "/bin/sh" (expand-file-name "chatpipe-wrapper" home))))
          (dolist (mode '(serve send))
            (let ((chatpipe-backend-mode mode))
              (with-temp-buffer
                (setq default-directory "~/")
                (insert "### User\n\nHi\n")
                (setq chatpipe-template "~/chat.json")
                (chatpipe-send)
                (chatpipe-test--wait-idle (current-buffer))
                (should (string-suffix-p "weather app.\n\n### User\n\n"
                                         (buffer-string))))))
          (should (= 2 (length (chatpipe-test--requests))))
          (let ((argv (with-temp-buffer
                        (insert-file-contents log-file)
                        (buffer-string))))
            (should (string-search (concat "templates info "
                                           (expand-file-name "chat.json" home))
                                   argv))
            (should (string-search "send --output ndjson --request -" argv))
            (should-not (string-search "~" argv))))
      (chatpipe-serve-stop)
      (chatpipe-templates-refresh)
      (delete-directory home t))))

(defun chatpipe-test--authorization ()
  "Return the Authorization header of the last request of the replay server."
  (alist-get 'Authorization
             (alist-get 'headers (car (last (chatpipe-test--requests))))))

(defun chatpipe-test--api-key (mode)
  "Check API keys with `chatpipe-backend-mode' MODE.
A key missing from the environment is read from auth-source; a key
set in `process-environment' after the backend started is used
too.  Neither is ever on a command line."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((secret "sk-test-0123456789secret")
         (authinfo (expand-file-name "authinfo" chatpipe-test-tmp))
         (template (chatpipe-test--template
                    "/replay/openai-chat/text-with-usage.sse"
                    '((Authorization . "Bearer ${env:CHATPIPE_TEST_KEY}"))))
         (auth-source-do-cache nil)
         (chatpipe-backend-mode mode))
    (should-not (getenv "CHATPIPE_TEST_KEY"))
    ;; Without a key anywhere: the backend's error, nothing lost.
    (let ((auth-sources nil))
      (chatpipe-test--with-chat (buffer template)
        (chatpipe-test--ask "Hi")
        (chatpipe-test--wait-idle buffer)
        (should (string-search "[error: CHATPIPE_TEST_KEY is not set (template "
                               (buffer-string)))
        (should (string-prefix-p "### User\n\nHi\n\n" (buffer-string)))))
    (with-temp-file authinfo
      (insert "machine 127.0.0.1 login apikey password " secret "\n"))
    (let ((auth-sources (list authinfo)))
      (chatpipe-test--with-chat (buffer template)
        (let ((proc (chatpipe-stream-process
                     (chatpipe--job-stream (chatpipe-test--ask "Hi")))))
          (should-not (cl-some (lambda (arg) (string-search secret arg))
                               (process-command proc)))
          (when (eq mode 'serve)
            ;; The serve process got it in the request, not in its
            ;; environment or on its command line.
            (dolist (file '("environ" "cmdline"))
              (should-not (string-search
                           secret
                           (with-temp-buffer
                             (insert-file-contents-literally
                              (format "/proc/%d/%s" (process-id proc) file))
                             (buffer-string))))))
          (chatpipe-test--wait-idle buffer)
          (should (string-suffix-p "weather app.\n\n### User\n\n"
                                   (buffer-string)))
          (should-not (string-search secret (buffer-string))))))
    (should-not (getenv "CHATPIPE_TEST_KEY"))
    (should (equal (chatpipe-test--authorization) (concat "Bearer " secret)))
    ;; A key in `process-environment' wins over auth-source.
    (let ((auth-sources (list authinfo))
          (process-environment (cons "CHATPIPE_TEST_KEY=sk-from-env"
                                     process-environment)))
      (chatpipe-test--with-chat (buffer template)
        (chatpipe-test--ask "Hi")
        (chatpipe-test--wait-idle buffer)
        (should (string-suffix-p "weather app.\n\n### User\n\n"
                                 (buffer-string)))))
    (should (equal (chatpipe-test--authorization) "Bearer sk-from-env"))))

(ert-deftest chatpipe-test-api-key-from-auth-source ()
  "Keys go to the serve process in each request, never on a command line."
  (chatpipe-test--api-key 'serve))

(ert-deftest chatpipe-test-api-key-from-auth-source-send ()
  "Keys go to a send process in its environment, never on a command line."
  (chatpipe-test--api-key 'send))

(provide 'chatpipe-templates-test)
;;; chatpipe-templates-test.el ends here
