;;; chatpipe-usage.el --- The token usage and cost of answers for chatpipe -*- lexical-binding: t; -*-


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

;; The text that the status of a chat shows for the backend's `usage'
;; event: the tokens an answer took in and gave out and, when the
;; backend knows the price, its cost and what the chat cost so far.

;;; Code:

(require 'subr-x)

(defvar-local chatpipe--chat-cost nil
  "What the answers of this chat cost so far, in US dollars, or nil.
The sum of the costs the backend gave (see `chatpipe--add-cost');
answers whose price it does not know are not in it.  Not saved.")
(put 'chatpipe--chat-cost 'permanent-local t)

(defun chatpipe--usage-text (usage)
  "Return a short text for USAGE, a `usage' event plist, or nil.
Cached input tokens and reasoning tokens are mentioned when there
are any, and the answer's cost, with what the chat cost so far
\(`chatpipe--chat-cost'), when the backend gave it: for example
\"14 in, 30 out, $0.00002 (chat $0.0013)\"."
  (when usage
    (let ((in (plist-get usage :input_tokens))
          (out (plist-get usage :output_tokens))
          (cached (plist-get usage :cached_tokens))
          (reasoning (plist-get usage :reasoning_tokens))
          (cost (plist-get usage :cost)))
      (concat (format "%s in" (or in "?"))
              (if (and (numberp cached) (> cached 0))
                  (format " (%s cached)" cached)
                "")
              (format ", %s out" (or out "?"))
              (if (and (numberp reasoning) (> reasoning 0))
                  (format " (%s reasoning)" reasoning)
                "")
              (if (numberp cost)
                  (format ", %s (chat %s)" (chatpipe--dollars cost)
                          (chatpipe--dollars (or chatpipe--chat-cost cost)))
                "")))))

(defun chatpipe--add-cost (usage)
  "Add the cost of USAGE, a `usage' event plist, to `chatpipe--chat-cost'.
Do nothing if it has no cost (the backend does not know the price)."
  (let ((cost (plist-get usage :cost)))
    (when (numberp cost)
      (setq chatpipe--chat-cost (+ (or chatpipe--chat-cost 0) cost)))))

(defun chatpipe--dollars (amount)
  "Return AMOUNT, in US dollars, as a short text such as \"$0.0013\".
Amounts under a dollar keep two significant digits; others have
two decimals."
  (let* ((decimals (if (and (> amount 0) (< amount 1))
                       (- 1 (floor (log amount 10)))
                     2))
         (text (format (format "%%.%df" decimals) amount)))
    (while (and (> decimals 2) (string-suffix-p "0" text))
      (setq text (substring text 0 -1)
            decimals (1- decimals)))
    (concat "$" text)))

(provide 'chatpipe-usage)
;;; chatpipe-usage.el ends here
