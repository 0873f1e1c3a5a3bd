;;; chatpipe-chats-test.el --- ERT tests: several chats, saved chats, buffers of other kinds -*- lexical-binding: t; -*-

;;; Commentary:

;; Two chats at once, saved chats continued, retries of an answer,
;; Org and plain text buffers, regions sent from code buffers.

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)

(ert-deftest chatpipe-test-two-buffers ()
  "Two chats stream at once, through one serve process."
  (let ((t1 (chatpipe-test--template
             "/replay/openai-chat/text-with-usage.sse?split=600&delay=0.1"))
        (t2 (chatpipe-test--template
             "/replay/openai-chat/utf8-multiline-json.sse?split=3000&delay=0.1")))
    (chatpipe-test--with-chat (b1 t1)
      (chatpipe-test--with-chat (b2 t2)
        (let ((s1 (with-current-buffer b1
                    (chatpipe--job-stream (chatpipe-test--ask "One?"))))
              (s2 (with-current-buffer b2
                    (chatpipe--job-stream (chatpipe-test--ask "Two?")))))
          ;; One process, two ids.
          (should (eq (chatpipe-stream-process s1) (chatpipe-stream-process s2)))
          (should-not (equal (chatpipe-stream-id s1) (chatpipe-stream-id s2)))
          (should (equal (mapcar #'process-command
                                 (cl-remove-if-not
                                  (lambda (p) (and (eq (process-type p) 'real)
                                                   (string-prefix-p
                                                    "chatpipe" (process-name p))))
                                  (process-list)))
                         (list (chatpipe-test--serve-command))))
          ;; Both have streamed some text while both are still going.
          (should (chatpipe-test--wait
                   (lambda ()
                     (and (> (length (with-current-buffer b1 (buffer-string)))
                             40)
                          (> (length (with-current-buffer b2 (buffer-string)))
                             40)))))
          (should-not (chatpipe-test--idle-p b1))
          (should-not (chatpipe-test--idle-p b2))
          (chatpipe-test--wait-idle b1)
          (chatpipe-test--wait-idle b2)
          (should (equal (with-current-buffer b1 (buffer-string))
                         (chatpipe-test--chat-text
                          '(user . "One?")
                          (cons 'assistant (chatpipe-test--expected
                                            "openai-chat/text-with-usage.sse")))))
          (should (equal (with-current-buffer b2 (buffer-string))
                         (chatpipe-test--chat-text
                          '(user . "Two?")
                          (cons 'assistant
                                (chatpipe-test--expected
                                 "openai-chat/utf8-multiline-json.sse"))))))))))

(ert-deftest chatpipe-test-saved-chat-continued ()
  "A chat saved to a file, reopened and continued sends the first turns."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((template (chatpipe-test--template
                    "/replay/openai-chat/text-with-usage.sse"))
         (answer (chatpipe-test--expected "openai-chat/text-with-usage.sse"))
         (file (expand-file-name "chat.md" chatpipe-test-tmp))
         (chatpipe-default-template template))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--ask chatpipe-test--question)
      (chatpipe-test--wait-idle buffer)
      (write-file file))
    (should-not (get-file-buffer file))
    (let ((buffer (find-file-noselect file)))
      (unwind-protect
          (with-current-buffer buffer
            ;; The file turns `chatpipe-mode' on and names its template.
            (should chatpipe-mode)
            (should (equal chatpipe-template template))
            ;; The next question goes in the empty user turn, before the
            ;; file's Local Variables, which are no part of the chat.
            (goto-char (point-max))
            (re-search-backward "^### User\n\n")
            (goto-char (match-end 0))
            (insert "And tomorrow?")
            (chatpipe-send)
            (chatpipe-test--wait-idle buffer)
            (let ((chat (chatpipe-test--chat-text
                         (cons 'user chatpipe-test--question)
                         (cons 'assistant answer)
                         '(user . "And tomorrow?")
                         (cons 'assistant answer))))
              (should (string-prefix-p chat (buffer-string)))
              (should (string-match-p "\\`\n\n\f\n.*Local Variables:"
                                      (substring (buffer-string)
                                                 (length chat)))))
            (save-buffer)
            (should (equal (with-temp-buffer
                             (insert-file-contents file)
                             (buffer-string))
                           (buffer-string))))
        (kill-buffer buffer)))
    (let ((requests (chatpipe-test--requests)))
      (should (= 2 (length requests)))
      (should (equal (chatpipe-test--request-messages (nth 1 requests))
                     `(("user" . ,chatpipe-test--question)
                       ("assistant" . ,answer)
                       ("user" . "And tomorrow?")))))))

(ert-deftest chatpipe-test-retry ()
  "Retry replaces the last answer and sends the chat without it."
  (chatpipe-test--http "DELETE" "/requests")
  (let ((failing (chatpipe-test--template "/error/500"))
        (working (chatpipe-test--template
                  "/replay/openai-chat/text-with-usage.sse?split=100"))
        (multiline (chatpipe-test--template
                    "/replay/openai-chat/utf8-multiline-json.sse"))
        (answer (chatpipe-test--expected "openai-chat/text-with-usage.sse")))
    (chatpipe-test--with-chat (buffer failing)
      (chatpipe-test--ask "Hi")
      (chatpipe-test--wait-idle buffer)
      (should (string-search "[error: HTTP 500: " (buffer-string)))
      (chatpipe-select-template working)
      (goto-char (point-min))
      (chatpipe-retry)
      (chatpipe-test--wait-idle buffer)
      (should (= (point) (point-min)))
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text
                      '(user . "Hi") (cons 'assistant answer))))
      ;; Again, with a question already typed in the next turn.
      (goto-char (point-max))
      (insert "Next question")
      (chatpipe-retry)
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (concat "### User\n\nHi\n\n### Assistant\n\n" answer
                             "\n\n### User\n\nNext question")))
      (should (= (point) (point-max)))
      ;; An answer that ends with a newline: still one blank line after it.
      (chatpipe-select-template multiline)
      (chatpipe-retry)
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (concat "### User\n\nHi\n\n### Assistant\n\n"
                             (chatpipe-test--expected
                              "openai-chat/utf8-multiline-json.sse")
                             "\n### User\n\nNext question")))
      ;; One undo brings the answer it replaced back.
      (undo-boundary)
      (let ((last-command nil)) (undo))
      (should (equal (buffer-string)
                     (concat "### User\n\nHi\n\n### Assistant\n\n" answer
                             "\n\n### User\n\nNext question"))))
    (let ((requests (chatpipe-test--requests)))
      (should (= 4 (length requests)))
      (dolist (request requests)
        (should (equal (chatpipe-test--request-messages request)
                       '(("user" . "Hi"))))))))

(ert-deftest chatpipe-test-ask-again-after-error ()
  "A question asked again after a failed answer is sent once, not twice.
The failed answer sends nothing, so the user turns around it are one
message: the same text once, other texts joined by a blank line."
  (chatpipe-test--http "DELETE" "/requests")
  (let ((failing (chatpipe-test--template "/error/500"))
        (working (chatpipe-test--template
                  "/replay/openai-chat/text-with-usage.sse"))
        (answer (chatpipe-test--expected "openai-chat/text-with-usage.sse")))
    (chatpipe-test--with-chat (buffer failing)
      (chatpipe-test--ask "Hi")
      (chatpipe-test--wait-idle buffer)
      (should (string-search "[error: HTTP 500: " (buffer-string)))
      (chatpipe-select-template working)
      ;; The same question, typed again in the next turn.
      (chatpipe-test--ask "Hi")
      (chatpipe-test--wait-idle buffer)
      (should (string-match-p (concat "\\`### User\n\nHi\n\n### Assistant\n\n\\[error: \
.*\\]\n\n### User\n\nHi\n\n### Assistant\n\n" (regexp-quote answer)
                                      "\n\n### User\n\n\\'")
                              (buffer-string)))
      ;; Failed again, then another text: both go, as one message.
      (chatpipe-select-template failing)
      (chatpipe-test--ask "And tomorrow?")
      (chatpipe-test--wait-idle buffer)
      (chatpipe-select-template working)
      (chatpipe-test--ask "Please try again.")
      (chatpipe-test--wait-idle buffer))
    (let ((requests (mapcar #'chatpipe-test--request-messages
                            (chatpipe-test--requests))))
      (should (equal requests
                     `((("user" . "Hi"))
                       (("user" . "Hi"))
                       (("user" . "Hi") ("assistant" . ,answer)
                        ("user" . "And tomorrow?"))
                       (("user" . "Hi") ("assistant" . ,answer)
                        ("user" . "And tomorrow?\n\nPlease try again."))))))))

;;;; Buffers of other kinds

(ert-deftest chatpipe-test-org-buffer-with-system-prompt ()
  "An Org notes buffer: Org headings, a system turn, a preamble left out."
  (chatpipe-test--http "DELETE" "/requests")
  (let ((template (chatpipe-test--template
                   "/replay/openai-chat/text-with-usage.sse"))
        (answer (chatpipe-test--expected "openai-chat/text-with-usage.sse")))
    (with-temp-buffer
      (org-mode)
      (insert "#+title: Notes\n\nSome notes.\n\n* System\n\nBe brief.\n\n"
              "* User\n\nHi\n")
      (setq chatpipe-template template)
      (chatpipe-send)
      (chatpipe-test--wait-idle (current-buffer))
      (should (equal (buffer-string)
                     (concat "#+title: Notes\n\nSome notes.\n\n* System\n\n"
                             "Be brief.\n\n* User\n\nHi\n\n* Assistant\n\n"
                             answer "\n\n* User\n\n"))))
    (should (equal (chatpipe-test--request-messages
                    (car (last (chatpipe-test--requests))))
                   '(("system" . "Be brief.") ("user" . "Hi"))))))

(ert-deftest chatpipe-test-text-without-headings ()
  "Text without headings is the question; a user heading is added."
  (let ((template (chatpipe-test--template
                   "/replay/openai-chat/text-with-usage.sse"))
        (answer (chatpipe-test--expected "openai-chat/text-with-usage.sse")))
    (with-temp-buffer
      (text-mode)
      (insert "\nHow warm is it?\n\n")
      (setq chatpipe-template template)
      (chatpipe-send)
      (should chatpipe-mode)
      (chatpipe-test--wait-idle (current-buffer))
      (should (equal (buffer-string)
                     (concat "\n" (chatpipe-test--chat-text
                                   '(user . "How warm is it?")
                                   (cons 'assistant answer))))))))

(ert-deftest chatpipe-test-send-region ()
  "A region sent with an instruction from a code buffer."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((template (chatpipe-test--template
                    "/replay/openai-chat/text-with-usage.sse"))
         (answer (chatpipe-test--expected "openai-chat/text-with-usage.sse"))
         (question "Explain this.\n\n```emacs-lisp\n(+ 1 2)\n```")
         chat)
    (unwind-protect
        (with-temp-buffer
          (emacs-lisp-mode)
          (insert ";; code\n(+ 1 2)\n;; more\n")
          (setq chat (chatpipe-send-region 9 17 "Explain this." template))
          (chatpipe-test--wait-idle chat)
          (should (equal (with-current-buffer chat (buffer-string))
                         (chatpipe-test--chat-text
                          (cons 'user question) (cons 'assistant answer))))
          ;; A second region goes to the same chat, in a new turn.
          (should (eq chat (chatpipe-send-region 1 8 "" template)))
          (chatpipe-test--wait-idle chat)
          (should (equal (chatpipe-test--request-messages
                          (car (last (chatpipe-test--requests))))
                         `(("user" . ,question) ("assistant" . ,answer)
                           ("user" . "```emacs-lisp\n;; code\n```")))))
      (when (buffer-live-p chat) (kill-buffer chat)))))

(provide 'chatpipe-chats-test)
;;; chatpipe-chats-test.el ends here
