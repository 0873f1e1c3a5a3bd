;;; chatpipe-rewrite.el --- Rewrite text in place with chatpipe -*- lexical-binding: t; -*-

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

;; \\[chatpipe-rewrite] rewrites the region (else the defun, else the
;; paragraph at point) as an instruction says (see
;; chatpipe-rewrite-input.el).  The request carries a `rewrite' field
;; (the text, the instruction, the buffer's file and language, and the
;; lines around the text: see docs/protocol.md); the backend builds the
;; prompt and streams the replacement as `delta' events.  It goes with
;; the global chat settings only: a file's local variables never choose
;; where its text, and the API key, go.  The original text stays in the
;; buffer: an overlay shows the replacement over it as it streams (or
;; the original, or a word-level diff: \\`t' and \\`d'; \\`v' shows it in
;; a buffer that scrolls), and the mode line counts the rewrites
;; streaming, ready and failed.  Several rewrites may run at once in one
;; buffer, on text that does not overlap; the user keeps working.
;;
;; On the overlay, single keys act on its rewrite (see
;; `chatpipe-rewrite-map', shown in the overlay's help text): accept,
;; reject, iterate (a new instruction applied to the proposed text;
;; the original is kept for the diff), the diffs, hunk-by-hunk accept,
;; ediff and a merge with conflict markers (chatpipe-rewrite-review.el),
;; next and previous.  Accepting replaces the text with
;; `replace-region-contents', so that markers, overlays and point
;; outside the changed parts stay where they are, as one undo step; it
;; is refused when the text was edited since the request (its SHA-256
;; differs), with the diff of the edited text shown instead, and when
;; the proposal was cut off at the token limit.

;;; Code:

(require 'cl-lib)
(require 'subr-x)
(require 'chatpipe-backend)
(require 'chatpipe-process)
(require 'chatpipe-chat-settings)
(require 'chatpipe-hints)
(require 'chatpipe-rewrite-input)

(autoload 'chatpipe--rewrite-word-diff "chatpipe-rewrite-review")
(autoload 'chatpipe-rewrite-diff "chatpipe-rewrite-review" nil t)
(autoload 'chatpipe-rewrite-ediff "chatpipe-rewrite-review" nil t)
(autoload 'chatpipe-rewrite-accept-hunks "chatpipe-rewrite-review" nil t)
(autoload 'chatpipe-rewrite-merge "chatpipe-rewrite-review" nil t)
(autoload 'chatpipe--rewrite-show-diff "chatpipe-rewrite-review")
(autoload 'chatpipe-rewrite-toggle-diff "chatpipe-rewrite-review" nil t)
(autoload 'chatpipe-rewrite-toggle-original "chatpipe-rewrite-review" nil t)
(autoload 'chatpipe-rewrite-view "chatpipe-rewrite-review" nil t)
(autoload 'chatpipe--rewrite-fill-view "chatpipe-rewrite-review")
(autoload 'chatpipe-rewrite-next "chatpipe-rewrite-review" nil t)
(autoload 'chatpipe-rewrite-previous "chatpipe-rewrite-review" nil t)

(defcustom chatpipe-rewrite-template nil
  "The template of rewrites, or nil for `chatpipe-default-template'.
A template name or a .json file name.  Rewrites use the global
values of the chat settings (`chatpipe-model', `chatpipe-url',
`chatpipe-template-vars', `chatpipe-temperature',
`chatpipe-max-tokens'), never a buffer's own: a file's local
variables do not choose where a rewrite of it goes."
  :type '(choice (const :tag "The default template" nil) string)
  :group 'chatpipe-rewrite)

(defface chatpipe-rewrite-preview '((t :inherit diff-refine-added))
  "Face of the proposed text shown over the text being rewritten."
  :group 'chatpipe-rewrite)

(defface chatpipe-rewrite-pending '((t :inherit secondary-selection))
  "Face of the text being rewritten while no proposed text shows."
  :group 'chatpipe-rewrite)

(cl-defstruct (chatpipe--rewrite (:constructor chatpipe--rewrite-create)
                                 (:copier nil))
  "One rewrite of a buffer's text."
  buffer overlay
  (original nil :documentation "The text when the request was made.")
  (hash nil :documentation "The SHA-256 of ORIGINAL.")
  (base nil :documentation "The text the last request rewrote.")
  (text "" :documentation "The proposed text, so far.")
  (instructions nil :documentation "The instructions given, newest first.")
  (state 'streaming :documentation "`streaming', `ready' or `failed'.")
  (message nil :documentation "Why it (or its last iteration) failed, or nil.")
  (cut nil :documentation "Non-nil if the proposal was cut off at the token limit.")
  (show 'new :documentation "What the overlay shows: `new', `old', `diff'.")
  (view nil :documentation "The buffer that shows it too, or nil.")
  stream)

(defvar-local chatpipe--rewrites nil
  "The rewrites of this buffer, `chatpipe--rewrite's, newest first.")

(defvar-local chatpipe--rewrite-viewed nil
  "The rewrite that this buffer shows (see `chatpipe-rewrite-view'), or nil.")

;;;; The overlay

(defvar chatpipe-rewrite-map
  (let ((map (make-sparse-keymap)))
    (define-key map "a" #'chatpipe-rewrite-accept)
    (define-key map "r" #'chatpipe-rewrite-reject)
    (define-key map "i" #'chatpipe-rewrite-iterate)
    (define-key map "d" #'chatpipe-rewrite-toggle-diff)
    (define-key map "t" #'chatpipe-rewrite-toggle-original)
    (define-key map "D" #'chatpipe-rewrite-diff)
    (define-key map "e" #'chatpipe-rewrite-ediff)
    (define-key map "h" #'chatpipe-rewrite-accept-hunks)
    (define-key map "m" #'chatpipe-rewrite-merge)
    (define-key map "v" #'chatpipe-rewrite-view)
    (define-key map "n" #'chatpipe-rewrite-next)
    (define-key map "p" #'chatpipe-rewrite-previous)
    map)
  "Keys of a rewrite's overlay: they act on the rewrite at point.")

(defconst chatpipe--rewrite-help
  "Rewrite: a accept, r reject, i iterate, d word diff, t original, \
D diff, e ediff, h hunks, m merge, v view, n/p next/previous"
  "The help text of a rewrite's overlay.")

(defun chatpipe--rewrite-display (rewrite)
  "Return the string to show over REWRITE's text in its overlay, or nil.
Nil shows the buffer's text itself: while nothing is proposed yet,
after a failure, and when the original is asked for."
  (let ((text (chatpipe--rewrite-text rewrite)))
    (unless (or (eq (chatpipe--rewrite-show rewrite) 'old)
                (eq (chatpipe--rewrite-state rewrite) 'failed)
                (and (string-empty-p text)
                     (eq (chatpipe--rewrite-state rewrite) 'streaming)))
      (let ((shown (cond ((string-empty-p text) "[the rewrite is empty]\n")
                         ((eq (chatpipe--rewrite-show rewrite) 'diff)
                          (chatpipe--rewrite-word-diff
                           (chatpipe--rewrite-original rewrite) text))
                         (t (propertize text 'face 'chatpipe-rewrite-preview)))))
        ;; The cursor shows at the start of the text, not after it.
        (concat (propertize (substring shown 0 1) 'cursor t)
                (substring shown 1))))))

(defun chatpipe--rewrite-status (rewrite)
  "Return a short text saying how REWRITE stands."
  (pcase (chatpipe--rewrite-state rewrite)
    ('streaming (format "rewriting (%d chars)"
                        (length (chatpipe--rewrite-text rewrite))))
    ('ready (cond ((chatpipe--rewrite-cut rewrite)
                   "rewrite ready, cut off at the token limit")
                  ((chatpipe--rewrite-message rewrite)
                   (format "rewrite ready; iterating failed: %s"
                           (chatpipe--rewrite-message rewrite)))
                  (t "rewrite ready")))
    (_ (format "rewrite failed: %s" (chatpipe--rewrite-message rewrite)))))

(defun chatpipe--rewrite-redisplay (rewrite)
  "Show REWRITE's state in its overlay and the mode line."
  (let ((overlay (chatpipe--rewrite-overlay rewrite)))
    (when (overlay-buffer overlay)
      (let ((display (chatpipe--rewrite-display rewrite)))
        (overlay-put overlay 'display display)
        (overlay-put overlay 'face (and (not display) 'chatpipe-rewrite-pending))
        (overlay-put overlay 'help-echo
                     (concat (chatpipe--rewrite-status rewrite) "\n"
                             chatpipe--rewrite-help)))
      (with-current-buffer (overlay-buffer overlay)
        (force-mode-line-update))
      (when (buffer-live-p (chatpipe--rewrite-view rewrite))
        (chatpipe--rewrite-fill-view rewrite)))))

(defun chatpipe--rewrite-lighter ()
  "Return the mode line text of the current buffer's rewrites."
  (concat " Rewrite["
          (string-join
           (delq nil (mapcar (lambda (state)
                               (let ((n (cl-count state chatpipe--rewrites
                                                  :key #'chatpipe--rewrite-state)))
                                 (and (> n 0) (format "%d %s" n state))))
                             '(streaming ready failed)))
           ", ")
          "]"))

(define-minor-mode chatpipe-rewrite-mode
  "Show the rewrites of this buffer in the mode line.
It is turned on by `chatpipe-rewrite' and off when the last
rewrite is accepted or rejected; turning it off rejects the
rewrites left."
  :lighter (:eval (chatpipe--rewrite-lighter))
  (if chatpipe-rewrite-mode
      (add-hook 'kill-buffer-hook #'chatpipe--rewrite-kill-buffer nil t)
    (remove-hook 'kill-buffer-hook #'chatpipe--rewrite-kill-buffer t)
    (mapc #'chatpipe--rewrite-end chatpipe--rewrites)))

(defun chatpipe--rewrite-kill-buffer ()
  "Stop the rewrites of the current buffer, without waiting."
  (mapc #'chatpipe--rewrite-end chatpipe--rewrites))

(defun chatpipe--rewrite-end (rewrite)
  "Stop REWRITE's stream if it is live, and take its overlay away."
  (when (chatpipe--rewrite-stream rewrite)
    (chatpipe-process-abort (chatpipe--rewrite-stream rewrite)))
  (delete-overlay (chatpipe--rewrite-overlay rewrite))
  (let ((view (chatpipe--rewrite-view rewrite)))
    (when (buffer-live-p view) (quit-windows-on view) (kill-buffer view)))
  (let ((buffer (chatpipe--rewrite-buffer rewrite)))
    (when (buffer-live-p buffer)
      (with-current-buffer buffer
        (setq chatpipe--rewrites (delq rewrite chatpipe--rewrites))
        (when (and chatpipe-rewrite-mode (null chatpipe--rewrites))
          (chatpipe-rewrite-mode -1))))))

;;;; Starting

(defun chatpipe--rewrite-send (rewrite instruction)
  "Ask for a rewrite of REWRITE's base text following INSTRUCTION.
INSTRUCTION is a string.  The proposed text starts empty and fills
as `delta' events come.  If the request cannot be sent, REWRITE
fails (see `chatpipe--rewrite-fail') and the error is signaled, such
as `chatpipe-backend-missing' if there is no backend."
  (let* ((overlay (chatpipe--rewrite-overlay rewrite))
         (context (chatpipe--rewrite-context (overlay-start overlay)
                                             (overlay-end overlay))))
    (push instruction (chatpipe--rewrite-instructions rewrite))
    (setf (chatpipe--rewrite-text rewrite) ""
          (chatpipe--rewrite-state rewrite) 'streaming
          (chatpipe--rewrite-message rewrite) nil)
    (chatpipe--rewrite-redisplay rewrite)
    (condition-case err
        (setf (chatpipe--rewrite-stream rewrite)
              (chatpipe-process-start
               :template (or chatpipe-rewrite-template chatpipe-default-template)
               :model (default-value 'chatpipe-model)
               :url (default-value 'chatpipe-url)
               :vars (default-value 'chatpipe-template-vars)
               :params (with-temp-buffer (chatpipe--params))
               :rewrite `((text . ,(chatpipe--rewrite-base rewrite))
                          (instruction . ,instruction)
                          (path . ,(or buffer-file-name :null))
                          (language . ,(or (chatpipe--rewrite-language) :null))
                          (before . ,(car context))
                          (after . ,(cdr context)))
               :name (format "chatpipe rewrite %s" (buffer-name))
               :handler (lambda (event) (chatpipe--rewrite-event rewrite event))))
      (error (chatpipe--rewrite-fail rewrite (error-message-string err))
             (chatpipe--rewrite-redisplay rewrite)
             (signal (car err) (cdr err))))))

(defun chatpipe--rewrite-make (beg end)
  "Return a new rewrite of the text from BEG to END, not yet sent.
Signal a `user-error' if a rewrite of the current buffer overlaps it."
  (dolist (other chatpipe--rewrites)
    (let ((overlay (chatpipe--rewrite-overlay other)))
      (when (and (< beg (overlay-end overlay)) (< (overlay-start overlay) end))
        (user-error "This text overlaps a rewrite under way; accept or \
reject that first"))))
  (let* ((original (buffer-substring-no-properties beg end))
         ;; Text typed at either end stays outside the rewrite.
         (overlay (make-overlay beg end nil t nil))
         (rewrite (chatpipe--rewrite-create
                   :buffer (current-buffer) :overlay overlay
                   :original original :base original
                   :hash (secure-hash 'sha256 original))))
    (overlay-put overlay 'chatpipe-rewrite rewrite)
    (overlay-put overlay 'keymap chatpipe-rewrite-map)
    (push rewrite chatpipe--rewrites)
    (chatpipe-rewrite-mode 1)
    (chatpipe--rewrite-redisplay rewrite)
    rewrite))

;;;###autoload
(defun chatpipe-rewrite (beg end instruction)
  "Rewrite the text from BEG to END following INSTRUCTION.
Interactively, the active region, else the defun at point in a
programming mode, else the paragraph at point; INSTRUCTION is read
from the minibuffer (see `chatpipe--rewrite-read-instruction').
The proposed text streams into an overlay over the text, which
stays until accepted; the overlay's keys act on it (see
`chatpipe-rewrite-map').  Return the rewrite."
  (interactive
   (let ((bounds (chatpipe--rewrite-bounds)))
     (list (car bounds) (cdr bounds)
           (chatpipe--rewrite-read-instruction "Rewrite instruction: "))))
  (let ((rewrite (chatpipe--rewrite-make (min beg end) (max beg end))))
    (condition-case err
        (chatpipe--rewrite-send rewrite instruction)
      (error (chatpipe--rewrite-end rewrite)
             (signal (car err) (cdr err))))
    (deactivate-mark)
    (goto-char (overlay-start (chatpipe--rewrite-overlay rewrite)))
    (message "%s" (substitute-command-keys
                   "Rewriting...  On the text: \\<chatpipe-rewrite-map>\
\\[chatpipe-rewrite-accept] accept, \\[chatpipe-rewrite-reject] reject"))
    rewrite))

(defun chatpipe--rewrite-event (rewrite event)
  "Act on EVENT, a protocol event plist, for REWRITE.
Text of `delta' events is added to the proposed text; `done' makes
it ready; `error' makes it fail, or, for an iteration, brings the
previous proposal back."
  (when (buffer-live-p (chatpipe--rewrite-buffer rewrite))
    (with-current-buffer (chatpipe--rewrite-buffer rewrite)
      (let ((content (plist-get event :content)))
        (pcase (plist-get event :type)
          ("delta"
           (when (stringp content)
             (setf (chatpipe--rewrite-text rewrite)
                   (concat (chatpipe--rewrite-text rewrite) content))))
          ("done"
           (setf (chatpipe--rewrite-state rewrite) 'ready
                 (chatpipe--rewrite-stream rewrite) nil
                 (chatpipe--rewrite-cut rewrite)
                 (equal (plist-get event :finish_reason) "length")))
          ((or "error" "refusal")
           (chatpipe--rewrite-fail
            rewrite (if (equal (plist-get event :type) "refusal")
                        (format "refused: %s" content)
                      (chatpipe--error-text event)))))
        (chatpipe--rewrite-redisplay rewrite)
        (when (memq (chatpipe--rewrite-state rewrite) '(ready failed))
          (message "chatpipe: %s.  %s" (chatpipe--rewrite-status rewrite)
                   chatpipe--rewrite-help))))))

(defun chatpipe--rewrite-fail (rewrite why)
  "End REWRITE's stream as failed, saying WHY, a string.
An iteration's previous proposal comes back, ready."
  (when (chatpipe--rewrite-stream rewrite)
    (chatpipe-process-abort (chatpipe--rewrite-stream rewrite))
    (setf (chatpipe--rewrite-stream rewrite) nil))
  (if (eq (chatpipe--rewrite-base rewrite) (chatpipe--rewrite-original rewrite))
      (setf (chatpipe--rewrite-state rewrite) 'failed
            (chatpipe--rewrite-text rewrite) "")
    (setf (chatpipe--rewrite-state rewrite) 'ready
          (chatpipe--rewrite-text rewrite) (chatpipe--rewrite-base rewrite)))
  (setf (chatpipe--rewrite-message rewrite) why))

;;;; Acting on a rewrite

(defun chatpipe--rewrite-at-point ()
  "Return the rewrite at point, or the buffer's only one.
In a buffer that shows a rewrite (see `chatpipe-rewrite-view'),
return that one.  Signal a `user-error' if there is none."
  (or chatpipe--rewrite-viewed
      (cl-some (lambda (overlay) (overlay-get overlay 'chatpipe-rewrite))
               (overlays-in (point) (min (point-max) (1+ (point)))))
      (and (= (length chatpipe--rewrites) 1) (car chatpipe--rewrites))
      (user-error "No rewrite here")))

(defun chatpipe--rewrite-check-ready (rewrite)
  "Signal a `user-error' unless REWRITE's proposal is complete."
  (pcase (chatpipe--rewrite-state rewrite)
    ('streaming (user-error "The rewrite is still streaming"))
    ('failed (user-error "The rewrite failed (%s): reject it, or iterate"
                         (chatpipe--rewrite-message rewrite)))))

(defun chatpipe--rewrite-live-text (rewrite)
  "Return the buffer's text that REWRITE would replace, now."
  (let ((overlay (chatpipe--rewrite-overlay rewrite)))
    (with-current-buffer (overlay-buffer overlay)
      (buffer-substring-no-properties (overlay-start overlay)
                                      (overlay-end overlay)))))

(defun chatpipe--rewrite-edited-p (rewrite)
  "Return non-nil if REWRITE's text was edited since its request."
  (not (equal (secure-hash 'sha256 (chatpipe--rewrite-live-text rewrite))
              (chatpipe--rewrite-hash rewrite))))

(defun chatpipe--rewrite-apply (rewrite text)
  "Replace REWRITE's text in its buffer with TEXT, a string; end REWRITE.
The replacement is one undo step, made with `replace-region-contents'
\(markers, overlays and point outside the changed parts stay).  If
the text was edited since the request, show the diff from the
edited text to TEXT and signal a `user-error' instead."
  (when (chatpipe--rewrite-edited-p rewrite)
    (chatpipe--rewrite-show-diff (chatpipe--rewrite-live-text rewrite) text)
    (user-error "The text was edited since the rewrite was asked for: not \
replaced; the diff shows what it would change"))
  (let* ((overlay (chatpipe--rewrite-overlay rewrite))
         (beg (copy-marker (overlay-start overlay)))
         (end (copy-marker (overlay-end overlay) t)))
    (with-current-buffer (overlay-buffer overlay)
      (barf-if-buffer-read-only (overlay-start overlay))
      (undo-boundary)
      (let ((group (prepare-change-group))
            (done nil))
        (unwind-protect
            (progn
              (activate-change-group group)
              (replace-region-contents beg end (lambda () text) 2.0)
              (setq done t))
          (if done
              (progn (accept-change-group group)
                     (undo-amalgamate-change-group group))
            (cancel-change-group group))))
      (chatpipe--rewrite-end rewrite)
      (undo-boundary)
      (set-marker beg nil)
      (set-marker end nil))))

(defun chatpipe-rewrite-accept (rewrite)
  "Replace the text with the proposal of REWRITE (default: at point).
See `chatpipe--rewrite-apply'.  A proposal cut off at the token
limit is refused: the hunks, the merge or ediff may take parts of it."
  (interactive (list (chatpipe--rewrite-at-point)))
  (chatpipe--rewrite-check-ready rewrite)
  (when (chatpipe--rewrite-cut rewrite)
    (user-error "Cut off at the token limit: iterate, or take its hunks"))
  (chatpipe--rewrite-apply rewrite (chatpipe--rewrite-text rewrite)))

(defun chatpipe-rewrite-reject (rewrite)
  "Drop REWRITE (default: at point), stopping it if it streams.
The text stays as it is."
  (interactive (list (chatpipe--rewrite-at-point)))
  (chatpipe--rewrite-end rewrite))

(defun chatpipe-rewrite-iterate (rewrite instruction)
  "Rewrite REWRITE's proposal again, following INSTRUCTION.
REWRITE defaults to the one at point; INSTRUCTION is read as for
`chatpipe-rewrite'.  The original text stays what the diffs and
accept compare with.  After a failure, the original is rewritten."
  (interactive
   (let ((rewrite (chatpipe--rewrite-at-point)))
     (when (eq (chatpipe--rewrite-state rewrite) 'streaming)
       (user-error "The rewrite is still streaming"))
     (list rewrite (chatpipe--rewrite-read-instruction "Then: "))))
  (when (eq (chatpipe--rewrite-state rewrite) 'streaming)
    (user-error "The rewrite is still streaming"))
  (setf (chatpipe--rewrite-base rewrite)
        (if (eq (chatpipe--rewrite-state rewrite) 'failed)
            (chatpipe--rewrite-original rewrite)
          (chatpipe--rewrite-text rewrite)))
  (with-current-buffer (chatpipe--rewrite-buffer rewrite)
    (chatpipe--rewrite-send rewrite instruction)))

(provide 'chatpipe-rewrite)
;;; chatpipe-rewrite.el ends here
