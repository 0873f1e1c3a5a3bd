;;; chatpipe-context.el --- Context: the files, buffers and regions a question is about -*- lexical-binding: t; -*-

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

;; The context of a question: regions, buffers, files and folders sent
;; with it.  Emacs says which; the backend reads and renders them (the
;; request's "context", see docs/protocol.md).
;;
;; M-x chatpipe-context-toggle adds the region, else the buffer (in
;; Dired, the marked files), to a chat's context, or removes it if it
;; is there already; `chatpipe-context-add-file' adds a file or folder
;; read in the minibuffer.  They add to the current buffer if it is a
;; chat, else to the chat buffer selected last, else to a chat you
;; choose; with C-u, to the global context, which every chat sends.
;; `chatpipe-context-next-only' marks an item for the next question
;; only.  Items in a buffer are shown with the face
;; `chatpipe-context-highlight' and a fringe bitmap; a region follows
;; the edits around it; a killed buffer is named in a warning when a
;; question is sent, never dropped silently.  `chatpipe-context-list'
;; lists them with their estimated tokens, and shows the request they
;; make (rendered by the backend).  The items themselves are in
;; chatpipe-context-items.el.
;;
;; A chat's files and folders (and the regions of files, as line
;; ranges) are saved with it in `chatpipe-context', and come back when
;; the file is visited again, with your consent (see
;; `chatpipe--file-settings-consent'): a chat file is data, and must
;; not choose by itself which of your files are sent.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-context-items)
(require 'chatpipe-process)

(declare-function dired-get-marked-files "dired")

;;;; Adding and removing

(defun chatpipe-context--here ()
  "Return a new item for the region if it is active, else for this buffer.
A buffer that visits a file gives a file item.  Signal a `user-error'
for a chat buffer without a region: a chat is no context of itself."
  (cond ((use-region-p)
         (chatpipe-context--item-create
          :kind 'region :buffer (current-buffer) :name (buffer-name)
          :beg (copy-marker (region-beginning) t)
          :end (copy-marker (region-end))))
        ((chatpipe-context--chat-p (current-buffer))
         (user-error "A chat is no context of itself: select a region of it"))
        (buffer-file-name
         (chatpipe-context--file-item buffer-file-name))
        (t (chatpipe-context--item-create :kind 'buffer :buffer (current-buffer)
                                          :name (buffer-name)))))


(defun chatpipe-context--target (global)
  "Return where an add command puts items: `global' or a chat buffer.
That is `global' if GLOBAL is non-nil; else the current buffer if it
is a chat; else the chat buffer selected last; else a chat buffer
read in the minibuffer.  Signal a `user-error' if there is no chat."
  (let ((chats (cl-remove-if-not #'chatpipe-context--chat-p (buffer-list))))
    (cond (global 'global)
          ((chatpipe-context--chat-p (current-buffer)) (current-buffer))
          ((null chats) (user-error "No chat buffer: M-x chatpipe opens one"))
          ((cl-find-if (lambda (b) (buffer-local-value 'buffer-display-time b))
                       chats))
          (t (get-buffer (completing-read "Context of the chat: "
                                          (mapcar #'buffer-name chats)
                                          nil t))))))

(defun chatpipe-context--target-name (target)
  "Return TARGET, `global' or a chat buffer, named for a message."
  (if (eq target 'global) "the global context"
    (format "chat %s" (buffer-name target))))

(defun chatpipe-context--toggle-item (target item)
  "Remove the item like ITEM from TARGET, else add ITEM; return a message.
See `chatpipe-context--key' for which items are alike."
  (let ((old (cl-find (chatpipe-context--key item) (chatpipe-context-items target)
                      :key #'chatpipe-context--key :test #'equal)))
    (if old
        (progn (chatpipe-context-remove target old)
               (format "removed %s" (chatpipe-context--describe old)))
      (chatpipe-context-add target item)
      (format "added %s" (chatpipe-context--describe item)))))

;;;###autoload
(defun chatpipe-context-toggle (&optional global)
  "Add the region, else this buffer, to a chat's context, or remove it.
In Dired, each marked file or folder (else the one at point) is
added, or removed if it is there already.  A buffer that visits a
file is that file; a region follows the edits around it.  The chat
is this buffer if it is one, else the chat buffer selected last,
else one read in the minibuffer; with GLOBAL (\\[universal-argument]),
the global context, which every chat sends.  Say in the echo area
what was added or removed, and where.  Signal a `user-error' if
there is no chat."
  (interactive "P")
  (let* ((target (chatpipe-context--target global))
         (items (if (derived-mode-p 'dired-mode)
                    (mapcar #'chatpipe-context--file-item
                            (dired-get-marked-files))
                  (list (chatpipe-context--here))))
         (done (mapcar (lambda (item) (chatpipe-context--toggle-item target item))
                       items)))
    (deactivate-mark)
    (message "Context of %s: %s" (chatpipe-context--target-name target)
             (string-join done "; "))))

;;;###autoload
(defun chatpipe-context-add-file (file &optional global)
  "Add FILE, a file or a folder read in the minibuffer, to a chat's context.
The chat is chosen as by `chatpipe-context-toggle'; with GLOBAL
\(\\[universal-argument]), the global context.  A folder is sent with
its files (the backend leaves out what .gitignore ignores).  Signal a
`user-error' if FILE does not exist or there is no chat."
  (interactive (list (read-file-name "Context file or folder: " nil nil t)
                     current-prefix-arg))
  (unless (file-exists-p file)
    (user-error "No such file or folder: %s" file))
  (let ((target (chatpipe-context--target global))
        (item (chatpipe-context--file-item file)))
    (chatpipe-context-add target item)
    (message "Context of %s: added %s" (chatpipe-context--target-name target)
             (chatpipe-context--describe item))))

;;;###autoload
(defun chatpipe-context-next-only (&optional global)
  "Make the region, else this buffer, context of a chat's next question only.
An item that is context already gets the flag, or loses it if it
had it; else it is added with it.  It is dropped once the question
is sent.  In the buffer of `chatpipe-context-list', the item at
point.  The chat and GLOBAL are as for `chatpipe-context-toggle'."
  (interactive "P")
  (if (derived-mode-p 'chatpipe-context-list-mode)
      (let ((item (cdr (chatpipe-context-list--item))))
        (setf (chatpipe-context-item-once item)
              (not (chatpipe-context-item-once item)))
        (revert-buffer))
    (chatpipe-context--next-only (chatpipe-context--target global))))

(defun chatpipe-context--next-only (target)
  "Make the region, else this buffer, context of TARGET's next question only.
See `chatpipe-context-next-only'."
  (let* ((new (chatpipe-context--here))
         (item (chatpipe-context-add target new)))
    (setf (chatpipe-context-item-once item)
          (or (eq item new) (not (chatpipe-context-item-once item))))
    (deactivate-mark)
    (message "Context of %s: %s %s" (chatpipe-context--target-name target)
             (chatpipe-context--describe item)
             (if (chatpipe-context-item-once item) "for the next question only"
               "for every question"))))

;;;###autoload
(defun chatpipe-context-clear (&optional global)
  "Remove all the context of a chat, chosen as by `chatpipe-context-toggle'.
With GLOBAL (\\[universal-argument]), the global context's."
  (interactive "P")
  (let ((target (chatpipe-context--target global)))
    (mapc #'chatpipe-context--unmark (chatpipe-context-items target))
    (chatpipe-context--set-items target nil)
    (message "Context of %s: cleared" (chatpipe-context--target-name target))))

;;;; Tokens

(defvar chatpipe-context--sizes (make-hash-table :test 'equal)
  "Sizes of files and folders: KEY to (TIME . BYTES), fresh for 10 s.")

(defun chatpipe-context--size (key compute)
  "Return the size cached under KEY if fresh, else call COMPUTE and cache it."
  (let ((hit (gethash key chatpipe-context--sizes)))
    (if (and hit (< (- (float-time) (car hit)) 10))
        (cdr hit)
      (let ((bytes (funcall compute)))
        (puthash key (cons (float-time) bytes) chatpipe-context--sizes)
        bytes))))

(defun chatpipe-context--bytes (item)
  "Return the bytes of ITEM's text, about, or nil if it cannot be sent.
A file's are its size on disk, a folder's the size of its files
\(more than the backend sends: it leaves out what .gitignore ignores)."
  (let ((buffer (chatpipe-context--live-buffer item))
        (path (chatpipe-context-item-path item))
        (lines (chatpipe-context-item-lines item))
        (span (lambda (range)
                (- (position-bytes (cdr range)) (position-bytes (car range))))))
    (unless (chatpipe-context--problem item)
      (pcase (chatpipe-context-item-kind item)
        ('region (with-current-buffer buffer
                   (funcall span (cons (chatpipe-context-item-beg item)
                                       (chatpipe-context-item-end item)))))
        ('dir (chatpipe-context--size
               path (lambda ()
                      (apply #'+ (mapcar (lambda (file)
                                           (or (file-attribute-size
                                                (file-attributes file))
                                               0))
                                         (directory-files-recursively
                                          path "" nil
                                          (lambda (dir)
                                            (not (equal (file-name-nondirectory
                                                         dir)
                                                        ".git")))))))))
        ((guard (and buffer (not (with-current-buffer buffer
                                   (chatpipe-context--same-as-file-p)))))
         (with-current-buffer buffer
           (save-restriction
             (widen)
             (funcall span (if lines (chatpipe-context--line-positions lines)
                             (cons (point-min) (point-max)))))))
        ((guard (null lines))
         (if (eq (chatpipe-context-item-kind item) 'buffer)
             (with-current-buffer buffer (funcall span (cons 1 (1+ (buffer-size)))))
           (file-attribute-size (file-attributes path))))
        (_ (chatpipe-context--size
            (cons path lines)
            (lambda ()
              (with-temp-buffer
                (insert-file-contents path)
                (funcall span (chatpipe-context--line-positions lines))))))))))

(defun chatpipe-context-item-tokens (item)
  "Return the estimated tokens of ITEM, or nil if it cannot be sent.
That is the UTF-8 bytes of its text divided by 4, rounded up, as
the backend estimates (see `chatpipe-context--bytes')."
  (let ((bytes (chatpipe-context--bytes item)))
    (and bytes (/ (+ bytes 3) 4))))

(defun chatpipe-context-tokens-text (tokens)
  "Return TOKENS, a number, short: \"850\", \"1.2k\"."
  (if (< tokens 1000) (number-to-string tokens)
    (format "%.1fk" (/ tokens 1000.0))))

(defvar-local chatpipe-context--header nil
  "The last header text of the chat's context: (TIME ITEMS . TEXT).")

(defconst chatpipe-context--header-seconds 30
  "How long the header's token estimate is kept while its items stay.
The header line is computed at every redisplay (hundreds a second
while an answer streams), and an estimate reads file sizes and may
walk a folder: it is made again when the items change, or after this
many seconds.")

(defun chatpipe-context-header-text (chat-buffer)
  "Return the header line's text of CHAT-BUFFER's context, or nil if none.
Such as \"ctx 3 (~1.2k tokens)\": its items (its own and the
global ones) and their estimated tokens, made again when the items
change or after `chatpipe-context--header-seconds'."
  (with-current-buffer chat-buffer
    (let ((items (chatpipe-context--all chat-buffer))
          (cached chatpipe-context--header))
      (if (and cached (equal (cadr cached) items)
               (< (- (float-time) (car cached)) chatpipe-context--header-seconds))
          (cddr cached)
        (let ((text (and items
                         (format "ctx %d (~%s tokens)" (length items)
                                 (chatpipe-context-tokens-text
                                  (apply #'+ (mapcar (lambda (item)
                                                       (or (chatpipe-context-item-tokens item)
                                                           0))
                                                     items)))))))
          (setq chatpipe-context--header (cons (float-time) (cons items text)))
          text)))))


(provide 'chatpipe-context)
;;; chatpipe-context.el ends here
;;;; The list

(defvar-local chatpipe-context-list--chat nil
  "The chat buffer whose context this list shows.")

(defvar chatpipe-context-list-mode-map
  (let ((map (make-sparse-keymap)))
    (define-key map (kbd "RET") #'chatpipe-context-list-visit)
    (define-key map "d" #'chatpipe-context-list-remove)
    (define-key map "n" #'chatpipe-context-list-narrow)
    (define-key map "o" #'chatpipe-context-next-only)
    (define-key map "v" #'chatpipe-context-show-request)
    map)
  "Keymap of `chatpipe-context-list-mode'.")

(define-derived-mode chatpipe-context-list-mode tabulated-list-mode
  "Chatpipe-Context"
  "Major mode of the list of a chat's context, `chatpipe-context-list'.
\\<chatpipe-context-list-mode-map>
\\[chatpipe-context-list-visit]: visit an item;
\\[chatpipe-context-list-remove]: remove it;
\\[chatpipe-context-list-narrow]: narrow its buffer to it;
\\[chatpipe-context-next-only]: send it with the next question only, \
or with every one again;
\\[chatpipe-context-show-request]: show the request the next question makes;
\\[revert-buffer]: refresh.

\\{chatpipe-context-list-mode-map}"
  (setq tabulated-list-format [("Of" 6 t) ("Kind" 6 t) ("Name" 44 t)
                               ("Lines" 11 nil) ("Tokens" 7 nil :right-align t)
                               ("Once" 4 t)])
  (setq tabulated-list-padding 1)
  (add-hook 'tabulated-list-revert-hook #'chatpipe-context-list--entries nil t)
  (tabulated-list-init-header))

(defun chatpipe-context-list--entries ()
  "Set the list's entries: the chat's items, then the global ones."
  (setq tabulated-list-entries
        (mapcan
         (lambda (target)
           (mapcar (lambda (item)
                     (let ((tokens (chatpipe-context-item-tokens item)))
                       (list item
                             (vector (if (eq target 'global) "global" "chat")
                                     (symbol-name (chatpipe-context-item-kind item))
                                     (chatpipe-context-item-label item)
                                     (or (chatpipe-context-item-lines-text item) "")
                                     (if tokens (number-to-string tokens) "gone")
                                     (if (chatpipe-context-item-once item) "yes" "")))))
                   (chatpipe-context-items target)))
         (if (buffer-live-p chatpipe-context-list--chat)
             (list chatpipe-context-list--chat 'global)
           '(global)))))

;;;###autoload
(defun chatpipe-context-list ()
  "List the context of a chat, chosen as by `chatpipe-context-toggle'.
The buffer shows the chat's items and the global ones: their kind,
name, lines, estimated tokens and whether they go with the next
question only; see `chatpipe-context-list-mode'.  Return it."
  (interactive)
  (let* ((chat (chatpipe-context--target nil))
         (buffer (get-buffer-create
                  (format "*chatpipe context: %s*" (buffer-name chat)))))
    (with-current-buffer buffer
      (chatpipe-context-list-mode)
      (setq chatpipe-context-list--chat chat)
      (revert-buffer))
    (pop-to-buffer buffer)))

(defun chatpipe-context-list--item ()
  "Return (TARGET . ITEM), the item at point in the list and where it is.
Signal a `user-error' if there is none."
  (let ((item (tabulated-list-get-id)))
    (unless item (user-error "No context item here"))
    (cons (if (memq item chatpipe-global-context) 'global
            chatpipe-context-list--chat)
          item)))

(defun chatpipe-context-list--show (item)
  "Show the buffer of ITEM in a window and return the region of ITEM there.
The region is (BEG . END), or nil for the whole buffer.  A file or a
folder is visited.  Signal a `user-error' if ITEM is gone."
  (let ((problem (chatpipe-context--problem item)))
    (when problem (user-error "Gone: %s" problem)))
  (pop-to-buffer (or (chatpipe-context--live-buffer item)
                     (find-file-noselect (chatpipe-context-item-path item))))
  (cond ((eq (chatpipe-context-item-kind item) 'region)
         (cons (marker-position (chatpipe-context-item-beg item))
               (marker-position (chatpipe-context-item-end item))))
        ((chatpipe-context-item-lines item)
         (chatpipe-context--line-positions (chatpipe-context-item-lines item)))))

(defun chatpipe-context-list-visit ()
  "Visit the context item at point; a region or line range is flashed."
  (interactive)
  (let ((range (chatpipe-context-list--show (cdr (chatpipe-context-list--item)))))
    (when range
      (unless (<= (point-min) (car range) (cdr range) (point-max))
        (widen))
      (goto-char (car range))
      (pulse-momentary-highlight-region (car range) (cdr range)))))

(defun chatpipe-context-list-narrow ()
  "Narrow the buffer of the context item at point to it, and show it.
A whole buffer or file is shown widened."
  (interactive)
  (let ((range (chatpipe-context-list--show (cdr (chatpipe-context-list--item)))))
    (widen)
    (when range
      (narrow-to-region (car range) (cdr range))
      (goto-char (point-min)))))

(defun chatpipe-context-list-remove ()
  "Remove the context item at point from its chat or the global context."
  (interactive)
  (let ((entry (chatpipe-context-list--item)))
    (chatpipe-context-remove (car entry) (cdr entry))
    (revert-buffer)))

;;;; The request

(defvar chatpipe-call-input)
(defvar chatpipe-template)
(defvar chatpipe-default-template)
(defvar chatpipe-model)
(defvar chatpipe-url)
(defvar chatpipe-template-vars)
(declare-function chatpipe-messages "chatpipe-turns")
(declare-function chatpipe--chat-end "chatpipe-turns")
(declare-function chatpipe--with-system "chatpipe-chat-settings")
(declare-function chatpipe--params "chatpipe-chat-settings")
(declare-function chatpipe-process-request "chatpipe-process" (&rest args))

(defconst chatpipe-context--placeholder "(your next question)"
  "The question a shown request ends with when the chat has none yet.")

(defun chatpipe-context--with-question (messages)
  "Return MESSAGES, with a placeholder question if they end with none.
See `chatpipe-context--placeholder'."
  (let ((last (car (last messages))))
    (if (equal (car-safe last) "user")
        messages
      (append messages (list (cons "user" chatpipe-context--placeholder))))))

(defun chatpipe-context-rendered-request (chat-buffer)
  "Return the request body CHAT-BUFFER would send now, a string.
The chat's request (see `chatpipe-process-request': its messages as
far as its end, its settings) with its context (see
`chatpipe-context-request-items') goes on stdin to the backend,
`chatpipe send --request - --dry-run', which renders the context
and prints the body it would send, sending nothing.  A chat whose
last turn is no question gets `chatpipe-context--placeholder' as one.  Signal
`chatpipe-backend-failed' or `chatpipe-backend-missing' as
`chatpipe-call-waiting' does."
  (with-current-buffer chat-buffer
    (let ((chatpipe-call-input
           (json-serialize
            (chatpipe-process-request
             :template (or chatpipe-template chatpipe-default-template)
             :messages (chatpipe-context--with-question
                        (chatpipe--with-system
                         (chatpipe-messages (point-min) (chatpipe--chat-end))))
             :model chatpipe-model :url chatpipe-url
             :vars chatpipe-template-vars :params (chatpipe--params)
             :context (chatpipe-context-request-items chat-buffer)))))
      (cdr (chatpipe-call-waiting 60 "send" "--request" "-" "--dry-run")))))

(defun chatpipe-context-show-request ()
  "Show the request body the listed chat would send now, in a buffer.
See `chatpipe-context-rendered-request'."
  (interactive)
  (let ((text (chatpipe-context-rendered-request
               (if (derived-mode-p 'chatpipe-context-list-mode)
                   chatpipe-context-list--chat
                 (chatpipe-context--target nil)))))
    (with-current-buffer (get-buffer-create "*chatpipe request*")
      (let ((inhibit-read-only t))
        (erase-buffer)
        (insert text)
        (goto-char (point-min))
        (special-mode))
      (display-buffer (current-buffer)))))

(provide 'chatpipe-context)
;;; chatpipe-context.el ends here
