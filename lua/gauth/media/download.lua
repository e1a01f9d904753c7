--- Ranged downloads: what a `_media` method's request answers, fetched in
-- ranged requests (one gauth.request exchange each) and appended to a file
-- as it arrives; resumed from the bytes already on disk, with this
-- protocol's own retries. Internal: gauth.media makes `download` public.
-- @module gauth.media.download

local errors = require "gauth.errors"
local common = require "gauth.media.common"
local exchange = require "gauth.media.exchange"
local request = require "gauth.request"
local spec_of = require("gauth.discovery.method").spec_of

local type = type
local pairs = pairs
local error = error
local tostring = tostring
local tonumber = tonumber
local io_open = io.open
local io_type = io.type
local os_remove = os.remove
local os_rename = os.rename
local match = string.match
local format = string.format

local _M = {}

local fail = common.fail
local file_size = common.file_size
local copy_range = common.copy_range
local redact = errors.redact_uri
local retryable = request.retryable
local check_run_opts = common.check_run_opts
local timeout_for = common.timeout_for
local send = exchange.send

-- Rewrite `path` as its first `keep` bytes followed by the bytes from
-- `from` on (for answers that did not start where asked): copies, since
-- plain Lua cannot truncate a file.
local function splice(path, keep, from)
  local tmp = path .. ".gauth-splice"
  local out, err = io_open(tmp, "wb")
  if not out then return nil, err end
  local ok, cerr = true, nil
  if keep > 0 then ok, cerr = copy_range(path, 0, keep, out) end
  if ok and from then ok, cerr = copy_range(path, from, nil, out) end
  ok = out:close() and ok
  if not ok then os_remove(tmp); return nil, cerr or "write failed" end
  local rok, rerr = os_rename(tmp, path)
  if not rok then os_remove(tmp); return nil, rerr end
  return true
end

--- Download what a request answers (a `_media` method's request) into a
-- file, in ranged requests, appending each answer to the file as it
-- arrives (memory stays flat whatever the size). A dropped connection is
-- resumed from the bytes already on disk; a 416 once everything is there
-- ends the download.
-- @param req a GET request of gauth.discovery (`files():get_media{...}`)
-- @param dest a path (truncated first, unless `opts.resume`) or a file
--   opened for writing (written from its current position)
-- @tparam[opt] table opts `chunk_size` (bytes per ranged request; default
--   100 MiB), `progress` (function(bytes, total_or_nil) after each answer),
--   `resume` (a path only: keep its bytes and ask for the rest),
--   `num_retries` (failed attempts retried since the last progress;
--   default 3), `timeout` (seconds per request; default 60 + 1 per MiB of
--   chunk), `http`, `sleep`, `random`
-- @return bytes in the file (from the object), total size (nil when the
--   server never said) | nil, msg, err (with `bytes`: what arrived)
function _M.download(req, dest, opts)
  local spec = spec_of(req)
  if type(spec) ~= "table" or type(spec.svc) ~= "table" then
    error("gauth.media: download: needs a request of gauth.discovery", 2)
  end
  if req.method ~= "GET" then
    error("gauth.media: download: needs a GET request (got " .. tostring(req.method) .. ")", 2)
  end
  local handle
  if io_type(dest) == "file" then
    handle = dest
  elseif type(dest) ~= "string" or dest == "" then
    error("gauth.media: download: dest must be a path or an open file", 2)
  end
  opts = check_run_opts(opts, "download")
  local chunk = opts.chunk_size or common.DEFAULT_CHUNK_SIZE
  if type(chunk) ~= "number" or chunk < 1 or chunk % 1 ~= 0 then
    error("gauth.media: download: chunk_size must be a positive integer", 2)
  end
  if opts.resume and handle then
    error("gauth.media: download: resume needs a path", 2)
  end
  local svc, step, uri = spec.svc, spec.id, req.uri
  local http, herr = errors.pair(common.transport_of(svc, opts))
  if not http then return errors.fail_with("media", step, herr) end

  -- Raw bytes: no Accept-Encoding, so that ranges count what is stored.
  local base = {}
  for k, v in pairs(req.headers) do base[k] = v end
  base["accept-encoding"] = nil

  local progress, total = 0, nil
  local land, start_pos
  if handle then
    start_pos = handle:seek() or 0
    land = os.tmpname()
  else
    land = dest
    if opts.resume then
      progress = file_size(dest) or 0
    end
    if progress == 0 then
      local f, ferr = io_open(dest, "wb")
      if not f then return fail(step, "cannot write " .. dest .. ": " .. tostring(ferr),
                                { file = dest, retryable = false, bytes = 0 }) end
      f:close()
    end
  end
  -- finish(true, bytes, total) | finish(false, nil, err) | finish(false,
  -- fail(...)) (nil, msg, err): the public shape, with `bytes` on the error
  local function finish(ok, a, b, c)
    if handle then os_remove(land) end
    if ok then return a, b end
    local e = errors.is(c) and c or b
    if errors.is(e) then
      e.bytes = progress
      return errors.ret(e)
    end
    return errors.fail("media", step, tostring(e), { bytes = progress })
  end
  -- Move what landed in the temporary file to the caller's file, at the
  -- object offset `at`.
  local function deliver(at)
    if not handle then return true end
    local n = file_size(land) or 0
    if n == 0 then return true end
    handle:seek("set", start_pos + at)
    local ok, err = errors.pair(copy_range(land, 0, n, handle))
    local f = io_open(land, "wb"); if f then f:close() end
    if not ok then
      return fail(step, "writing to the file failed: " .. tostring(err), { retryable = false })
    end
    return true
  end

  local n_retries = opts.num_retries
  if n_retries == nil then n_retries = common.DEFAULT_RETRIES end
  local sleep = common.sleeper(opts, svc)
  local failures = 0
  local treq = { method = "GET", url = uri, download_file = land }
  local extra = {}
  while true do
    local first = progress
    local last = first + chunk - 1
    if total and last > total - 1 then last = total - 1 end
    extra.range = format("bytes=%d-%d", first, last)
    treq.timeout = timeout_for(opts, svc, last - first + 1)
    local before = handle and 0 or (file_size(land) or 0)
    local res, err = errors.pair(send(svc, step, treq, base, extra, http))
    local written = (file_size(land) or 0) - before
    local done = false
    if not res then
      -- What arrived before the failure stays: resume after it, at once
      -- (the connection broke, the server did not refuse).
      if written > 0 then
        local ok, derr = errors.pair(deliver(first))
        if not ok then return finish(false, nil, derr) end
        progress = progress + written
        failures = 0
        if opts.progress then opts.progress(progress, total) end
        if retryable(err) then err = nil end
      end
    elseif res.status == 206 then
      local a, b, t = match(res.headers["content-range"] or "", "^%s*bytes%s+(%d+)%-(%d+)/(%S+)")
      a = tonumber(a)
      if not a or not tonumber(b) then
        if not handle then splice(land, first, nil) end
        return finish(false, fail(step, "a 206 answer without a valid Content-Range",
                                  { status = 206, retryable = false, uri = redact(uri) }))
      end
      if a ~= first then
        if a > first then
          if not handle then splice(land, first, nil) end
          return finish(false, fail(step, format("asked for bytes from %d, got from %d", first, a),
                                    { status = 206, retryable = false, uri = redact(uri) }))
        end
        -- An earlier start: the bytes before `first` came twice.
        if not handle then
          local ok, serr = errors.pair(splice(land, a, first))
          if not ok then return finish(false, fail(step, "rewriting " .. land .. ": " .. tostring(serr))) end
        end
        first = a
      end
      local ok, derr = errors.pair(deliver(first))
      if not ok then return finish(false, nil, derr) end
      progress = first + written
      total = tonumber(t) or total
      if total then
        done = progress >= total
      else
        done = written < last - first + 1
      end
      if written > 0 then
        failures = 0
        if opts.progress then opts.progress(progress, total) end
      elseif not done then
        -- a 206 without a byte would have us ask for ever
        err = errors.new("media", step, "a 206 answer carried no bytes",
                         { status = 206, retryable = true, kind = "no_progress",
                           uri = redact(uri) })
      end
    elseif res.status >= 200 and res.status < 300 then
      -- The whole object (the server ignored Range).
      if first > 0 and not handle then
        local ok, serr = errors.pair(splice(land, 0, first))
        if not ok then return finish(false, fail(step, "rewriting " .. land .. ": " .. tostring(serr))) end
      end
      local ok, derr = errors.pair(deliver(0))
      if not ok then return finish(false, nil, derr) end
      progress = written
      total = written
      done = true
      if opts.progress then opts.progress(progress, total) end
    elseif res.status == 416 then
      -- Asked past the end: fine when everything is here.
      local t = tonumber(match(res.headers["content-range"] or "", "^%s*bytes%s+%*/(%d+)"))
      if t == nil or t == progress then
        total = t or progress
        done = true
        if opts.progress then opts.progress(progress, total) end
      else
        return finish(false, fail(step, format(
          "the object has %d bytes and %d are already here (a different object?)", t, progress),
          { status = 416, retryable = false, uri = redact(uri) }))
      end
    else
      err = errors.from_response("media", step, res, uri)
    end
    if done then return finish(true, progress, total) end
    if err then
      if not retryable(err) or failures >= n_retries then
        return finish(false, nil, err)
      end
      failures = failures + 1
      sleep(common.delay_for(failures, err, opts))
    end
  end
end

return _M
