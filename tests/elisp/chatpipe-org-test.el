;;; chatpipe-org-test.el --- ERT tests: Markdown answers as Org text -*- lexical-binding: t; -*-

;;; Commentary:

;; The streaming Markdown to Org converter of chatpipe-org.el: answers
;; cut at every position and one character at a time, real recorded
;; streams delta by delta, the conversion back to Markdown, and answers
;; streamed into Org chat buffers through the real backend.  The
;; recordings in tests/elisp/streams/ are real answers of the local
;; model (see the README.md there).

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'org)
(require 'chatpipe-test-helpers)
(require 'chatpipe-org)

;;;; The converter

(defconst chatpipe-test--org-cases
  '(("Here is **Python**:\n\n```python\n# a comment\n* not a heading\n\
#+begin_src inside\n,* already escaped\n  ,,#+x\ndef f(x):\n    return x * 2\n\
```\n\nAnd plain:\n\n```\n*star line*\n  #+keyword\n```\n\nDone."
     "Here is *Python*:\n\n#+begin_src python\n# a comment\n,* not a heading\n\
,#+begin_src inside\n,,* already escaped\n  ,,,#+x\ndef f(x):\n    return x * 2\n\
#+end_src\n\nAnd plain:\n\n#+begin_example\n,*star line*\n  ,#+keyword\n\
#+end_example\n\nDone.")
    ("# Title\n\nSome **bold**, *italic*, `code` and a \
[link](https://example.com/a_(b)).\n\n## Sub *heading*\n\n- item **one**\n\
  - nested `x*y`\n\n1. one\n2. two\n\n---\n\n\
Math: 2 * 3 and a*b*c, snake_case_name, \\*escaped\\*, ~/x and 1/2.\n"
     "** Title\n\nSome *bold*, /italic/, ~code~ and a \
[[https://example.com/a_(b)][link]].\n\n*** Sub /heading/\n\n- item *one*\n\
  - nested ~x*y~\n\n1. one\n2. two\n\n-----\n\n\
Math: 2 * 3 and a*b*c, snake_case_name, \\*escaped\\*, ~/x and 1/2.\n")
    ("***both*** and **a *b* c** and [not a link] (x), [x](y z), [](u), \
**`code`** and (*it*) ~~~ ~~x~~ [a\n](b) end"
     "*/both/* and *a /b/ c* and [not a link] (x), [x](y z), [](u), \
*~code~* and (/it/) ~~~ ~~x~~ [a\n](b) end")
    ("1. Run:\n   ```sh\n   make\n   ```\n2. Then:\n\n\
````markdown\n```\nx\n```\n````\n#### Deep\n###### Six\n####### Seven\n\
#tag\n- [ ] box\n![alt](img.png)"
     "1. Run:\n   #+begin_src sh\n   make\n   #+end_src\n2. Then:\n\n\
#+begin_src markdown\n```\nx\n```\n#+end_src\n***** Deep\n******* Six\n\
####### Seven\n#tag\n- [ ] box\n![[img.png][alt]]")
    ;; Not exactly back: "*" bullets, "__" and "_", "***" rules, "``"
    ;; code, a code block left open, "**" that starts a line.
    ("* one\n* two with __strong__ and _em_, not_this\n  * nested\n***\n\
** odd `` a`b ``\n__init__\n```sh\nls *"
     "- one\n- two with *strong* and /em/, not_this\n  - nested\n-----\n\
,** odd ~ a`b ~\n*init*\n#+begin_src sh\nls *\n#+end_src"
     "- one\n- two with **strong** and *em*, not_this\n  - nested\n---\n\
** odd ~ a`b ~\n**init**\n```sh\nls *\n```"))
  "Markdown answers, their Org text and, where it differs, their way back.
Each is (MARKDOWN ORG [BACK]): BACK is what `chatpipe-org-to-markdown'
gives for ORG, MARKDOWN if it is left out.")

(defun chatpipe-test--org (pieces &optional level)
  "Return the Org text of the Markdown PIECES, converted one by one.
LEVEL is the answer heading's level."
  (let ((state (chatpipe-org-converter level)))
    (concat (mapconcat (lambda (piece) (chatpipe-org-convert state piece))
                       pieces "")
            (chatpipe-org-finish state))))

(defun chatpipe-test--org-splits (markdown org &optional level)
  "Check that MARKDOWN gives exactly ORG however it is cut.
Cut in two at every position, and one character at a time; LEVEL
is the answer heading's level."
  (dotimes (i (1+ (length markdown)))
    (let ((got (chatpipe-test--org (list (substring markdown 0 i)
                                         (substring markdown i))
                                   level)))
      (unless (equal got org)
        (ert-fail (list "cut at" i (substring markdown 0 i) got org)))))
  (should (equal (chatpipe-test--org (mapcar #'string markdown) level) org)))

(ert-deftest chatpipe-test-org-convert ()
  "Markdown answers give exactly their Org text however they are cut.
And the Org text converts back to the Markdown."
  (dolist (case chatpipe-test--org-cases)
    (chatpipe-test--org-splits (nth 0 case) (nth 1 case))
    (should (equal (chatpipe-org-to-markdown (nth 1 case))
                   (or (nth 2 case) (nth 0 case))))))

(ert-deftest chatpipe-test-org-random-cuts ()
  "Random Markdown-like text gives the same Org text however it is cut.
And no line of it is an Org heading unless the text had a \"#\"."
  (random "chatpipe-org-random")
  (let ((tokens ["```" "```py" "**" "*" "_" "__" "`" "[" "](" ")" "(" "\n"
                 " " "w" "# " "* " "- " "---" "#+" "," "\\" "~" "/" "  "]))
    (dotimes (_ 300)
      (let* ((markdown (apply #'concat (cl-loop repeat (random 20)
                                                collect (aref tokens (random 24)))))
             (org (chatpipe-test--org (list markdown))))
        (chatpipe-test--org-splits markdown org)
        (unless (string-search "#" markdown)
          (should-not (string-match-p "^\\*+[ \t]" org)))))))

(ert-deftest chatpipe-test-org-heading-levels ()
  "Headings go under the answer's heading, and back relative to it."
  (let ((markdown "# One\n\ntext\n\n### Three *x*\n")
        (org "*** One\n\ntext\n\n***** Three /x/\n"))
    (chatpipe-test--org-splits markdown org 2)
    (should (equal (chatpipe-org-to-markdown org 2) markdown))
    ;; A heading of the answer's level or above is not one of the answer's.
    (should (equal (chatpipe-org-to-markdown "** Two\n* One" 2)
                   "** Two\n* One"))
    (should (= 2 (chatpipe-org-heading-level "** Assistant")))))

(ert-deftest chatpipe-test-org-escapes-as-org ()
  "Lines in code blocks are escaped exactly as Org escapes them."
  (let ((lines (mapconcat #'identity
                          '("*" "**x" " * y" "#+a" "  #+b" "#" "# c" ",*" ",,#+"
                            "\t,*z" ", *" "#+" "plain" "`x`" "  ```js" "")
                          "\n")))
    (should (equal (chatpipe-test--org (list "```c\n" lines "```\n"))
                   (concat "#+begin_src c\n" (org-escape-code-in-string lines)
                           "#+end_src\n")))
    (should (equal (org-unescape-code-in-string
                    (org-escape-code-in-string lines))
                   lines))))

(ert-deftest chatpipe-test-org-bounded-hold ()
  "Only a bounded text is held back, and a link too long is left as it is."
  (let* ((url (concat "https://example.com/" (make-string 2000 ?a)))
         (markdown (concat "See [this](" url ") and **that**."))
         (state (chatpipe-org-converter))
         (most 0)
         (out nil))
    (dolist (c (append markdown nil))
      (push (chatpipe-org-convert state (string c)) out)
      (setq most (max most (chatpipe--org-held-len state))))
    (should (= most chatpipe--org-link-max))
    (should (equal (apply #'concat (nreverse (cons (chatpipe-org-finish state)
                                                   out)))
                   (concat "See [this](" url ") and *that*.")))
    ;; A fence line too long is no fence line.
    (let ((long (concat "```" (make-string 300 ?x) "\nb")))
      (should (equal (chatpipe-test--org (list long))
                     (concat "~" (make-string 300 ?x) "\nb"))))
    ;; What is held back is returned by the next call.
    (let ((state (chatpipe-org-converter)))
      (should (equal (chatpipe-org-convert state "a *") "a "))
      (should (equal (chatpipe-org-convert state "b* `") "/b/ "))
      (should (equal (chatpipe-org-convert state "c`\n#") "~c~\n"))
      (should (equal (chatpipe-org-convert state "# H [x](") "*** H "))
      (should (equal (chatpipe-org-convert state "u)\n``") "[[u][x]]\n"))
      (should (equal (chatpipe-org-finish state) "``")))
    (should (equal (chatpipe-org-convert nil "**x**") "**x**"))
    (should (equal (chatpipe-org-finish nil) ""))))

(ert-deftest chatpipe-test-org-linear ()
  "Each delta costs time in proportion to its length."
  (let* ((unit "Some **bold** and `code`, a [link](https://x.org/).\n\
```py\nx = 1\n```\n- item *it*\n")
         (markdown (apply #'concat (make-list 400 unit)))
         (times nil))
    (dolist (size '(1 16 4096))
      (let ((state (chatpipe-org-converter))
            (start (float-time))
            (i 0))
        (while (< i (length markdown))
          (chatpipe-org-convert state (substring markdown i (min (length markdown)
                                                                 (+ i size))))
          (setq i (+ i size)))
        (chatpipe-org-finish state)
        (push (cons size (- (float-time) start)) times)))
    (message "Converting %d chars: %s" (length markdown)
             (mapconcat (lambda (time)
                          (format "%.1f us/delta of %d (%.2f us/char)"
                                  (/ (* 1e6 (cdr time))
                                     (/ (length markdown) (car time) 1.0))
                                  (car time)
                                  (/ (* 1e6 (cdr time)) (length markdown))))
                        (reverse times) ", "))
    ;; One character at a time costs at most ~15 times the whole at once.
    (should (< (cdr (assq 1 times)) (+ 1.0 (* 15 (cdr (assq 4096 times))))))))

;;;; Recorded streams

(defun chatpipe-test--org-recording-deltas (file)
  "Return the text deltas of the recording FILE, as they were recorded.
OpenAI chat completions, Responses API and Gemini JSON arrays."
  (let* ((text (with-temp-buffer
                 (let ((coding-system-for-read 'utf-8))
                   (insert-file-contents file))
                 (buffer-string)))
         (parse (lambda (json) (json-parse-string json :object-type 'alist
                                                  :array-type 'list
                                                  :null-object nil
                                                  :false-object nil)))
         deltas)
    (if (string-suffix-p ".json" file)
        (dolist (chunk (funcall parse text))
          (dolist (part (alist-get 'parts (alist-get 'content (car (alist-get
                                                                   'candidates
                                                                   chunk)))))
            (unless (alist-get 'thought part)
              (push (alist-get 'text part) deltas))))
      (dolist (line (split-string text "\r?\n"))
        (when (and (string-prefix-p "data: {" line))
          (let ((event (funcall parse (substring line 6))))
            (if (equal (alist-get 'type event) "response.output_text.delta")
                (push (alist-get 'delta event) deltas)
              (dolist (choice (alist-get 'choices event))
                (when (eql (alist-get 'index choice) 0)
                  (push (alist-get 'content (alist-get 'delta choice))
                        deltas))))))))
    (delq nil (nreverse deltas))))

(defconst chatpipe-test--org-recordings
  '(("tests/streams/deepseek/reasoner-reasoning-content.sse"
     "*Final Answer: 4 * 8 = 32*")
    ("tests/streams/openrouter/gpt-oss-20b-reasoning.sse"
     "*Apoplectic* derives from the Latin /apoplexus/, "
     "\n/Apoplexō/ comes from")
    ("tests/streams/openai-responses/gpt52-reasoning-summary.sse"
     "\n**** Origin in ejectment lawsuits\n" "(a /doe/ is a female deer;")
    ("tests/streams/gemini/thinking-stream-array.json"
     "\n-   *Propositions as Types*: " "\n    -   For example")
    ("tests/elisp/streams/gemma3-270m-code-blocks.sse"
     ;; Cut at the token limit in a code block, which the Org text closes.
     :back "\n```" "Explain *Python* lists" "\n#+begin_src python\nnumbers = ["
     "print(numbers)\n#+end_src\nYou can")
    ("tests/elisp/streams/gemma3-270m-markdown.sse"
     "** Shell\n\n#+begin_src bash\nls -la\n#+end_src\n\n\
*Note:* use ~ls~ to list files."))
  "Recordings with Markdown answers, and pieces of their Org text.
Each is (FILE [:back SUFFIX] PIECE...): SUFFIX is what the way back
to Markdown adds at the end.")

(ert-deftest chatpipe-test-org-recordings ()
  "Real answers, delta by delta as recorded: the same Org text however cut.
The Org text converts back to the answer (\"*\" bullets become \"-\")."
  (dolist (case chatpipe-test--org-recordings)
    (let* ((file (expand-file-name (car case) chatpipe-test-root))
           (deltas (chatpipe-test--org-recording-deltas file))
           (markdown (apply #'concat deltas))
           (org (chatpipe-test--org deltas))
           (back (and (eq (nth 1 case) :back) (nth 2 case)))
           (pieces (if back (nthcdr 3 case) (cdr case))))
      (random "chatpipe-org")
      (let ((name (file-relative-name file (expand-file-name
                                            "tests/streams" chatpipe-test-root))))
        (unless (string-prefix-p "." name)
          (should (equal markdown (chatpipe-test--expected name)))))
      (should (> (length deltas) 10))
      (dolist (piece pieces)
        (should (string-search piece org)))
      (should-not (string-match-p "^\\* " org))
      (should (equal (chatpipe-test--org (list markdown)) org))
      (should (equal (chatpipe-test--org (mapcar #'string markdown)) org))
      ;; Cut again at random places, into pieces of 1 to 20 characters.
      (dotimes (_ 10)
        (let ((i 0) pieces)
          (while (< i (length markdown))
            (let ((j (min (length markdown) (+ i 1 (random 20)))))
              (push (substring markdown i j) pieces)
              (setq i j)))
          (should (equal (chatpipe-test--org (nreverse pieces)) org))))
      (should (equal (chatpipe-org-to-markdown org)
                     (concat (replace-regexp-in-string "^\\( *\\)\\* " "\\1- "
                                                       markdown)
                             back))))))

;;;; Org chat buffers

(defconst chatpipe-test--org-answer
  '("# Plan\n\nUse **`make" "`** and *then* run [the te" "sts](https://example.com/t_(x)).\n\n"
    "* one\n" "* two with **bold" "**\n\n``" "`python\n* star = 1\n#" "+not a keyword\n"
    "print(\"a **b**\")\n``" "`\n\n---\n\nDone: `x*y` and 2 * 3. 😊")
  "The deltas of the answer streamed into Org chat buffers.")

(defconst chatpipe-test--org-answer-org
  "** Plan\n\nUse *~make~* and /then/ run [[https://example.com/t_(x)][the tests]].\n\n\
- one\n- two with *bold*\n\n#+begin_src python\n,* star = 1\n,#+not a keyword\n\
print(\"a **b**\")\n#+end_src\n\n-----\n\nDone: ~x*y~ and 2 * 3. 😊"
  "The Org text of `chatpipe-test--org-answer'.")

(defun chatpipe-test--org-server (deltas split)
  "Start a replay server that streams DELTAS at /org, SPLIT bytes a write.
The route is registered at run time, as an OpenAI chat completions
stream of DELTAS that ends with finish reason stop.  Return a cons
\(PROCESS . URL), URL the route's."
  (let ((file (expand-file-name "org-answer.sse" chatpipe-test-tmp)))
    (with-temp-file file
      (dolist (delta deltas)
        (insert "data: " (json-serialize
                          `((choices . [((index . 0)
                                         (delta . ((content . ,delta))))])))
                "\n\n"))
      (insert "data: {\"choices\":[{\"index\":0,\"delta\":{},"
              "\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"))
    (let ((server (chatpipe-test--route-server
                   (format "server.add('/org', Reply(split_every(open(%S, 'rb').read(), %d)))"
                           file split))))
      (cons (car server) (concat (cdr server) "/org")))))

(ert-deftest chatpipe-test-org-chat ()
  "An answer streams into an Org chat buffer as Org, and goes back as Markdown."
  (dolist (split '(1 7 100000))
    (let* ((server (chatpipe-test--org-server chatpipe-test--org-answer split))
           (template (chatpipe-test--template nil nil (cdr server)))
           (markdown (apply #'concat chatpipe-test--org-answer))
           (chatpipe-major-mode 'org-mode))
      (unwind-protect
          (chatpipe-test--with-chat (buffer template)
            (should (derived-mode-p 'org-mode))
            (should (equal (buffer-string) "* User\n\n"))
            (chatpipe-test--ask "Plan?")
            (chatpipe-test--wait-idle buffer 60)
            (should (equal (buffer-string)
                           (concat "* User\n\nPlan?\n\n* Assistant\n\n"
                                   chatpipe-test--org-answer-org
                                   "\n\n* User\n\n")))
            (should (equal (chatpipe-messages)
                           `(("user" . "Plan?")
                             ("assistant" . ,(replace-regexp-in-string
                                              "^\\* \\(one\\|two\\)" "- \\1"
                                              markdown)))))
            ;; One undo removes the whole answer.
            (undo-boundary)
            (let ((last-command nil)) (undo))
            (should (equal (buffer-string) "* User\n\nPlan?")))
        (delete-process (car server))
        (kill-buffer (process-buffer (car server)))))))

(defun chatpipe-test--org-reasoning-chat (template)
  "Return the Org chat buffer text after an answer from TEMPLATE."
  (with-temp-buffer
    (org-mode)
    (insert "* User\n\nHi\n")
    (setq chatpipe-template template)
    (chatpipe-send)
    (should (eq (not (chatpipe--job-org chatpipe--job))
                (not chatpipe-org-convert-markdown)))
    (chatpipe-test--wait-idle (current-buffer) 60)
    (should (equal (chatpipe-messages)
                   `(("user" . "Hi")
                     ("assistant" . ,(chatpipe-test--expected
                                      "deepseek/reasoner-reasoning-content.sse")))))
    (buffer-string)))

(ert-deftest chatpipe-test-org-chat-reasoning ()
  "In an Org chat, the answer is converted, and the reasoning block is not.
With `chatpipe-org-convert-markdown' nil, the answer is not either."
  (let* ((recording "deepseek/reasoner-reasoning-content.sse")
         (template (chatpipe-test--template
                    (concat "/replay/" recording "?split=64")))
         (answer (chatpipe-test--expected recording))
         (chatpipe-reasoning-display 'fold)
         (raw (let ((chatpipe-org-convert-markdown nil))
                (chatpipe-test--org-reasoning-chat template)))
         (block (and (string-match "\\`\\* User\n\nHi\n\n\\* Assistant\n\n\
#\\+begin_reasoning\n\\(?:.\\|\n\\)+\n#\\+end_reasoning\n\n" raw)
                     (match-string 0 raw))))
    (should (> (length block) 1000))
    (should (equal raw (concat block answer "\n\n* User\n\n")))
    (should (equal (chatpipe-test--org-reasoning-chat template)
                   (concat block
                           (replace-regexp-in-string
                            "\\*\\*Final Answer: 4 \\* 8 = 32\\*\\*"
                            "*Final Answer: 4 * 8 = 32*" answer t t)
                           "\n\n* User\n\n")))))

(ert-deftest chatpipe-test-org-not-in-markdown ()
  "Answers in other buffers have no converter and stay as they are."
  (let ((template (chatpipe-test--template
                   "/replay/deepseek/reasoner-reasoning-content.sse")))
    (with-temp-buffer
      (text-mode)
      (insert "### User\n\nHi\n")
      (setq chatpipe-template template)
      (chatpipe-send)
      (should-not (chatpipe--job-org chatpipe--job))
      (chatpipe-test--wait-idle (current-buffer) 60)
      (should (string-search "**Final Answer: 4 * 8 = 32**" (buffer-string))))))

(provide 'chatpipe-org-test)
;;; chatpipe-org-test.el ends here
