;;; chatpipe-context-test.el --- ERT tests: the context of chats -*- lexical-binding: t; -*-

;;; Commentary:

;; Context items (chatpipe-context.el, chatpipe-context-items.el):
;; toggling regions, buffers and Dired's marked files; regions that
;; follow edits; what a request sends (a file item for a buffer the
;; same as its file, else the live text); killed buffers named in a
;; warning; items for the next question only; the header text; the
;; marks; and the context saved with a chat, restored only with
;; consent, and never from a value that is not plain data.

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'dired)
(require 'chatpipe-test-helpers)
(require 'chatpipe-context)

(defvar chatpipe-prestart)

(defmacro chatpipe-test--ctx-with-chat (var &rest body)
  "Run BODY with VAR bound to a new chat buffer, selected last.
No item is in the global context; buffers made are killed after."
  (declare (indent 1) (debug (symbolp body)))
  `(let ((,var (generate-new-buffer "*ctx chat*"))
         (chatpipe-prestart nil)
         (chatpipe-global-context nil)
         (transient-mark-mode t))
     (unwind-protect
         (progn
           (with-current-buffer ,var (text-mode) (chatpipe-mode 1))
           (switch-to-buffer ,var)
           (switch-to-buffer (get-buffer-create "*scratch*"))
           ,@body)
       (kill-buffer ,var))))

(defmacro chatpipe-test--ctx-warnings (var &rest body)
  "Run BODY with VAR bound to the list of warnings it displayed, in order."
  (declare (indent 1) (debug (symbolp body)))
  `(let ((,var nil))
     (cl-letf (((symbol-function 'display-warning)
                (lambda (_type message &rest _) (setq ,var (append ,var (list message))))))
       ,@body)))

(defun chatpipe-test--ctx-marks (buffer)
  "Return the overlays of context items in BUFFER."
  (with-current-buffer buffer
    (cl-remove-if-not (lambda (o) (overlay-get o 'chatpipe-context))
                      (overlays-in (point-min) (point-max)))))

(defun chatpipe-test--ctx-select (beg end)
  "Make the region of the current buffer BEG to END, active."
  (goto-char beg)
  (push-mark end t t))

(ert-deftest chatpipe-test-context-toggle ()
  "Toggling a buffer, then a region, adds it, then removes it and its mark."
  (chatpipe-test--ctx-with-chat chat
				(with-temp-buffer
				  (insert "one\ntwo\nthree\n")
				  (chatpipe-context-toggle)
				  (should (equal (mapcar #'chatpipe-context-item-kind
							 (chatpipe-context-items chat))
						 '(buffer)))
				  (should (= 1 (length (chatpipe-test--ctx-marks (current-buffer)))))
				  (chatpipe-context-toggle)
				  (should-not (chatpipe-context-items chat))
				  (should-not (chatpipe-test--ctx-marks (current-buffer)))
				  (chatpipe-test--ctx-select 5 9)
				  (chatpipe-context-toggle)
				  (should (equal (mapcar #'chatpipe-context-item-kind
							 (chatpipe-context-items chat))
						 '(region)))
				  (chatpipe-test--ctx-select 5 9)
				  (chatpipe-context-toggle)
				  (should-not (chatpipe-context-items chat))
				  (should-not (chatpipe-test--ctx-marks (current-buffer)))
				  ;; C-u: the global context.
				  (chatpipe-context-toggle '(4))
				  (should (= 1 (length chatpipe-global-context)))
				  (should-not (chatpipe-context-items chat))
				  (should (equal (chatpipe-context-header-text chat) "ctx 1 (~4 tokens)"))
				  (chatpipe-context-clear '(4))
				  (should-not chatpipe-global-context)
				  (should-not (chatpipe-test--ctx-marks (current-buffer))))))

(ert-deftest chatpipe-test-context-region-follows-edits ()
  "A region item follows an insertion before it, and sends its live text."
  (chatpipe-test--ctx-with-chat chat
				(with-temp-buffer
				  (rename-buffer "notes" t)
				  (emacs-lisp-mode)
				  (insert "aaa\nbbb\nccc\n")
				  (chatpipe-test--ctx-select 5 9)
				  (chatpipe-context-toggle)
				  (goto-char (point-min))
				  (insert "(x)\n")
				  (should (equal (chatpipe-context-request-items chat)
						 `[((type . "text") (name . ,(buffer-name))
						    (text . "bbb\n") (language . "elisp"))]))
				  (let ((mark (car (chatpipe-test--ctx-marks (current-buffer)))))
				    (should (equal (buffer-substring (overlay-start mark) (overlay-end mark))
						   "bbb\n"))))))

(ert-deftest chatpipe-test-context-dired ()
  "In Dired, toggling adds the marked files and folders, then removes them."
  (chatpipe-test--ctx-with-chat chat
				(let* ((dir (make-temp-file (expand-file-name "ctx" chatpipe-test-tmp) t))
				       (dired (progn (dolist (name '("a.txt" "b.txt"))
						       (write-region name nil (expand-file-name name dir)))
						     (make-directory (expand-file-name "sub" dir))
						     (dired-noselect dir))))
				  (unwind-protect
				      (with-current-buffer dired
					(dired-mark-files-regexp "\\`\\(a\\.txt\\|sub\\)\\'")
					(chatpipe-context-toggle)
					(should (equal (chatpipe-context-request-items chat)
						       `[((type . "file") (path . ,(expand-file-name "a.txt" dir)))
							 ((type . "dir") (path . ,(expand-file-name "sub" dir)))]))
					(chatpipe-context-toggle)
					(should-not (chatpipe-context-items chat)))
				    (kill-buffer dired)))))

(ert-deftest chatpipe-test-context-killed-buffer ()
  "A killed buffer is not sent, and a warning names it."
  (chatpipe-test--ctx-with-chat chat
				(let ((source (get-buffer-create "ctx-source")))
				  (with-current-buffer source
				    (insert "text")
				    (chatpipe-context-toggle)
				    (chatpipe-test--ctx-select 1 3)
				    (chatpipe-context-toggle))
				  (kill-buffer source)
				  (chatpipe-test--ctx-warnings warnings
							       (should (equal (chatpipe-context-request-items chat) []))
							       (should (= 1 (length warnings)))
							       (should (string-search "the buffer ctx-source: it was killed"
										      (car warnings)))
							       (should (string-search "the region of ctx-source" (car warnings)))))))

(ert-deftest chatpipe-test-context-next-only ()
  "An item for the next question only is dropped once it is sent."
  (chatpipe-test--ctx-with-chat chat
				(with-temp-buffer
				  (insert "abcd")
				  (chatpipe-context-toggle '(4))
				  (chatpipe-test--ctx-select 1 3)
				  (chatpipe-context-next-only)
				  (should (= 2 (length (chatpipe-context-request-items chat))))
				  (chatpipe-context-sent chat)
				  (should-not (chatpipe-context-items chat))
				  (should (= 1 (length (chatpipe-test--ctx-marks (current-buffer)))))
				  (should (= 1 (length (chatpipe-context-request-items chat))))
				  (should (equal (chatpipe-context-header-text chat) "ctx 1 (~1 tokens)")))))

(ert-deftest chatpipe-test-context-file-buffer ()
  "A file's buffer is sent as a file item, as its live text once modified."
  (chatpipe-test--ctx-with-chat chat
				(let* ((file (expand-file-name "ctx-code.py" chatpipe-test-tmp))
				       (buffer (progn (write-region "x = 1\ny = 2\n" nil file)
						      (find-file-noselect file))))
				  (unwind-protect
				      (with-current-buffer buffer
					(chatpipe-context-toggle)
					(chatpipe-test--ctx-select 7 13)
					(chatpipe-context-toggle)
					(should (equal (chatpipe-context-request-items chat)
						       `[((type . "file") (path . ,file))
							 ((type . "file") (path . ,file) (lines . [2 2]))]))
					(should (equal (chatpipe-context-header-text chat) "ctx 2 (~5 tokens)"))
					(goto-char (point-max))
					(insert "z = 3\n")
					(should (equal (chatpipe-context-request-items chat)
						       `[((type . "text") (name . ,file)
							  (text . "x = 1\ny = 2\nz = 3\n") (language . "python"))
							 ((type . "text") (name . ,file)
							  (text . "y = 2\n") (language . "python"))])))
				    (with-current-buffer buffer (set-buffer-modified-p nil))
				    (kill-buffer buffer)))))

(ert-deftest chatpipe-test-context-header ()
  "The header text counts the items and their tokens; nil without items."
  (chatpipe-test--ctx-with-chat chat
				(should-not (chatpipe-context-header-text chat))
				(with-temp-buffer
				  (insert (make-string 4400 ?a))
				  (chatpipe-context-toggle)
				  (should (equal (chatpipe-context-header-text chat)
						 "ctx 1 (~1.1k tokens)")))))

;;;; The list

(ert-deftest chatpipe-test-context-list ()
  "The list shows the items; d removes one, o flags it, n narrows to it."
  (chatpipe-test--ctx-with-chat chat
    (with-temp-buffer
      (let ((source (current-buffer)))
        (insert "one\ntwo\nthree\n")
        (chatpipe-test--ctx-select 5 9)
        (chatpipe-context-toggle)
        (chatpipe-context-toggle '(4))
        (with-current-buffer chat
          (should-error (chatpipe-context-toggle) :type 'user-error))
        (with-current-buffer (save-window-excursion (chatpipe-context-list))
          (unwind-protect
              (progn
                (should (equal (mapcar (lambda (entry) (append (cadr entry) nil))
                                       tabulated-list-entries)
                               `(("chat" "region" ,(buffer-name source) "2-2" "1" "")
                                 ("global" "buffer" ,(buffer-name source) "" "4" ""))))
                (goto-char (point-min))
                (save-window-excursion (chatpipe-context-list-narrow))
                (should (equal (with-current-buffer source (buffer-string))
                               "two\n"))
                (with-current-buffer source (widen))
                (chatpipe-context-next-only)
                (should (chatpipe-context-item-once
                         (car (chatpipe-context-items chat))))
                (goto-char (point-min))
                (chatpipe-context-list-remove)
                (should-not (chatpipe-context-items chat))
                (should (= 1 (length tabulated-list-entries))))
            (kill-buffer)))))))

;;;; The request

(ert-deftest chatpipe-test-context-rendered-request ()
  "The request shown goes to `chatpipe send --request - --dry-run', on stdin."
  (unless (fboundp 'chatpipe-process-request)
    (ert-skip "no chatpipe-process-request yet"))
  (defvar chatpipe-call-input)
  (chatpipe-test--ctx-with-chat chat
				(with-current-buffer chat
				  (setq chatpipe-template "local")
				  (insert "### User\n\nWhat is this?\n"))
				(with-temp-buffer
				  (insert "some text")
				  (chatpipe-context-toggle)
				  (let ((call nil))
				    (cl-letf (((symbol-function 'chatpipe-call-waiting)
					       (lambda (_timeout &rest args)
						 (setq call (cons args chatpipe-call-input))
						 (cons 0 "{\"rendered\": true}"))))
				      (should (equal (chatpipe-context-rendered-request chat)
						     "{\"rendered\": true}")))
				    (should (equal (car call) '("send" "--request" "-" "--dry-run")))
				    (let ((request (json-parse-string (cdr call) :object-type 'alist)))
				      (should (equal (alist-get 'template request) "local"))
				      (should (equal (alist-get 'messages request)
						     [((role . "user") (content . "What is this?"))]))
				      (should (equal (alist-get 'text (aref (alist-get 'context request) 0))
						     "some text")))))))

;; Through the real backend and the replay server.

(defun chatpipe-test--ctx-system (request)
  "Return the system message of REQUEST (the replay server's record)."
  (cdr (assoc "system" (chatpipe-test--request-messages request))))

(ert-deftest chatpipe-test-context-sent-through-the-backend ()
  "A chat's file and region items reach the server, rendered by the backend.
The file is read when the question is sent (its text then, not when it
was added), the region is the live text of its buffer, and both go after
the system prompt; the list's request view is the backend's dry run,
which sends nothing."
  (let* ((dir (make-temp-file "chatpipe-ctx" t))
         (file (expand-file-name "notes.py" dir))
         (template (chatpipe-test--template "/replay/openai-chat/text-with-usage.sse"))
         (chatpipe-prestart nil)
         (chatpipe-global-context nil))
    (unwind-protect
        (progn
          (with-temp-file file (insert "x = 1\n"))
          (chatpipe-test--with-chat (chat template)
            (chatpipe-context-add-file file)
            (with-temp-file file (insert "x = 2\n"))
            (switch-to-buffer chat)
            (with-current-buffer (get-buffer-create "*ctx region*")
              (insert "alpha\nbeta ```` gamma\n")
              (let ((transient-mark-mode t))
                (chatpipe-test--ctx-select 7 18)
                (chatpipe-context-toggle)))
            (with-current-buffer chat
              (should (string-match-p "ctx 2" (substring-no-properties
                                                (chatpipe-header-line))))
              (let ((shown (chatpipe-context-rendered-request chat))
                    (before (length (chatpipe-test--requests))))
                (should (string-search "x = 2" shown))
                (should (= before (length (chatpipe-test--requests))))
                (chatpipe-test--ask "What is x?")
                (chatpipe-test--wait-idle chat)
                (let* ((request (car (last (chatpipe-test--requests))))
                       (system (chatpipe-test--ctx-system request)))
                  (should (= (1+ before) (length (chatpipe-test--requests))))
                  ;; The list's request view is what the server then got.
                  (should (equal (alist-get 'content
                                            (aref (alist-get 'messages
                                                             (json-parse-string
                                                              shown :object-type 'alist))
                                                  0))
                                 system))
                  (should (string-match-p "\\`# Context" system))
                  (should (string-search (concat "## " file " (python)\n```python\nx = 2\n```")
                                         system))
                  (should (string-search "## *ctx region*\n`````\nbeta ```` g\n`````" system))
                  (should (equal (cdr (car (last (chatpipe-test--request-messages request))))
                                 "What is x?")))))))
      (when (get-buffer "*ctx region*") (kill-buffer "*ctx region*"))
      (delete-directory dir t))))

(ert-deftest chatpipe-test-context-header-estimate-kept ()
  "The header line (made at every redisplay) does not estimate again
while the items stay: once for a hundred redisplays, again on a change."
  (chatpipe-test--ctx-with-chat chat
    (with-temp-buffer
      (insert "some text")
      (chatpipe-context-toggle))
    (let ((calls 0)
          (estimate (symbol-function 'chatpipe-context-item-tokens)))
      (cl-letf (((symbol-function 'chatpipe-context-item-tokens)
                 (lambda (item) (cl-incf calls) (funcall estimate item))))
        (dotimes (_ 100) (chatpipe-context-header-text chat))
        (should (= calls 1))
        (with-temp-buffer
          (insert "more")
          (chatpipe-context-toggle))
        (should (string-prefix-p "ctx 2" (chatpipe-context-header-text chat)))
        (should (= calls 3))))))

;;;; Saved with the chat

(defun chatpipe-test--ctx-visit (file answer)
  "Visit FILE as a user answering ANSWER (nil: in batch); return its buffer."
  (if (null answer)
      (find-file-noselect file)
    (let ((noninteractive nil))
      (cl-letf (((symbol-function 'read-multiple-choice)
                 (lambda (_prompt choices &rest _) (assq answer choices))))
        (find-file-noselect file)))))

(defun chatpipe-test--ctx-paths (buffer)
  "Return the context of BUFFER as (KIND PATH LINES) lists."
  (mapcar (lambda (item) (list (chatpipe-context-item-kind item)
                               (chatpipe-context-item-path item)
                               (chatpipe-context-item-lines item)))
          (chatpipe-context-items buffer)))

(defun chatpipe-test--ctx-saved (ext)
  "A chat's files and folders are saved with it, restored with consent.
EXT is the chat file's extension, \"txt\" or \"org\"."
  (let* ((dir (make-temp-file (expand-file-name "ctx" chatpipe-test-tmp) t))
         (outside (make-temp-file (expand-file-name "ctx-out" chatpipe-test-tmp)))
         (file (expand-file-name (concat "chat." ext) dir))
         (code (expand-file-name "src/a.py" dir))
         (chatpipe-prestart nil) (chatpipe-approved-file-settings nil)
         (custom-file nil) (user-init-file nil) (transient-mark-mode t)
         (expected `((file ,code nil) (dir ,(expand-file-name "src" dir) nil)
                     (file ,code (2 . 2)) (file ,outside nil))))
    (make-directory (file-name-directory code))
    (write-region "x = 1\ny = 2\n" nil code)
    (let ((chat (find-file-noselect file))
          (source (find-file-noselect code)))
      (with-current-buffer chat
        (if (equal ext "org") (org-mode) (text-mode))
        (chatpipe-mode 1)
        (insert (if (equal ext "org") "* User\n\nHi\n" "### User\n\nHi\n"))
        (switch-to-buffer chat)
        (with-current-buffer source
          (chatpipe-context-toggle)
          (chatpipe-context-add-file (expand-file-name "src" dir))
          (chatpipe-test--ctx-select 7 13)
          (chatpipe-context-toggle))
        (chatpipe-context-add-file outside)
        (with-temp-buffer (insert "not saved") (chatpipe-context-toggle))
        (should (= 5 (length (chatpipe-context-items chat))))
        (save-buffer)
        (should-not chatpipe-context))
      (kill-buffer chat)
      (kill-buffer source))
    (let ((text (with-temp-buffer (insert-file-contents file) (buffer-string))))
      (should (string-search
               (format (concat (if (equal ext "org") ":CHATPIPE_CONTEXT: "
                                 "chatpipe-context: ")
                               "((\"file\" \"src/a.py\") (\"dir\" \"src\") \
\(\"file\" \"src/a.py\" \"2-2\") (\"file\" %S))")
                       (abbreviate-file-name outside))
               text)))
    ;; Saved by the user: allowed for this file.
    (let ((chat (chatpipe-test--ctx-visit file nil)))
      (should (equal (chatpipe-test--ctx-paths chat) expected))
      (kill-buffer chat))
    ;; Another's file (not allowed): withheld, in batch and on "n".
    (setq chatpipe-approved-file-settings nil)
    (dolist (answer '(nil ?n))
      (chatpipe-test--ctx-warnings _warnings
				   (let ((chat (chatpipe-test--ctx-visit file answer)))
				     (with-current-buffer chat
				       (should-not (chatpipe-context-items chat))
				       (should (assq 'chatpipe-context chatpipe--withheld-settings)))
				     (kill-buffer chat))))
    ;; "y": restored; the file visited again shows its two items.
    (let ((chat (chatpipe-test--ctx-visit file ?y)))
      (should (equal (chatpipe-test--ctx-paths chat) expected))
      (let ((source (find-file-noselect code)))
        (should (= 2 (length (chatpipe-test--ctx-marks source))))
        (kill-buffer source))
      (kill-buffer chat))))

(ert-deftest chatpipe-test-context-saved-text ()
  "A text chat's context: saved, restored with consent."
  (chatpipe-test--ctx-saved "txt"))

(ert-deftest chatpipe-test-context-saved-org ()
  "An Org chat's context: saved as a property, restored with consent."
  (chatpipe-test--ctx-saved "org"))

(ert-deftest chatpipe-test-context-consent-question ()
  "The question before a file's context applies shows each path, resolved."
  (let* ((dir (make-temp-file (expand-file-name "ctx" chatpipe-test-tmp) t))
         (file (expand-file-name "chat.txt" dir))
         (chatpipe-prestart nil) (chatpipe-approved-file-settings nil)
         (question nil))
    (with-temp-file file
      (insert "### User\n\nHi\n\nLocal Variables:\nchatpipe-context: ("
              (mapconcat (lambda (i) (format "(\"file\" \"f%02d\")" i))
                         (number-sequence 1 25) " ")
              " (\"file\" \"../secret\" \"3-4\"))\neval: (chatpipe-mode 1)\nEnd:\n"))
    (let ((noninteractive nil))
      (cl-letf (((symbol-function 'read-multiple-choice)
                 (lambda (_prompt choices &rest _)
                   (setq question (with-current-buffer "*chatpipe file settings*"
                                    (buffer-string)))
                   (assq ?n choices))))
        (kill-buffer (find-file-noselect file))))
    (should (string-search (format "file %S\n" (abbreviate-file-name
                                                 (expand-file-name "f25" dir)))
                           question))
    (should (string-search
             (format "file %S, lines 3-4\n"
                     (abbreviate-file-name
                      (expand-file-name "secret" (file-name-directory
                                                  (directory-file-name dir)))))
             question))))

(ert-deftest chatpipe-test-context-hostile-values ()
  "A saved context that is not plain data, huge or circular is refused."
  (let ((dir (make-temp-file (expand-file-name "ctx" chatpipe-test-tmp) t))
        (enable-local-variables :all)
        (chatpipe-prestart nil))
    (dolist (value (list "((file \"/etc/passwd\"))"
                         "((\"file\" \"/etc/passwd\" 1 2))"
                         "((\"file\" \"/ssh:evil:/etc/passwd\"))"
                         "((\"file\" \"/a\" \"9-2\"))"
                         "((\"file\" \"/a\" . \"1-2\"))"
                         (format "(%s)" (string-join (make-list 201 "(\"dir\" \"/\")")
                                                     " "))))
      (let ((file (expand-file-name "chat.txt" dir)))
        (with-temp-file file
          (insert "### User\n\nHi\n\nLocal Variables:\nchatpipe-context: " value
                  "\neval: (chatpipe-mode 1)\nEnd:\n"))
        (chatpipe-test--ctx-warnings warnings
				     (let ((chat (find-file-noselect file)))
				       (with-current-buffer chat
					 (should chatpipe-mode)
					 (should-not chatpipe-context)
					 (should-not (chatpipe-context-items chat)))
				       (kill-buffer chat))
				     (should (cl-some (lambda (w) (string-search "ignored chatpipe-context" w))
						      warnings))))))
  ;; Circular, or past the limits of plain data: refused, and not
  ;; walked forever.  (Emacs reads no #1= in a file's local variables.)
  (let ((circular (list (list "file" "/etc/passwd"))))
    (setcdr circular circular)
    (should-not (chatpipe--file-setting 'chatpipe-context circular))
    (let ((entry (list "file" "/etc/passwd")))
      (setcdr (cdr entry) (cdr entry))
      (should-not (chatpipe--file-setting 'chatpipe-context (list entry)))))
  (should-not (chatpipe--file-setting
               'chatpipe-context (make-list 100000 '("dir" "/"))))
  (should (equal (chatpipe--file-setting 'chatpipe-context '(("dir" "/")))
                 '(t ("dir" "/")))))

(provide 'chatpipe-context-test)
;;; chatpipe-context-test.el ends here
