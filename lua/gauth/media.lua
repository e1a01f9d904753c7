--- Media uploads and downloads for discovery services, as Google's Python
-- client (googleapiclient 1.7.12) makes them, with files streamed from and
-- to disk.
--
--     local discovery = require "gauth.discovery"
--     local drive = assert(discovery.build("drive", "v3", { credentials = creds }))
--     -- upload: a path (MIME type guessed from its extension) or a media object
--     local req = assert(drive:files():create{ body = { name = "big.bin" },
--       media_body = discovery.media_file("big.bin", { mime_type = "application/octet-stream" }) })
--     local file, err = req:execute{ progress = function(done, total) ... end }
--     -- stepwise (resumable uploads):
--     repeat local status, file = assert(req:next_chunk()) until file
--     -- download: the `_media` variant of a method, streamed to a file
--     local n, err = drive:files():get_media{ fileId = id }:download("out.bin")
--
-- Upload type, as googleapiclient chooses it: `resumable` when the media
-- object asks for it; otherwise `media` (the bytes alone) without a request
-- body and `multipart` (`multipart/related`: the JSON metadata, then the
-- media) with one. googleapiclient 1.7.12 has no size threshold: a media
-- object is resumable only when made with `resumable = True`. Here a media
-- object made without `resumable` (and a path given as `media_body`) is
-- resumable when larger than `RESUMABLE_THRESHOLD` (5 MiB: Google's limit
-- for simple and multipart uploads); `resumable = true` / `false` decide
-- as in googleapiclient.
--
-- The upload URL is googleapiclient's: `rootUrl .. "upload/" ..
-- servicePath .. <the method's expanded path and query>` (the same as the
-- method's `mediaUpload.protocols.simple.path` in Google's documents), plus
-- `uploadType=`. When the service was built with an `api_endpoint` or a
-- universe domain, its scheme, host and port replace rootUrl's (as
-- googleapiclient 2.x does for the host), so uploads follow the service.
--
-- An upload request (what a method call with `media_body` returns) has
-- `method`, `uri` (with `uploadType`), `body` (the JSON metadata or nil),
-- `media`, `upload_type` ("media", "multipart" or "resumable"), and for
-- resumable uploads `resumable_uri` (the session, once opened) and
-- `resumable_progress` (bytes the server has); `response` once done.
--
-- Memory: a file is never read whole. Simple uploads and resumable chunks
-- are streamed from the file by the transport (`upload_file`); downloads
-- are appended to the file by the transport (`download_file`); a
-- multipart body larger than `MULTIPART_MEMORY_MAX` is spooled to a
-- temporary file first.
--
-- The tunables `DEFAULT_CHUNK_SIZE` (googleapiclient's, 100 MiB: resumable
-- chunks and ranged downloads; streamed, so their size costs no memory),
-- `CHUNK_GRANULARITY` (256 KiB: every chunk but the last is a multiple),
-- `RESUMABLE_THRESHOLD` (5 MiB), `MULTIPART_MEMORY_MAX` (8 MiB) and
-- `DEFAULT_RETRIES` (retries after a failed chunk or a failed idempotent
-- request, counted since the last progress: gauth.request's) are read at
-- each use: setting one here changes what follows.
--
-- The parts, in lua/gauth/media/: body.lua (media objects and their
-- checks), mime.lua (MIME types guessed and accepted), upload.lua (upload
-- requests: checks, URL, upload type; execute and next_chunk),
-- simple.lua (simple and multipart uploads), resumable.lua (the resumable
-- protocol: session, chunks, status queries, resume), download.lua
-- (ranged downloads), multipart.lua (multipart bodies, also gauth.batch's),
-- exchange.lua (one exchange through gauth.request, the upload root,
-- answers decoded; also gauth.batch's), common.lua (the tunables and what
-- the parts share). This file is the public face.
-- @module gauth.media

local common = require "gauth.media.common"
local mime = require "gauth.media.mime"
local body = require "gauth.media.body"
local upload = require "gauth.media.upload"
local download = require "gauth.media.download"

local rawset = rawset
local setmetatable = setmetatable

local _M = { _VERSION = common.VERSION }

_M.guess_type = mime.guess_type
_M.accepts = mime.accepts
_M.media_file = body.media_file
_M.media_string = body.media_string
_M.is_media = body.is_media
_M.parse_max_size = body.parse_max_size
_M.is_upload = upload.is_upload
_M.upload_request = upload.upload_request
_M.wrap_builder = upload.wrap_builder
_M.download = download.download

-- The tunables stay in gauth.media.common, where the parts read them:
-- read and set through this table, they are common's.
local TUNABLES = {
  DEFAULT_CHUNK_SIZE = true, CHUNK_GRANULARITY = true, RESUMABLE_THRESHOLD = true,
  MULTIPART_MEMORY_MAX = true, DEFAULT_RETRIES = true,
}
setmetatable(_M, {
  __index = function(_, k)
    if TUNABLES[k] then return common[k] end
  end,
  __newindex = function(t, k, v)
    if TUNABLES[k] then common[k] = v else rawset(t, k, v) end
  end,
})

return _M
