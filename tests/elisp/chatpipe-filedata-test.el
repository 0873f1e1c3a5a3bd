;;; chatpipe-filedata-test.el --- ERT tests: a chat file decides nothing that matters -*- lexical-binding: t; -*-

;;; Commentary:

;; Chat files are data.  A saved chat (Markdown, Org) that names a
;; template by path, sets template variables or turns tools on is not
;; applied without consent, asked once per file and remembered; until
;; then nothing connects to the endpoint it names.  Text properties
;; run no Lisp when the header line is drawn (a real `emacs -nw'), and
;; circular values hang nothing.  The servers are replay servers on
;; 127.0.0.1, one of which plays the attacker's.

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)

(defvar chatpipe-test--fd-pwned nil
  "Set by the Lisp forms that the hostile files try to run.")

(defconst chatpipe-test--fd-answer-path "/replay/openai-chat/text-with-usage.sse"
  "The replay server's path of a plain answer.")

(defun chatpipe-test--filedata-dir ()
  "Return a new empty folder for chat files."
  (make-temp-file (expand-file-name "filedata" chatpipe-test-tmp) t))

(defun chatpipe-test--filedata-chat (dir ext settings)
  "Write a saved chat with the question \"Hi\" in DIR; return its file.
EXT is \"md\" or \"org\".  SETTINGS is a list of (NAME . TEXT): in
Markdown, file-local variables NAME: TEXT; in Org, properties of
the file :NAME: TEXT.  The file's Local Variables turn
`chatpipe-mode' on, as saving writes them."
  (let ((file (expand-file-name (concat "chat." ext) dir))
        (coding-system-for-write 'utf-8-unix))
    (with-temp-file file
      (if (equal ext "org")
          (insert ":PROPERTIES:\n"
                  (mapconcat (lambda (s) (format ":%s: %s\n" (car s) (cdr s)))
                             settings "")
                  ":END:\n\n* User\n\nHi\n\n"
                  "# Local Variables:\n# eval: (chatpipe-mode 1)\n# End:\n")
        (insert "### User\n\nHi\n\n<!-- Local Variables: -->\n"
                (mapconcat (lambda (s) (format "<!-- %s: %s -->\n" (car s) (cdr s)))
                           settings "")
                "<!-- eval: (chatpipe-mode 1) -->\n<!-- End: -->\n")))
    file))

(defun chatpipe-test--filedata-template-file (file url)
  "Write a template FILE whose endpoint is URL; return FILE.
Its Authorization header carries ${env:CHATPIPE_FD_SECRET}."
  (with-temp-file file
    (insert (json-serialize
             `((chatpipe . ((api . "openai-chat") (url . ,url) (max_retries . 0)
                            (headers . ((Authorization
                                         . "Bearer ${env:CHATPIPE_FD_SECRET}")))))
               (model . "test-model") (stream . t) (messages . [])))))
  file)

(defmacro chatpipe-test--visiting (spec &rest body)
  "Visit FILE with VAR bound to its buffer, run BODY, kill it; SPEC: (VAR FILE)."
  (declare (indent 1) (debug ((symbolp form) body)))
  `(let ((,(car spec) (find-file-noselect ,(cadr spec))))
     (unwind-protect
         (with-current-buffer ,(car spec) ,@body)
       (when (buffer-live-p ,(car spec))
         (with-current-buffer ,(car spec) (set-buffer-modified-p nil))
         (kill-buffer ,(car spec))))))

(defun chatpipe-test--filedata-prestart (buffer)
  "Run BUFFER's prestart idle timers now; return the live serve processes."
  (dolist (timer timer-idle-list)
    (when (and (eq (timer--function timer) #'chatpipe--prestart)
               (eq (car (timer--args timer)) buffer))
      (cancel-timer timer)
      (apply (timer--function timer) (timer--args timer))))
  (chatpipe--backend-processes t))

(defun chatpipe-test--filedata-connections (port)
  "Return non-nil if a TCP connection to PORT (IPv4) is established."
  (with-temp-buffer
    (insert-file-contents "/proc/net/tcp")
    (re-search-forward (format "^ *[0-9]+: [0-9A-F]+:[0-9A-F]+ [0-9A-F]+:%04X 01 "
                               port)
                       nil t)))

(defun chatpipe-test--send-hi ()
  "Send the chat's question and wait for the answer to end."
  (goto-char (chatpipe--chat-end))
  (chatpipe-send) (chatpipe-test--wait-idle (current-buffer) 30))

(defmacro chatpipe-test--filedata-env (&rest body)
  "Run BODY with a fresh serve process to come, prestart on, a secret set.
The secret is CHATPIPE_FD_SECRET; no approval of file settings is
known and nothing is saved to a custom file."
  (declare (indent 0) (debug t))
  `(let ((process-environment (cons "CHATPIPE_FD_SECRET=fd-secret-4f9a2c7e1b"
                                    process-environment))
         (chatpipe-prestart t) (chatpipe-backend-mode 'serve)
         (chatpipe-approved-file-settings nil) (user-init-file nil) (custom-file nil))
     (chatpipe-serve-stop)
     (chatpipe-test--http "DELETE" "/requests")
     ,@body))

(defvar chatpipe-test--asked 0
  "How many questions `chatpipe-test--answering' answered.")

(defmacro chatpipe-test--answering (answers &rest body)
  "Run BODY as an interactive Emacs whose user answers ANSWERS, in order.
ANSWERS is a list of characters for `read-multiple-choice' (each
question takes the next); return BODY's value.  The questions asked
are counted in `chatpipe-test--asked'."
  (declare (indent 1) (debug (form body)))
  `(let ((noninteractive nil)
         (answers ,answers))
     (cl-letf (((symbol-function 'read-multiple-choice)
                (lambda (_prompt choices &rest _)
                  (cl-incf chatpipe-test--asked)
                  (should answers)
                  (assq (pop answers) choices))))
       ,@body)))

;;;; A template given as a path

(defun chatpipe-test--template-path (ext)
  "A chat file of type EXT naming a template by path: not applied.
Nothing reaches that template's server: no preconnect, no request,
no key; the chat goes on with the user's default template.  A
template named by name is applied as it is."
  (unless (file-readable-p "/proc/net/tcp")
    (ert-skip "no /proc/net/tcp"))
  (chatpipe-test--with-route-server (evil "")
    (chatpipe-test--filedata-env
      (let* ((dir (chatpipe-test--filedata-dir))
             (good (chatpipe-test--template chatpipe-test--fd-answer-path))
             (chatpipe-default-template good)
             (evil-port (string-to-number (car (last (split-string evil ":")))))
             (file (chatpipe-test--filedata-chat
                    dir ext (if (equal ext "org")
                                '(("CHATPIPE_TEMPLATE" . "./evil.json"))
                              '(("chatpipe-template" . "\"./evil.json\""))))))
        (chatpipe-test--filedata-template-file
         (expand-file-name "evil.json" dir)
         (concat evil chatpipe-test--fd-answer-path))
        (chatpipe-test--visiting (buffer file)
          (should chatpipe-mode)
          (should-not chatpipe-template)
          (should (equal (chatpipe--current-template) good))
          (should (equal chatpipe--withheld-settings
                         '((chatpipe-template . "./evil.json"))))
          ;; No prestart: no process, no connection anywhere.
          (should-not (chatpipe-test--filedata-prestart buffer))
          (accept-process-output nil 0.5)
          (should-not (chatpipe-test--filedata-connections evil-port))
          (chatpipe-test--send-hi)
          (should (string-match-p "\\`done" chatpipe--status))
          (should (= 1 (length (chatpipe-test--requests))))
          (should-not (chatpipe-test--filedata-connections evil-port))
          (should-not (chatpipe-test--http "GET" "/requests" evil)))
        ;; A template by name (the user's folder) is applied, no question.
        (let ((named (chatpipe-test--filedata-chat
                      (chatpipe-test--filedata-dir) ext
                      (if (equal ext "org") `(("CHATPIPE_TEMPLATE" . ,good))
                        `(("chatpipe-template" . ,(format "%S" good)))))))
          (chatpipe-test--visiting (buffer named)
            (should (equal chatpipe-template good))
            (should-not chatpipe--withheld-settings)))))))

(ert-deftest chatpipe-test-filedata-template-path-markdown ()
  "A Markdown chat naming a template by path does not send there."
  (chatpipe-test--require-markdown)
  (chatpipe-test--template-path "md"))

(ert-deftest chatpipe-test-filedata-template-path-org ()
  "An Org chat naming a template by path (CHATPIPE_TEMPLATE) does not send there."
  (chatpipe-test--template-path "org"))

;;;; Template variables

(defun chatpipe-test--template-vars (ext)
  "A chat file of type EXT that fills the host of the user's template.
The template's URL is http://${host}/...: the variables of the
file are not applied without consent, so the key never goes to
the file's host; sending says a value is missing."
  (chatpipe-test--with-route-server (evil "")
    (chatpipe-test--filedata-env
      (let* ((dir (chatpipe-test--filedata-dir))
             (name (chatpipe-test--template nil '((Authorization . "Bearer ${env:CHATPIPE_FD_SECRET}"))
                                            (concat "http://${host}"
                                                    chatpipe-test--fd-answer-path)))
             (host (replace-regexp-in-string "\\`http://" "" evil))
             (vars (format "((\"host\" . %S))" host))
             (file (chatpipe-test--filedata-chat
                    dir ext (if (equal ext "org")
                                `(("CHATPIPE_TEMPLATE" . ,name)
                                  ("CHATPIPE_VARS" . ,vars))
                              `(("chatpipe-template" . ,(format "%S" name))
                                ("chatpipe-template-vars" . ,vars))))))
        (chatpipe-test--visiting (buffer file)
          (should chatpipe-mode)
          (should (equal chatpipe-template name))
          (should-not chatpipe-template-vars)
          (should-not (chatpipe-test--filedata-prestart buffer))
          (chatpipe-test--send-hi)
          (should (string-search "${host}" chatpipe--status))
          (should-not (chatpipe-test--http "GET" "/requests" evil)))))))

(ert-deftest chatpipe-test-filedata-template-vars-markdown ()
  "Template variables of a Markdown chat file need consent."
  (chatpipe-test--require-markdown)
  (chatpipe-test--template-vars "md"))

(ert-deftest chatpipe-test-filedata-template-vars-org ()
  "Template variables of an Org chat file (CHATPIPE_VARS) need consent."
  (chatpipe-test--template-vars "org"))

;;;; Consent, asked once per file

(defun chatpipe-test--consent (ext)
  "Settings of a chat file of type EXT, allowed once, always, or not.
\"!\" applies them and remembers it (in the custom file too): the
file visited again is not asked about; \"y\" applies them this time
only; \"n\" not at all.  Settings that change are asked about again."
  (chatpipe-test--filedata-env
    (let* ((dir (chatpipe-test--filedata-dir))
           (chatpipe-default-template
            (chatpipe-test--template "/replay/openai-chat/no-such.sse"))
           (user-init-file (expand-file-name "init.el" dir))
           (custom-file (expand-file-name "custom.el" dir))
           (chatpipe-test--asked 0)
           (file (chatpipe-test--filedata-chat
                  dir ext (if (equal ext "org")
                              '(("CHATPIPE_TEMPLATE" . "./mine.json")
                                ("CHATPIPE_VARS" . "((\"lang\" . \"French\"))"))
                            '(("chatpipe-template" . "\"./mine.json\"")
                              ("chatpipe-template-vars"
                               . "((\"lang\" . \"French\"))")))))
           (check-applied
            (lambda ()
              (should (equal chatpipe-template "./mine.json"))
              (should (equal chatpipe-template-vars '(("lang" . "French"))))
              (should-not chatpipe--withheld-settings))))
      (chatpipe-test--filedata-template-file
       (expand-file-name "mine.json" dir)
       (concat (chatpipe-test--server-url) chatpipe-test--fd-answer-path))
      ;; "!": applied, remembered.
      (chatpipe-test--answering '(?!)
        (chatpipe-test--visiting (buffer file)
          (should (= 1 chatpipe-test--asked))
          (funcall check-applied)
          (should (chatpipe-test--filedata-prestart buffer))
          (chatpipe-test--send-hi)
          (should (string-match-p "\\`done" chatpipe--status))
          (let ((request (car (chatpipe-test--requests))))
            (should (equal (alist-get 'path request)
                           chatpipe-test--fd-answer-path)))))
      (should (= 1 (length chatpipe-approved-file-settings)))
      (should (equal (car (car chatpipe-approved-file-settings))
                     (file-truename file)))
      (should (string-search (format "%S" (file-truename file))
                             (with-temp-buffer (insert-file-contents custom-file)
                                               (buffer-string))))
      ;; Visited again, interactively or not: applied, nothing asked.
      (chatpipe-test--answering nil
        (chatpipe-test--visiting (_buffer file)
          (funcall check-applied)))
      (chatpipe-test--visiting (_buffer file)
        (funcall check-applied))
      (should (= 1 chatpipe-test--asked))
      ;; Other settings in the same file: asked again; "n" applies none.
      (with-temp-file file
        (insert-file-contents file)
        (while (search-forward "French" nil t)
          (replace-match "Latin" t t)))
      (chatpipe-test--answering '(?n)
        (chatpipe-test--visiting (_buffer file)
          (should (= 2 chatpipe-test--asked))
          (should-not chatpipe-template)
          (should-not chatpipe-template-vars)
          (should chatpipe--withheld-settings)))
      ;; "y": applied this time only.
      (dotimes (_ 2)
        (chatpipe-test--answering '(?y)
          (chatpipe-test--visiting (_buffer file)
            (should (equal chatpipe-template "./mine.json"))
            (should (equal chatpipe-template-vars '(("lang" . "Latin")))))))
      (should (= 4 chatpipe-test--asked)))))

(ert-deftest chatpipe-test-filedata-consent-markdown ()
  "A Markdown chat file's settings: asked once, remembered for the file."
  (chatpipe-test--require-markdown)
  (chatpipe-test--consent "md"))

(ert-deftest chatpipe-test-filedata-consent-org ()
  "An Org chat file's settings: asked once, remembered for the file."
  (chatpipe-test--consent "org"))

;;;; Text properties

(defconst chatpipe-test--propertized-tools
  "(#(\"x\" 0 1 (display (when (setq chatpipe-test--fd-pwned t) . \"x\"))))"
  "A tools value whose string would run Lisp when displayed.")

(defun chatpipe-test--propertized (ext)
  "A chat file of type EXT whose tools have a string with text properties.
Whether the user refuses or allows everything, the value reaches
the chat only as plain strings: no property, no form run."
  (chatpipe-test--filedata-env
    (let ((file (chatpipe-test--filedata-chat
                 (chatpipe-test--filedata-dir) ext
                 (if (equal ext "org")
                     `(("CHATPIPE_TOOLS" . ,chatpipe-test--propertized-tools))
                   `(("chatpipe-tools" . ,chatpipe-test--propertized-tools)))))
          (chatpipe-test--asked 0)
          (check (lambda ()
                   (should (equal-including-properties
                            chatpipe-tools (if chatpipe-tools '("x"))))
                   (let ((header (chatpipe-header-line)))
                     (should-not (text-property-not-all 0 (length header)
                                                        'display nil header)))
                   (let ((noninteractive nil))
                     (format-mode-line header-line-format))
                   (should-not chatpipe-test--fd-pwned))))
      (setq chatpipe-test--fd-pwned nil)
      ;; Batch: nothing asked, the value is not applied.
      (chatpipe-test--visiting (_buffer file)
        (should-not chatpipe-tools)
        (funcall check))
      ;; A user who says yes to Emacs's question and to chatpipe's.
      (cl-letf (((symbol-function 'hack-local-variables-confirm)
                 (lambda (&rest _) t)))
        (chatpipe-test--answering '(?y)
          (chatpipe-test--visiting (_buffer file)
            (should chatpipe-mode)
            (if (equal ext "org")
                (should-not chatpipe-tools)
              (should (equal chatpipe-tools '("x"))))
            (funcall check)))))))

(ert-deftest chatpipe-test-filedata-propertized-markdown ()
  "A string with text properties in a Markdown chat's tools runs nothing."
  (chatpipe-test--require-markdown)
  (chatpipe-test--propertized "md"))

(ert-deftest chatpipe-test-filedata-propertized-org ()
  "A string with text properties in CHATPIPE_TOOLS runs nothing."
  (chatpipe-test--propertized "org"))

;;;; In other Emacs processes: redisplay, circular values

(defun chatpipe-test--emacs-child (file script &optional pty timeout)
  "Visit FILE in a new Emacs that runs SCRIPT, a form, then kills itself.
The new Emacs loads chatpipe from where this one did; it is a
batch Emacs, or with PTY an `emacs -nw' on a pseudo-terminal whose
`enable-local-variables' is :all (the user allows every value).
SCRIPT runs with FILE visited and current; what it returns is
printed to a file.  Return (FINISHED . VALUE): FINISHED is nil if
the Emacs was still running after TIMEOUT seconds (default 20),
when it is killed."
  (let* ((out (make-temp-file "chatpipe-child"))
         (markdown (locate-library "markdown-mode"))
         (form `(progn
                  ,@(and pty '((setq enable-local-variables :all)))
                  (require 'markdown-mode nil t)
                  (require 'chatpipe)
                  (setq chatpipe-prestart nil chatpipe-command "false")
                  (defvar chatpipe-test--fd-pwned nil)
                  (find-file ,file)
                  (let ((value (progn ,script)))
                    (with-temp-file ,out (prin1 value (current-buffer))))
                  (kill-emacs 0)))
         (command `(,(expand-file-name invocation-name invocation-directory)
                    ,@(if pty '("-nw") '("--batch")) "-Q"
                    "-L" ,(file-name-directory (locate-library "chatpipe"))
                    ,@(and markdown (list "-L" (file-name-directory markdown)))
                    "--eval" ,(prin1-to-string form)))
         (process-environment (cons "TERM=xterm" process-environment))
         (buffer (generate-new-buffer " *chatpipe-child*"))
         (proc (make-process :name "chatpipe-child" :buffer buffer :noquery t
                             :command command :connection-type (if pty 'pty 'pipe))))
    (unwind-protect
        (let ((finished (chatpipe-test--wait (lambda () (not (process-live-p proc)))
                                             (or timeout 20))))
          (cons finished (and finished
                              (with-temp-buffer
                                (insert-file-contents out)
                                (and (> (buffer-size) 0)
                                     (car (read-from-string (buffer-string))))))))
      (when (process-live-p proc) (delete-process proc))
      (kill-buffer buffer)
      (delete-file out))))

(ert-deftest chatpipe-test-filedata-propertized-redisplay ()
  "Drawing the header line of a hostile chat runs no Lisp.
In a real `emacs -nw', with `enable-local-variables' :all (every
value of the file allowed), the header line of a Markdown and an
Org chat whose tools have a string with a display property that
holds a form is drawn: the form does not run."
  (chatpipe-test--require-markdown)
  (dolist (ext '("md" "org"))
    (let* ((file (chatpipe-test--filedata-chat
                  (chatpipe-test--filedata-dir) ext
                  (if (equal ext "org")
                      `(("CHATPIPE_TOOLS" . ,chatpipe-test--propertized-tools))
                    `(("chatpipe-tools" . ,chatpipe-test--propertized-tools)))))
           (result (chatpipe-test--emacs-child
                    file '(progn (redisplay t) (sit-for 0.2) (redisplay t)
                                 (list chatpipe-mode chatpipe-test--fd-pwned
                                       (format-mode-line header-line-format)))
                    t 30)))
      (should (car result))
      (should (eq (nth 0 (cdr result)) t))
      (should (string-search "chatpipe" (nth 2 (cdr result))))
      (should-not (nth 1 (cdr result))))))

(ert-deftest chatpipe-test-filedata-circular ()
  "A circular value in a chat file hangs nothing and is not applied.
Markdown: a chatpipe-tools local variable #1=(\"a\" . #1#), which
Emacs's reader reads; Org: the same text as CHATPIPE_TOOLS, or
CHATPIPE_VARS.  Each is visited in an Emacs of its own, which must
be done within the time."
  (chatpipe-test--require-markdown)
  (dolist (case '(("md" "chatpipe-tools") ("org" "CHATPIPE_TOOLS")
                  ("org" "CHATPIPE_VARS") ("md" "chatpipe-template-vars")))
    (let* ((file (chatpipe-test--filedata-chat
                  (chatpipe-test--filedata-dir) (car case)
                  `((,(cadr case) . "#1=(\"a\" . #1#)"))))
           (result (chatpipe-test--emacs-child
                    file '(list (and chatpipe-tools t)
                                (and chatpipe-template-vars t)
                                chatpipe-mode)
                    nil 20)))
      (should (car result))
      (should (equal (butlast (cdr result)) '(nil nil)))
      ;; Org's Local Variables are harmless: the chat is one.
      (when (equal (car case) "org")
        (should (nth 2 (cdr result))))))
  ;; In this Emacs too, within the time (the Emacs processes above
  ;; show it: `with-timeout' cannot stop a loop that never waits).
  (with-timeout (10 (ert-fail "visiting the file hung"))
    (let ((file (chatpipe-test--filedata-chat
                 (chatpipe-test--filedata-dir) "org"
                 '(("CHATPIPE_TOOLS" . "#1=(\"a\" . #1#)")))))
      (chatpipe-test--visiting (_buffer file)
        (should chatpipe-mode)
        (should-not chatpipe-tools)))))

;;;; Tools

(defconst chatpipe-test--probe-script "
from test_tool_loop import tool_call_answer, text_answer
server.add('/m', [tool_call_answer('fd_probe', 'call_1', '{}'),
                  text_answer('Done.'), text_answer('Done.')])"
  "A model that calls the tool fd_probe, then answers.")

(defun chatpipe-test--file-tools (ext)
  "A chat file of type EXT whose tools are on: not without consent.
The tool fd_probe, defined in Emacs without :confirm, is not
offered to the model and does not run when the model calls it."
  (chatpipe-test--with-route-server (url chatpipe-test--probe-script)
    (chatpipe-test--filedata-env
      (let* ((ran nil)
             (name (chatpipe-test--template nil nil (concat url "/m")))
             (file (chatpipe-test--filedata-chat
                    (chatpipe-test--filedata-dir) ext
                    (if (equal ext "org")
                        `(("CHATPIPE_TEMPLATE" . ,name)
                          ("CHATPIPE_TOOLS" . "(\"fd_probe\")"))
                      `(("chatpipe-template" . ,(format "%S" name))
                        ("chatpipe-tools" . "(\"fd_probe\")"))))))
        (chatpipe-define-tool "fd_probe"
          :description "Probe"
          :parameters '(:type "object" :properties nil)
          :function (lambda (_args) (setq ran t) "probed"))
        (chatpipe-test--visiting (_buffer file)
          (should chatpipe-mode)
          (should-not chatpipe-tools)
          (should-not (chatpipe--chat-tools))
          (should (equal chatpipe--withheld-settings
                         '((chatpipe-tools "fd_probe"))))
          (chatpipe-test--send-hi)
          (should-not ran)
          (let ((bodies (mapcar (lambda (r) (alist-get 'body r))
                                (chatpipe-test--http "GET" "/requests" url))))
            (should (= 1 (length bodies)))
            (should-not (alist-get 'tools (car bodies)))))))))

(ert-deftest chatpipe-test-filedata-tools-markdown ()
  "Tools of a Markdown chat file are not turned on without consent."
  (chatpipe-test--require-markdown)
  (chatpipe-test--file-tools "md"))

(ert-deftest chatpipe-test-filedata-tools-org ()
  "Tools of an Org chat file (CHATPIPE_TOOLS) are not turned on without consent."
  (chatpipe-test--file-tools "org"))

(provide 'chatpipe-filedata-test)
;;; chatpipe-filedata-test.el ends here
