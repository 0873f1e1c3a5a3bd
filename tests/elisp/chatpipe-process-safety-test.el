;;; chatpipe-process-safety-test.el --- ERT tests: processes run what the user meant -*- lexical-binding: t; -*-

;;; Commentary:

;; Every process chatpipe starts runs in a fixed folder, never the
;; current buffer's, and a Python started with -m gets -I: a buffer
;; visiting a file in a folder that holds a hostile venv.py and a
;; chatpipe/ package (each writes a marker file when it runs) installs
;; the backend with the real `python -m venv', and answers, lists the
;; templates and the models with `chatpipe-command' set to ("python3"
;; "-m" "chatpipe") through the real backend, never running them.
;;
;; And Emacs never blocks on the network: `chatpipe-read-model'
;; against an endpoint that drips its model list a byte every 0.5 s
;; ends at the template's deadline, with the reason in the prompt,
;; and Emacs' timers run while it waits.

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)
(require 'chatpipe-install)
(require 'chatpipe-models)

(defun chatpipe-test-safety--hostile-folder ()
  "Make a folder of hostile Python files; return (FOLDER . MARKER).
FOLDER holds venv.py and a chatpipe/ package (__init__.py and
__main__.py), each of which appends its name to the file MARKER
when Python runs it, and a chat file chat.md."
  (let* ((dir (file-name-as-directory (make-temp-file "chatpipe-hostile" t)))
         (marker (expand-file-name "RAN" dir))
         (code (lambda (what)
                 (format "open(%S, 'a').write(%S + '\\n')\n" marker what))))
    (make-directory (expand-file-name "chatpipe" dir))
    (with-temp-file (expand-file-name "venv.py" dir)
      (insert (funcall code "venv.py")))
    (with-temp-file (expand-file-name "chatpipe/__init__.py" dir)
      (insert (funcall code "chatpipe/__init__.py")))
    (with-temp-file (expand-file-name "chatpipe/__main__.py" dir)
      (insert (funcall code "chatpipe/__main__.py")
              "print('{\"type\": \"error\", \"message\": \"hostile\"}')\n"))
    (with-temp-file (expand-file-name "chat.md" dir)
      (insert "### User\n\n"))
    (cons dir marker)))

(defmacro chatpipe-test-safety--in-hostile-folder (spec &rest body)
  "Run BODY in a buffer visiting a chat file of a hostile folder.
SPEC is (DIR MARKER): they are bound to the folder and to the file
its Python code would write.  The buffer and folder are deleted
afterwards."
  (declare (indent 1) (debug ((symbolp symbolp) body)))
  (let ((made (make-symbol "made")) (buffer (make-symbol "buffer")))
    `(let* ((,made (chatpipe-test-safety--hostile-folder))
            (,(car spec) (car ,made))
            (,(cadr spec) (cdr ,made))
            (,buffer (find-file-noselect (expand-file-name "chat.md" ,(car spec)))))
       (unwind-protect
           (with-current-buffer ,buffer
             (should (file-equal-p default-directory ,(car spec)))
             ,@body)
         (with-current-buffer ,buffer (set-buffer-modified-p nil))
         (kill-buffer ,buffer)
         (delete-directory ,(car spec) t)))))

(defun chatpipe-test-safety--marker (marker)
  "Return what ran of the hostile code, the text of MARKER, or nil."
  (and (file-exists-p marker)
       (with-temp-buffer (insert-file-contents marker) (buffer-string))))

(defun chatpipe-test-safety--answer (template mode)
  "Stream an answer with TEMPLATE in MODE (`serve' or `send'); return its text.
Fail if it does not end with a `done' event."
  (let* ((chatpipe-backend-mode mode)
         (events nil)
         (stream (chatpipe-process-start
                  :template template
                  :messages '(("user" . "Hello"))
                  :handler (lambda (event) (push event events)))))
    (should (chatpipe-stream-p stream))
    (should (chatpipe-test--wait
             (lambda () (cl-some (lambda (e) (member (plist-get e :type)
                                                     '("done" "error")))
                                 events))
             30))
    (should (equal (plist-get (car events) :type) "done"))
    (apply #'concat (mapcar (lambda (e) (plist-get e :content))
                            (cl-remove-if-not
                             (lambda (e) (equal (plist-get e :type) "delta"))
                             (reverse events))))))

(ert-deftest chatpipe-test-process-safety-python-m ()
  "With `chatpipe-command' (\"python3\" \"-m\" \"chatpipe\"), the folder's chatpipe/ never runs.
The templates (one given by a file name relative to the buffer's
folder), an answer through `chatpipe serve' and through `chatpipe
send', and the model list all come from the real backend."
  (let* ((bin (file-name-directory chatpipe-test-python))
         (exec-path (cons bin exec-path))
         (chatpipe-command '("python3" "-m" "chatpipe"))
         (template (chatpipe-test--template
                    "/replay/openai-chat/text-with-usage.sse?split=64"))
         (models-template (chatpipe-test--template
                           "/openai-models/v1/chat/completions"))
         (answer (chatpipe-test--expected "openai-chat/text-with-usage.sse")))
    (chatpipe-test-safety--in-hostile-folder (dir marker)
      (chatpipe-templates-refresh)
      (chatpipe-serve-stop)
      (with-temp-file (expand-file-name "mine.json" dir)
        (insert (json-serialize
                 `((chatpipe . ((api . "openai-chat")
                                (url . ,(concat (chatpipe-test--server-url)
                                                "/replay/openai-chat/text-with-usage.sse"))
                                (max_retries . 0)))
                   (model . "file-model") (stream . t) (messages . [])))))
      (let* ((results
              (mapcar
               (lambda (action)
                 (condition-case err (funcall action)
                   (error (list 'failed err))))
               (list
                (lambda () (plist-get (chatpipe-template-info template) :name))
                (lambda () (chatpipe-template-info "./mine.json"))
                (lambda () (chatpipe-test-safety--answer template 'serve))
                (lambda () (chatpipe-test-safety--answer template 'send))
                (lambda ()
                  (let ((chatpipe--models-cache (make-hash-table :test 'equal))
                        (process-environment
                         (cons (concat "XDG_CACHE_HOME="
                                       (make-temp-file
                                        (expand-file-name "cache" chatpipe-test-tmp) t))
                               process-environment)))
                    (chatpipe-models models-template)))))))
        ;; Nothing of the folder ran...
        (should-not (chatpipe-test-safety--marker marker))
        ;; ...and the real backend answered everything.
        (pcase-let ((`(,name ,file ,serve ,send ,models) results))
          (should (equal name template))
          (should (equal (plist-get file :model) "file-model"))
          (should (file-equal-p (plist-get file :path)
                                (expand-file-name "mine.json" dir)))
          (should (equal serve answer))
          (should (equal send answer))
          (should (equal models '("gpt-4o" "gpt-4o-mini" "test-model")))))
      (let ((command (chatpipe--command)))
        (should (equal (cdr command) '("-I" "-m" "chatpipe")))
        (should (file-equal-p (car command) (expand-file-name "python3" bin))))
      (should (file-equal-p (chatpipe--process-directory) "~/")))))

(ert-deftest chatpipe-test-process-safety-install ()
  "`chatpipe-install-backend' makes the venv with the real venv module, not the folder's venv.py."
  (let* ((venv (expand-file-name "venv/" (make-temp-file "chatpipe-venv" t)))
         (chatpipe-install--library-directory
          (expand-file-name "elisp/" chatpipe-test-root))
         (chatpipe-install-python chatpipe-test-python)
         (chatpipe-install-save nil)
         (chatpipe-python-venv nil)
         (chatpipe-install-functions nil)
         (calls nil)
         ;; No package index: pip fails at once, after the venv is made.
         (process-environment (append '("PIP_NO_INDEX=1" "PIP_RETRIES=0")
                                      process-environment)))
    (unwind-protect
        (chatpipe-test-safety--in-hostile-folder (dir marker)
          (chatpipe-install-backend venv (lambda (v e) (push (list v e) calls)))
          (should (chatpipe-test--wait
                   (lambda () (or calls (chatpipe-test-safety--marker marker)))
                   120))
          (should-not (chatpipe-test-safety--marker marker))
          ;; The real venv module made the venv (with its pip), with -I.
          (should (file-exists-p (expand-file-name "pyvenv.cfg" venv)))
          (should (file-executable-p (expand-file-name "bin/pip" venv)))
          (should (string-match-p
                   (concat (regexp-quote chatpipe-test-python) " -I -m venv ")
                   (with-current-buffer chatpipe-install-buffer-name
                     (buffer-string)))))
      (when (process-live-p chatpipe-install--process)
        (delete-process chatpipe-install--process))
      (delete-directory (file-name-directory (directory-file-name venv)) t))))

;;;; Emacs never blocks on the network

(defun chatpipe-test-safety--drip-template (url)
  "Write a template for URL with a 2 s read timeout and a 3 s deadline.
Return its name."
  (let ((name (format "test%d" (cl-incf chatpipe-test--counter))))
    (with-temp-file (expand-file-name (concat name ".json")
                                      chatpipe-test-template-dir)
      (insert (json-serialize
               `((chatpipe . ((api . "openai-chat") (url . ,url)
                              (max_retries . 0) (read_timeout . 2)
                              (deadline . 3)))
                 (model . "m") (stream . t) (messages . [])))))
    name))

(ert-deftest chatpipe-test-process-safety-models-deadline ()
  "A model list dripped a byte every 0.5 s: the read ends by the deadline, timers run."
  (chatpipe-test--with-route-server
      (url "import json
body = json.dumps({'object': 'list', 'data': [{'id': 'dripped'}]}).encode()
server.add('/drip/v1/models', Reply(split_every(body, 1), framing='length',
                                    content_type='application/json', delay=0.5))")
    (let* ((template (chatpipe-test-safety--drip-template
                      (concat url "/drip/v1/chat/completions")))
           (process-environment
            (cons (concat "XDG_CACHE_HOME="
                          (make-temp-file (expand-file-name "cache" chatpipe-test-tmp) t))
                  process-environment))
           (chatpipe--models-cache (make-hash-table :test 'equal))
           (ticks nil)
           (timer (run-at-time 0.2 0.2 (lambda () (push (float-time) ticks))))
           (asked nil)
           (completing-read-function
            (lambda (prompt collection &rest _)
              (setq asked (list prompt collection (float-time)))
              "typed-model"))
           (start (float-time)))
      (chatpipe-template-info template)
      (unwind-protect
          (should (equal (chatpipe-read-model "Model" template) "typed-model"))
        (cancel-timer timer))
      (let ((elapsed (- (nth 2 asked) start)))
        (should (<= 3 elapsed))
        (should (< elapsed 7)))
      (should (string-match-p
               "\\`Model (no model list: the model list from 127\\.0\\.0\\.1:[0-9]+ \
ran past its deadline of 3 s (chatpipe\\.deadline)): \\'"
               (car asked)))
      (should (null (nth 1 asked)))
      ;; The timer fired again and again while Emacs waited.
      (should (>= (cl-count-if (lambda (tick) (< tick (nth 2 asked))) ticks) 5)))))

(ert-deftest chatpipe-test-process-safety-models-quit ()
  "\\[keyboard-quit] while the model list is asked stops the wait and the backend."
  (chatpipe-test--with-route-server
      (url "server.add('/drip/v1/models', Reply([b'{'] * 100, framing='chunked',
                                    content_type='application/json', delay=0.5))")
    (let* ((template (chatpipe-test-safety--drip-template
                      (concat url "/drip/v1/chat/completions")))
           (process-environment
            (cons (concat "XDG_CACHE_HOME="
                          (make-temp-file (expand-file-name "cache" chatpipe-test-tmp) t))
                  process-environment))
           (chatpipe--models-cache (make-hash-table :test 'equal))
           (asked nil)
           (completing-read-function
            (lambda (prompt collection &rest _)
              (setq asked (list prompt collection (float-time)))
              "typed-model"))
           (start nil)
           (before (process-list)))
      (chatpipe-template-info template)
      (setq start (float-time))
      ;; C-g, as a user would press it, a second after the start.
      (let ((timer (run-at-time 1 nil (lambda () (setq quit-flag t)))))
        (unwind-protect
            (should (equal (chatpipe-read-model "Model" template) "typed-model"))
          (cancel-timer timer)
          (setq quit-flag nil)))
      (should (< (- (nth 2 asked) start) 2.5))
      (should (equal (car asked) "Model (no model list: interrupted): "))
      ;; The backend it started is gone.
      (should-not (cl-some (lambda (proc)
                             (and (not (memq proc before))
                                  (string-prefix-p "chatpipe call"
                                                   (process-name proc))
                                  (process-live-p proc)))
                           (process-list))))))

(provide 'chatpipe-process-safety-test)
;;; chatpipe-process-safety-test.el ends here
