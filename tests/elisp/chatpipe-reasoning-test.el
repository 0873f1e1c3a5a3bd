;;; chatpipe-reasoning-test.el --- ERT tests: reasoning, tool calls, refusals, retries, dialects -*- lexical-binding: t; -*-

;;; Commentary:

;; Reasoning in folded blocks, in buffers, dropped; tool calls,
;; refusals, retry statuses and the other dialects' streams.

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)

(defconst chatpipe-test--details-begin "<details><summary>Reasoning</summary>"
  "The first line of a reasoning block in text buffers.")

(ert-deftest chatpipe-test-reasoning-folded ()
  "Reasoning goes in a folded block before the answer and is not sent back."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((recording "deepseek/reasoner-reasoning-content.sse")
         (template (chatpipe-test--template (concat "/replay/" recording)))
         (next (chatpipe-test--template
                "/replay/openai-chat/text-with-usage.sse"))
         (reasoning (chatpipe-test--recording-reasoning recording))
         (answer (chatpipe-test--expected recording))
         (question "What is 4 * 8?")
         (chatpipe-reasoning-display 'fold))
    (should (= (length reasoning)
               (chatpipe-test--expected recording "reasoning_chars")))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--ask question)
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text
                      (cons 'user question)
                      (cons 'assistant
                            (concat chatpipe-test--details-begin "\n\n"
                                    reasoning "\n\n</details>\n\n" answer)))))
      (should (= (point) (point-max)))
      (should (string-match-p
               "\\`done: 19 in, 739 out (533 reasoning), [0-9.]+ s\\'"
               chatpipe--status))
      (should-not (chatpipe-test--reasoning-buffer buffer))
      ;; Folded: of the block only its first line shows.
      (goto-char (point-min))
      (search-forward chatpipe-test--details-begin)
      (let ((first-line (line-beginning-position))
            (inside (+ (point) 100))
            (last-line (save-excursion (search-forward "\n</details>")
                                       (1- (point))))
            (in-answer (- (point-max) 20)))
        (should (invisible-p (point)))
        (should (invisible-p inside))
        (should (invisible-p last-line))
        (should-not (invisible-p first-line))
        (should-not (invisible-p (- (point) 1)))
        (should-not (invisible-p in-answer))
        ;; TAB on its first line unfolds it.
        (should (eq (key-binding (kbd "TAB")) #'chatpipe-toggle-reasoning))
        (call-interactively (key-binding (kbd "TAB")))
        (should-not (invisible-p inside))
        (should-not (invisible-p last-line))
        ;; Anywhere in the block the command folds it again.
        (goto-char inside)
        (should (chatpipe-toggle-reasoning))
        (should (invisible-p inside))
        ;; Outside of blocks, TAB is not ours, and the command unfolds
        ;; all the blocks.
        (goto-char in-answer)
        (should-not (eq (key-binding (kbd "TAB")) #'chatpipe-toggle-reasoning))
        (should-not (chatpipe-toggle-reasoning))
        (should-not (invisible-p inside))
        ;; Turning the mode on (as in a chat reopened from a file) folds
        ;; the blocks.
        (chatpipe-mode -1)
        (chatpipe-mode 1)
        (should (invisible-p inside))
        (should-not (invisible-p first-line)))
      ;; The block is not part of the answer sent back.
      (should (equal (chatpipe-messages)
                     `(("user" . ,question) ("assistant" . ,answer))))
      (chatpipe-select-template next)
      (chatpipe-test--ask "And 5 * 8?")
      (chatpipe-test--wait-idle buffer)
      (should (string-suffix-p "weather app.\n\n### User\n\n" (buffer-string))))
    (let ((requests (chatpipe-test--requests)))
      (should (= 2 (length requests)))
      (should (equal (chatpipe-test--request-messages (nth 1 requests))
                     `(("user" . ,question) ("assistant" . ,answer)
                       ("user" . "And 5 * 8?")))))))

(defun chatpipe-test--reasoning-script ()
  "Write a fake backend that streams awkward reasoning, then \"Hi!\".
Return its file name.  The reasoning has lines that look like
headings and block lines, cut across events."
  (chatpipe-test--write-script
   "reasoning"
   (concat "#!/bin/sh\ncat >/dev/null\ncat <<'EOF'\n"
           (mapconcat
            (lambda (piece)
              (if (stringp piece)
                  (json-serialize `((type . "reasoning") (content . ,piece)))
                (json-serialize piece)))
            '("Plan:\n" "*" " User asks\n### User\n#" "+end_reasoning\n  #"
              "+x\n**bold** ok\n" ((type . "delta") (content . "Hi"))
              "</details>\n" "*" ((type . "delta") (content . "!"))
              ((type . "done") (finish_reason . "stop")))
            "\n")
           "\nEOF\n")))

(ert-deftest chatpipe-test-reasoning-block-org-and-text ()
  "Headings in reasoning start no turn; lines like block lines are escaped."
  (let ((chatpipe-command (chatpipe-test--reasoning-script))
        (chatpipe-backend-mode 'send)
        (chatpipe-reasoning-display 'fold))
    (with-temp-buffer
      (org-mode)
      (insert "* User\n\nHi\n")
      (setq chatpipe-template "reasoning")
      (chatpipe-send)
      (chatpipe-test--wait-idle (current-buffer))
      (should (equal (buffer-string)
                     "* User\n\nHi\n\n* Assistant\n\n#+begin_reasoning
Plan:
,* User asks
### User
,#+end_reasoning
,  #+x
**bold** ok
</details>
,*
#+end_reasoning\n\nHi!\n\n* User\n\n"))
      (should (equal (chatpipe-messages)
                     '(("user" . "Hi") ("assistant" . "Hi!"))))
      (goto-char (point-min))
      (search-forward "Plan:")
      (should (invisible-p (point)))
      (should (equal (length (chatpipe-reasoning-blocks)) 1)))
    (with-temp-buffer
      (text-mode)
      (insert "### User\n\nHi\n")
      (setq chatpipe-template "reasoning")
      (chatpipe-send)
      (chatpipe-test--wait-idle (current-buffer))
      ;; Only a line like the block's own last line is escaped, with a
      ;; backslash as in Markdown; the "### User" line starts no turn.
      (should (equal (buffer-string)
                     (concat "### User\n\nHi\n\n### Assistant\n\n"
                             chatpipe-test--details-begin "\n\nPlan:
* User asks
### User
#+end_reasoning
  #+x
**bold** ok
\\</details>
*\n\n</details>\n\nHi!\n\n### User\n\n")))
      (should (equal (mapcar #'car (chatpipe-turns)) '(user assistant user)))
      (should (equal (length (chatpipe-reasoning-blocks)) 1))
      (should (equal (chatpipe-messages)
                     '(("user" . "Hi") ("assistant" . "Hi!")))))))

(ert-deftest chatpipe-test-reasoning-buffer ()
  "Reasoning streams into a buffer of its own; the chat has the answer."
  (let* ((recording "vllm/glm45-air-reasoning-content.sse")
         (template (chatpipe-test--template
                    (concat "/replay/" recording "?split=200")))
         (next (chatpipe-test--template
                "/replay/openai-chat/text-with-usage.sse"))
         (reasoning (chatpipe-test--recording-reasoning recording))
         (answer (chatpipe-test--expected recording))
         (chatpipe-reasoning-display 'buffer)
         name)
    (should (= (length reasoning)
               (chatpipe-test--expected recording "reasoning_chars")))
    (chatpipe-test--with-chat (buffer template)
      (setq name (format "*chatpipe-reasoning: %s*" (buffer-name)))
      (chatpipe-test--ask "Hi!")
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text '(user . "Hi!")
                                               (cons 'assistant answer))))
      (let ((reasoning-buffer (get-buffer name)))
        (should reasoning-buffer)
        (should (equal (with-current-buffer reasoning-buffer (buffer-string))
                       reasoning))
        (should (eq (buffer-local-value 'major-mode reasoning-buffer)
                    'chatpipe-reasoning-mode))
        (should (eq (window-buffer (chatpipe-show-reasoning))
                    reasoning-buffer))
        ;; The next answer, without reasoning, starts it afresh.
        (chatpipe-select-template next)
        (chatpipe-test--ask "Weather?")
        (chatpipe-test--wait-idle buffer)
        (should (equal (with-current-buffer reasoning-buffer (buffer-string))
                       ""))))
    ;; Killing the chat kills its reasoning buffer.
    (should-not (get-buffer name))))

(ert-deftest chatpipe-test-reasoning-dropped ()
  "With `chatpipe-reasoning-display' nil, reasoning is not shown at all."
  (let* ((recording "openrouter/gpt-oss-20b-reasoning.sse")
         (template (chatpipe-test--template (concat "/replay/" recording)))
         (chatpipe-reasoning-display nil))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--ask "Etymology of apoplectic?")
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text
                      '(user . "Etymology of apoplectic?")
                      (cons 'assistant (chatpipe-test--expected recording)))))
      (should-not (chatpipe-test--reasoning-buffer buffer))
      (should-error (chatpipe-show-reasoning) :type 'user-error)
      (should (string-match-p "\\`done: 200 in, 250 out, [0-9.]+ s\\'"
                              chatpipe--status)))))

(defun chatpipe-test--tool-lines (recording)
  "Return the tool call lines expected for RECORDING, joined."
  (mapconcat (lambda (call)
               (format "[tool call: %s(%s)]" (alist-get 'name call)
                       (alist-get 'arguments call)))
             (chatpipe-test--expected recording "tool_calls")
             "\n"))

(ert-deftest chatpipe-test-tool-calls ()
  "Tool calls are shown after the answer and not sent back."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((parallel "openai-chat/tool-calls-parallel.sse")
         (anthropic "anthropic/tool-use.sse")
         (gemini "gemini/thinking-function-call-crlf.sse")
         (t1 (chatpipe-test--template (concat "/replay/" parallel)))
         (t2 (chatpipe-test--bundled-template "anthropic"
                                              (concat "/replay/" anthropic)))
         (t3 (chatpipe-test--bundled-template "gemini"
                                              (concat "/replay/" gemini)))
         (chatpipe-reasoning-display 'buffer))
    (chatpipe-test--with-chat (buffer t1)
      (chatpipe-test--ask "Weather in Edinburgh, and AAPL?")
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text
                      '(user . "Weather in Edinburgh, and AAPL?")
                      (cons 'assistant (chatpipe-test--tool-lines parallel)))))
      (should (equal (buffer-string)
                     "### User\n\nWeather in Edinburgh, and AAPL?\n\n\
### Assistant\n\n[tool call: GetWeatherArgs({\"city\": \"Edinburgh\", \
\"country\": \"GB\", \"units\": \"c\"})]\n[tool call: get_stock_price(\
{\"ticker\": \"AAPL\", \"exchange\": \"NASDAQ\"})]\n\n### User\n\n"))
      (should (string-match-p "\\`done (tool_calls): 149 in, 60 out, [0-9.]+ s\\'"
                              chatpipe--status))
      ;; Text, then a tool call (Anthropic): the call after the text.
      (chatpipe-select-template t2)
      (chatpipe-test--ask "Weather in Paris?")
      (chatpipe-test--wait-idle buffer)
      (should (string-suffix-p
               (concat "### User\n\nWeather in Paris?\n\n### Assistant\n\n"
                       (chatpipe-test--expected anthropic) "\n\n"
                       (chatpipe-test--tool-lines anthropic)
                       "\n\n### User\n\n")
               (buffer-string)))
      ;; The tool call lines are not sent back: the answer of calls
      ;; only sends nothing, and the questions around it are one.
      (should (equal (chatpipe-messages)
                     `(("user" . "Weather in Edinburgh, and AAPL?\n\n\
Weather in Paris?")
                       ("assistant" . ,(chatpipe-test--expected anthropic)))))
      ;; Gemini: reasoning (to its buffer), then a call, no text.
      (chatpipe-select-template t3)
      (chatpipe-test--ask "Coat?")
      (chatpipe-test--wait-idle buffer)
      (should (string-suffix-p "### User\n\nCoat?\n\n### Assistant\n\n\
[tool call: weather({\"city\": \"San Francisco\"})]\n\n### User\n\n"
                               (buffer-string)))
      (should (= (length (with-current-buffer
                             (chatpipe-test--reasoning-buffer buffer)
                           (buffer-string)))
                 (chatpipe-test--expected gemini "reasoning_chars")))
      (should (equal (json-parse-string "{\"city\": \"San Francisco\"}"
                                        :object-type 'alist)
                     (json-parse-string (alist-get 'arguments
                                                   (car (chatpipe-test--expected
                                                         gemini "tool_calls")))
                                        :object-type 'alist))))
    (should (equal (chatpipe-test--request-messages
                    (nth 1 (chatpipe-test--requests)))
                   '(("user" . "Weather in Edinburgh, and AAPL?\n\n\
Weather in Paris?"))))))

(ert-deftest chatpipe-test-refusal ()
  "A refusal is shown as the answer."
  (let* ((recording "openai-chat/refusal.sse")
         (template (chatpipe-test--template (concat "/replay/" recording)))
         (refusal (chatpipe-test--expected recording "refusal")))
    (should (equal refusal "I'm sorry, I can't assist with that request."))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--ask "Something bad")
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text '(user . "Something bad")
                                               (cons 'assistant refusal))))
      (should (equal (chatpipe-messages)
                     `(("user" . "Something bad") ("assistant" . ,refusal)))))))

(ert-deftest chatpipe-test-retry-status ()
  "A retry is shown in the status and the echo area, then the error."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((template (chatpipe-test--template "/error/429?retry_after=1"
                                            nil nil 1))
         (twice (chatpipe-test--template "/error/429?retry_after=0"
                                         nil nil 2))
         (reason "Rate limit reached for gpt-4o in organization org-x on \
tokens per min.")
         (retrying (concat "retrying in 1.0 s (attempt 1): HTTP 429: " reason))
         (answer (format "[error: HTTP 429: %s]" reason)))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--ask "Hi")
      (should (chatpipe-test--wait
               (lambda () (string-search "retrying" (or chatpipe--status "")))
               10))
      (should (equal chatpipe--status retrying))
      (should (string-suffix-p (concat " | " retrying)
                               (substring-no-properties
                                (chatpipe-header-line))))
      (should (string-search (concat "chatpipe: " retrying)
                             (with-current-buffer "*Messages*"
                               (buffer-string))))
      (should-not (chatpipe-test--idle-p buffer))
      (should (equal (buffer-string) "### User\n\nHi\n\n### Assistant\n\n"))
      (chatpipe-test--wait-idle buffer)
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text '(user . "Hi")
                                               (cons 'assistant answer))))
      (should (equal chatpipe--status (concat "error: HTTP 429: " reason)))
      (should (= 2 (length (chatpipe-test--requests))))
      ;; Two retries at once, then the error.
      (chatpipe-select-template twice)
      (chatpipe-retry)
      (chatpipe-test--wait-idle buffer)
      (should (string-search (concat "chatpipe: retrying in 0.0 s (attempt 2): \
HTTP 429: " reason)
                             (with-current-buffer "*Messages*"
                               (buffer-string))))
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text '(user . "Hi")
                                               (cons 'assistant answer))))
      (should (= 5 (length (chatpipe-test--requests)))))))

(ert-deftest chatpipe-test-dialects ()
  "Anthropic, Ollama and OpenAI Responses streams, text and reasoning."
  (let ((chatpipe-reasoning-display 'buffer))
    (pcase-dolist (`(,bundled . ,recording)
                   '(("anthropic" . "anthropic/extended-thinking.sse")
                     ("ollama" . "ollama/thinking.ndjson")
                     ("openai-responses"
                      . "openai-responses/gpt52-reasoning-summary.sse")))
      (let ((template (chatpipe-test--bundled-template
                       bundled (format "/replay/%s?split=300" recording))))
        (chatpipe-test--with-chat (buffer template)
          (chatpipe-test--ask "Tell me")
          (chatpipe-test--wait-idle buffer)
          (should (equal (buffer-string)
                         (chatpipe-test--chat-text
                          '(user . "Tell me")
                          (cons 'assistant (chatpipe-test--expected recording)))))
          (should (= (length (with-current-buffer
                                 (chatpipe-test--reasoning-buffer buffer)
                               (buffer-string)))
                     (chatpipe-test--expected recording "reasoning_chars")))
          (should (string-prefix-p "done: " chatpipe--status)))))))

(provide 'chatpipe-reasoning-test)
;;; chatpipe-reasoning-test.el ends here
