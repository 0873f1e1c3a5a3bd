;;; chatpipe-tools-test.el --- ERT tests: tools in chats, through the real backend -*- lexical-binding: t; -*-

;;; Commentary:

;; Tools defined in Emacs and the tools of an MCP server, offered by a
;; chat, called by a scripted model: a replay server of the test's own
;; (see `chatpipe-test--route-server') answers first with a tool call,
;; then with text, and records what it was sent.  The loop runs
;; through the real `chatpipe serve'; the confirmations are typed into
;; the real minibuffer prompts (`ert-simulate-keys').  The checks are
;; on the chat buffer's text and on the requests the model got.

;;; Code:

(require 'ert)
(require 'ert-x)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)

(defconst chatpipe-test--weather-script "
from test_tool_loop import tool_call_answer, text_answer
server.add('/m', [tool_call_answer('get_weather', 'call_1', '{\"city\": \"Paris\"}'),
                  text_answer('It is 18 C and sunny in Paris.'),
                  text_answer('Tomorrow too.')])"
  "A model that calls get_weather for Paris, then answers twice.")

(defvar chatpipe-test--tool-calls nil
  "The arguments the test tools were called with, newest first.")

(defun chatpipe-test--define-weather (&rest keys)
  "Define the tool get_weather, with KEYS added to its definition.
It returns \"18 C, sunny\" and records its arguments."
  (apply #'chatpipe-define-tool "get_weather"
         :description "The weather in a city"
         :parameters '(:type "object"
                       :properties (:city (:type "string"))
                       :required ["city"])
         :function (lambda (args)
                     (push args chatpipe-test--tool-calls)
                     "18 C, sunny")
         keys))

(defun chatpipe-test--weather-chat (url)
  "Make a new chat whose template's endpoint is URL/m, with get_weather."
  (let ((buffer (chatpipe (chatpipe-test--template nil nil (concat url "/m")) t)))
    (with-current-buffer buffer
      (chatpipe-set-tools '("get_weather")))
    buffer))

(defun chatpipe-test--bodies (url)
  "Return the bodies of the requests the route server at URL got."
  (mapcar (lambda (request) (alist-get 'body request))
          (chatpipe-test--http "GET" "/requests" url)))

(defun chatpipe-test--tool-block (call result &optional flag org)
  "Return the Markdown tool block of CALL with RESULT and FLAG.
CALL is (NAME ARGUMENTS ID); FLAG is nil, \", error\", \", denied\" or
\", no result\".  With ORG, the Org block."
  (if org
      (format "#+begin_tool %s %s (%s%s)\n%s#+end_tool" (nth 0 call) (nth 1 call)
              (nth 2 call) (or flag "")
              (if (string-empty-p result) "" (concat result "\n")))
    (format "<details><summary>Tool call %s %s (%s%s)</summary>\n\n%s</details>"
            (nth 0 call) (nth 1 call) (nth 2 call) (or flag "")
            (if (string-empty-p result) "" (concat result "\n\n")))))

(defconst chatpipe-test--weather-call '("get_weather" "{\"city\": \"Paris\"}" "call_1")
  "The call of `chatpipe-test--weather-script', as for `chatpipe-test--tool-block'.")

(defconst chatpipe-test--weather-follow-up
  '(((role . "user") (content . "Weather in Paris?"))
    ((role . "assistant") (content)
     (tool_calls ((id . "call_1") (type . "function")
                  (function (name . "get_weather")
                            (arguments . "{\"city\": \"Paris\"}")))))
    ((role . "tool") (tool_call_id . "call_1") (content . "18 C, sunny")))
  "The messages of the model's second request, in OpenAI's exact shape.")

(defun chatpipe-test--check-folded (text)
  "Check that TEXT, in the current buffer, is folded but its first line."
  (goto-char (point-min))
  (search-forward text)
  (should (invisible-p (1- (point))))
  (goto-char (match-beginning 0))
  (forward-line -1)
  (while (looking-at "$") (forward-line -1))
  (should-not (invisible-p (point)))
  (should (looking-at "<details><summary>Tool call \\|#\\+begin_tool ")))

(defun chatpipe-test--weather-round-trip (org)
  "Run the weather chat, approved; save it, reopen it, go on.
With ORG, in an Org chat saved as .org, else in a Markdown one."
  (chatpipe-test--define-weather :confirm t)
  (setq chatpipe-test--tool-calls nil)
  (let ((file (expand-file-name (if org "weather.org" "weather.md") chatpipe-test-tmp))
        (chatpipe-major-mode (if org 'org-mode 'text-mode))
        (heading (if org "* " "### "))
        (block (chatpipe-test--tool-block chatpipe-test--weather-call "18 C, sunny"
                                          nil org)))
    (chatpipe-test--with-route-server (url chatpipe-test--weather-script)
      (let ((buffer (chatpipe-test--weather-chat url)))
        (unwind-protect
            (with-current-buffer buffer
              (chatpipe-test--ask "Weather in Paris?")
              (ert-simulate-keys (kbd "y")
                (chatpipe-test--wait-idle buffer 60))
              (should (equal chatpipe-test--tool-calls '((:city "Paris"))))
              (should (equal (buffer-string)
                             (format "%sUser\n\nWeather in Paris?\n\n%sAssistant\n\n\
%s\n\nIt is 18 C and sunny in Paris.\n\n%sUser\n\n" heading heading block heading)))
              (should (string-match-p "\\`done: .* s\\'" chatpipe--status))
              (chatpipe-test--check-folded "18 C, sunny")
              ;; The model got the tool, then the call and its result.
              (let ((bodies (chatpipe-test--bodies url)))
                (should (= 2 (length bodies)))
                (should (equal (alist-get 'tools (car bodies))
                               '(((type . "function")
                                  (function (name . "get_weather")
                                            (description . "The weather in a city")
                                            (parameters (type . "object")
                                                        (properties (city (type . "string")))
                                                        (required "city")))))))
                (should (equal (alist-get 'messages (nth 1 bodies))
                               chatpipe-test--weather-follow-up)))
              (write-file file))
          (with-current-buffer buffer (set-buffer-modified-p nil))
          (kill-buffer buffer)))
      ;; Reopened from the file, the chat goes on: its tool turns are
      ;; sent as the backend sent them.
      (let ((buffer (find-file-noselect file)))
        (unwind-protect
            (with-current-buffer buffer
              (should chatpipe-mode)
              (should (equal chatpipe-tools '("get_weather")))
              (should (string-search block (buffer-string)))
              (chatpipe-test--check-folded "18 C, sunny")
              (goto-char (chatpipe--chat-end))
              (re-search-backward (concat "^" (regexp-quote heading) "User\n\n"))
              (goto-char (match-end 0))
              (insert "And tomorrow?")
              (chatpipe-send)
              (chatpipe-test--wait-idle buffer 60)
              (should (string-search "And tomorrow?\n\n" (buffer-string)))
              (should (string-search (concat heading "Assistant\n\nTomorrow too.\n\n")
                                     (buffer-string)))
              (let ((bodies (chatpipe-test--bodies url)))
                (should (= 3 (length bodies)))
                (should (equal (alist-get 'messages (nth 2 bodies))
                               (append chatpipe-test--weather-follow-up
                                       '(((role . "assistant")
                                          (content . "It is 18 C and sunny in Paris."))
                                         ((role . "user") (content . "And tomorrow?"))))))
                (should (equal (alist-get 'tools (nth 2 bodies))
                               (alist-get 'tools (car bodies))))))
          (with-current-buffer buffer (set-buffer-modified-p nil))
          (kill-buffer buffer))))))

(ert-deftest chatpipe-test-tool-approved-saved-continued ()
  "An Emacs tool approved in the minibuffer; the chat saved, reopened, goes on."
  (chatpipe-test--require-markdown)
  (chatpipe-test--weather-round-trip nil))

(ert-deftest chatpipe-test-tool-approved-saved-continued-org ()
  "The same chat in Org: #+begin_tool blocks, sent back the same."
  (chatpipe-test--weather-round-trip t))

(defun chatpipe-test--one-call (define keys)
  "Run the weather chat with get_weather defined by DEFINE, typing KEYS.
DEFINE is a function called with no arguments.  Return (BUFFER-TEXT
MESSAGES FOLLOW-UP), the chat's text and `chatpipe-messages' at the
end, and the messages of the model's second request."
  (funcall define)
  (chatpipe-test--with-route-server (url chatpipe-test--weather-script)
    (let ((buffer (chatpipe-test--weather-chat url)))
      (unwind-protect
          (with-current-buffer buffer
            (chatpipe-test--ask "Weather in Paris?")
            (ert-simulate-keys keys
              (chatpipe-test--wait-idle buffer 60))
            (let ((bodies (chatpipe-test--bodies url)))
              (should (= 2 (length bodies)))
              (list (buffer-string) (chatpipe-messages)
                    (alist-get 'messages (nth 1 bodies)))))
        (with-current-buffer buffer (set-buffer-modified-p nil))
        (kill-buffer buffer)))))

(defun chatpipe-test--check-one-call (result content flag expected)
  "Check RESULT of `chatpipe-test--one-call': the tool gave CONTENT.
FLAG is the flag of the block's first line, EXPECTED the content
the model got."
  (pcase-let ((`(,text ,messages ,follow-up) result))
    (should (equal text (concat "### User\n\nWeather in Paris?\n\n### Assistant\n\n"
                                (chatpipe-test--tool-block
                                 chatpipe-test--weather-call content flag)
                                "\n\nIt is 18 C and sunny in Paris.\n\n### User\n\n")))
    (should (equal (car (last follow-up))
                   `((role . "tool") (tool_call_id . "call_1") (content . ,expected))))
    (should (equal messages
                   `(("user" . "Weather in Paris?")
                     ((role . "assistant") (content . "")
                      (tool_calls . [((id . "call_1") (name . "get_weather")
                                      (arguments . "{\"city\": \"Paris\"}"))]))
                     ((role . "tool") (tool_call_id . "call_1") (name . "get_weather")
                      (content . ,content) (is_error . ,(if flag t :false)))
                     ("assistant" . "It is 18 C and sunny in Paris."))))))

(ert-deftest chatpipe-test-tool-denied-with-reason ()
  "A call denied in the minibuffer: the user's reason reaches the model."
  (setq chatpipe-test--tool-calls nil)
  (chatpipe-test--check-one-call
   (chatpipe-test--one-call (lambda () (chatpipe-test--define-weather :confirm t))
                            (kbd "n not SPC on SPC my SPC disk RET"))
   "The user denied this tool call: not on my disk" ", denied"
   "Error: The user denied this tool call: not on my disk")
  (should-not chatpipe-test--tool-calls))

(ert-deftest chatpipe-test-tool-error ()
  "A tool that signals an error: its message goes back as an error."
  (chatpipe-test--check-one-call
   (chatpipe-test--one-call
    (lambda () (chatpipe-define-tool "get_weather" :function
                                     (lambda (_args) (error "No network"))))
    nil)
   "No network" ", error" "Error: No network"))

(ert-deftest chatpipe-test-tool-async ()
  "An async tool calls back later; non-string results are sent as JSON."
  (chatpipe-test--check-one-call
   (chatpipe-test--one-call
    (lambda () (chatpipe-define-tool
                "get_weather" :async t
                :function (lambda (callback args)
                            (run-at-time 0.3 nil callback
                                         (list :city (plist-get args :city)
                                               :celsius 18)))))
    nil)
   "{\"city\":\"Paris\",\"celsius\":18}" nil
   "{\"city\":\"Paris\",\"celsius\":18}"))

(ert-deftest chatpipe-test-tool-unknown ()
  "A call of a tool Emacs does not have gets an error result, at once."
  (chatpipe-test--check-one-call
   (chatpipe-test--one-call
    (lambda ()
      (chatpipe-test--define-weather)
      ;; Gone before the model calls it.
      (advice-add 'chatpipe--tool-run-start :before
                  (lambda (&rest _)
                    (setq chatpipe--tool-registry
                          (assoc-delete-all "get_weather" chatpipe--tool-registry)))
                  '((name . chatpipe-test-forget))))
    nil)
   "there is no tool named get_weather in this Emacs" ", error"
   "Error: there is no tool named get_weather in this Emacs")
  (advice-remove 'chatpipe--tool-run-start 'chatpipe-test-forget))

(defconst chatpipe-test--pending-text
  (concat "### User\n\nWeather in Paris?\n\n### Assistant\n\n"
          "<details><summary>Tool call get_weather {\"city\": \"Paris\"} "
          "(call_1, no result)</summary>\n\n</details>\n\n[aborted]\n\n### User\n\n")
  "The chat after an abort while the weather call waits for its answer.")

(defun chatpipe-test--abort-while-pending (define keys)
  "Abort the weather chat while its call waits; KEYS are typed at the call.
DEFINE defines the tool.  Check what stays, and that the chat goes on
without the call.  Return the chat's messages after the abort."
  (funcall define)
  (chatpipe-test--with-route-server (url chatpipe-test--weather-script)
    (let ((buffer (chatpipe-test--weather-chat url))
          (overriding-terminal-local-map (make-sparse-keymap))
          messages)
      (define-key overriding-terminal-local-map [f12]
        (lambda () (interactive) (chatpipe-abort buffer)))
      (unwind-protect
          (with-current-buffer buffer
            (chatpipe-test--ask "Weather in Paris?")
            (ert-simulate-keys keys
              (chatpipe-test--wait-idle buffer 60)
              ;; The question took KEYS and no more: the abort ended it.
              (should (equal unread-command-events '(?\C-g ?\C-g ?\C-g))))
            (should (equal (buffer-string) chatpipe-test--pending-text))
            (should (string-prefix-p "aborted" chatpipe--status))
            (setq messages (chatpipe-messages))
            ;; The backend's stream ended: the chat goes on, and the
            ;; call without a result is not sent.  The aborted answer
            ;; sends nothing: the two questions are one user message.
            (chatpipe-set-tools nil)
            (chatpipe-test--ask "Hello?")
            (chatpipe-test--wait-idle buffer 60)
            (let ((bodies (chatpipe-test--bodies url)))
              (should (= 2 (length bodies)))
              (should (equal (alist-get 'messages (nth 1 bodies))
                             '(((role . "user")
                                (content . "Weather in Paris?\n\nHello?"))))))
            messages)
        (with-current-buffer buffer (set-buffer-modified-p nil))
        (kill-buffer buffer)))))

(ert-deftest chatpipe-test-tool-abort-while-asked ()
  "Abort while the minibuffer asks: the text stays, the request ends.
By `chatpipe-abort', run while the question is in the minibuffer,
and by C-g at the question."
  (dolist (keys (list [f12] (kbd "C-g")))
    (setq chatpipe-test--tool-calls nil)
    (should (equal (chatpipe-test--abort-while-pending
                    (lambda () (chatpipe-test--define-weather :confirm t)) keys)
                   '(("user" . "Weather in Paris?"))))
    (should-not chatpipe-test--tool-calls)))

(ert-deftest chatpipe-test-tool-abort-while-async-runs ()
  "Abort while an async tool runs: its late result is dropped."
  (let (late)
    (chatpipe-test--abort-while-pending
     (lambda () (chatpipe-define-tool
                 "get_weather" :async t
                 :function (lambda (callback _args)
                             (setq late callback)
                             ;; Tools run in the chat buffer.
                             (run-at-time 0.2 nil #'chatpipe-abort
                                          (current-buffer)))))
     nil)
    (should late)
    (should-not (funcall late "too late"))))

(provide 'chatpipe-tools-test)
;;; chatpipe-tools-test.el ends here
