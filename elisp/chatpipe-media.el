;;; chatpipe-media.el --- Images and PDFs in chats: attach, annotate -*- lexical-binding: t; -*-

;; Copyright (C) 2025 chatpipe developers

;; Author: chatpipe developers
;; Keywords: comm, tools

;; This file is not part of GNU Emacs.

;; This program is free software: you can redistribute it and/or modify
;; it under the terms of the GNU General Public License as published by
;; the Free Software Foundation, either version 3 of the License, or
;; (at your option) any later version.

;; This program is distributed in the hope that it will be useful,
;; but WITHOUT ANY WARRANTY; without even the implied warranty of
;; MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
;; GNU General Public License for more details.

;; You should have received a copy of the GNU General Public License
;; along with this program.  If not, see <https://www.gnu.org/licenses/>.

;;; Commentary:

;; The links of the user's turns to images and PDFs are sent as media
;; (see chatpipe-media-links.el).  `chatpipe-media-annotate-mode'
;; says by each such link, in an overlay, whether its file will be
;; sent and what it is, or why not (missing, not an image or PDF, too
;; large); whether the model takes it is the backend's to say (its
;; error names the file).  `chatpipe-attach' inserts links to files
;; (from Dired, to the marked files); in graphical Emacs the images
;; show inline (Org's and markdown-mode's inline images), in a
;; terminal the links stay text.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-media-links)
(require 'chatpipe-headings)
(require 'chatpipe-turns)

(declare-function dired-get-marked-files "dired")
(declare-function chatpipe-busy-p "chatpipe-chat")
(defvar chatpipe-mode)
(defvar chatpipe-media-annotate-mode)
(declare-function org-display-inline-images "org")
(declare-function org-link-make-string "ol")
(declare-function markdown-display-inline-images "markdown-mode")

(defcustom chatpipe-media-inline-images t
  "Whether chats show their images inline in graphical Emacs.
Org buffers use `org-display-inline-images', Markdown buffers
`markdown-display-inline-images'; a terminal shows the links."
  :type 'boolean
  :group 'chatpipe)

(defface chatpipe-media-sent '((t :inherit success))
  "Face of the note by a link whose file will be sent."
  :group 'chatpipe)

(defface chatpipe-media-not-sent '((t :inherit warning))
  "Face of the note by a link whose file will not be sent."
  :group 'chatpipe)

;;;; Annotations

(defun chatpipe-media-describe (check)
  "Return the note of CHECK, a plist of `chatpipe-media-check', a string."
  (let ((size (and (plist-get check :size)
                   (file-size-human-readable (plist-get check :size) 'iec " "))))
    (pcase (plist-get check :status)
      ('send (format "will be sent: %s, %s" (plist-get check :mime) size))
      ('missing "not sent: missing")
      ('unreadable "not sent: unreadable")
      ('remote "not sent: a remote file")
      ('too-large (format "not sent: too large (over %s MB)"
                          chatpipe-media-max-megabytes))
      (_ "not sent: not an image or PDF"))))

(defun chatpipe-media--clear (&optional beg end)
  "Delete the link notes between BEG and END (default: the buffer's)."
  (remove-overlays (or beg (point-min)) (or end (point-max))
                   'chatpipe-media t))

(defun chatpipe-media-annotate ()
  "Annotate each link to a file that the user wrote in the buffer.
The links are those of the user turns.  The note, an overlay's
after-string, says whether the file will be sent (see
`chatpipe-media-describe').  Links in the model's turns get none:
they are never sent.  Return the number of notes."
  (save-restriction
    (widen)
    (chatpipe-media--clear)
    (let ((count 0))
      (dolist (turn (chatpipe-turns))
        (when (eq (car turn) 'user)
          (let ((start (nth 2 turn)))
            (dolist (link (chatpipe-media-links
                           (buffer-substring-no-properties start (nth 3 turn))))
              (let* ((check (chatpipe-media-check
                             (chatpipe-media-file (nth 2 link))))
                     (ov (make-overlay (+ start (nth 0 link))
                                       (+ start (nth 1 link)) nil t nil))
                     (note (chatpipe-media-describe check)))
                (overlay-put ov 'chatpipe-media t)
                (overlay-put ov 'evaporate t)
                (overlay-put ov 'help-echo note)
                (overlay-put ov 'after-string
                             (propertize (concat " [" note "]") 'face
                                         (if (eq (plist-get check :status) 'send)
                                             'chatpipe-media-sent
                                           'chatpipe-media-not-sent)))
                (cl-incf count))))))
      count)))

(defvar-local chatpipe-media--timer nil
  "The idle timer that annotates the buffer again after a change, or nil.")

(defun chatpipe-media--annotate-buffer (buffer)
  "Annotate BUFFER if it is live and `chatpipe-media-annotate-mode' is on."
  (when (buffer-live-p buffer)
    (with-current-buffer buffer
      (setq chatpipe-media--timer nil)
      (when chatpipe-media-annotate-mode
        (chatpipe-media-annotate)))))

(defun chatpipe-media--after-change (&rest _)
  "Annotate the buffer again when Emacs is next idle for half a second."
  (unless chatpipe-media--timer
    (setq chatpipe-media--timer
          (run-with-idle-timer 0.5 nil #'chatpipe-media--annotate-buffer
                               (current-buffer)))))

(defun chatpipe-media-show-images ()
  "Show the buffer's images inline, in graphical Emacs.
Do nothing in a terminal or when `chatpipe-media-inline-images' is
nil; use Org's inline images in Org buffers, markdown-mode's in
Markdown buffers."
  (when (and chatpipe-media-inline-images (display-graphic-p))
    (cond ((derived-mode-p 'org-mode) (org-display-inline-images))
          ((and (derived-mode-p 'markdown-mode)
                (fboundp 'markdown-display-inline-images))
           (markdown-display-inline-images)))))

;;;###autoload
(define-minor-mode chatpipe-media-annotate-mode
  "Say by each link to a file in the user's turns whether it is sent.
Links to images and PDFs in the user's turns are sent as media
\(see chatpipe-media-links.el); a note after each says what will be
sent, or why not.  The notes follow the edits, half a second after
them.  In graphical Emacs the images show inline (see
`chatpipe-media-inline-images')."
  :group 'chatpipe
  (when chatpipe-media--timer
    (cancel-timer chatpipe-media--timer)
    (setq chatpipe-media--timer nil))
  (if chatpipe-media-annotate-mode
      (progn
        (add-hook 'after-change-functions #'chatpipe-media--after-change nil t)
        (chatpipe-media-annotate)
        (chatpipe-media-show-images))
    (remove-hook 'after-change-functions #'chatpipe-media--after-change t)
    (chatpipe-media--clear)))

;;;; Attaching files

(defun chatpipe-media--link (file)
  "Return a link to FILE, an absolute file name, in the buffer's syntax.
A file in the folder of the chat's file, or below it, is linked
relative to it, any other by its absolute name (with \"~\" for the
home folder).  Org buffers get [[file:FILE]], others Markdown's
![NAME](FILE) for images and [NAME](FILE) for PDFs, FILE in angle
brackets if it has spaces or parentheses.  Signal a `user-error'
if FILE's name cannot be in a link (a newline, or in Markdown an
angle bracket)."
  (let* ((dir (and buffer-file-name (file-name-directory buffer-file-name)))
         (path (if (and dir (file-in-directory-p file dir))
                   (concat "./" (file-relative-name file dir))
                 (abbreviate-file-name file)))
         (name (file-name-nondirectory file)))
    (when (string-match-p "\n" path)
      (user-error "A file name with a newline cannot be linked: %S" file))
    (if (derived-mode-p 'org-mode)
        (progn (require 'ol)
               (org-link-make-string (concat "file:" path)))
      (when (string-match-p "[<>]" path)
        (user-error "A file name with < or > cannot be linked: %s" file))
      (format "%s[%s](%s)"
              (if (eq (nth 2 (chatpipe-media--type file)) 'document) "" "!")
              (replace-regexp-in-string "[][]" "" name)
              (if (string-match-p "[ \t()]" path) (concat "<" path ">") path)))))

(defun chatpipe-media--chat ()
  "Return the chat buffer that files are attached to.
That is the current buffer if it is a chat, else the chat buffer
selected last.  Signal a `user-error' if there is none."
  (or (and (bound-and-true-p chatpipe-mode) (current-buffer))
      (and (boundp 'chatpipe-mode)
           (cl-find-if (lambda (b) (buffer-local-value 'chatpipe-mode b))
                       (buffer-list)))
      (user-error "No chat buffer: M-x chatpipe opens one")))

(defun chatpipe-media--insert-point ()
  "Move point to where attached files' links go, and return it.
That is point in the user's turn it is in; else, or if point is
elsewhere than in a turn, the end of the chat, in its last turn if
that is the user's, else under a new user heading; signal a
`user-error' for that while an answer streams into the chat."
  (let* ((turns (chatpipe-turns))
         (here (cl-find-if (lambda (turn) (<= (nth 2 turn) (point) (nth 3 turn)))
                           turns)))
    (unless (and here (eq (car here) 'user))
      (when (and (fboundp 'chatpipe-busy-p) (chatpipe-busy-p))
        (user-error "An answer is streaming into this chat: attach in a \
question, or when it has ended"))
      (goto-char (chatpipe--chat-end))
      (skip-chars-backward " \t\n")
      (delete-region (point) (chatpipe--chat-end))
      (chatpipe--ensure-blank-line)
      (let ((last (car (last turns))))
        (unless (and last (eq (car last) 'user))
          (insert (chatpipe--heading 'user) "\n\n")))
      (unless (= (point) (chatpipe--chat-end))
        (save-excursion (insert "\n\n"))))
    (point)))

;;;###autoload
(defun chatpipe-attach (files)
  "Insert links to FILES, images or PDFs, into a chat; they are sent with it.
Interactively, FILES is the marked files in Dired (else the one at
point), or a file read in the minibuffer (completion offers
folders, images and PDFs).  The links go at point in a user turn
of the current chat buffer, else at the end of the chat selected
last (under a new user heading if its last turn is an answer),
each on a line of its own.  Images show inline in graphical Emacs.
A file that will not be sent (missing, not an image or PDF, too
large) is linked all the same; its note says why."
  (interactive
   (list (if (derived-mode-p 'dired-mode)
             (dired-get-marked-files)
           (list (read-file-name "Attach image or PDF: " nil nil t nil
                                 (lambda (name)
                                   (or (directory-name-p name)
                                       (chatpipe-media--type name))))))))
  (let ((chat (chatpipe-media--chat))
        (here (current-buffer)))
    (with-current-buffer chat
      (let ((links (mapcar (lambda (file)
                             (chatpipe-media--link (expand-file-name file)))
                           files)))
        (save-excursion
          (unless (eq chat here) (goto-char (point-max)))
          (chatpipe-media--insert-point)
          (unless (bolp) (insert "\n"))
          (dolist (link links)
            (insert link "\n"))
          (when (eq chat here) (setq here (point)))))
      (when (integerp here) (goto-char here))
      (chatpipe-media-annotate)
      (chatpipe-media-show-images))
    (unless (eq chat (current-buffer))
      (display-buffer chat))
    chat))

(provide 'chatpipe-media)
;;; chatpipe-media.el ends here
