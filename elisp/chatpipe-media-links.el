;;; chatpipe-media-links.el --- Links to images and PDFs in questions, sent as media -*- lexical-binding: t; -*-

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

;; A link to a local image or PDF in a user turn is sent as media: the
;; message's content becomes a list of parts (docs/protocol.md), its
;; text first (links and all, so that the model reads the names),
;; then an "image" or "document" part for each file, by absolute
;; path; the backend reads the file and converts the parts for the
;; API.  The links are Markdown's, ![ALT](PATH) and [TEXT](PATH)
;; (PATH may be in angle brackets and may have a "title"), and Org's,
;; [[file:PATH]], [[file:PATH][DESCRIPTION]] and [[./PATH]], in any
;; chat buffer.  A relative PATH is the chat's folder's
;; (`default-directory'); links with another scheme (https:, data:)
;; and links in code (fenced blocks, Org's blocks, `inline code')
;; are text.
;;
;; A chat file is data: a link names a file, but only a regular file
;; whose name ends in an image's or a PDF's extension and whose first
;; bytes are that of an image or a PDF (see `chatpipe-media--types')
;; is sent, no bigger than `chatpipe-media-max-megabytes'; any other
;; link stays text (`chatpipe-media-check' says why, and
;; chatpipe-media.el shows it by each link).  Only the user's turns
;; count: `chatpipe-messages' calls `chatpipe-media-messages' on its
;; user messages, never on the model's.

;;; Code:

(require 'cl-lib)
(require 'subr-x)

(declare-function org-link-unescape "ol")

(defcustom chatpipe-media-max-megabytes 20
  "The largest image or PDF sent from a link, in megabytes (2^20 bytes).
A bigger file's link stays text.  APIs have limits of their own
\(some 5 MB an image); the backend's error names the file."
  :type 'number
  :group 'chatpipe)

(defconst chatpipe-media--types
  `(("png" "image/png" image ,(unibyte-string #x89 ?P ?N ?G ?\r ?\n #x1a ?\n))
    ("jpe?g" "image/jpeg" image ,(unibyte-string #xff #xd8 #xff))
    ("gif" "image/gif" image "GIF87a" "GIF89a")
    ("webp" "image/webp" image webp)
    ("pdf" "application/pdf" document "%PDF-"))
  "The media a link may send: a list of (EXTENSIONS MIME KIND MAGIC...).
EXTENSIONS is a regexp of a file name's extensions (without case),
MIME its type, KIND the part's type (`image' or `document') and
each MAGIC a unibyte string that such a file starts with, or `webp'
for a RIFF file of type WEBP.")

(defconst chatpipe-media--link-regexp
  (concat
   ;; 1: code: 2 a fence's first line, 3 an Org block's name, `inline'.
   "\\(^[ \t]*\\(```+\\|~~~+\\)\\|^[ \t]*#\\+begin_\\([^ \t\n]+\\)"
   "\\|`[^`\n]+`\\)"
   ;; 4 or 5: a Markdown link's path, in angle brackets or not.
   "\\|!?\\[[^]\n]*\\](\\(?:<\\([^<>\n]+\\)>\\|\\([^ \t\n()<>]+\\)\\)"
   "\\(?:[ \t]+\"[^\"\n]*\"\\)?)"
   ;; 6: an Org link's path.
   "\\|\\[\\[\\(\\(?:[^][\\\n]\\|\\\\.\\)+\\)\\]\\(?:\\[[^]\n]*\\]\\)?\\]")
  "The regexp of the links, and of the start of code, where links are text.")

(defun chatpipe-media--code-end (text)
  "Return where the code whose start was just matched in TEXT ends.
The match is of `chatpipe-media--link-regexp', group 1: a fence
runs to its closing fence or, as in CommonMark, to the end of
TEXT; an Org block to its \"#+end_\" line, else it is only its
first line; inline code is the match."
  (let* ((case-fold-search t)
         (org (match-beginning 3))
         (close (cond ((match-beginning 2)
                      (concat "^[ \t]*" (regexp-quote (match-string 2 text))
                              "[ \t]*$"))
                      (org
                       (concat "^[ \t]*#\\+end_"
                              (regexp-quote (match-string 3 text))))))
         (end (match-end 0)))
    (cond ((null close) end)
          ((string-match close text (min (length text)
                                         (1+ (or (string-search "\n" text end)
                                                 (length text)))))
           (match-end 0))
          (org end)
          (t (length text)))))

(defun chatpipe-media--link-path (target org)
  "Return the file name of a link's TARGET, or nil if it is no file's.
ORG non-nil means an Org link: its escapes are taken out (see
`org-link-unescape'), and only \"file:\" and \"/\", \"./\", \"../\"
and \"~/\" targets are files; an Org \"::SEARCH\" part is left
out.  Any other scheme \(https:, data:, mailto:) is no file;
\"file:\" and \"file://\" are taken off.  A name with a NUL is no
file's."
  (let ((path (if org
                  (progn (require 'ol)
                         (org-link-unescape target))
                target)))
    (cond ((string-match "\\`file:\\(?://\\)?\\(.+\\)\\'" path)
           (setq path (match-string 1 path)))
          ((string-match-p "\\`[a-zA-Z][a-zA-Z0-9+.-]+:" path)
           (setq path nil))
          ((and org (not (string-match-p "\\`\\(?:/\\|\\.\\.?/\\|~/\\)" path)))
           (setq path nil)))
    (when (and path org (string-match "::" path))
      (setq path (substring path 0 (match-beginning 0))))
    (and path (not (string-empty-p path))
         (not (string-prefix-p "#" path))
         (not (string-search "\0" path))
         path)))

(defun chatpipe-media-links (text)
  "Return the links to files in TEXT, in order.
Each is a list (START END PATH): START and END are offsets in TEXT
\(of the link's whole text), PATH the file name as written (not
expanded).  Links in code are left out; see
`chatpipe-media--link-regexp'."
  (let ((case-fold-search t)
        (start 0)
        links)
    (while (string-match chatpipe-media--link-regexp text start)
      (if (match-beginning 1)
          (setq start (max (chatpipe-media--code-end text) (1+ start)))
        (setq start (max (match-end 0) (1+ start)))
        (let* ((org (match-beginning 6))
               (link (list (match-beginning 0) (match-end 0)))
               (path (chatpipe-media--link-path
                      (or (match-string 4 text) (match-string 5 text)
                          (match-string 6 text))
                      org)))
          (when path
            (push (append link (list path)) links)))))
    (nreverse links)))

(defun chatpipe-media--type (file)
  "Return the entry of `chatpipe-media--types' of FILE's name, or nil."
  (let ((ext (file-name-extension file)))
    (and ext
         (let ((case-fold-search t))
           (cl-find-if (lambda (type)
                         (string-match-p (concat "\\`\\(?:" (car type) "\\)\\'")
                                         ext))
                       chatpipe-media--types)))))

(defun chatpipe-media--magic-p (file type)
  "Return non-nil if the first bytes of FILE, a regular file, are TYPE's.
TYPE is an entry of `chatpipe-media--types'; FILE's first 16 bytes
are read."
  (let ((head (with-temp-buffer
                (set-buffer-multibyte nil)
                (insert-file-contents-literally file nil 0 16)
                (buffer-string))))
    (cl-some (lambda (magic)
               (if (eq magic 'webp)
                   (and (string-prefix-p "RIFF" head)
                        (>= (length head) 12)
                        (equal (substring head 8 12) "WEBP"))
                 (string-prefix-p magic head)))
             (nthcdr 3 type))))

(defun chatpipe-media-check (file)
  "Return whether FILE, an absolute file name, is sent as media.
The value is a plist: :status is `send', `missing', `remote' (a
remote file name, which is never opened: the backend reads local
files), `not-media' (not a regular file whose name and first bytes
are an image's or a PDF's, see `chatpipe-media--types'; or a name
with a NUL), `unreadable' or `too-large'; :size is its size in
bytes (when it is a file), and for `send' :kind (\"image\" or
\"document\") and :mime.  Only local files are looked at: file name
handlers are not called."
  (if (file-remote-p file)
      (list :status 'remote)
    (let* ((file-name-handler-alist nil)
           (nul (string-search "\0" file))
           (attrs (and (not nul) (file-attributes (file-truename file))))
           (size (and attrs (file-attribute-size attrs)))
           (type (chatpipe-media--type file)))
      (cond (nul (list :status 'not-media))
            ((null attrs) (list :status 'missing))
            ((or (not (file-regular-p file)) (null type))
             (list :status 'not-media :size size))
            ((not (file-readable-p file)) (list :status 'unreadable :size size))
            ((> size (* chatpipe-media-max-megabytes 1024 1024))
             (list :status 'too-large :size size))
            ((not (condition-case nil (chatpipe-media--magic-p file type)
                    (file-error nil)))
             (list :status 'not-media :size size))
            (t (list :status 'send :size size
                     :kind (symbol-name (nth 2 type)) :mime (nth 1 type)))))))

(defun chatpipe-media-file (path)
  "Return the absolute file name of PATH, a link's file name.
A relative PATH is `default-directory''s; no file name handler is
called (a remote name stays a name, see `chatpipe-media-check')."
  (let ((file-name-handler-alist nil))
    (expand-file-name path)))

(defun chatpipe-media-parts (text)
  "Return the media of the links in TEXT, a user turn's, as parts.
Each is an alist ((type . KIND) (path . FILE) (mime_type . MIME))
in the shape of docs/protocol.md, FILE absolute (relative links
are `default-directory''s); a file linked twice is one part.  Only
the links `chatpipe-media-check' says `send' of give parts."
  (let (files parts)
    (dolist (link (chatpipe-media-links text))
      (let ((file (chatpipe-media-file (nth 2 link))))
        (unless (member file files)
          (push file files)
          (let ((check (chatpipe-media-check file)))
            (when (eq (plist-get check :status) 'send)
              (push `((type . ,(plist-get check :kind)) (path . ,file)
                      (mime_type . ,(plist-get check :mime)))
                    parts))))))
    (nreverse parts)))

(defun chatpipe-media-messages (messages)
  "Return MESSAGES with the media of their user messages' links.
MESSAGES is a list as `chatpipe-messages' returns.  A user message
\(\"user\" . TEXT) whose TEXT links media becomes (\"user\" . PARTS),
PARTS a vector: a text part, then the parts of
`chatpipe-media-parts'.  Other messages are kept as they are."
  (mapcar (lambda (message)
            (let ((parts (and (equal (car-safe message) "user")
                              (stringp (cdr message))
                              (chatpipe-media-parts (cdr message)))))
              (if parts
                  (cons "user" (vconcat `(((type . "text")
                                           (text . ,(cdr message))))
                                        parts))
                message)))
          messages))

(provide 'chatpipe-media-links)
;;; chatpipe-media-links.el ends here
