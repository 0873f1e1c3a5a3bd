;;; chatpipe-media-test.el --- ERT tests: images and PDFs linked in chats -*- lexical-binding: t; -*-

;;; Commentary:

;; Links to images and PDFs in user turns become media parts of the
;; messages (chatpipe-media-links.el); the notes by the links, the
;; links `chatpipe-attach' inserts, and a saved chat that sends the
;; same media when it is visited again (chatpipe-media.el).

;;; Code:

(require 'ert)
(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-test-helpers)
(require 'chatpipe-media)

(defconst chatpipe-test--media-png
  (concat (unibyte-string #x89 ?P ?N ?G ?\r ?\n #x1a ?\n) "rest of a PNG")
  "The bytes of a file that starts as a PNG image does.")

(defun chatpipe-test--media-dir ()
  "Return a new folder with media files and files that are not media.
It has a.png and \"c d.pdf\" (real magic bytes), fake.png (text),
big.png (a PNG of 3000 bytes), id_rsa (text), key.png (a symlink
to id_rsa), fifo.png (a named pipe) and sub/ (a folder)."
  (let ((dir (file-name-as-directory
              (make-temp-file "media" t nil))))
    (cl-flet ((write (name bytes)
                (let ((coding-system-for-write 'binary))
                  (write-region bytes nil (expand-file-name name dir)))))
      (write "a.png" chatpipe-test--media-png)
      (write "c d.pdf" "%PDF-1.4\nbody\n")
      (write "fake.png" "not an image\n")
      (write "big.png" (concat chatpipe-test--media-png (make-string 3000 ?x)))
      (write "id_rsa" "-----BEGIN OPENSSH PRIVATE KEY-----\n"))
    (make-symbolic-link (expand-file-name "id_rsa" dir)
                        (expand-file-name "key.png" dir))
    (should (eq 0 (call-process "mkfifo" nil nil nil
                                (expand-file-name "fifo.png" dir))))
    (make-directory (expand-file-name "sub.png" dir))
    dir))

(defmacro chatpipe-test--media-with-chat (spec &rest body)
  "Run BODY in a temporary chat buffer; SPEC is (DIR MODE TEXT).
DIR is bound to a folder of `chatpipe-test--media-dir', the
buffer's `default-directory'; MODE is its major mode, TEXT its
text.  The folder is deleted afterwards."
  (declare (indent 1) (debug ((symbolp form form) body)))
  `(let ((,(car spec) (chatpipe-test--media-dir))
         (chatpipe-media-max-megabytes 0.002))
     (unwind-protect
         (with-temp-buffer
           (funcall ,(nth 1 spec))
           (setq default-directory ,(car spec))
           (insert ,(nth 2 spec))
           ,@body)
       (delete-directory ,(car spec) t))))

(defun chatpipe-test--media-part (dir type file mime)
  "Return the part of TYPE for FILE in DIR, with MIME."
  `((type . ,type) (path . ,(expand-file-name file dir)) (mime_type . ,mime)))

(defconst chatpipe-test--media-chat
  (concat "### User\n\nCompare ![a](a.png) with [the paper](<c d.pdf> \"t\")"
          " and ![again](./a.png).\n"
          "Not these: ![](fake.png) ![](big.png) ![](key.png) [k](id_rsa)"
          " ![](fifo.png) ![](sub.png) ![](missing.png)"
          " ![w](https://example.com/a.png) `![](a.png)`\n"
          "```\n![](c d.pdf)\n```\n\n"
          "### Assistant\n\nSee ![mine](a.png) and [[file:c d.pdf]].\n\n"
          "### User\n\n[[file:a.png]] and [[./c d.pdf][the paper]]\n")
  "A Markdown chat whose user turns link media and files that are not.")

(ert-deftest chatpipe-test-media-messages ()
  "The user's links to images and PDFs are parts; the model's are text."
  (chatpipe-test--media-with-chat (dir #'text-mode chatpipe-test--media-chat)
    (let ((messages (chatpipe-messages))
          (a (chatpipe-test--media-part dir "image" "a.png" "image/png"))
          (pdf (chatpipe-test--media-part dir "document" "c d.pdf"
                                          "application/pdf")))
      (should (equal (mapcar #'car messages) '("user" "assistant" "user")))
      (should (equal (cdr (nth 0 messages))
                     (vector `((type . "text")
                               (text . ,(chatpipe--turn-text
                                         (car (chatpipe-turns)))))
                             a pdf)))
      ;; The model's links stay its text.
      (should (equal (cdr (nth 1 messages))
                     "See ![mine](a.png) and [[file:c d.pdf]]."))
      (should (equal (cdr (nth 2 messages))
                     (vector '((type . "text")
                               (text . "[[file:a.png]] and [[./c d.pdf][the paper]]"))
                             a pdf)))
      ;; The request is JSON, the parts' paths absolute.
      (should (string-search
               (format "\"path\":\"%s\"" (expand-file-name "c d.pdf" dir))
               (json-serialize (chatpipe--messages-vector messages)))))))

(ert-deftest chatpipe-test-media-org ()
  "An Org chat's file links are parts; links in its blocks are text."
  (chatpipe-test--media-with-chat
      (dir #'org-mode (concat "* User\n\n[[file:a.png]] [[https://x.org/a.png]]\n"
                              "#+begin_example\n[[file:c d.pdf]]\n#+end_example\n"
                              "[[file:fake.png][a fake]] [[a.png]]\n"))
    (should (equal (chatpipe-messages)
                   `(("user"
                      . [((type . "text")
                          (text . ,(string-trim (buffer-substring-no-properties
                                                 9 (point-max)))))
                         ,(chatpipe-test--media-part dir "image" "a.png"
                                                     "image/png")]))))))

(ert-deftest chatpipe-test-media-checks ()
  "Each file is checked: sent, missing, too large, not an image or PDF."
  (let ((dir (chatpipe-test--media-dir))
        (chatpipe-media-max-megabytes 0.002))
    (unwind-protect
        (cl-flet ((note (file) (chatpipe-media-describe
                                (chatpipe-media-check
                                 (expand-file-name file dir)))))
          (should (equal (note "a.png") "will be sent: image/png, 21 B"))
          (should (equal (note "c d.pdf") "will be sent: application/pdf, 14 B"))
          (should (equal (note "big.png") "not sent: too large (over 0.002 MB)"))
          (should (equal (note "missing.png") "not sent: missing"))
          (should (equal (note "/ssh:example.invalid:/a.png")
                         "not sent: a remote file"))
          (should (equal (chatpipe-media-describe
                          (chatpipe-media-check (concat dir "a\0.png")))
                         "not sent: not an image or PDF"))
          (should-not (chatpipe-media-links "![](a\0.png) [[file:a\0.png]]"))
          (dolist (file '("fake.png" "id_rsa" "key.png" "fifo.png" "sub.png"))
            (should (equal (note file) "not sent: not an image or PDF"))))
      (delete-directory dir t))))

(defun chatpipe-test--media-notes ()
  "Return the link notes of the buffer as (LINK-TEXT . NOTE) pairs, in order."
  (mapcar (lambda (ov)
            (cons (buffer-substring-no-properties (overlay-start ov)
                                                  (overlay-end ov))
                  (overlay-get ov 'help-echo)))
          (sort (cl-remove-if-not (lambda (ov) (overlay-get ov 'chatpipe-media))
                                  (overlays-in (point-min) (point-max)))
                (lambda (x y) (< (overlay-start x) (overlay-start y))))))

(ert-deftest chatpipe-test-media-annotations ()
  "Each link of the user's turns has a note; the model's links have none."
  (chatpipe-test--media-with-chat (dir #'text-mode chatpipe-test--media-chat)
    (chatpipe-media-annotate-mode 1)
    (should (equal
             (chatpipe-test--media-notes)
             '(("![a](a.png)" . "will be sent: image/png, 21 B")
               ("[the paper](<c d.pdf> \"t\")"
                . "will be sent: application/pdf, 14 B")
               ("![again](./a.png)" . "will be sent: image/png, 21 B")
               ("![](fake.png)" . "not sent: not an image or PDF")
               ("![](big.png)" . "not sent: too large (over 0.002 MB)")
               ("![](key.png)" . "not sent: not an image or PDF")
               ("[k](id_rsa)" . "not sent: not an image or PDF")
               ("![](fifo.png)" . "not sent: not an image or PDF")
               ("![](sub.png)" . "not sent: not an image or PDF")
               ("![](missing.png)" . "not sent: missing")
               ("[[file:a.png]]" . "will be sent: image/png, 21 B")
               ("[[./c d.pdf][the paper]]"
                . "will be sent: application/pdf, 14 B"))))
    ;; A note follows its file: created, it will be sent.
    (copy-file (expand-file-name "a.png" dir) (expand-file-name "missing.png" dir))
    (goto-char (point-max))
    (insert " ")
    ;; The idle timer (run here: batch Emacs is never idle).
    (let ((timer chatpipe-media--timer))
      (should (timerp timer))
      (should (equal (cdr (nth 9 (chatpipe-test--media-notes)))
                     "not sent: missing"))
      (apply (timer--function timer) (timer--args timer)))
    (should-not chatpipe-media--timer)
    (should (equal (cdr (nth 9 (chatpipe-test--media-notes)))
                   "will be sent: image/png, 21 B"))
    (chatpipe-media-annotate-mode -1)
    (should-not (chatpipe-test--media-notes))))

(ert-deftest chatpipe-test-media-attach-save-reopen ()
  "Attached files are links, which a saved chat keeps and sends again."
  (let* ((dir (chatpipe-test--media-dir))
         (file (expand-file-name "chat.md" dir))
         (template (chatpipe-test--template "/replay/openai/chat-basic.sse"))
         messages)
    (unwind-protect
        (progn
          (chatpipe-test--with-chat (buffer template)
            (insert "Look at these:")
            (write-file file)
            (chatpipe-attach (list (expand-file-name "a.png" dir)
                                   (expand-file-name "c d.pdf" dir)
                                   "/tmp/elsewhere.png"))
            (should (string-prefix-p
                     "### User\n\nLook at these:\n![a.png](./a.png)\n\
[c d.pdf](<./c d.pdf>)\n![elsewhere.png](/tmp/elsewhere.png)\n"
                     (buffer-string)))
            (should (equal (mapcar #'cdr (chatpipe-test--media-notes))
                           '("will be sent: image/png, 21 B"
                             "will be sent: application/pdf, 14 B"
                             "not sent: missing")))
            (setq messages (chatpipe-messages))
            (should (equal (length (cdr (car messages))) 3))
            (save-buffer))
          (let ((buffer (find-file-noselect file)))
            (unwind-protect
                (with-current-buffer buffer
                  (should chatpipe-mode)
                  (should (equal (chatpipe-messages) messages)))
              (kill-buffer buffer))))
      (delete-directory dir t))))

(ert-deftest chatpipe-test-media-link-round-trip ()
  "A link `chatpipe-attach' writes names its file, whatever the file's name."
  (dolist (mode '(text-mode org-mode))
    (with-temp-buffer
      (funcall mode)
      (setq default-directory "/tmp/")
      (dolist (name '("a b(1).png" "x]y[.png" "ab:c.png" "\u00e9\u00e8.pdf" "#h.png"
                      "q\"t\".png" "back\\slash.png" "~tilde.png"))
        (dolist (file (list (concat "/srv/" name) (concat "/tmp/" name)))
          (let ((buffer-file-name "/tmp/chat.md")
                (link (chatpipe-media--link file)))
            (should (equal (mapcar (lambda (l) (chatpipe-media-file (nth 2 l)))
                                   (chatpipe-media-links (concat "See " link ".")))
                           (list file)))))))))

(ert-deftest chatpipe-test-media-attach-dired ()
  "From Dired, the marked files are linked under a new user turn of the chat."
  (let* ((dir (chatpipe-test--media-dir))
         (template (chatpipe-test--template "/replay/openai/chat-basic.sse"))
         (chatpipe-major-mode 'org-mode)
         (listing (dired-noselect dir)))
    (unwind-protect
        (chatpipe-test--with-chat (chat template)
          (insert "Hi\n\n* Assistant\n\nHello.\n")
          (with-current-buffer listing
            (dired-mark-files-regexp "\\`\\(a\\.png\\|c d\\.pdf\\)\\'")
            (should (eq (call-interactively #'chatpipe-attach) chat)))
          (should (equal (buffer-string)
                         (format "* User\n\nHi\n\n* Assistant\n\nHello.\n\n\
* User\n\n[[file:%sa.png]]\n[[file:%sc d.pdf]]\n"
                                 (abbreviate-file-name dir)
                                 (abbreviate-file-name dir))))
          (should (equal (mapcar #'cdr (chatpipe-test--media-notes))
                         '("will be sent: image/png, 21 B"
                           "will be sent: application/pdf, 14 B")))
          (should (equal (length (cdr (car (last (chatpipe-messages))))) 3))
          ;; Not at the end of a chat that an answer streams into.
          (let ((text (buffer-string)))
            (goto-char (point-min))
            (re-search-forward "^\\* Assistant")
            (cl-letf (((symbol-function 'chatpipe-busy-p) #'always))
              (should-error (chatpipe-attach (list (concat dir "a.png")))
                            :type 'user-error))
            (should (equal (buffer-string) text))))
      (kill-buffer listing)
      (delete-directory dir t))))

;;;; Through the real backend

(defun chatpipe-test--media-file-base64 (file)
  "Return the bytes of FILE in base64, on one line."
  (with-temp-buffer
    (set-buffer-multibyte nil)
    (insert-file-contents-literally file)
    (base64-encode-region (point-min) (point-max) t)
    (buffer-string)))

(ert-deftest chatpipe-test-media-end-to-end ()
  "A chat with an image link and a PDF link sends both through the backend.
The replay server gets the OpenAI chat completions shape: the
question's text, the image as a data URL, the PDF as a file."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((dir (chatpipe-test--media-dir))
         (recording "openai-chat/text-with-usage.sse")
         (template (chatpipe-test--template (concat "/replay/" recording)))
         (question "What is in ![a picture](a.png) and [[file:c d.pdf]]?"))
    (unwind-protect
        (chatpipe-test--with-chat (buffer template)
          (setq default-directory dir)
          (chatpipe-test--ask question)
          (chatpipe-test--wait-idle buffer)
          (should (equal (buffer-string)
                         (chatpipe-test--chat-text
                          (cons 'user question)
                          (cons 'assistant (chatpipe-test--expected recording)))))
          (should (equal
                   (chatpipe-test--request-messages
                    (car (last (chatpipe-test--requests))))
                   `(("user"
                      ((type . "text") (text . ,question))
                      ((type . "image_url")
                       (image_url
                        (url . ,(concat "data:image/png;base64,"
                                        (chatpipe-test--media-file-base64
                                         (expand-file-name "a.png" dir))))))
                      ((type . "file")
                       (file (filename . "c d.pdf")
                             (file_data
                              . ,(concat "data:application/pdf;base64,"
                                         (chatpipe-test--media-file-base64
                                          (expand-file-name "c d.pdf" dir)))))))))))
      (delete-directory dir t))))

(ert-deftest chatpipe-test-media-refused ()
  "A file the API does not take is the backend's error, which names it.
Ollama takes PNG and JPEG images only: nothing is sent."
  (chatpipe-test--http "DELETE" "/requests")
  (let* ((dir (chatpipe-test--media-dir))
         (template (chatpipe-test--bundled-template
                    "ollama" "/replay/ollama/basic-text.ndjson"))
         (question "Read [the paper](<c d.pdf>)."))
    (unwind-protect
        (chatpipe-test--with-chat (buffer template)
          (setq default-directory dir)
          (chatpipe-test--ask question)
          (chatpipe-test--wait-idle buffer)
          (should (string-match
                   (concat "\\`### User\n\n" (regexp-quote question)
                           "\n\n### Assistant\n\n\\[error: [^]\n]*"
                           (regexp-quote (expand-file-name "c d.pdf" dir))
                           "[^]\n]*application/pdf[^]\n]*\\]\n\n### User\n\n\\'")
                   (buffer-string)))
          (should-not (chatpipe-test--requests)))
      (delete-directory dir t))))

(provide 'chatpipe-media-test)
;;; chatpipe-media-test.el ends here
