--- MIME types: the type of a file by its name, as Python's mimetypes
-- guesses it (what googleapiclient uses), and a type matched against a
-- method's `accept` list. Internal: gauth.media makes these public.
-- @module gauth.media.mime

local type = type
local io_open = io.open
local match = string.match
local lower = string.lower
local gmatch = string.gmatch

local _M = {}

-- Python's mimetypes built-in table for the common types; /etc/mime.types
-- is read over it at the first guess.
local MIME = {
  txt = "text/plain", text = "text/plain", html = "text/html",
  htm = "text/html", css = "text/css", csv = "text/csv",
  js = "application/javascript", json = "application/json",
  xml = "text/xml", pdf = "application/pdf", zip = "application/zip",
  tar = "application/x-tar", png = "image/png", jpg = "image/jpeg",
  jpeg = "image/jpeg", gif = "image/gif", svg = "image/svg+xml",
  ico = "image/vnd.microsoft.icon", bmp = "image/bmp", tif = "image/tiff",
  tiff = "image/tiff", mp3 = "audio/mpeg", wav = "audio/x-wav",
  mp4 = "video/mp4", mpeg = "video/mpeg", mov = "video/quicktime",
  webm = "video/webm", bin = "application/octet-stream",
  doc = "application/msword", xls = "application/vnd.ms-excel",
  ppt = "application/vnd.ms-powerpoint",
  docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
  xlsx = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
  pptx = "application/vnd.openxmlformats-officedocument.presentationml.presentation",
  wasm = "application/wasm", py = "text/x-python", sh = "application/x-sh",
}
local mime_loaded = false

local function load_mime_types()
  mime_loaded = true
  local f = io_open("/etc/mime.types", "r")
  if not f then return end
  for line in f:lines() do
    local t, exts = match(line, "^%s*([%w!#$&^_.+-]+/[%w!#$&^_.+-]+)%s+([^#]+)")
    if t then
      for ext in gmatch(exts, "%S+") do MIME[lower(ext)] = t end
    end
  end
  f:close()
end

--- The MIME type Python's mimetypes.guess_type gives for a file name (by
-- its extension, case-insensitively), or nil.
function _M.guess_type(path)
  if not mime_loaded then load_mime_types() end
  local name = match(path, "([^/]*)$")
  local ext = match(name, "%.([^.]+)$")
  if not ext then return nil end
  -- "a.tar.gz" is application/x-tar with gzip encoding in Python: the
  -- encoding suffix is not a type of its own.
  if ext == "gz" or ext == "bz2" or ext == "xz" or ext == "Z" then
    local inner = match(name, "%.([^.]+)%.[^.]+$")
    if inner then return MIME[lower(inner)] end
    return nil
  end
  return MIME[lower(ext)]
end

-- The type and subtype of a MIME type, lowercased (nil when it has none).
local function media_type(t)
  local ty, st = match(lower(t), "^%s*([^/%s;]+)/([^%s;]+)")
  return ty, st
end

--- Does a MIME type match one of the `accept` patterns ("*/*", "image/*",
-- "image/png")? Parameters (";charset=...") are ignored, case does not
-- count. An empty or absent list accepts everything.
function _M.accepts(accept, mime)
  if type(accept) ~= "table" or #accept == 0 then return true end
  local ty, st = media_type(mime)
  if not ty then return false end
  for i = 1, #accept do
    local a = accept[i]
    local aty, ast = media_type(type(a) == "string" and a or "")
    if aty and (aty == "*" or aty == ty) and (ast == "*" or ast == st) then
      return true
    end
  end
  return false
end

return _M
