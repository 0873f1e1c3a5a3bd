;;; chatpipe-save-test.el --- ERT tests: chats saved with their settings, parameters -*- lexical-binding: t; -*-

;;; Commentary:

;; A chat saved as Markdown or Org and visited again comes back with
;; `chatpipe-mode', its template, model, parameters, system prompt and
;; template variables, and headings in the style of the file type.
;; The parameters and the system prompt reach the request body and
;; show in the header line.

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)

(defconst chatpipe-test--system-text "Answer in one line.\nNo \\n escapes."
  "A system prompt of two lines, with a backslash.")

(defun chatpipe-test--set-up-chat (model)
  "Give the current chat MODEL and the settings the saving tests check."
  (chatpipe-set-model model)
  (chatpipe-set-temperature 0.7)
  (chatpipe-set-max-tokens 500)
  (chatpipe-set-system-prompt chatpipe-test--system-text)
  (chatpipe-set-template-var "lang" "French"))

(defun chatpipe-test--check-settings (template model)
  "Check that the current chat has TEMPLATE, MODEL and the test settings."
  (should chatpipe-mode)
  (should (equal chatpipe-template template))
  (should (equal chatpipe-model model))
  (should (equal chatpipe-temperature 0.7))
  (should (equal chatpipe-max-tokens 500))
  (should (equal chatpipe-system chatpipe-test--system-text))
  (should (equal chatpipe-template-vars '(("lang" . "French"))))
  (should (string-search (format "%s [%s] (temperature 0.7, max 500 tokens, \
system: custom)" template model)
                         (substring-no-properties (chatpipe-header-line)))))

(defun chatpipe-test--check-request (model question)
  "Check the replay server's last request: MODEL, settings, QUESTION last."
  (let* ((request (car (last (chatpipe-test--requests))))
         (body (alist-get 'body request))
         (messages (chatpipe-test--request-messages request)))
    (should (equal (alist-get 'model body) model))
    (should (equal (alist-get 'temperature body) 0.7))
    (should (equal (alist-get 'max_tokens body) 500))
    (should (equal (car messages) (cons "system" chatpipe-test--system-text)))
    (should (equal (car (last messages)) (cons "user" question)))
    (should-not (cl-some (lambda (m) (string-search "Local Variables" (cdr m)))
                         messages))))

(defun chatpipe-test--file-text (file)
  "Return the text of FILE."
  (with-temp-buffer
    (insert-file-contents file)
    (buffer-string)))

(defun chatpipe-test--type-in-last-turn (question)
  "Type QUESTION in the chat's last, empty, user turn; send it."
  (goto-char (chatpipe--chat-end))
  (re-search-backward (concat "^" (regexp-quote (chatpipe--heading 'user))
                              "\n\n"))
  (goto-char (match-end 0))
  (insert question)
  (chatpipe-send))

(ert-deftest chatpipe-test-save-markdown ()
  "A chat written to a .md file and visited again is the same chat."
  (chatpipe-test--require-markdown)
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((template (chatpipe-test--template
                    "/replay/openai-chat/text-with-usage.sse"))
         (answer (chatpipe-test--expected "openai-chat/text-with-usage.sse"))
         (file (expand-file-name "saved.md" chatpipe-test-tmp))
         (chat (chatpipe-test--chat-text '(user . "Hi")
                                         (cons 'assistant answer))))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--set-up-chat "model-a")
      (chatpipe-test--ask "Hi")
      (chatpipe-test--wait-idle buffer)
      (chatpipe-test--check-request "model-a" "Hi")
      (write-file file)
      (should (eq major-mode 'markdown-mode))
      (chatpipe-test--check-settings template "model-a")
      (should (string-prefix-p chat (buffer-string))))
    (let ((text (chatpipe-test--file-text file)))
      (should (string-prefix-p chat text))
      (dolist (line (list (format "<!-- chatpipe-template: %S -->" template)
                          "<!-- chatpipe-model: \"model-a\" -->"
                          "<!-- chatpipe-temperature: 0.7 -->"
                          "<!-- chatpipe-max-tokens: 500 -->"
                          "<!-- chatpipe-system: \"Answer in one line.\\nNo \
\\\\n escapes.\" -->"
                          "<!-- eval: (chatpipe-mode 1) -->"))
        (should (string-search (concat "\n" line "\n") text))))
    (let ((buffer (find-file-noselect file)))
      (unwind-protect
          (with-current-buffer buffer
            (should (eq major-mode 'markdown-mode))
            (chatpipe-test--check-settings template "model-a")
            (should (equal (chatpipe-messages)
                           `(("user" . "Hi") ("assistant" . ,answer))))
            (chatpipe-test--type-in-last-turn "Again?")
            (chatpipe-test--wait-idle buffer)
            (chatpipe-test--check-request "model-a" "Again?")
            (should (equal (length (chatpipe-test--request-messages
                                    (car (last (chatpipe-test--requests)))))
                           4))
            (save-buffer)
            (should (equal (chatpipe-test--file-text file) (buffer-string))))
        (with-current-buffer buffer (set-buffer-modified-p nil))
        (kill-buffer buffer)))))

(ert-deftest chatpipe-test-save-org ()
  "A Markdown-style chat written to a .org file gets Org headings and blocks.
Its settings are the file's properties; visited again, it is the
same chat."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((recording "deepseek/reasoner-reasoning-content.sse")
         (template (chatpipe-test--template (concat "/replay/" recording)))
         (answer (chatpipe-test--expected recording))
         (file (expand-file-name "saved.org" chatpipe-test-tmp))
         (chatpipe-reasoning-display 'fold))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--set-up-chat "model-b")
      (chatpipe-test--ask "Hi")
      (chatpipe-test--wait-idle buffer)
      (should (string-search "\n<details><summary>Reasoning</summary>\n"
                             (buffer-string)))
      (write-file file)
      (should (eq major-mode 'org-mode))
      (chatpipe-test--check-settings template "model-b")
      ;; Org's headings and reasoning block; no "###" turn is left.
      (should (equal (mapcar #'car (chatpipe-turns)) '(user assistant user)))
      (should (equal (chatpipe-messages)
                     `(("user" . "Hi") ("assistant" . ,answer))))
      (should-not (string-match-p "^###" (buffer-string)))
      (should-not (string-search "<details>" (buffer-string)))
      (should (= 1 (length (chatpipe-reasoning-blocks))))
      (should (string-search ":END:\n\n* User\n\nHi\n\n* Assistant\n\n\
#+begin_reasoning\n" (buffer-string))))
    (let ((text (chatpipe-test--file-text file)))
      (should (string-prefix-p
               (format ":PROPERTIES:\n:CHATPIPE_TEMPLATE: %s\n\
:CHATPIPE_MODEL: model-b\n:CHATPIPE_TEMPERATURE: 0.7\n:CHATPIPE_MAX_TOKENS: 500\n\
:CHATPIPE_SYSTEM: Answer in one line.\\nNo \\\\n escapes.\n\
:CHATPIPE_VARS: ((\"lang\" . \"French\"))\n:END:\n\n* User\n\nHi\n\n" template)
               text))
      (should (string-suffix-p (concat "\n* User\n\n\n\f\n# Local Variables:\n"
                                       "# eval: (chatpipe-mode 1)\n# End:\n")
                               text)))
    (let ((buffer (find-file-noselect file)))
      (unwind-protect
          (with-current-buffer buffer
            (should (eq major-mode 'org-mode))
            (chatpipe-test--check-settings template "model-b")
            (chatpipe-test--type-in-last-turn "Again?")
            (chatpipe-test--wait-idle buffer)
            (chatpipe-test--check-request "model-b" "Again?")
            (should (equal (chatpipe-test--request-messages
                            (car (last (chatpipe-test--requests))))
                           `(("system" . ,chatpipe-test--system-text)
                             ("user" . "Hi") ("assistant" . ,answer)
                             ("user" . "Again?"))))
            (should (string-search (concat "* User\n\nAgain?\n\n* Assistant\n\n"
                                           "#+begin_reasoning\n")
                                   (buffer-string)))
            (should (string-suffix-p "\n\n* User\n\n\n\n\f\n# Local Variables:\n\
# eval: (chatpipe-mode 1)\n# End:\n" (buffer-string))))
        (with-current-buffer buffer (set-buffer-modified-p nil))
        (kill-buffer buffer)))))

;;;; Typing at the end of a saved chat, after its Local Variables

(defun chatpipe-test--count (string text)
  "Return how many times STRING occurs in TEXT."
  (let ((count 0) (start 0))
    (while (setq start (string-search string text start))
      (setq count (1+ count) start (+ start (length string))))
    count))

(defun chatpipe-test--chat-before-block (text setting)
  "Check that TEXT, a saved chat, ends with its only Local Variables block.
The block is whole and last, after a page break line, with one eval
entry; SETTING, the name of the template setting, occurs once in
TEXT.  Return the chat before the page break, without an Org
property drawer at its top."
  (should (string-match "\\(?:\n\\|\\`\\)\\(\f\n[^\n]*Local Variables:\\)" text))
  (let ((chat (substring text 0 (match-beginning 1)))
        (block (substring text (match-beginning 1))))
    (should (string-match-p "\\`\f\n[^\n]*Local Variables:[^\n]*\n\\(?:.*\n\\)*\
[^\n]*End:[^\n]*\n\\'" block))
    (should (= 1 (chatpipe-test--count "Local Variables:" text)))
    (should (= 1 (chatpipe-test--count "eval: (chatpipe-mode 1)" text)))
    (should (= 1 (chatpipe-test--count setting text)))
    (replace-regexp-in-string "\\`:PROPERTIES:\n\\(?:.*\n\\)*?:END:\n\n" ""
                              chat)))

(defun chatpipe-test--send-at-end (extension)
  "Continue a saved chat by typing at its file's end, after the settings.
EXTENSION is the file's: \"md\", \"txt\" or \"org\".  The Local
Variables block is never sent, the answers go before it, and saving
keeps one block, at the end, with one entry of each setting."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((template (chatpipe-test--template
                    "/replay/openai-chat/text-with-usage.sse"))
         (answer (chatpipe-test--expected "openai-chat/text-with-usage.sse"))
         (file (expand-file-name (concat "at-end." extension) chatpipe-test-tmp))
         (headings (if (equal extension "org") chatpipe-org-headings
                     chatpipe-headings))
         (setting (if (equal extension "org") "CHATPIPE_TEMPLATE"
                    "chatpipe-template"))
         (chat (lambda (&rest questions)
                 (concat (mapconcat (lambda (q)
                                      (format "%s\n\n%s\n\n%s\n\n%s\n\n"
                                              (alist-get 'user headings) q
                                              (alist-get 'assistant headings)
                                              answer))
                                    questions "")
                         (alist-get 'user headings) "\n\n")))
         (send (lambda ()
                 (if (derived-mode-p 'org-mode)
                     (org-ctrl-c-ctrl-c)
                   (call-interactively #'chatpipe-send))
                 (chatpipe-test--wait-idle (current-buffer))
                 (chatpipe-test--request-messages
                  (car (last (chatpipe-test--requests)))))))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--ask "Hi")
      (chatpipe-test--wait-idle buffer)
      (write-file file))
    (let ((buffer (find-file-noselect file)))
      (unwind-protect
          (with-current-buffer buffer
            (should chatpipe-mode)
            ;; M-> (after the block's End: line), a question, send.
            (goto-char (point-max))
            (should (string-match-p "End:" (buffer-substring
                                            (line-beginning-position 0) (point))))
            (insert "Again?")
            ;; Saved as it is: the block is found, and kept to one entry each.
            (save-buffer)
            (let ((text (chatpipe-test--file-text file)))
              (should (string-match-p "End:[^\n]*\nAgain\\?\n*\\'" text))
              (should (= 1 (chatpipe-test--count "eval: (chatpipe-mode 1)" text)))
              (should (= 1 (chatpipe-test--count setting text))))
            (should (equal (funcall send)
                           `(("user" . "Hi") ("assistant" . ,answer)
                             ("user" . "Again?"))))
            (should (equal (chatpipe-test--chat-before-block (buffer-string) setting)
                           (concat (funcall chat "Hi" "Again?") "\n\n")))
            ;; A question in the last turn, sent with point after the
            ;; block: the turn above the block is sent.
            (goto-char (chatpipe--chat-end))
            (re-search-backward (concat "^" (regexp-quote (alist-get 'user headings))
                                        "\n\n"))
            (goto-char (match-end 0))
            (insert "Third?")
            (goto-char (point-max))
            (should (equal (last (funcall send)) '(("user" . "Third?"))))
            (save-buffer)
            (should (equal (chatpipe-test--chat-before-block
                            (chatpipe-test--file-text file) setting)
                           (concat (funcall chat "Hi" "Again?" "Third?") "\n\n"))))
        (with-current-buffer buffer (set-buffer-modified-p nil))
        (kill-buffer buffer)))
    ;; Visited again: the same chat, with its settings.
    (let ((buffer (find-file-noselect file)))
      (unwind-protect
          (with-current-buffer buffer
            (should chatpipe-mode)
            (should (equal chatpipe-template template))
            (should (equal (chatpipe-messages)
                           `(("user" . "Hi") ("assistant" . ,answer)
                             ("user" . "Again?") ("assistant" . ,answer)
                             ("user" . "Third?") ("assistant" . ,answer)))))
        (kill-buffer buffer)))))

(ert-deftest chatpipe-test-send-after-local-variables-markdown ()
  "Markdown: typed after the saved chat's Local Variables, sent without them."
  (chatpipe-test--require-markdown)
  (chatpipe-test--send-at-end "md"))

(ert-deftest chatpipe-test-send-after-local-variables-text ()
  "Plain text: typed after the saved chat's Local Variables, sent without them."
  (chatpipe-test--send-at-end "txt"))

(ert-deftest chatpipe-test-send-after-local-variables-org ()
  "Org: typed after the Local Variables, sent without them or the properties."
  (chatpipe-test--send-at-end "org"))

(ert-deftest chatpipe-test-write-file-without-markdown-mode ()
  "\\[write-file] chat.md without markdown-mode: still a chat, in `text-mode'.
In a fresh `emacs --batch -Q' that has no markdown-mode on its
`load-path', no mode is for chat.md: the chat written there goes on
in `text-mode', with `chatpipe-mode', its header line and its
settings saved."
  (let* ((dir (make-temp-file "chatpipe-no-markdown" t))
         (file (expand-file-name "chat.md" dir))
         (result (expand-file-name "result.eld" dir))
         (script (expand-file-name "run.el" dir))
         (process-environment (append '("EMACSLOADPATH" "EMACSDATA")
                                      process-environment)))
    (unwind-protect
        (progn
          (with-temp-file script
            (insert ";; -*- lexical-binding: t -*-\n")
            (prin1
             `(let ((out nil))
                (setq load-path
                      (cons ,(file-name-directory (locate-library "chatpipe"))
                            (seq-remove (lambda (d) (string-match-p "markdown" d))
                                        load-path)))
                (require 'chatpipe)
                (push (cons 'markdown (locate-library "markdown-mode")) out)
                (with-current-buffer (chatpipe "local")
                  (push (cons 'new major-mode) out)
                  (goto-char (point-max))
                  (insert "Hi")
                  (let ((this-command 'write-file))
                    (write-file ,file))
                  (push (list 'written major-mode chatpipe-mode
                              (equal header-line-format
                                     '(:eval (chatpipe-header-line)))
                              (chatpipe-messages))
                        out))
                (with-temp-file ,result (prin1 out (current-buffer))))
             (current-buffer)))
          (with-temp-buffer
            (should (eq 0 (call-process (expand-file-name invocation-name
                                                          invocation-directory)
                                        nil t nil "--batch" "-Q" "-l" script)))
            (should (file-exists-p result)))
          (let ((out (with-temp-buffer (insert-file-contents result)
                                       (read (current-buffer)))))
            (should (equal (alist-get 'markdown out) nil))
            (should (equal (alist-get 'new out) 'text-mode))
            (should (equal (alist-get 'written out)
                           '(text-mode t t (("user" . "Hi"))))))
          (should (string-match-p "eval: (chatpipe-mode 1)"
                                  (chatpipe-test--file-text file))))
      (delete-directory dir t))))

(defun chatpipe-test--params (mode)
  "Check parameters and the system prompt with `chatpipe-backend-mode' MODE."
  (chatpipe-test--http "DELETE" "/requests")
  (let ((template (chatpipe-test--template
                   "/replay/openai-chat/text-with-usage.sse"))
        (concise (cdr (assoc "concise" chatpipe-directives)))
        (chatpipe-backend-mode mode))
    (should concise)
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-set-temperature 0.2)
      (chatpipe-set-max-tokens 64)
      (chatpipe-set-system-prompt "concise")
      (should (equal chatpipe-system concise))
      (should (string-match-p
               (concat "\\`chatpipe " template " (temperature 0.2, max 64 \
tokens, system: concise)\\'")
               (substring-no-properties (chatpipe-header-line))))
      (chatpipe-test--ask "Hi")
      (chatpipe-test--wait-idle buffer)
      (let* ((request (car (last (chatpipe-test--requests))))
             (body (alist-get 'body request)))
        (should (equal (alist-get 'temperature body) 0.2))
        (should (equal (alist-get 'max_tokens body) 64))
        (should (equal (chatpipe-test--request-messages request)
                       `(("system" . ,concise) ("user" . "Hi")))))
      ;; A system turn in the buffer wins over the directive.
      (goto-char (point-min))
      (insert "### System\n\nBe terse.\n\n")
      (goto-char (point-max))
      (chatpipe-test--ask "More")
      (chatpipe-test--wait-idle buffer)
      (should (equal (car (chatpipe-test--request-messages
                           (car (last (chatpipe-test--requests)))))
                     '("system" . "Be terse.")))
      ;; Back to the template's: nothing is sent.
      (chatpipe-set-temperature nil)
      (chatpipe-set-max-tokens nil)
      (chatpipe-set-system-prompt "")
      (should (equal (substring-no-properties (chatpipe-header-line))
                     (concat "chatpipe " template " [test-model] | "
                             chatpipe--status)))
      (chatpipe-test--ask "Last")
      (chatpipe-test--wait-idle buffer)
      (let ((body (alist-get 'body (car (last (chatpipe-test--requests))))))
        (should-not (assq 'temperature body))
        (should-not (assq 'max_tokens body))))))

(ert-deftest chatpipe-test-params ()
  "Parameters and system prompt reach the request, through serve."
  (chatpipe-test--params 'serve))

(ert-deftest chatpipe-test-params-send ()
  "Parameters and system prompt reach the request, through send options."
  (chatpipe-test--params 'send))

(provide 'chatpipe-save-test)
;;; chatpipe-save-test.el ends here
