--- Moves one large file through gauth.media in a process of its own and
-- reports the process's peak memory (VmHWM) around each transfer, for
-- spec/60-media_spec.lua (and the media bench):
--
--   <lua> media_memory.lua ROOT BUILD_DIR URL CA_FILE DOC FILE OUT [MODE]
--
-- MODE: "all" (default: resumable upload, simple upload, download) or a
-- comma-separated list of "resumable", "simple", "download". Prints one
-- JSON object: {"hwm_base", "hwm_after_<mode>", "ms_<mode>", "id"} (sizes
-- in KiB, as /proc/self/status gives them).

local root, build, url, ca_file, doc_path, file, out, mode = ...
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = build .. "/?.so;" .. package.cpath

local cjson = require "cjson"
local core = require "gauth.core"
local discovery = require "gauth.discovery"
local media = require "gauth.media"

local function hwm()
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("VmHWM:%s*(%d+)"))
end

local f = assert(io.open(doc_path))
local doc = f:read("*a")
f:close()
local http = assert(require("gauth.transport.curl").new{ ca_file = ca_file ~= "" and ca_file or nil })
local drive = assert(discovery.build_from_document(doc, {
  api_endpoint = url .. "/drive/v3/", http = http,
}))
-- Everything loaded, TLS set up, one small transfer each way done: what
-- follows is the cost of the large file alone.
local small = assert(drive:files():create{ media_body = media.media_string("warm-up") }):execute()
assert(small and small.id, "warm-up upload failed")
assert(drive:files():get_media{ fileId = small.id }:download(out))
collectgarbage()
collectgarbage()

local report = { hwm_base = hwm() }
local id
for m in (mode or "resumable,simple,download"):gmatch("[^,]+") do
  local t0 = core.monotonic()
  if m == "resumable" or m == "simple" then
    local req = assert(drive:files():create{
      body = m == "resumable" and { name = "large" } or nil,
      media_body = assert(media.media_file(file, {
        mime_type = "application/octet-stream", resumable = m == "resumable" })),
    })
    local res = assert(req:execute())
    id = res.id
    report["id_" .. m] = res.id
  elseif m == "download" then
    local n = assert(drive:files():get_media{ fileId = id }:download(out))
    report.downloaded = n
  end
  report["ms_" .. m] = math.floor((core.monotonic() - t0) * 1000 + 0.5)
  report["hwm_after_" .. m] = hwm()
end
io.write(cjson.encode(report), "\n")
