;;; chatpipe-models-test.el --- ERT tests: completing model names -*- lexical-binding: t; -*-

;;; Commentary:

;; `chatpipe-models' and `chatpipe-read-model' with the real backend
;; (`chatpipe models TEMPLATE --json') against the replay server's
;; OpenAI-style model list (GET /openai-models/v1/models), an endpoint
;; without one, and a port where nothing listens.  The backend's cache
;; folder is a temporary XDG_CACHE_HOME for each test.

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)
(require 'chatpipe-models)

(defconst chatpipe-test--replay-models '("gpt-4o" "gpt-4o-mini" "test-model")
  "The ids of the replay server's model list, sorted.")

(defmacro chatpipe-test--with-model-cache (&rest body)
  "Run BODY with empty model caches, in Emacs and in the backend."
  (declare (indent 0) (debug t))
  `(let ((process-environment
          (cons (concat "XDG_CACHE_HOME="
                        (make-temp-file (expand-file-name "cache" chatpipe-test-tmp) t))
                process-environment))
         (chatpipe--models-cache (make-hash-table :test 'equal)))
     ,@body))

(defun chatpipe-test--model-gets ()
  "Return the model list GETs the replay server got, oldest first."
  (cl-remove-if-not (lambda (request) (equal (alist-get 'method request) "GET"))
                    (chatpipe-test--requests)))

(defun chatpipe-test--read-model-with (answer &rest args)
  "Call `chatpipe-read-model' with ARGS; the minibuffer answers ANSWER.
Return (VALUE PROMPT COLLECTION REQUIRE-MATCH): what it returned,
and what it asked of `completing-read'."
  (let* ((asked nil)
         (completing-read-function
          (lambda (prompt collection _predicate require-match &rest _)
            (setq asked (list prompt collection require-match))
            answer))
         (value (apply #'chatpipe-read-model args)))
    (cons value asked)))

(defun chatpipe-test--closed-port ()
  "Return a TCP port of 127.0.0.1 where nothing listens."
  (let* ((proc (make-network-process :name "port" :server t :host "127.0.0.1"
                                     :service t :noquery t))
         (port (process-contact proc :service)))
    (delete-process proc)
    port))

(ert-deftest chatpipe-test-model-list ()
  "The models come from the endpoint, with the key in the environment only."
  (chatpipe-test--with-model-cache
    (chatpipe-test--http "DELETE" "/requests")
    (let* ((secret "sk-test-models-0123456789")
           (authinfo (expand-file-name "authinfo-models" chatpipe-test-tmp))
           (template (chatpipe-test--template
                      "/openai-models/v1/chat/completions"
                      '((Authorization . "Bearer ${env:CHATPIPE_TEST_KEY}"))))
           (auth-source-do-cache nil)
           (auth-sources (list authinfo))
           (calls nil)
           (make-process-function (symbol-function 'make-process)))
      (with-temp-file authinfo
        (insert "machine 127.0.0.1 login apikey password " secret "\n"))
      ;; The backend that asks the endpoint runs asynchronously.
      (cl-letf (((symbol-function 'make-process)
                 (lambda (&rest args)
                   (push (cons (getenv "CHATPIPE_TEST_KEY")
                               (plist-get args :command))
                         calls)
                   (apply make-process-function args))))
        (should (equal (chatpipe-models template) chatpipe-test--replay-models))
        ;; Kept for the session: the backend is not run again.
        (let ((runs (length calls)))
          (should (equal (chatpipe-models template)
                         chatpipe-test--replay-models))
          (should (= runs (length calls)))))
      (should-not (getenv "CHATPIPE_TEST_KEY"))
      (let ((models-call (cl-find "models" calls :test #'member)))
        ;; The key was in the backend's environment, not on its command line.
        (should (equal (car models-call) secret))
        (should-not (cl-some (lambda (arg) (and (stringp arg)
                                                (string-search secret arg)))
                             (cdr models-call)))
        (should (equal (last models-call 2) (list template "--json"))))
      (let ((gets (chatpipe-test--model-gets)))
        (should (= 1 (length gets)))
        (should (equal (alist-get 'path (car gets)) "/openai-models/v1/models"))
        (should (equal (alist-get 'Authorization (alist-get 'headers (car gets)))
                       (concat "Bearer " secret))))
      ;; REFRESH asks the endpoint again, past both caches.
      (should (equal (chatpipe-models template t) chatpipe-test--replay-models))
      (should (= 2 (length (chatpipe-test--model-gets)))))))

(ert-deftest chatpipe-test-model-read ()
  "Reading a model completes over the list and accepts other names."
  (chatpipe-test--with-model-cache
    (let ((template (chatpipe-test--template
                     "/openai-models/v1/chat/completions")))
      (pcase-let ((`(,value ,prompt ,collection ,require-match)
                   (chatpipe-test--read-model-with
                    "gpt-4o-mini" "Model" template "test-model")))
        (should (equal value "gpt-4o-mini"))
        (should (equal prompt "Model (default test-model): "))
        (should (equal collection chatpipe-test--replay-models))
        (should (equal (try-completion "gpt-4o-m" collection) "gpt-4o-mini"))
        (should-not require-match))
      ;; A name that is not in the list is taken as typed.
      (should (equal (car (chatpipe-test--read-model-with
                           "my-fine-tune" "Model" template))
                     "my-fine-tune")))))

(ert-deftest chatpipe-test-model-connection-refused ()
  "Without a server, the model name is free text and the prompt says why."
  (chatpipe-test--with-model-cache
    (let* ((port (chatpipe-test--closed-port))
           (template (chatpipe-test--template
                      nil nil (format "http://127.0.0.1:%d/v1/chat/completions"
                                      port))))
      (should-error (chatpipe-models template) :type 'chatpipe-models-failed)
      (pcase-let ((`(,value ,prompt ,collection ,require-match)
                   (chatpipe-test--read-model-with "typed-model" "Model" template)))
        (should (equal value "typed-model"))
        (should (string-match-p
                 (format "\\`Model (no model list: cannot connect to \
127\\.0\\.0\\.1:%d: Connection refused): \\'" port)
                 prompt))
        (should (null collection))
        (should-not require-match))
      ;; A failure is not kept: the next call asks again.
      (should (= 0 (hash-table-count chatpipe--models-cache))))))

(ert-deftest chatpipe-test-model-no-list ()
  "An endpoint without a model list: free text, with the backend's reason."
  (chatpipe-test--with-model-cache
    (let ((template (chatpipe-test--template "/no-models/v1/chat/completions")))
      (should (equal (cadr (should-error (chatpipe-models template)
                                         :type 'chatpipe-models-failed))
                     (format "the endpoint %s has no model list (GET \
%s/no-models/v1/models answered HTTP 404): type the model name"
                             (string-remove-prefix "http://"
                                                   (chatpipe-test--server-url))
                             (chatpipe-test--server-url))))
      (pcase-let ((`(,value ,prompt ,collection)
                   (chatpipe-test--read-model-with "" "Model" template "test-model")))
        (should (equal value ""))
        (should (string-prefix-p "Model (no model list: the endpoint " prompt))
        (should (string-suffix-p " (default test-model): " prompt))
        (should (null collection))))))

(ert-deftest chatpipe-test-model-unknown-template ()
  "A template the backend does not know: the prompt says so."
  (chatpipe-test--with-model-cache
    (should-error (chatpipe-models "no-such-template")
                  :type 'chatpipe-backend-failed)
    (let ((prompt (nth 1 (chatpipe-test--read-model-with
                          "m" "Model" "no-such-template"))))
      (should (string-search "no template named 'no-such-template'" prompt)))))

;;;; A llama.cpp server's model, and the template's, in the header line

(defconst chatpipe-test--gguf
  "/home/someone/.cache/chatpipe/models/gemma-3-270m-it-Q4_K_M.gguf"
  "A model id as a llama.cpp server gives it: the model's file.")

(ert-deftest chatpipe-test-model-file-name ()
  "A llama.cpp server's model, a long .gguf file name: shown short, sent whole.
The completion candidates and the header line show the file's name
without its folders; the request has the id that the server gave."
  (chatpipe-test--with-model-cache
    (chatpipe-test--with-route-server
        (url (format "
import json
models = {'object': 'list', 'data': [
    {'id': %S, 'object': 'model', 'owned_by': 'llamacpp'},
    {'id': 'other', 'object': 'model', 'owned_by': 'llamacpp'}]}
server.add('/llama/v1/models', Reply([json.dumps(models).encode()],
           framing='length', content_type='application/json'))
with open(sys.argv[1] + '/streams/openai-chat/text-with-usage.sse', 'rb') as f:
    server.add('/llama/v1/chat/completions', Reply([f.read()]))
" chatpipe-test--gguf))
      (let ((template (chatpipe-test--template
                       nil nil (concat url "/llama/v1/chat/completions")))
            (short "gemma-3-270m-it-Q4_K_M.gguf"))
        (pcase-let ((`(,value ,prompt ,collection)
                     (chatpipe-test--read-model-with short "Model" template
                                                     chatpipe-test--gguf)))
          (should (equal collection (list short "other")))
          (should (equal prompt (format "Model (default %s): " short)))
          (should (equal value chatpipe-test--gguf)))
        (should (equal (car (chatpipe-test--read-model-with "other" "Model" template))
                       "other"))
        (chatpipe-test--with-chat (buffer template)
          (chatpipe-set-model chatpipe-test--gguf)
          (should (equal (substring-no-properties (chatpipe-header-line))
                         (format "chatpipe %s [%s]" template short)))
          (chatpipe-test--ask "Hi")
          (chatpipe-test--wait-idle buffer)
          (should (equal chatpipe--model-seen chatpipe-test--gguf))
          (setq chatpipe-model nil)
          (should (string-prefix-p (format "chatpipe %s [%s] | done: " template short)
                                   (substring-no-properties (chatpipe-header-line)))))
        (let ((post (cl-find-if (lambda (r) (alist-get 'body r))
                                (chatpipe-test--http "GET" "/requests" url))))
          (should (equal (alist-get 'model (alist-get 'body post))
                         chatpipe-test--gguf))))))
  ;; Short names: of files only, and cut when long.
  (should (equal (chatpipe-model-name chatpipe-test--gguf)
                 "gemma-3-270m-it-Q4_K_M.gguf"))
  (should (equal (chatpipe-model-name "C:\\models\\m.gguf") "m.gguf"))
  (dolist (id '("gpt-4o" "meta-llama/Llama-3-8B"))
    (should (equal (chatpipe-model-name id) id)))
  (should (equal (chatpipe-model-name (concat "/m/" (make-string 60 ?x) ".gguf"))
                 (concat (make-string 37 ?x) "..."))))

(defun chatpipe-test--run-idle-timers (buffer)
  "Run BUFFER's idle timers of `chatpipe--prestart' now, as Emacs idle would."
  (dolist (timer timer-idle-list)
    (when (and (eq (timer--function timer) #'chatpipe--prestart)
               (eq (car (timer--args timer)) buffer))
      (cancel-timer timer)
      (apply (timer--function timer) (timer--args timer)))))

(ert-deftest chatpipe-test-header-template-model ()
  "A new chat's header line shows its template's model before any answer."
  (let ((template (chatpipe-test--template "/replay/openai-chat/text-with-usage.sse"))
        (chatpipe-prestart t))
    (chatpipe-test--http "DELETE" "/requests")
    (dolist (mode '(serve send))
      (let ((chatpipe-backend-mode mode))
        (chatpipe-templates-refresh)
        (chatpipe-test--with-chat (buffer template)
          ;; Once Emacs is idle a moment.
          (chatpipe-test--run-idle-timers buffer)
          (should (equal (substring-no-properties (chatpipe-header-line))
                         (format "chatpipe %s [test-model]" template)))
          ;; The chat's own model wins.
          (chatpipe-set-model "gpt-4o")
          (should (equal (substring-no-properties (chatpipe-header-line))
                         (format "chatpipe %s [gpt-4o]" template))))))
    ;; Templates known already: at once, without waiting.
    (let ((chatpipe-prestart nil))
      (chatpipe-test--with-chat (buffer template)
        (should (equal (substring-no-properties (chatpipe-header-line))
                       (format "chatpipe %s [test-model]" template)))))
    (should-not (chatpipe-test--requests))))

(defvar package-lint-main-file)
(declare-function package-lint-buffer "package-lint")

(ert-deftest chatpipe-test-models-package-lint ()
  "The file is package-lint clean, as a file of the package."
  (let ((dir (or (getenv "PACKAGE_LINT_DIR")
                 (car (last (file-expand-wildcards
                             "/usr/share/emacs/site-lisp/elpa-src/package-lint-[0-9]*"))))))
    (should dir)
    (add-to-list 'load-path dir)
    (require 'package-lint)
    (with-temp-buffer
      (insert-file-contents (expand-file-name "elisp/chatpipe-models.el"
                                              chatpipe-test-root)
                            t)
      (emacs-lisp-mode)
      (let ((package-lint-main-file (expand-file-name "elisp/chatpipe.el"
                                                      chatpipe-test-root)))
        (should (equal (package-lint-buffer) nil))))))

(provide 'chatpipe-models-test)
;;; chatpipe-models-test.el ends here
