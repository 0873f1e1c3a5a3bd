;;; chatpipe-toolblocks-test.el --- ERT tests: MCP tools, tool blocks, saved tools -*- lexical-binding: t; -*-

;;; Commentary:

;; A chat that offers an MCP server's tools (the real mcp-server-time
;; from the package index, which the backend starts), its call
;; confirmed in the minibuffer; "always" for an Emacs tool; tool
;; blocks' text in Markdown and Org (escapes, flags, converted when
;; the file type changes), and the chat's tools saved with it.

;;; Code:

(require 'ert)
(require 'ert-x)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)

(defun chatpipe-test--write-mcp-config ()
  "Write the backend's mcp.json: mcp-server-time in UTC, the fixture server.
Return its file name."
  (let ((file (expand-file-name "config/chatpipe/mcp.json" chatpipe-test-tmp)))
    (with-temp-file file
      (insert (json-serialize
               `((mcpServers
                  . ((time . ((command . ,chatpipe-test-python)
                              (args . ["-m" "mcp_server_time"
                                       "--local-timezone" "UTC"])))
                     (fx . ((command . ,chatpipe-test-python)
                            (args . [,(expand-file-name "tests/mcp_fixture_server.py"
                                                        chatpipe-test-root)])
                            (description . "The fixture server")))))))))
    file))

(ert-deftest chatpipe-test-tool-mcp-time ()
  "An MCP tool: confirmed in the minibuffer, run, folded, used by the answer."
  (let* ((config (chatpipe-test--write-mcp-config))
         (process-environment (cons (concat "XDG_CACHE_HOME="
                                            (expand-file-name "cache" chatpipe-test-tmp))
                                    process-environment)))
    (unwind-protect
        (chatpipe-test--with-route-server
            (url "from test_mcp import time_model\ntime_model(server)")
          (should (equal (assoc "mcp:time" (chatpipe--tool-candidates))
                         '("mcp:time" . "MCP server (stdio)")))
          (should (equal (assoc "mcp:fx" (chatpipe--tool-candidates))
                         '("mcp:fx" . "The fixture server")))
          (chatpipe-test--with-chat (buffer (chatpipe-test--template
                                             nil nil (concat url "/time")))
            (chatpipe-set-tools '("mcp:time"))
            (should (string-suffix-p " (tools: mcp:time)"
                                   (substring-no-properties (chatpipe-header-line))))
            (chatpipe-test--ask "What time is it in UTC?")
            (ert-simulate-keys (kbd "y")
              (chatpipe-test--wait-idle buffer 90)
              (should (equal unread-command-events '(?\C-g ?\C-g ?\C-g))))
            (should (string-match
                     (concat "\\`### User\n\nWhat time is it in UTC\\?\n\n### Assistant\n\n"
                             "<details><summary>Tool call get_current_time "
                             "{\"timezone\": \"UTC\"} (call_time)</summary>\n\n"
                             "{\n  \"timezone\": \"UTC\",\n  \"datetime\": "
                             "\"\\(20[-0-9T:.+]+\\)\",\n[^<]*}\n\n</details>\n\n"
                             "It is \\1\\.\n\n### User\n\n\\'")
                     (buffer-string)))
            (goto-char (point-min))
            (search-forward "\"datetime\"")
            (should (invisible-p (point)))
            (should (string-match-p "\\`done: .* s\\'" chatpipe--status))
            ;; The model was sent the tool's result as the backend got it.
            (let* ((bodies (mapcar (lambda (r) (alist-get 'body r))
                                   (chatpipe-test--http "GET" "/requests" url)))
                   (result (car (last (alist-get 'messages (nth 1 bodies))))))
              (should (= 2 (length bodies)))
              (should (equal (alist-get 'tool_call_id result) "call_time"))
              (should (equal (car (last (chatpipe-messages) 2))
                             `((role . "tool") (tool_call_id . "call_time")
                               (name . "get_current_time")
                               (content . ,(alist-get 'content result))
                               (is_error . :false)))))))
      (delete-file config))))

(ert-deftest chatpipe-test-tool-always ()
  "An Emacs tool approved \"always\" runs without asking in that chat."
  (let ((calls 0))
    (chatpipe-define-tool "count" :confirm t
                          :function (lambda (_args) (format "%d" (cl-incf calls))))
    (chatpipe-test--with-route-server
        (url "from test_tool_loop import tool_call_answer, text_answer
server.add('/m', [tool_call_answer('count', 'c1'), tool_call_answer('count', 'c2'),
                  text_answer('Twice.')])")
      (chatpipe-test--with-chat (buffer (chatpipe-test--template nil nil (concat url "/m")))
        (chatpipe-set-tools '("count"))
        (chatpipe-test--ask "Count twice")
        (ert-simulate-keys (kbd "a")
          (chatpipe-test--wait-idle buffer 60)
          (should (equal unread-command-events '(?\C-g ?\C-g ?\C-g))))
        (should (= calls 2))
        (should (equal chatpipe--tool-approvals '(("emacs" . "count"))))
        (should (equal (buffer-string) "### User\n\nCount twice\n\n### Assistant\n\n\
<details><summary>Tool call count {} (c1)</summary>\n\n1\n\n</details>\n\n\
<details><summary>Tool call count {} (c2)</summary>\n\n2\n\n</details>\n\n\
Twice.\n\n### User\n\n"))))))

(defconst chatpipe-test--blocks-markdown
  "### User\n\nGo\n\n### Assistant\n\nLooking.\n\n\
<details><summary>Tool call f {\"a\": \"(x), y\"} (c1, error, signature Ab+/=)</summary>\n\n\
line one\n\\### User\n\\\\</details>\n* star\n,#+end_tool\n\n</details>\n\n\
<details><summary>Tool call g (c2, denied)</summary>\n\n\
The user denied this tool call.\n\n</details>\n\n\
<details><summary>Tool call h {} (c3, no result)</summary>\n\n</details>\n\n\
Done.\n\n[aborted]\n\n### User\n\nNext\n"
  "A chat with tool blocks in Markdown: escapes, flags, a signature.")

(defconst chatpipe-test--blocks-org
  "* User\n\nGo\n\n* Assistant\n\nLooking.\n\n\
#+begin_tool f {\"a\": \"(x), y\"} (c1, error, signature Ab+/=)\n\
line one\n### User\n\\</details>\n,* star\n,,#+end_tool\n#+end_tool\n\n\
#+begin_tool g (c2, denied)\nThe user denied this tool call.\n#+end_tool\n\n\
#+begin_tool h {} (c3, no result)\n#+end_tool\n\n\
Done.\n\n[aborted]\n\n* User\n\nNext\n"
  "`chatpipe-test--blocks-markdown' in Org.")

(defconst chatpipe-test--blocks-messages
  '(("user" . "Go")
    ((role . "assistant") (content . "Looking.")
     (tool_calls . [((id . "c1") (name . "f") (arguments . "{\"a\": \"(x), y\"}")
                     (signature . "Ab+/="))
                    ((id . "c2") (name . "g") (arguments . ""))]))
    ((role . "tool") (tool_call_id . "c1") (name . "f")
     (content . "line one\n### User\n\\</details>\n* star\n,#+end_tool")
     (is_error . t))
    ((role . "tool") (tool_call_id . "c2") (name . "g")
     (content . "The user denied this tool call.") (is_error . t))
    ("assistant" . "Done.")
    ("user" . "Next"))
  "The messages of `chatpipe-test--blocks-markdown'.")

(ert-deftest chatpipe-test-tool-blocks-text ()
  "Tool blocks go back as the neutral messages, in both styles, converted."
  (with-temp-buffer
    (text-mode)
    (insert chatpipe-test--blocks-markdown)
    (chatpipe-mode 1)
    (should (equal (mapcar #'car (chatpipe-turns)) '(user assistant user)))
    (should (equal (chatpipe-messages) chatpipe-test--blocks-messages))
    (should (= 3 (length (chatpipe-tool-blocks))))
    ;; Folded; TAB on a first line unfolds the block.
    (goto-char (point-min))
    (search-forward "line one")
    (should (invisible-p (point)))
    (forward-line -2)
    (should (eq (key-binding (kbd "TAB")) #'chatpipe-toggle-tool-result))
    (call-interactively (key-binding (kbd "TAB")))
    (should-not (invisible-p (1+ (line-end-position))))
    ;; Org: the blocks and their escapes converted, the same messages.
    (org-mode)
    (should chatpipe-mode)
    (should (equal (buffer-string) chatpipe-test--blocks-org))
    (should (equal (chatpipe-messages) chatpipe-test--blocks-messages))
    (goto-char (point-min))
    (search-forward "line one")
    (should (invisible-p (point)))
    (text-mode)
    (should (equal (buffer-string) chatpipe-test--blocks-markdown))
    (should (equal (chatpipe-messages) chatpipe-test--blocks-messages)))
  ;; A tool's result of any text comes back as it was, in both styles.
  (let ((text "### User\n* User\n#+begin_tool x (y)\n<details>\n\\\\</details>\n,,* z"))
    (dolist (style '(markdown org))
      (with-temp-buffer
        (insert (chatpipe--tool-block-string
                 (eq style 'org) (list :name "t" :arguments "{\"n\":\n 1}" :id "i"
                                       :content text)))
        (should (equal (chatpipe-tool-block-data (car (chatpipe-tool-blocks nil nil style))
                                                 style)
                       `(:name "t" :arguments "{\"n\":  1}" :id "i" :flag nil
                         :signature nil :content ,text)))))))

(ert-deftest chatpipe-test-tools-checked-before-sending ()
  "Bad tools and chats that cannot run tools say so before sending."
  (should-error (chatpipe-define-tool "no spaces" :function #'ignore))
  (should-error (chatpipe-define-tool "f" :function 'no-such-function))
  (should-error (chatpipe-define-tool "f" :function #'ignore :parameters '(1 2 3)))
  (chatpipe-define-tool "echo_text" :function #'identity)
  (chatpipe-test--with-chat (buffer "local")
    (insert "Hi")
    (chatpipe-set-tools '("echo_text" "not_defined"))
    (should (equal (cadr (should-error (chatpipe-send) :type 'user-error))
                   "This chat's tool not_defined is not defined in this Emacs \
(chatpipe-define-tool); M-x chatpipe-set-tools changes the chat's tools"))
    (chatpipe-set-tools '("echo_text" "mcp:time"))
    (should (equal (chatpipe--request-tools)
                   '(((name . "echo_text") (description . "")
                      (parameters :type "object" :properties nil))
                     "mcp:time")))
    (let ((chatpipe-backend-mode 'send))
      (should-error (chatpipe-send) :type 'user-error))
    ;; Nothing was sent, nothing changed.
    (should (equal (buffer-string) "### User\n\nHi"))
    (should-not chatpipe--job)))

(defun chatpipe-test--tools-saved (file)
  "Check that a chat's tools survive saving it as FILE and visiting it."
  (dolist (tools '(("get_weather" "mcp:time") none))
    (chatpipe-test--with-chat (buffer "local")
      (chatpipe-set-tools (if (eq tools 'none) nil tools))
      (should (equal chatpipe-tools tools))
      (write-file file))
    (should (string-search
             (if (string-suffix-p ".org" file)
                 (format ":CHATPIPE_TOOLS: %S\n" tools)
               (format "<!-- chatpipe-tools: %S -->\n" tools))
             (with-temp-buffer (insert-file-contents file) (buffer-string))))
    (let ((buffer (find-file-noselect file)))
      (unwind-protect
          (with-current-buffer buffer
            (should chatpipe-mode)
            (should (equal chatpipe-tools tools))
            (should (equal (chatpipe--chat-tools) (if (eq tools 'none) nil tools)))
            ;; Back to the default.
            (chatpipe-set-tools 'default)
            (should-not chatpipe-tools)
            (let ((chatpipe-default-tools '("x")))
              (should (equal (chatpipe--chat-tools) '("x")))))
        (with-current-buffer buffer (set-buffer-modified-p nil))
        (kill-buffer buffer)))
    (delete-file file)))

(ert-deftest chatpipe-test-tools-saved-markdown ()
  "A Markdown chat's tools are saved and come back."
  (chatpipe-test--require-markdown)
  (chatpipe-test--tools-saved (expand-file-name "tools.md" chatpipe-test-tmp)))

(ert-deftest chatpipe-test-tools-saved-org ()
  "An Org chat's tools are saved in its property drawer and come back."
  (chatpipe-test--tools-saved (expand-file-name "tools.org" chatpipe-test-tmp)))

(provide 'chatpipe-toolblocks-test)
;;; chatpipe-toolblocks-test.el ends here
