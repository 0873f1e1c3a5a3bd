;;; chatpipe-toolsafety-test.el --- ERT tests: tools that ask the right question -*- lexical-binding: t; -*-

;;; Commentary:

;; Issue 17, the Emacs side, through the real `chatpipe serve' and two
;; real MCP servers built with the SDK (tests/mcp_fixture_odd.py, run
;; as `trusted' and `other': both have a tool `get_data'), called by
;; scripted models: the question shows the whole arguments and no bidi
;; control or control character as it is; "always" approves one tool
;; of one server in one chat, and `chatpipe-tool-approvals' revokes
;; it; an Emacs tool's big result is capped before it is sent.

;;; Code:

(require 'ert)
(require 'ert-x)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)

(defun chatpipe-test--write-odd-config ()
  "Write the backend's mcp.json: the odd fixture as `trusted' and `other'.
Return its file name."
  (let ((file (expand-file-name "config/chatpipe/mcp.json" chatpipe-test-tmp))
        (odd (expand-file-name "tests/mcp_fixture_odd.py" chatpipe-test-root)))
    (make-directory (file-name-directory file) t)
    (with-temp-file file
      (insert (json-serialize
               `((mcpServers
                  . ((trusted . ((command . ,chatpipe-test-python) (args . [,odd])
                                 (env . ((FX_SERVER . "trusted")))))
                     (other . ((command . ,chatpipe-test-python) (args . [,odd])
                               (env . ((FX_SERVER . "other")))))))))))
    file))

(defvar chatpipe-test--questions nil
  "What each tool question showed, newest first: (PROMPT . ARGUMENTS-BUFFER).
ARGUMENTS-BUFFER is the text of the buffer of long arguments when
one showed it, else nil.")

(defun chatpipe-test--record-question (prompt &rest _)
  "Record PROMPT, a question of `read-char-from-minibuffer', once."
  (when (and (string-prefix-p "chatpipe: run " prompt)
             (not (equal prompt (car (car chatpipe-test--questions)))))
    (let ((buffer (get-buffer "*chatpipe tool call*")))
      (push (cons prompt (and buffer (get-buffer-window buffer t)
                              (with-current-buffer buffer (buffer-string))))
            chatpipe-test--questions))))

(defmacro chatpipe-test--with-odd-servers (spec &rest body)
  "Run BODY with the odd MCP servers configured and a route server.
SPEC is (VAR SCRIPT), as for `chatpipe-test--with-route-server'.  The
tool questions are recorded in `chatpipe-test--questions'."
  (declare (indent 1) (debug ((symbolp form) body)))
  (let ((config (make-symbol "config")))
    `(let ((,config (chatpipe-test--write-odd-config))
           (process-environment (cons (concat "XDG_CACHE_HOME="
                                              (expand-file-name "cache" chatpipe-test-tmp))
                                      process-environment)))
       (setq chatpipe-test--questions nil)
       (advice-add 'read-char-from-minibuffer :before #'chatpipe-test--record-question)
       (unwind-protect
           (chatpipe-test--with-route-server ,spec ,@body)
         (advice-remove 'read-char-from-minibuffer #'chatpipe-test--record-question)
         (delete-file ,config)))))

(defun chatpipe-test--toolsafety-answer (buffer question keys)
  "Send QUESTION in the chat BUFFER; type KEYS at its questions; wait.
Check that the answer ended and took all of KEYS."
  (with-current-buffer buffer
    (chatpipe-test--ask question)
    (ert-simulate-keys keys
      (chatpipe-test--wait-idle buffer 90)
      (should (equal unread-command-events '(?\C-g ?\C-g ?\C-g))))
    (should (string-match-p "\\`done: .* s\\'" chatpipe--status))))

(defconst chatpipe-test--hidden-chars
  '(?\u202e ?\u202c ?\u2066 ?\u2069 ?\u200f ?\u061c ?\e)
  "Characters no question may show as they are.")

(ert-deftest chatpipe-test-toolsafety-question-shows-whole-arguments ()
  "The question shows all the arguments, pretty-printed, bidi escaped.
Long arguments are shown in a buffer while the question is asked."
  (chatpipe-test--with-odd-servers
      (url "import json
from test_tool_loop import tool_call_answer, text_answer
sneaky = json.dumps({'note': 'harmless ' * 40 + '\\u202eexe.txt\\u202c',
                     'ctl': '\\u2066x\\u2069\\u200f\\u061c',
                     'path': '/home/user/.ssh/id_rsa'}, ensure_ascii=False)
server.add('/m', [tool_call_answer('files_read', 'c1', sneaky),
                  tool_call_answer('get_data', 'c2', json.dumps({'key': 'k\\u202ex'})),
                  text_answer('Done.')])")
    (chatpipe-test--with-chat (buffer (chatpipe-test--template nil nil (concat url "/m")))
      (chatpipe-set-tools '("mcp:trusted"))
      (chatpipe-test--toolsafety-answer buffer "Read it" (kbd "n RET y"))
      (should (= 2 (length chatpipe-test--questions)))
      (pcase-let ((`((,short . ,none) (,long . ,shown)) chatpipe-test--questions))
        ;; Long: the question names the buffer, which shows them all.
        (should (string-prefix-p "chatpipe: run files.read of mcp:trusted (the model \
calls it files_read) with the arguments shown in *chatpipe tool call*?\n\
y: yes, a: always for files.read of mcp:trusted in this chat, n: no " long))
        (should (string-search "  \"path\": \"/home/user/.ssh/id_rsa\"\n" shown))
        (should (string-search (concat "  \"note\": \"" (string-trim-right
                                                         (apply #'concat
                                                                (make-list 40 "harmless ")))
                                       " \\u202eexe.txt\\u202c\",\n")
                               shown))
        (should (string-search "  \"ctl\": \"\\u2066x\\u2069\\u200f\\u061c\",\n" shown))
        ;; Short: in the question itself.
        (should-not none)
        (should (equal short "chatpipe: run get_data of mcp:trusted with these arguments?
{
  \"key\": \"k\\u202ex\"
}
y: yes, a: always for get_data of mcp:trusted in this chat, n: no "))
        (dolist (text (list long shown short))
          (dolist (char chatpipe-test--hidden-chars)
            (should-not (seq-contains-p text char)))))
      ;; The denial went to the model; the approved call ran.
      (should (string-search "(c1, denied)" (buffer-string)))
      (should (string-search "trusted data for k\u202ex" (buffer-string))))))

(ert-deftest chatpipe-test-toolsafety-approvals-per-chat-and-revocable ()
  "\"Always\" holds for one tool of one server in one chat; it is revoked."
  (chatpipe-test--with-odd-servers
      (url "from test_tool_loop import tool_call_answer, text_answer
server.add('/a', [tool_call_answer('get_data', 'a1', '{\"key\": \"1\"}'), text_answer('1'),
                  tool_call_answer('get_data', 'a2', '{\"key\": \"2\"}'),
                  tool_call_answer('get_data_other', 'a3', '{\"key\": \"3\"}'),
                  text_answer('2'),
                  tool_call_answer('get_data', 'a4', '{\"key\": \"4\"}'), text_answer('3')])
server.add('/b', [tool_call_answer('get_data', 'b1', '{\"key\": \"5\"}'), text_answer('4')])")
    (chatpipe-test--with-chat (a (chatpipe-test--template nil nil (concat url "/a")))
      (chatpipe-set-tools '("mcp:trusted" "mcp:other"))
      (chatpipe-test--with-chat (b (chatpipe-test--template nil nil (concat url "/b")))
        (chatpipe-set-tools '("mcp:trusted" "mcp:other"))
        ;; Chat A: always for get_data of mcp:trusted.
        (chatpipe-test--toolsafety-answer a "One" (kbd "a"))
        (should (equal (buffer-local-value 'chatpipe--tool-approvals a)
                       '(("mcp:trusted" . "get_data"))))
        ;; Chat A again: that tool runs unasked; the other server's
        ;; tool of the same name is asked about.
        (chatpipe-test--toolsafety-answer a "Two" (kbd "y"))
        (should (= 2 (length chatpipe-test--questions)))
        (should (string-prefix-p "chatpipe: run get_data of mcp:other (the model calls \
it get_data_other) with these arguments?"
                                 (car (car chatpipe-test--questions))))
        (should (string-search "trusted data for 2" (with-current-buffer a (buffer-string))))
        (should (string-search "other data for 3" (with-current-buffer a (buffer-string))))
        ;; Chat B: asked, approved nothing.
        (chatpipe-test--toolsafety-answer b "Three" (kbd "y"))
        (should (= 3 (length chatpipe-test--questions)))
        (should (string-prefix-p "chatpipe: run get_data of mcp:trusted "
                                 (car (car chatpipe-test--questions))))
        (should-not (buffer-local-value 'chatpipe--tool-approvals b))
        ;; Revoked in chat A (the menu's command): asked again.
        (with-current-buffer a
          (ert-simulate-keys (kbd "get_data SPC of SPC mcp:trusted RET")
            (call-interactively #'chatpipe-tool-approvals))
          (should-not chatpipe--tool-approvals))
        (chatpipe-test--toolsafety-answer a "Four" (kbd "y"))
        (should (= 4 (length chatpipe-test--questions)))
        (should (string-search "trusted data for 4" (with-current-buffer a (buffer-string))))))))

(ert-deftest chatpipe-test-toolsafety-approvals-listed-in-menu ()
  "The menu has the command that lists and revokes approvals."
  (require 'chatpipe-settings)
  (should (string-search "chatpipe-tool-approvals"
                         (format "%S" (transient-get-suffix 'chatpipe-menu "a")))))

(ert-deftest chatpipe-test-toolsafety-emacs-result-capped ()
  "An Emacs tool's big result is cut before it is sent, and says so."
  (chatpipe-define-tool "dump" :function (lambda (_args) (make-string 300000 ?é)))
  (chatpipe-test--with-route-server
      (url "from test_tool_loop import tool_call_answer, text_answer
server.add('/m', [tool_call_answer('dump', 'c1'), text_answer('Big.')])")
    (chatpipe-test--with-chat (buffer (chatpipe-test--template nil nil (concat url "/m")))
      (chatpipe-set-tools '("dump"))
      (chatpipe-test--toolsafety-answer buffer "Dump" nil)
      (let* ((bodies (mapcar (lambda (r) (alist-get 'body r))
                             (chatpipe-test--http "GET" "/requests" url)))
             (result (car (last (alist-get 'messages (nth 1 bodies))))))
        ;; Whole, the note included, in 100 kB: the backend keeps it.
        (should (equal (alist-get 'content result)
                       (concat (make-string 49982 ?é)
                               "\n[truncated: 99964 of 600000 bytes]"))))
      (should (< (buffer-size) 60000))
      (should (string-search "[truncated: 99964 of 600000 bytes]" (buffer-string))))))

(provide 'chatpipe-toolsafety-test)
;;; chatpipe-toolsafety-test.el ends here
