;;; chatpipe-keys-test.el --- ERT tests: keys, sending up to point, chat buffers -*- lexical-binding: t; -*-

;;; Commentary:

;; The keys of `chatpipe-mode' in Org, Markdown and chat buffers (the
;; major mode's keys stay the major mode's), sending up to point, and
;; several chat buffers of one template, named after it.

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)

(defconst chatpipe-test--answer-path "/replay/openai-chat/text-with-usage.sse"
  "The replay server's path of the answer of most tests here.")

(defun chatpipe-test--answer ()
  "Return the text of the answer at `chatpipe-test--answer-path'."
  (chatpipe-test--expected "openai-chat/text-with-usage.sse"))

(defun chatpipe-test--last-messages ()
  "Return the messages of the replay server's last request."
  (chatpipe-test--request-messages (car (last (chatpipe-test--requests)))))

(ert-deftest chatpipe-test-keys-org ()
  "In Org, C-c C-c on a checkbox toggles it; where Org has no use for it, it sends.
C-c RET stays Org's."
  (chatpipe-test--http "DELETE" "/requests")
  (let ((template (chatpipe-test--template chatpipe-test--answer-path)))
    (with-temp-buffer
      (org-mode)
      (insert "#+title: Notes\n\n- [ ] buy milk\n\n* User\n\nHi\n")
      (setq chatpipe-template template)
      (chatpipe-mode 1)
      (should (eq (key-binding (kbd "C-c RET")) 'org-ctrl-c-ret))
      (should (eq (key-binding (kbd "C-c C-c")) 'org-ctrl-c-ctrl-c))
      (should (eq (key-binding (kbd "C-c C-k"))
                  (lookup-key org-mode-map (kbd "C-c C-k"))))
      ;; On the checkbox: toggled, nothing sent, nothing inserted.
      (goto-char (point-min))
      (search-forward "[ ]")
      (call-interactively (key-binding (kbd "C-c C-c")))
      (should (equal (buffer-string)
                     "#+title: Notes\n\n- [X] buy milk\n\n* User\n\nHi\n"))
      (should (chatpipe-test--idle-p (current-buffer)))
      (should-not (chatpipe-test--requests))
      ;; At the end of the question, Org has no use for C-c C-c: it
      ;; sends the chat up to point.
      (search-forward "Hi")
      (call-interactively (key-binding (kbd "C-c C-c")))
      (should-not (chatpipe-test--idle-p (current-buffer)))
      (chatpipe-test--wait-idle (current-buffer))
      (should (equal (buffer-string)
                     (concat "#+title: Notes\n\n- [X] buy milk\n\n* User\n\nHi\n\n"
                             "* Assistant\n\n" (chatpipe-test--answer)
                             "\n\n* User\n\n"))))
    (should (equal (chatpipe-test--last-messages) '(("user" . "Hi"))))))

(ert-deftest chatpipe-test-keys-markdown ()
  "In markdown-mode, C-c C-c stays its prefix and C-c C-k its command.
C-c RET sends, in a notes buffer as in a chat buffer made by `chatpipe'."
  (chatpipe-test--require-markdown)
  (chatpipe-test--http "DELETE" "/requests")
  (let ((template (chatpipe-test--template chatpipe-test--answer-path))
        (chatpipe-major-mode #'markdown-mode))
    (with-temp-buffer
      (markdown-mode)
      (insert "# Notes\n\n### User\n\nHi")
      (setq chatpipe-template template)
      (chatpipe-mode 1)
      (should (keymapp (key-binding (kbd "C-c C-c"))))
      (should (equal (key-binding (kbd "C-c C-c"))
                     (lookup-key markdown-mode-map (kbd "C-c C-c"))))
      (should (eq (key-binding (kbd "C-c C-k"))
                  (lookup-key markdown-mode-map (kbd "C-c C-k"))))
      (should (eq (key-binding (kbd "C-c RET")) 'chatpipe-send))
      (call-interactively (key-binding (kbd "C-c RET")))
      (chatpipe-test--wait-idle (current-buffer))
      (should (equal (buffer-string)
                     (concat "# Notes\n\n" (chatpipe-test--chat-text
                                            '(user . "Hi")
                                            (cons 'assistant
                                                  (chatpipe-test--answer)))))))
    ;; The chat buffer of M-x chatpipe, in markdown-mode.
    (chatpipe-test--with-chat (buffer template)
      (should (eq major-mode 'markdown-mode))
      (should (keymapp (key-binding (kbd "C-c C-c"))))
      (should (eq (key-binding (kbd "C-c RET")) 'chatpipe-send))
      (insert "Again")
      (call-interactively (key-binding (kbd "C-c RET")))
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text
                      '(user . "Again")
                      (cons 'assistant (chatpipe-test--answer))))))
    (should (equal (chatpipe-test--last-messages) '(("user" . "Again"))))))

(ert-deftest chatpipe-test-keys-text-chat ()
  "In a chat buffer in text-mode, C-c RET sends; C-c C-c is not ours."
  (chatpipe-test--with-chat (buffer "local")
    (should (eq major-mode 'text-mode))
    (should (eq (key-binding (kbd "C-c RET")) 'chatpipe-send))
    (should-not (key-binding (kbd "C-c C-c")))
    (should-not (key-binding (kbd "C-c C-k")))))

(ert-deftest chatpipe-test-send-up-to-point ()
  "Only the chat up to point is sent; the answer goes at point.
Text after point stays after the answer, under a user heading."
  (chatpipe-test--http "DELETE" "/requests")
  (let ((template (chatpipe-test--template chatpipe-test--answer-path))
        (answer (chatpipe-test--answer)))
    (with-temp-buffer
      (text-mode)
      (insert "### User\n\nWhat is 2+2?\n\nA draft for later, not sent.\n")
      (setq chatpipe-template template)
      (goto-char (point-min))
      (end-of-line 3)
      (chatpipe-send)
      (chatpipe-test--wait-idle (current-buffer))
      (should (equal (chatpipe-test--last-messages)
                     '(("user" . "What is 2+2?"))))
      (should (equal (buffer-string)
                     (concat "### User\n\nWhat is 2+2?\n\n### Assistant\n\n"
                             answer "\n\n### User\n\nA draft for later, not \
sent.\n")))
      ;; Point followed the answer.
      (should (looking-at "### User\n\nA draft"))
      ;; Point in an earlier question: the turns after it stay as they are.
      (goto-char (point-min))
      (end-of-line 3)
      (insert " And 3+3?")
      (chatpipe-send)
      (chatpipe-test--wait-idle (current-buffer))
      (should (equal (chatpipe-test--last-messages)
                     '(("user" . "What is 2+2? And 3+3?"))))
      (should (equal (buffer-string)
                     (concat "### User\n\nWhat is 2+2? And 3+3?\n\n"
                             "### Assistant\n\n" answer "\n\n"
                             "### Assistant\n\n" answer "\n\n### User\n\n"
                             "A draft for later, not sent.\n")))
      ;; The region, when active, is what is sent.
      (goto-char (point-max))
      (transient-mark-mode 1)
      (push-mark (point-min) t t)
      (call-interactively #'chatpipe-send)
      (chatpipe-test--wait-idle (current-buffer))
      (should (equal (chatpipe-test--last-messages)
                     `(("user" . "What is 2+2? And 3+3?")
                       ("assistant" . ,answer) ("assistant" . ,answer)
                       ("user" . "A draft for later, not sent.")))))))

(defun chatpipe-test--buffer-names (template)
  "Return the names of the live chat buffers of TEMPLATE, sorted."
  (sort (cl-loop for buffer in (buffer-list)
                 when (string-prefix-p (format "*chatpipe: %s*" template)
                                       (buffer-name buffer))
                 collect (buffer-name buffer))
        #'string<))

(ert-deftest chatpipe-test-chats-of-one-template ()
  "Several chats per template: a new one when the last is busy or asked for.
Names follow the template; switching templates clears the status."
  (let* ((recording "openai-chat/text-with-usage.sse")
         (held (chatpipe-test--template
                (format "/replay/%s?hold=%d" recording
                        (chatpipe-test--hold-offset recording 5))))
         (other (chatpipe-test--template chatpipe-test--answer-path))
         (name (format "*chatpipe: %s*" held))
         (buffers nil))
    (unwind-protect
        (let ((b1 (chatpipe held)))
          (push b1 buffers)
          (should (equal (buffer-name b1) name))
          ;; Idle: M-x chatpipe goes back to it.
          (should (eq (chatpipe held) b1))
          (with-current-buffer b1 (chatpipe-test--ask "One?"))
          ;; Busy: a second chat of the same template.
          (let ((b2 (chatpipe held)))
            (push b2 buffers)
            (should-not (eq b2 b1))
            (should (equal (buffer-name b2) (concat name "<2>")))
            (should (equal (buffer-local-value 'chatpipe-template b2) held))
            (should (eq (chatpipe held) b2))
            ;; With a prefix argument (NEW), a new one.
            (let ((b3 (chatpipe held t)))
              (push b3 buffers)
              (should (equal (buffer-name b3) (concat name "<3>"))))
            ;; Another template: the name and the header follow it.
            (with-current-buffer b2
              (chatpipe-set-model "some-model")
              (setq chatpipe--status "done: 1 in, 1 out, 0.1 s")
              (chatpipe-select-template other)
              (should (equal (buffer-name) (format "*chatpipe: %s*" other)))
              (should-not chatpipe-model)
              ;; The model shown is the new template's.
              (should (equal (substring-no-properties (chatpipe-header-line))
                             (concat "chatpipe " other " [test-model]")))
              (chatpipe-test--ask "Two?")
              (chatpipe-test--wait-idle b2)
              (should (string-match-p (concat "\\`chatpipe " other
                                              " \\[test-model\\] | done: ")
                                      (substring-no-properties
                                       (chatpipe-header-line)))))
            (should (equal (chatpipe-test--buffer-names held)
                           (list name (concat name "<3>"))))))
      (chatpipe-test--http "POST" "/release")
      (dolist (buffer buffers)
        (when (buffer-live-p buffer)
          (with-current-buffer buffer (set-buffer-modified-p nil))
          (kill-buffer buffer))))))

(provide 'chatpipe-keys-test)
;;; chatpipe-keys-test.el ends here
