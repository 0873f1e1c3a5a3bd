;;; chatpipe-status.el --- Loads what chatpipe-status.el was split into -*- lexical-binding: t; -*-

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

;; This file held a chat's settings, its header line, the cost of its
;; answers and the hints for errors; they are now in
;; chatpipe-chat-settings.el, chatpipe-header.el, chatpipe-usage.el and
;; chatpipe-hints.el (and the backend's prestart in
;; chatpipe-prestart.el).  It only loads those four, for the files
;; that still require it; it goes once none does.

;;; Code:

(require 'chatpipe-chat-settings)
(require 'chatpipe-header)
(require 'chatpipe-usage)
(require 'chatpipe-hints)

(provide 'chatpipe-status)
;;; chatpipe-status.el ends here
