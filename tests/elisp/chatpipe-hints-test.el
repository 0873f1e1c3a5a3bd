;;; chatpipe-hints-test.el --- ERT tests: error hints, truncated and empty answers -*- lexical-binding: t; -*-

;;; Commentary:

;; Errors that say what to do in Emacs: a missing API key, a missing
;; backend, a local server that is not running, a template without a
;; model.  Answers cut at the token limit, empty or interrupted never
;; look like normal ones.

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)

(defun chatpipe-test--closed-port ()
  "Return a port on 127.0.0.1 where nothing listens."
  (let* ((server (make-network-process :name "chatpipe-test-port" :server t
                                       :host "127.0.0.1" :service t
                                       :noquery t))
         (port (process-contact server :service)))
    (delete-process server)
    port))

(defun chatpipe-test--local-like-template (port)
  "Write a copy of the bundled `local' template for PORT; return its name.
It does not retry."
  (let ((name (chatpipe-test--bundled-template "local" "/v1/chat/completions")))
    (chatpipe-test--rewrite-template
     name (lambda (doc)
            (puthash "url" (format "http://127.0.0.1:%d/v1/chat/completions"
                                   port)
                     (gethash "chatpipe" doc))))
    name))

(defun chatpipe-test--rewrite-template (name change)
  "Call CHANGE with the parsed test template NAME, then write it back."
  (let* ((file (expand-file-name (concat name ".json")
                                 chatpipe-test-template-dir))
         (doc (json-parse-string (chatpipe-test--file-contents file))))
    (funcall change doc)
    (with-temp-file file (insert (json-serialize doc)))))

(defun chatpipe-test--file-contents (file)
  "Return the text of FILE."
  (with-temp-buffer (insert-file-contents file) (buffer-string)))

(defun chatpipe-test--error-note (template)
  "Ask \"Hi\" in a chat of TEMPLATE; return the answer's error note.
Check that the status says the same."
  (chatpipe-test--with-chat (buffer template)
    (chatpipe-test--ask "Hi")
    (chatpipe-test--wait-idle buffer)
    (should (string-match "\\`### User\n\nHi\n\n### Assistant\n\n\\[error: \
\\(.*\\)\\]\n\n### User\n\n\\'" (buffer-string)))
    (let ((note (match-string 1 (buffer-string))))
      (should (equal chatpipe--status (concat "error: " note)))
      (should (equal (chatpipe-messages) '(("user" . "Hi"))))
      note)))

(ert-deftest chatpipe-test-hint-missing-key ()
  "A missing API key: add it to auth-source or set the variable."
  (let ((template (chatpipe-test--template
                   "/replay/openai-chat/text-with-usage.sse"
                   '((Authorization . "Bearer ${env:CHATPIPE_HINT_KEY}"))))
        (auth-sources nil))
    (should-not (getenv "CHATPIPE_HINT_KEY"))
    (should (equal (chatpipe-test--error-note template)
                   (format "CHATPIPE_HINT_KEY is not set (template %s needs \
it): add the key to auth-source (a line \"machine 127.0.0.1 login apikey \
password YOUR-KEY\" in ~/.authinfo.gpg) or set the variable: (setenv \
\"CHATPIPE_HINT_KEY\" \"...\")" template)))))

(ert-deftest chatpipe-test-hint-missing-backend ()
  "A missing backend: how to install it from Emacs."
  (let* ((venv (make-temp-file (expand-file-name "venv" chatpipe-test-tmp) t))
         (chatpipe-command nil)
         (chatpipe-python-venv venv)
         (program (expand-file-name "bin/chatpipe" venv))
         (venv-hint "set `chatpipe-python-venv' to a venv with chatpipe \
installed (python3 -m venv DIR && DIR/bin/pip install /path/to/chatpipe)"))
    (chatpipe-test--with-chat (buffer "local")
      (insert "Hi")
      ;; Without `chatpipe-install-backend' (not loaded, or older).
      (cl-letf (((symbol-function 'chatpipe-install-backend) nil))
        (let ((err (should-error (chatpipe-send)
                                 :type 'chatpipe-backend-missing)))
          (should (equal (cadr err)
                         (format "the chatpipe backend `%s' was not found: %s"
                                 program venv-hint))))
        (should (string-prefix-p "error: the chatpipe backend `"
                                 chatpipe--status))
        (should (equal (buffer-string) "### User\n\nHi"))
        ;; With `chatpipe-command' set, the hint says so.
        (let* ((chatpipe-command "/nonexistent/bin/chatpipe")
               (err (should-error (chatpipe-send)
                                  :type 'chatpipe-backend-missing)))
          (should (string-search "set `chatpipe-command' to the chatpipe \
program, or set it to nil and set `chatpipe-python-venv'" (cadr err)))))
      ;; When the package can install it, the hint says how.
      (cl-letf (((symbol-function 'chatpipe-install-backend) #'ignore))
        (let ((err (should-error (chatpipe-send)
                                 :type 'chatpipe-backend-missing)))
          (should (string-suffix-p ": M-x chatpipe-install-backend installs it"
                                   (cadr err)))))
      (should (chatpipe-test--idle-p buffer)))))

(ert-deftest chatpipe-test-hint-local-server ()
  "A refused connection to the local model's server: how to start it.
Another server: is it running?"
  (let* ((port (chatpipe-test--closed-port))
         (local (chatpipe-test--local-like-template port))
         (other (chatpipe-test--template
                 "/v1/chat/completions" nil
                 (format "http://127.0.0.1:%d/v1/chat/completions" port))))
    (should (equal (chatpipe-test--error-note local)
                   (format "cannot connect to 127.0.0.1:%d: the local model \
server is not running; start it with \"scripts/local-server serve --port %d\" \
in the chatpipe checkout" port port)))
    (should (equal (chatpipe-test--error-note other)
                   (format "cannot connect to 127.0.0.1:%d: is the server \
running, and is the template's URL right? (M-x chatpipe-edit-template)"
                           port)))))

(ert-deftest chatpipe-test-hint-model-placeholder ()
  "A template without a model: M-x chatpipe-set-model; then it works."
  (chatpipe-test--http "DELETE" "/requests")
  (let ((template (chatpipe-test--bundled-template
                   "vllm" "/replay/openai-chat/text-with-usage.sse")))
    (should (equal (chatpipe-test--error-note template)
                   (format "template %s names no model: choose one with M-x \
chatpipe-set-model" template)))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-set-model "my-model")
      (chatpipe-test--ask "Hi")
      (chatpipe-test--wait-idle buffer)
      (should (string-prefix-p "done: " chatpipe--status)))
    (should (equal (alist-get 'model (alist-get 'body (car (last (chatpipe-test--requests)))))
                   "my-model"))))

(ert-deftest chatpipe-test-truncated-answer ()
  "An answer cut at the token limit says so, in the buffer and the header."
  (let ((template (chatpipe-test--template
                   "/replay/openai-chat/finish-length.sse"))
        (text (chatpipe-test--expected "openai-chat/finish-length.sse")))
    (should (equal text "{\""))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--ask "JSON please")
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text
                      '(user . "JSON please")
                      (cons 'assistant (concat text "\n\n[truncated: the token \
limit was reached]")))))
      (should (string-match-p "\\`truncated at the token limit: 79 in, 1 out, \
[0-9.]+ s\\'" chatpipe--status))
      (should (string-search "| truncated at the token limit"
                             (substring-no-properties (chatpipe-header-line))))
      ;; The note is not sent back.
      (should (equal (chatpipe-messages)
                     `(("user" . "JSON please") ("assistant" . ,text))))
      ;; One undo removes the answer and its note.
      (undo-boundary)
      (let ((last-command nil)) (undo))
      (should (equal (buffer-string) "### User\n\nJSON please")))))

(ert-deftest chatpipe-test-empty-answer ()
  "An answer without text or tool call does not look like a normal one."
  (let ((template (chatpipe-test--bundled-template
                   "anthropic" "/replay/anthropic/refusal.sse")))
    (should (equal (chatpipe-test--expected "anthropic/refusal.sse") ""))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--ask "Hi")
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text
                      '(user . "Hi")
                      '(assistant . "[empty answer: the provider's content \
filter stopped it]"))))
      (should (string-match-p "\\`empty answer (content filter): 20 in, 0 out, \
[0-9.]+ s\\'" chatpipe--status))
      (should (equal (chatpipe-messages) '(("user" . "Hi")))))))

(ert-deftest chatpipe-test-interrupted-answer ()
  "An answer whose stream breaks off ends with an error note and status."
  (let ((template (chatpipe-test--template
                   "/replay/openai-chat/text-with-usage.sse?cut=900")))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--ask "Hi")
      (chatpipe-test--wait-idle buffer)
      (should (string-match "\\`### User\n\nHi\n\n### Assistant\n\n\
\\(I'm[^[]*\\)\n\n\\[error: the stream ended early[^]\n]*\\]\n\n### User\n\n\\'"
                            (buffer-string)))
      (let ((partial (match-string 1 (buffer-string))))
        (should (equal (chatpipe-messages)
                       `(("user" . "Hi") ("assistant" . ,partial)))))
      (should (string-prefix-p "error: the stream ended early" chatpipe--status)))))

(provide 'chatpipe-hints-test)
;;; chatpipe-hints-test.el ends here
