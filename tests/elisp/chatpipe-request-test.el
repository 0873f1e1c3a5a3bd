;;; chatpipe-request-test.el --- ERT tests: one request, both backend modes -*- lexical-binding: t; -*-

;;; Commentary:

;; A request is built by one function, `chatpipe-process-request', and
;; sent the same way to `chatpipe serve' (a line) and `chatpipe send'
;; (`--request -' on stdin): the replay server gets the same body, and
;; nothing of the request (messages, API key, template) is on a command
;; line.

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)

(defconst chatpipe-test--request-key "sk-test-request0123456789KEY"
  "The API key of the request tests' template.")

(defun chatpipe-test--request-answer (mode template)
  "Stream one answer with TEMPLATE in `chatpipe-backend-mode' MODE.
Every field `chatpipe-process-start' takes is given.  Return
\(PROCESS-COMMAND . EVENTS), the events oldest first."
  (let* ((chatpipe-backend-mode mode)
         (events nil)
         (stream (chatpipe-process-start
                  :template template
                  :messages '(("user" . "Hi") ("assistant" . "Hello.")
                              ("user" . "Weather?"))
                  :model "gpt-request" :vars '(("lang" . "French"))
                  :params '((temperature . 0.25) (max_tokens . 9))
                  :name "chatpipe request test"
                  :handler (lambda (event) (push event events))))
         (command (process-command (chatpipe-stream-process stream))))
    (should (chatpipe-test--wait
             (lambda () (member (plist-get (car events) :type) '("done" "error")))
             30))
    (cons command (reverse events))))

(ert-deftest chatpipe-test-request-fields ()
  "`chatpipe-process-request' gives every field it is given, and the key."
  (let* ((template (chatpipe-test--template
                    "/replay/openai-chat/text-with-usage.sse"
                    '((Authorization . "Bearer ${env:CHATPIPE_REQUEST_KEY}"))))
         (process-environment (cons (concat "CHATPIPE_REQUEST_KEY="
                                            chatpipe-test--request-key)
                                    process-environment))
         (request (chatpipe-process-request
                   :template template :messages '(("user" . "Hi")) :model "m"
                   :url "http://127.0.0.1:9/v1" :vars '(("lang" . "French"))
                   :params '((max_tokens . 5)) :tools '("mcp:time")
                   :context [((type . "file") (path . "/tmp/a.py"))]))
         (parsed (json-parse-string (json-serialize request) :object-type 'alist)))
    (should (equal (mapcar #'car parsed)
                   '(template messages model url vars params tools context env price)))
    (should (equal (alist-get 'template parsed) template))
    (should (equal (alist-get 'messages parsed) [((role . "user") (content . "Hi"))]))
    (should (equal (alist-get 'vars parsed) '((lang . "French"))))
    (should (equal (alist-get 'params parsed) '((max_tokens . 5))))
    (should (equal (alist-get 'tools parsed) ["mcp:time"]))
    (should (equal (alist-get 'env parsed)
                   `((CHATPIPE_REQUEST_KEY . ,chatpipe-test--request-key))))
    (should (eq (alist-get 'price parsed) t))
    ;; Nothing given, nothing sent but the template, messages and price.
    (should (equal (mapcar #'car (chatpipe-process-request :template "local" :context []))
                   '(template messages price)))))

(ert-deftest chatpipe-test-request-same-in-both-modes ()
  "Serve and send get the same request, and send it the same.
The replay server gets identical bodies and API keys; the send
process's command line is `send --output ndjson --request -' only."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((template (chatpipe-test--template
                    "/replay/openai-chat/text-with-usage.sse"
                    '((Authorization . "Bearer ${env:CHATPIPE_REQUEST_KEY}"))))
         (process-environment (cons (concat "CHATPIPE_REQUEST_KEY="
                                            chatpipe-test--request-key)
                                    process-environment))
         (served (chatpipe-test--request-answer 'serve template))
         (sent (chatpipe-test--request-answer 'send template))
         (requests (chatpipe-test--requests)))
    (dolist (answer (list served sent))
      (should (equal (plist-get (car (last (cdr answer))) :type) "done"))
      (should (equal (plist-get (cl-find "usage" (cdr answer)
                                         :key (lambda (e) (plist-get e :type))
                                         :test #'equal)
                                :input_tokens)
                     14)))
    (should (equal (last (car sent) 5)
                   '("send" "--output" "ndjson" "--request" "-")))
    (should-not (cl-some (lambda (arg)
                           (or (string-search chatpipe-test--request-key arg)
                               (string-search "Weather" arg)
                               (string-search template arg)))
                         (car sent)))
    (should (= (length requests) 2))
    (let ((bodies (mapcar (lambda (r) (alist-get 'body r)) requests)))
      (should (equal (car bodies) (cadr bodies)))
      (should (equal (alist-get 'model (car bodies)) "gpt-request"))
      (should (equal (alist-get 'temperature (car bodies)) 0.25))
      (should (equal (alist-get 'max_tokens (car bodies)) 9))
      (should (equal (chatpipe-test--request-messages (car requests))
                     '(("user" . "Hi") ("assistant" . "Hello.")
                       ("user" . "Weather?")))))
    (dolist (request requests)
      (should (equal (alist-get 'Authorization (alist-get 'headers request))
                     (concat "Bearer " chatpipe-test--request-key))))))

(provide 'chatpipe-request-test)
;;; chatpipe-request-test.el ends here
