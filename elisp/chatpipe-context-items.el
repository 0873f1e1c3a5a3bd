;;; chatpipe-context-items.el --- The items of context of chats, sent and saved -*- lexical-binding: t; -*-

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

;; The items of context of the chats (see chatpipe-context.el for the
;; commands): a chat's own (`chatpipe-context--items', in its buffer),
;; the global ones (`chatpipe-global-context'), their marks in the
;; buffers they point into, the request's "context" made of them
;; (`chatpipe-context-request-items'), and the files and folders saved
;; with a chat in `chatpipe-context' (see chatpipe-filedata.el), which
;; come back only with the user's consent.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-filedata)

(defvar chatpipe-mode)

(defface chatpipe-context-highlight
  '((((class color) (min-colors 88) (background light))
     :background "#f3f6ec" :extend t)
    (((class color) (min-colors 88) (background dark))
     :background "#242b1d" :extend t)
    (t :underline t))
  "Face of the text that is context of a chat."
  :group 'chatpipe)

(defcustom chatpipe-context-languages
  '((emacs-lisp-mode . "elisp") (lisp-interaction-mode . "elisp")
    (c++-mode . "cpp") (c++-ts-mode . "cpp") (js-mode . "javascript")
    (js-ts-mode . "javascript") (sh-mode . "sh") (bash-ts-mode . "bash")
    (text-mode) (fundamental-mode) (special-mode))
  "The language of a buffer's text sent as context, by its major mode.
An alist of (MODE . LANGUAGE), LANGUAGE a string or nil for none.
A mode not listed gives its name without \"-ts-mode\" or \"-mode\":
`python-mode' gives \"python\"."
  :type '(alist :key-type symbol :value-type (choice string (const nil)))
  :group 'chatpipe)

(cl-defstruct (chatpipe-context-item
               (:constructor chatpipe-context--item-create)
               (:copier nil))
  "An item of context.
KIND is `region', `buffer', `file' or `dir'.  A region has BUFFER
and the markers BEG and END; a buffer, BUFFER; a file, PATH
\(absolute) and LINES, (START . END) or nil for all; a folder,
PATH.  NAME names the buffer, even once killed.  ONCE non-nil: for
the next question only.  OVERLAY marks the item in its buffer."
  kind buffer beg end path lines name once overlay)

(defvar-local chatpipe-context--items nil
  "This chat's context items (`chatpipe-context-item'), first added first.")
(put 'chatpipe-context--items 'permanent-local t)

(defvar chatpipe-global-context nil
  "The context items every chat sends, after its own.
A list of `chatpipe-context-item'; \\[universal-argument] \
\\[chatpipe-context-toggle] adds to it.")

;;;; Items

(defun chatpipe-context--live-buffer (item)
  "Return the live buffer ITEM points into, or nil.
For a file, that is the buffer visiting it, if any."
  (pcase (chatpipe-context-item-kind item)
    ('region (let ((buffer (marker-buffer (chatpipe-context-item-beg item))))
               (and (buffer-live-p buffer) buffer)))
    ('buffer (let ((buffer (chatpipe-context-item-buffer item)))
               (and (buffer-live-p buffer) buffer)))
    ('file (find-buffer-visiting (chatpipe-context-item-path item)))))

(defun chatpipe-context--line-range (beg end)
  "Return the lines from BEG to END in this buffer, (START . END), 1-based.
A line that END begins is not counted."
  (save-restriction
    (widen)
    (cons (line-number-at-pos beg t)
          (line-number-at-pos (if (and (> end beg)
                                       (eq (char-before end) ?\n))
                                  (1- end)
                                end)
                              t))))

(defun chatpipe-context--line-positions (lines)
  "Return the positions of LINES, (START . END), in this buffer, a cons."
  (save-restriction
    (widen)
    (save-excursion
      (goto-char (point-min))
      (forward-line (1- (car lines)))
      (let ((beg (point)))
        (forward-line (1+ (- (cdr lines) (car lines))))
        (cons beg (point))))))

(defun chatpipe-context-item-lines-text (item)
  "Return ITEM's lines as text, such as \"3-10\", or nil for none."
  (let ((lines (if (eq (chatpipe-context-item-kind item) 'region)
                   (let ((buffer (chatpipe-context--live-buffer item)))
                     (and buffer
                          (with-current-buffer buffer
                            (chatpipe-context--line-range
                             (chatpipe-context-item-beg item)
                             (chatpipe-context-item-end item)))))
                 (chatpipe-context-item-lines item))))
    (and lines (format "%d-%d" (car lines) (cdr lines)))))

(defun chatpipe-context-item-label (item)
  "Return the name of ITEM for people: a file name or a buffer name."
  (pcase (chatpipe-context-item-kind item)
    ((or 'file 'dir) (abbreviate-file-name (chatpipe-context-item-path item)))
    (_ (let ((buffer (chatpipe-context--live-buffer item)))
         (cond ((and buffer (buffer-file-name buffer))
                (abbreviate-file-name (buffer-file-name buffer)))
               (buffer (buffer-name buffer))
               (t (chatpipe-context-item-name item)))))))

(defun chatpipe-context--describe (item)
  "Return ITEM described for a message, such as \"region of a.el (3-10)\"."
  (let ((lines (chatpipe-context-item-lines-text item)))
    (format "%s %s%s"
            (pcase (chatpipe-context-item-kind item)
              ('region "region of") ('dir "folder") (kind kind))
            (chatpipe-context-item-label item)
            (if lines (format " (lines %s)" lines) ""))))

(defun chatpipe-context--key (item)
  "Return the key of ITEM: items with `equal' keys are the same.
A region of a file is the same as that file's line range."
  (pcase (chatpipe-context-item-kind item)
    ('region
     (let ((buffer (chatpipe-context--live-buffer item)))
       (if (and buffer (buffer-file-name buffer))
           (with-current-buffer buffer
             (list 'file (expand-file-name buffer-file-name)
                   (chatpipe-context--line-range
                    (chatpipe-context-item-beg item)
                    (chatpipe-context-item-end item))))
         (list 'region (or buffer item)
               (marker-position (chatpipe-context-item-beg item))
               (marker-position (chatpipe-context-item-end item))))))
    ('buffer (list 'buffer (chatpipe-context-item-buffer item)))
    ('file (list 'file (chatpipe-context-item-path item)
                 (chatpipe-context-item-lines item)))
    ('dir (list 'dir (chatpipe-context-item-path item)))))

(defun chatpipe-context--file-item (file &optional lines)
  "Return a new item for FILE, a file or a folder; LINES as for a file item."
  (let ((file (expand-file-name file)))
    (if (file-directory-p file)
        (chatpipe-context--item-create :kind 'dir
                                       :path (directory-file-name file))
      (chatpipe-context--item-create :kind 'file :path file :lines lines))))

;;;; Which chat

(defun chatpipe-context--chat-p (buffer)
  "Return non-nil if BUFFER is a live chat buffer (`chatpipe-mode' is on)."
  (and (buffer-live-p buffer) (boundp 'chatpipe-mode)
       (buffer-local-value 'chatpipe-mode buffer)))

(defun chatpipe-context-items (target)
  "Return the items of TARGET, `global' or a chat buffer, a list."
  (if (eq target 'global) chatpipe-global-context
    (buffer-local-value 'chatpipe-context--items target)))

(defun chatpipe-context--set-items (target items)
  "Make ITEMS the items of TARGET, `global' or a chat buffer."
  (if (eq target 'global)
      (setq chatpipe-global-context items)
    (with-current-buffer target
      (setq chatpipe-context--items items)
      (add-hook 'kill-buffer-hook #'chatpipe-context--chat-killed nil t)))
  (force-mode-line-update t))

(defun chatpipe-context--chat-killed ()
  "Delete the overlays of the items of this chat, which is killed."
  (mapc #'chatpipe-context--unmark chatpipe-context--items))

;;;; Marks

(defun chatpipe-context--mark (item)
  "Mark ITEM in the buffer it points into, if it has none and is live."
  (let ((buffer (chatpipe-context--live-buffer item))
        (overlay (chatpipe-context-item-overlay item)))
    (when (and buffer (not (and overlay (overlay-buffer overlay))))
      (with-current-buffer buffer
        (let* ((range (pcase (chatpipe-context-item-kind item)
                        ('region (cons (chatpipe-context-item-beg item)
                                       (chatpipe-context-item-end item)))
                        (_ (if (chatpipe-context-item-lines item)
                               (chatpipe-context--line-positions
                                (chatpipe-context-item-lines item))
                             (save-restriction
                               (widen) (cons (point-min) (point-max)))))))
               (whole (and (= (car range) (point-min)) (= (cdr range) (point-max))
                           (not (eq (chatpipe-context-item-kind item) 'region))))
               (overlay (make-overlay (car range) (cdr range) nil
                                      (not whole) whole)))
          (overlay-put overlay 'face 'chatpipe-context-highlight)
          (overlay-put overlay 'chatpipe-context item)
          (overlay-put overlay 'help-echo "chatpipe context")
          (overlay-put overlay 'before-string
                       (propertize " " 'display '(left-fringe vertical-bar
                                                  chatpipe-context-highlight)))
          (setf (chatpipe-context-item-overlay item) overlay))))))

(defun chatpipe-context--unmark (item)
  "Delete the overlay of ITEM, its mark, if it has one."
  (when (chatpipe-context-item-overlay item)
    (delete-overlay (chatpipe-context-item-overlay item))
    (setf (chatpipe-context-item-overlay item) nil)))

(defun chatpipe-context--mark-visited ()
  "Mark the context items of every chat that are this buffer's file.
A function of `find-file-hook'."
  (when buffer-file-name
    (dolist (target (cons 'global (cl-remove-if-not #'chatpipe-context--chat-p
                                                   (buffer-list))))
      (dolist (item (chatpipe-context-items target))
        (when (eq (chatpipe-context--live-buffer item) (current-buffer))
          (chatpipe-context--mark item))))))

(add-hook 'find-file-hook #'chatpipe-context--mark-visited)

;;;; Adding and removing

(defun chatpipe-context-add (target item)
  "Add ITEM to the context of TARGET, `global' or a chat buffer; return ITEM.
An item that is there already (the same region, buffer, file or
folder) is not added again: return that one."
  (let ((old (cl-find (chatpipe-context--key item) (chatpipe-context-items target)
                      :key #'chatpipe-context--key :test #'equal)))
    (or old
        (progn (chatpipe-context--set-items
                target (append (chatpipe-context-items target) (list item)))
               (chatpipe-context--mark item)
               item))))

(defun chatpipe-context-remove (target item)
  "Remove ITEM from the context of TARGET and take its mark away."
  (chatpipe-context--unmark item)
  (chatpipe-context--set-items target (delq item (chatpipe-context-items target))))


(defun chatpipe-context--all (chat-buffer)
  "Return the items CHAT-BUFFER sends: its own, then the global ones."
  (append (and (buffer-live-p chat-buffer)
               (buffer-local-value 'chatpipe-context--items chat-buffer))
          chatpipe-global-context))

;;;; What a question sends

(defun chatpipe-context--language ()
  "Return the language of this buffer's text, a string, or nil.
See `chatpipe-context-languages'."
  (let ((entry (assq major-mode chatpipe-context-languages)))
    (if entry
        (cdr entry)
      (let ((name (replace-regexp-in-string "\\(?:-ts\\)?-mode\\'" ""
                                            (symbol-name major-mode))))
        (and (string-match-p "\\`[[:alnum:]+#._-]\\{1,40\\}\\'" name) name)))))

(defun chatpipe-context--same-as-file-p ()
  "Return non-nil if this buffer's text is its file's, a local file."
  (and buffer-file-name (not (file-remote-p buffer-file-name))
       (not (buffer-modified-p)) (verify-visited-file-modtime)))

(defun chatpipe-context--buffer-json (buffer &optional beg end)
  "Return the JSON item of BUFFER's text from BEG to END (default: all).
A buffer the same as its file (see `chatpipe-context--same-as-file-p')
gives a file item, with the lines from BEG to END if they are not
all; else a text item: the text as it is now, named by the file or
the buffer, with the language of its major mode."
  (with-current-buffer buffer
    (save-restriction
      (widen)
      (let ((beg (or beg (point-min)))
            (end (or end (point-max))))
        (if (chatpipe-context--same-as-file-p)
            `((type . "file") (path . ,(expand-file-name buffer-file-name))
              ,@(and (or (> beg (point-min)) (< end (point-max)))
                     (let ((lines (chatpipe-context--line-range beg end)))
                       `((lines . ,(vector (car lines) (cdr lines)))))))
          `((type . "text")
            (name . ,(if buffer-file-name (expand-file-name buffer-file-name)
                       (buffer-name)))
            (text . ,(buffer-substring-no-properties beg end))
            ,@(let ((language (chatpipe-context--language)))
                (and language `((language . ,language))))))))))

(defun chatpipe-context--problem (item)
  "Return why ITEM cannot be sent, a text naming it, or nil if it can.
A region or buffer killed, a region whose text was deleted, a file
or folder gone (or remote: the backend reads local files only)."
  (let ((buffer (chatpipe-context--live-buffer item))
        (path (chatpipe-context-item-path item))
        (name (chatpipe-context-item-name item)))
    (pcase (chatpipe-context-item-kind item)
      ('region (cond ((null buffer)
                      (format "the region of %s: its buffer was killed" name))
                     ((= (chatpipe-context-item-beg item)
                         (chatpipe-context-item-end item))
                      (format "the region of %s: its text was deleted" name))))
      ('buffer (unless buffer (format "the buffer %s: it was killed" name)))
      ('file (unless (or buffer (and (not (file-remote-p path))
                                     (file-readable-p path)))
               (format "the file %s: it cannot be read"
                       (abbreviate-file-name path))))
      ('dir (unless (and (not (file-remote-p path)) (file-directory-p path))
              (format "the folder %s: it cannot be read"
                      (abbreviate-file-name path)))))))

(defun chatpipe-context--json (item)
  "Return the JSON item (an alist) of ITEM, which can be sent."
  (let ((buffer (chatpipe-context--live-buffer item))
        (path (chatpipe-context-item-path item))
        (lines (chatpipe-context-item-lines item)))
    (pcase (chatpipe-context-item-kind item)
      ('region (chatpipe-context--buffer-json
                buffer (marker-position (chatpipe-context-item-beg item))
                (marker-position (chatpipe-context-item-end item))))
      ('buffer (chatpipe-context--buffer-json buffer))
      ('dir `((type . "dir") (path . ,path)))
      ((guard buffer)
       (let ((range (and lines (with-current-buffer buffer
                                 (chatpipe-context--line-positions lines)))))
         (chatpipe-context--buffer-json buffer (car range) (cdr range))))
      (_ `((type . "file") (path . ,path)
           ,@(and lines `((lines . ,(vector (car lines) (cdr lines))))))))))

(defun chatpipe-context-request-items (chat-buffer)
  "Return the context of CHAT-BUFFER's next question, a vector of alists.
They are the request's \"context\" items (see docs/protocol.md): the
chat's own items, then the global ones.  A region or a buffer is a
file item if its buffer is the same as its file, else a text item
of the text as it is now; a file visited in a modified buffer is
that buffer's text.  Items that cannot be sent (see
`chatpipe-context--problem') are left out and named in a warning."
  (let ((items nil) (problems nil))
    (dolist (item (chatpipe-context--all chat-buffer))
      (let ((problem (chatpipe-context--problem item)))
        (if problem
            (push problem problems)
          (push (chatpipe-context--json item) items))))
    (when problems
      (display-warning 'chatpipe
                       (format "%s: context not sent: %s"
                               (buffer-name chat-buffer)
                               (string-join (nreverse problems) "; "))))
    (vconcat (nreverse items))))

(defun chatpipe-context-sent (chat-buffer)
  "Drop the items for the next question only: a question was sent.
They are those of CHAT-BUFFER and of the global context.  Return nil."
  (dolist (target (if (buffer-live-p chat-buffer) (list chat-buffer 'global)
                    '(global)))
    (dolist (item (copy-sequence (chatpipe-context-items target)))
      (when (chatpipe-context-item-once item)
        (chatpipe-context-remove target item)))))

;;;; Saved with the chat

(defun chatpipe-context--saved-entry (item dir)
  "Return ITEM as saved in a chat file in DIR, or nil if it is not saved.
See `chatpipe-context'; a path under DIR is relative to it."
  (let* ((buffer (chatpipe-context--live-buffer item))
         (path (pcase (chatpipe-context-item-kind item)
                 ((or 'file 'dir) (chatpipe-context-item-path item))
                 ('region (and buffer (buffer-file-name buffer)))))
         (lines (chatpipe-context-item-lines-text item)))
    (when (and path (not (file-remote-p path))
               (not (chatpipe-context-item-once item)))
      (setq path (expand-file-name path))
      (delq nil (list (if (eq (chatpipe-context-item-kind item) 'dir) "dir"
                        "file")
                      (if (string-prefix-p (file-name-as-directory dir) path)
                          (file-relative-name path dir)
                        (abbreviate-file-name path))
                      lines)))))

(defun chatpipe-context--store ()
  "Set `chatpipe-context' to this chat's files and folders, to be saved.
A function of `before-save-hook' in chat buffers, run before
`chatpipe-save-state' writes it."
  (let ((dir (expand-file-name (file-name-directory buffer-file-name))))
    (setq chatpipe-context
          (delq nil (mapcar (lambda (item)
                              (chatpipe-context--saved-entry item dir))
                            chatpipe-context--items)))))

(defun chatpipe-context--stored ()
  "Set `chatpipe-context' to nil: the chat is saved.
A function of `after-save-hook' in chat buffers."
  (setq chatpipe-context nil))

(defun chatpipe-context--restore ()
  "Add the files and folders of `chatpipe-context' to this chat's context.
The value was read from the chat's file: as plain data, and with
the user's consent (see chatpipe-filedata.el).  A relative path is
relative to the file's folder.  Then set `chatpipe-context' to nil
\(saving sets it again)."
  (let ((dir (if buffer-file-name (file-name-directory buffer-file-name)
               default-directory)))
    (pcase-dolist (`(,kind ,path ,lines) chatpipe-context)
      (let ((path (expand-file-name path dir)))
        (unless (file-remote-p path)
          (chatpipe-context-add
           (current-buffer)
           (if (equal kind "dir")
               (chatpipe-context--item-create :kind 'dir
                                              :path (directory-file-name path))
             (chatpipe-context--item-create
              :kind 'file :path path
              :lines (and lines (string-match "\\`\\([0-9]+\\)-\\([0-9]+\\)\\'"
                                              lines)
                          (cons (string-to-number (match-string 1 lines))
                                (string-to-number (match-string 2 lines))))))))))
    (setq chatpipe-context nil)))

(defun chatpipe-context--mode-changed ()
  "Save and restore this chat's context as `chatpipe-mode' is turned on.
A function of `chatpipe-mode-hook'."
  (if chatpipe-mode
      (progn (add-hook 'before-save-hook #'chatpipe-context--store -50 t)
             (add-hook 'after-save-hook #'chatpipe-context--stored nil t)
             (chatpipe-context--restore))
    (remove-hook 'before-save-hook #'chatpipe-context--store t)
    (remove-hook 'after-save-hook #'chatpipe-context--stored t)))

(add-hook 'chatpipe-mode-hook #'chatpipe-context--mode-changed)

(defun chatpipe-context--local-variables-set ()
  "Restore a chat's saved context once its file's local variables are set.
A function of `hack-local-variables-hook'."
  (when (bound-and-true-p chatpipe-mode)
    (chatpipe-context--restore)))

(add-hook 'hack-local-variables-hook #'chatpipe-context--local-variables-set)

(provide 'chatpipe-context-items)
;;; chatpipe-context-items.el ends here
