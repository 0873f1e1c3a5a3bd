;;; chatpipe-toolblocks-test.el --- ERT tests: MCP tools, tool blocks, saved tools -*- lexical-binding: t; -*-

;;; Commentary:

;; Tool blocks' text in Markdown and Org: the messages they give,
;; their escapes and flags, folding, and their conversion when the
;; file type changes.

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)

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

(provide 'chatpipe-toolblocks-test)
;;; chatpipe-toolblocks-test.el ends here
