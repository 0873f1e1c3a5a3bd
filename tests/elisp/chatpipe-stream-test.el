;;; chatpipe-stream-test.el --- ERT tests: streaming answers, the process filter, undo -*- lexical-binding: t; -*-

;;; Commentary:

;; Streamed answers through serve and send processes, point and
;; windows, multi-byte text, the process filter and routing, undo.

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)

(defun chatpipe-test--stream-answer (mode)
  "Stream an answer with `chatpipe-backend-mode' MODE and check it all.
Exact text, status, request, point, one-step undo, and the backend
process: the shared serve process stays, a send process exits 0."
  (chatpipe-test--http "DELETE" "/requests")
  (let ((template (chatpipe-test--template
                   "/replay/openai-chat/text-with-usage.sse?split=64"))
        (answer (chatpipe-test--expected "openai-chat/text-with-usage.sse"))
        (chatpipe-backend-mode mode))
    (chatpipe-test--with-chat (buffer template)
      (should chatpipe-mode)
      (should (equal (buffer-string) "### User\n\n"))
      (let* ((job (chatpipe-test--ask chatpipe-test--question))
             (stream (chatpipe--job-stream job))
             (proc (chatpipe-stream-process stream)))
        (should (equal chatpipe--status "waiting..."))
        (should (string-match-p "waiting" (chatpipe-header-line)))
        (should (chatpipe-busy-p))
        ;; The messages go to stdin, not the command line.
        (should-not (cl-some (lambda (arg) (string-search "weather" arg))
                             (process-command proc)))
        (if (eq mode 'serve)
            (progn (should (equal (process-command proc)
                                  (chatpipe-test--serve-command)))
                   (should (eq proc (chatpipe-serve-process)))
                   (should (stringp (chatpipe-stream-id stream))))
          (should (member "--request" (process-command proc)))
          (should-not (chatpipe-stream-id stream)))
        (chatpipe-test--wait-idle buffer)
        (should-not (chatpipe-busy-p))
        (should (equal (buffer-string)
                       (chatpipe-test--chat-text
                        (cons 'user chatpipe-test--question)
                        (cons 'assistant answer))))
        ;; Point was at the end: it followed the answer.
        (should (= (point) (point-max)))
        (should (string-match-p "\\`done: 14 in, 30 out, [0-9.]+ s\\'"
                                chatpipe--status))
        (should (string-match-p (concat "\\`chatpipe " template
                                        " \\[test-model\\] | done")
                                (substring-no-properties
                                 (chatpipe-header-line))))
        (if (eq mode 'serve)
            (progn (accept-process-output nil 0.1)
                   (should (process-live-p proc))
                   (should (eq proc (chatpipe-serve-process)))
                   (should (= 0 (hash-table-count
                                 (process-get proc 'chatpipe-streams)))))
          (should (chatpipe-test--wait (lambda () (not (process-live-p proc)))))
          (should (= 0 (process-exit-status proc)))))
      (let ((requests (chatpipe-test--requests)))
        (should (= 1 (length requests)))
        (should (equal (chatpipe-test--request-messages (car requests))
                       `(("user" . ,chatpipe-test--question)))))
      ;; The whole answer undoes in one step.
      (undo-boundary)
      (let ((last-command nil)) (undo))
      (should (equal (buffer-string)
                     (concat "### User\n\n" chatpipe-test--question))))))

(ert-deftest chatpipe-test-stream-answer ()
  "A streamed answer through the shared serve process."
  (chatpipe-test--stream-answer 'serve))

(ert-deftest chatpipe-test-stream-answer-send ()
  "A streamed answer through a send process of its own."
  (chatpipe-test--stream-answer 'send))

(defun chatpipe-test--undo (&optional more)
  "Undo one step as the command `undo' does; with MORE, go on undoing."
  (let ((last-command (and more 'undo)))
    (undo-boundary)
    (undo)))

(ert-deftest chatpipe-test-undo-keeps-user-edits ()
  "One undo removes the answer and only the answer.
Text typed before the answer while it streams stays; the next undos
remove it, then the heading that sending added."
  (let ((template (chatpipe-test--template
                   "/replay/openai-chat/text-with-usage.sse?split=300&delay=0.05"))
        (question "Weather?")
        (typed 0))
    (chatpipe-test--with-chat (buffer template)
      (chatpipe-test--ask question)
      ;; As the command loop would: a boundary after the command.
      (undo-boundary)
      ;; Type twice, as two commands, at the start of the buffer while
      ;; the answer streams in.
      (while (and (< typed 2) (chatpipe-busy-p))
        (accept-process-output nil 0.02)
        (when (string-search (if (= typed 0) "I'm" "weather")
                             (buffer-string))
          (save-excursion
            (goto-char (point-min))
            (insert (if (= typed 0) "Notes.\n\n" "More notes.\n")))
          (undo-boundary)
          (cl-incf typed)))
      (should (= typed 2))
      (chatpipe-test--wait-idle buffer)
      (let ((chat (concat "### User\n\n" question "\n\n### Assistant\n\n")))
        (should (equal (buffer-string)
                       (concat "More notes.\nNotes.\n\n" chat
                               (chatpipe-test--expected
                                "openai-chat/text-with-usage.sse")
                               "\n\n### User\n\n")))
        (chatpipe-test--undo)
        (should (equal (buffer-string) (concat "More notes.\nNotes.\n\n" chat)))
        ;; The next undos, in the same chain, undo the typing, then the
        ;; assistant heading.
        (chatpipe-test--undo t)
        (should (equal (buffer-string) (concat "Notes.\n\n" chat)))
        (chatpipe-test--undo t)
        (should (equal (buffer-string) chat))
        (chatpipe-test--undo t)
        (should (equal (buffer-string) (concat "### User\n\n" question)))))))

(ert-deftest chatpipe-test-undo-aborted-answer ()
  "An aborted answer, its reasoning block and its note undo in one step."
  (let* ((recording "deepseek/reasoner-reasoning-content.sse")
         (template (chatpipe-test--template
                    (format "/replay/%s?hold=%d" recording
                            (chatpipe-test--hold-offset recording 400))))
         (chatpipe-reasoning-display 'fold))
    (chatpipe-test--with-chat (buffer template)
      (unwind-protect
          (progn
            (chatpipe-test--ask "Hi")
            (undo-boundary)
            (should (chatpipe-test--wait
                     (lambda () (string-search "</details>\n\n" (buffer-string)))))
            (goto-char (point-min))
            (insert "Typed.\n")
            (undo-boundary)
            (chatpipe-abort)
            (should (string-suffix-p "[aborted]\n\n### User\n\n" (buffer-string)))
            (chatpipe-test--undo)
            (should (equal (buffer-string)
                           "Typed.\n### User\n\nHi\n\n### Assistant\n\n")))
        (chatpipe-test--http "POST" "/release")))))

(ert-deftest chatpipe-test-point-stays ()
  "Point and window away from the end do not move while streaming.
The chat is sent as a region, point at its start."
  (let ((template (chatpipe-test--template
                   "/replay/openai-chat/text-with-usage.sse?split=512")))
    (chatpipe-test--with-chat (buffer template)
      (insert "Hi")
      (set-window-buffer (selected-window) buffer)
      (goto-char (point-min))
      (set-window-start (selected-window) (point-min))
      (chatpipe-send (point-min) (point-max))
      (chatpipe-test--wait-idle buffer)
      (should (= (point) (point-min)))
      (should (= (window-point (selected-window)) (point-min)))
      (should (string-suffix-p "weather app.\n\n### User\n\n" (buffer-string))))))

(ert-deftest chatpipe-test-multibyte-split ()
  "Multi-byte characters cut across reads arrive whole."
  (dolist (case '(("openai-chat/utf8-multiline-json.sse" . 1)
                  ("deepseek/reasoner-reasoning-content.sse" . 7)))
    (let ((template (chatpipe-test--template
                     (format "/replay/%s?split=%d" (car case) (cdr case))))
          (answer (chatpipe-test--expected (car case)))
          (chatpipe-reasoning-display 'buffer))
      (should (string-match-p "[°😊]" answer))
      (chatpipe-test--with-chat (buffer template)
        (chatpipe-test--ask "Wetter in °C? 😊")
        (chatpipe-test--wait-idle buffer 60)
        (should (equal (buffer-string)
                       (chatpipe-test--chat-text
                        '(user . "Wetter in °C? 😊")
                        (cons 'assistant answer))))
        (should (equal (with-current-buffer (chatpipe--reasoning-buffer-of
                                             buffer t)
                         (buffer-string))
                       (chatpipe-test--recording-reasoning (car case))))
        (should (equal (chatpipe-test--request-messages
                        (car (last (chatpipe-test--requests))))
                       '(("user" . "Wetter in °C? 😊"))))))))

(ert-deftest chatpipe-test-multibyte-split-in-pipe ()
  "Bytes of one character that reach Emacs in different reads decode whole."
  (let* ((lines (concat "{\"type\":\"start\",\"protocol\":2}\n"
                        "{\"type\":\"delta\",\"content\":\"18°C 😊 ü\"}\n"
                        "{\"type\":\"delta\",\"content\":\"\\n€\"}\n"
                        "{\"type\":\"done\",\"finish_reason\":null}\n"))
         (script (chatpipe-test--write-script
                  "bytewise"
                  (concat "#!" chatpipe-test-python "\n"
                          "import sys, time\n"
                          "sys.stdin.read()\n"
                          "data = " (json-encode-string lines) ".encode()\n"
                          "# Cut after the first byte of each multi-byte character.\n"
                          "cuts = [i + 1 for i, b in enumerate(data) if b >= 0xC0]\n"
                          "for a, b in zip([0] + cuts, cuts + [len(data)]):\n"
                          "    sys.stdout.buffer.write(data[a:b])\n"
                          "    sys.stdout.buffer.flush()\n"
                          "    time.sleep(0.1)\n")))
         (chatpipe-command script)
         (chatpipe-backend-mode 'send)
         (reads 0)
         (count (lambda (&rest _) (cl-incf reads))))
    (chatpipe-test--with-chat (buffer "bytewise")
      (advice-add 'chatpipe--filter :before count)
      (unwind-protect
          (progn (chatpipe-test--ask "Hi")
                 (chatpipe-test--wait-idle buffer))
        (advice-remove 'chatpipe--filter count))
      ;; The output came in at least 5 reads, each cut inside a character.
      (should (>= reads 5))
      (should (equal (buffer-string)
                     (chatpipe-test--chat-text '(user . "Hi")
                                               '(assistant . "18°C 😊 ü\n€")))))))

(ert-deftest chatpipe-test-filter-partial-lines ()
  "The filter of a send process joins partial lines, logs non-JSON lines.
Every event goes to the process's one stream, whatever its fields:
an `id' is not a routing id there."
  (let* ((events nil)
         (proc (chatpipe-test--fake-process "chatpipe-test-filter"))
         (chatpipe-log-buffer-name " *chatpipe-test-log*"))
    (unwind-protect
        (progn
          (chatpipe-test--fake-stream proc nil (lambda (e) (push e events)))
          (dolist (piece '("{\"type\":\"start\",\"protocol\":2,\"response_id\""
                           ":\"req_1\"}\n{\"type\":\"del"
                           "ta\",\"content\":\"a°\"}\n{\"ty"
                           "pe\":\"delta\",\"content\":\"b\"}\nnot json\n"
                           "{\"type\":\"tool_call\",\"index\":0,\"call_id\":"
                           "\"call_9\",\"name\":\"f\",\"arguments\":\"\"}\n"
                           "{\"type\":\"future\",\"x\":1,\"id\":\"x\"}\n"
                           "{\"type\":\"done\""
                           "}" "\n{\"type\":\"delta\",\"content\":\"late\"}\n"))
            (chatpipe--filter proc piece))
          (should (equal (nreverse events)
                         '((:type "start" :protocol 2 :response_id "req_1")
                           (:type "delta" :content "a°")
                           (:type "delta" :content "b")
                           (:type "tool_call" :index 0 :call_id "call_9"
                                  :name "f" :arguments "")
                           (:type "future" :x 1 :id "x")
                           (:type "done"))))
          ;; The stream is no longer pending.
          (should (= 0 (hash-table-count (process-get proc 'chatpipe-streams))))
          (let ((log (with-current-buffer chatpipe-log-buffer-name
                       (buffer-string))))
            (should (string-search "not a protocol event: not json" log))
            (should (string-search "event for no stream: {\"type\":\"delta\",\
\"content\":\"late\"}" log))))
      (chatpipe-test--delete-fake-process proc)
      (when (get-buffer " *chatpipe-test-log*")
        (kill-buffer " *chatpipe-test-log*")))))

(ert-deftest chatpipe-test-filter-long-line ()
  "A 4 MB event in 4 KB reads is searched and copied once: linear time."
  (let* ((events nil)
         (proc (chatpipe-test--fake-process "chatpipe-test-long"))
         (content (make-string (* 4 1024 1024) ?x))
         (line (concat "{\"type\":\"delta\",\"content\":\"" content "\"}\n"
                       "{\"type\":\"done\"}\n"))
         (start (float-time)))
    (unwind-protect
        (progn
          (chatpipe-test--fake-stream proc nil (lambda (e) (push e events)))
          (let ((i 0))
            (while (< i (length line))
              (chatpipe--filter proc (substring line i (min (length line)
                                                            (+ i 4096))))
              (setq i (+ i 4096))))
          (message "A 4 MB line in 4 KB reads: %.0f ms"
                   (* 1000 (- (float-time) start)))
          (should (< (- (float-time) start) 3))
          (should (equal (nreverse events)
                         `((:type "delta" :content ,content) (:type "done"))))
          (should (= 0 (buffer-size (chatpipe--input-buffer proc)))))
      (chatpipe-test--delete-fake-process proc))))

(ert-deftest chatpipe-test-serve-filter-routes-by-id ()
  "Serve lines go to the stream their id names, several in one read.
Only `id' routes: `call_id' and `response_id' are the events' own.
Text is handed on as it is read (`chatpipe-insert-interval' 0), so
that the order across streams is the order of the lines."
  (let* ((events nil)
         (chatpipe-insert-interval 0)
         (proc (chatpipe-test--fake-process "chatpipe-test-serve-filter" t))
         (streams (process-get proc 'chatpipe-streams))
         (chatpipe-log-buffer-name " *chatpipe-test-log*"))
    (unwind-protect
        (progn
          (dolist (id '("a" "b"))
            (chatpipe-test--fake-stream
             proc id (lambda (e)
                       (push (cons id (or (plist-get e :content)
                                          (plist-get e :call_id)
                                          (plist-get e :response_id)))
                             events))))
          (chatpipe--filter
           proc (concat "{\"id\":\"a\",\"type\":\"start\",\"response_id\":\"b\"}\n"
                        "{\"id\":\"a\",\"type\":\"delta\",\"content\":\"1\"}\n"
                        "{\"id\":\"b\",\"type\":\"delta\",\"content\":\"2\"}\n"
                        "{\"id\":\"a\",\"type\":\"de"))
          (chatpipe--filter
           proc (concat "lta\",\"content\":\"3\"}\n"
                        ;; An id that is none of ours, with two streams:
                        ;; nobody's.
                        "{\"id\":\"call_1\",\"type\":\"delta\",\"content\":\"?\"}\n"
                        "{\"id\":\"b\",\"type\":\"tool_call\",\"index\":0,"
                        "\"call_id\":\"a\",\"name\":\"f\",\"arguments\":\"\"}\n"
                        "{\"id\":\"a\",\"type\":\"done\"}\n"
                        ;; Without an id: nobody's.
                        "{\"type\":\"error\",\"message\":\"bad line\"}\n"))
          (should (equal (hash-table-keys streams) '("b")))
          ;; Even with one stream left, an id that is not ours is nobody's.
          (chatpipe--filter
           proc (concat "{\"id\":\"call_2\",\"type\":\"delta\",\"content\":\"4\"}\n"
                        "{\"id\":\"b\",\"type\":\"done\"}\n"))
          (should (equal (nreverse events)
                         '(("a" . "b") ("a" . "1") ("b" . "2") ("a" . "3")
                           ("b" . "a") ("a") ("b"))))
          (should (= 0 (hash-table-count streams)))
          (let ((log (with-current-buffer chatpipe-log-buffer-name
                       (buffer-string))))
            (should (string-search "event for no stream: {\"id\":\"call_1\"" log))
            (should (string-search "event for no stream: {\"type\":\"error\"" log))))
      (chatpipe-test--delete-fake-process proc)
      (when (get-buffer " *chatpipe-test-log*")
        (kill-buffer " *chatpipe-test-log*")))))

(provide 'chatpipe-stream-test)
;;; chatpipe-stream-test.el ends here
