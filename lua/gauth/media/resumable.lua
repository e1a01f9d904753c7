--- Resumable uploads (`uploadType=resumable`), Google's protocol: the
-- session opened, the media sent in chunks, the server asked how much it
-- has ("bytes */size") after a failure, and the upload resumed from there
-- (a new session when the old one is gone). Each exchange goes through
-- gauth.request once; the retries are this protocol's own. Internal: the
-- `next_chunk` of gauth.media's upload requests.
-- @module gauth.media.resumable

local errors = require "gauth.errors"
local request = require "gauth.request"
local common = require "gauth.media.common"
local exchange = require "gauth.media.exchange"

local tostring = tostring
local tonumber = tonumber
local sub = string.sub
local find = string.find
local match = string.match
local format = string.format

local _M = {}

local fail = common.fail
local timeout_for = common.timeout_for
local send = exchange.send
local redact = errors.redact_uri
local retryable = request.retryable

local function status_of(up, done)
  return { bytes = up.resumable_progress, total = up.media.size, done = done or false }
end

-- An answer to a chunk or to a status query.
-- @return true when done (up.response set) | false to go on | nil, msg, err
local function take_answer(up, res, step)
  local st = res.status
  if st == 200 or st == 201 then
    local v, err = errors.pair(exchange.decode("media", step, up._spec, up.uri, res))
    if v == nil then return errors.ret(err) end
    up.resumable_progress = up.media.size
    up.response = v
    up._in_error = false
    return true
  end
  if st == 308 then
    local range = res.headers.range
    local last = range and tonumber(match(range, "^%s*bytes=%d+%-(%d+)"))
    local p = last and last + 1 or 0
    if p > up.media.size then p = up.media.size end
    up.resumable_progress = p
    local loc = res.headers.location
    if loc and loc ~= "" then up.resumable_uri = loc end
    up._in_error = false
    return false
  end
  if st == 404 or st == 410 then
    -- The session is gone (expired, or cancelled): Google says to start
    -- over. The next execute() / next_chunk() opens a new session.
    up.resumable_uri = nil
    up.resumable_progress = 0
    up._in_error = false
    local e = errors.from_response("media", step, res, up.uri)
    e.message = "the upload session expired or is unknown (" .. tostring(e.message)
                .. "); the next call starts a new one"
    e.retryable = false
    e.session_lost = true
    return errors.ret(e)
  end
  up._in_error = true
  return errors.ret(errors.from_response("media", step, res, up.uri))
end

-- Open the session.
local function start_session(up, http, base, opts)
  local svc, step, media = up._svc, up._spec.id, up.media
  local extra = { ["x-upload-content-type"] = media.mime_type,
                  ["x-upload-content-length"] = tostring(media.size) }
  if up.body ~= nil then extra["content-type"] = "application/json" end
  local treq = { method = up.method, url = up.uri, body = up.body,
                 timeout = timeout_for(opts, svc, 0) }
  local res, err = errors.pair(send(svc, step, treq, base, extra, http))
  if not res then return errors.ret(err) end
  local loc = res.headers.location
  if res.status >= 200 and res.status < 300 and loc and loc ~= "" then
    if not find(loc, "^%a[%w+.-]*://") then
      -- a relative Location: under the upload URL's origin
      loc = exchange.origin_of(up.uri) .. (sub(loc, 1, 1) == "/" and "" or "/") .. loc
    end
    up.resumable_uri = loc
    up.resumable_progress = 0
    return true
  end
  if res.status >= 200 and res.status < 300 then
    return fail(step, "the server opened no upload session (no Location header)",
                { status = res.status, body = res.body, uri = redact(up.uri), retryable = false })
  end
  return errors.ret(errors.from_response("media", step, res, up.uri))
end

-- Ask the server how much it has ("bytes */size").
local function query_session(up, http, base, opts)
  local svc, step = up._svc, up._spec.id
  local treq = { method = "PUT", url = up.resumable_uri, body = "",
                 timeout = timeout_for(opts, svc, 0) }
  local res, err = errors.pair(send(svc, step, treq, base,
                        { ["content-range"] = "bytes */" .. up.media.size }, http))
  if not res then return errors.ret(err) end
  return take_answer(up, res, step)
end

-- Send the next chunk.
local function send_chunk(up, http, base, opts)
  local svc, step, media = up._svc, up._spec.id, up.media
  local from = up.resumable_progress
  local size = media.size
  local len = media.chunk_size
  if len == -1 or from + len > size then len = size - from end
  local treq = { method = "PUT", url = up.resumable_uri,
                 timeout = timeout_for(opts, svc, len) }
  local range
  if size == 0 then
    range = "bytes */0"
    treq.body = ""
  else
    range = format("bytes %d-%d/%d", from, from + len - 1, size)
    if media.data then
      treq.body = sub(media.data, from + 1, from + len)
    else
      treq.upload_file, treq.upload_offset, treq.upload_length = media.path, from, len
    end
  end
  local res, err = errors.pair(send(svc, step, treq, base, { ["content-range"] = range }, http))
  if not res then
    up._in_error = true
    return errors.ret(err)
  end
  local done, aerr = errors.pair(take_answer(up, res, step))
  if aerr and (res.status == 400 or res.status == 416) then
    -- Maybe a stale offset: libcurl silently sends a request again on a
    -- new connection when a kept-alive one dies before any answer, so a
    -- chunk cut off mid-way can arrive a second time, behind what the
    -- server kept. Whether that is what happened is the server's to say.
    aerr.chunk_from = from
  end
  return done, aerr
end

--- One step of a resumable upload `up` (its options checked): see
-- `next_chunk` of gauth.media's upload requests.
-- @return status `{ bytes =, total =, done = }`, and the decoded response
--   once the upload is complete (nil before) | nil, msg, err
function _M.next_chunk(up, opts)
  if up.response ~= nil then return status_of(up, true), up.response end
  local svc = up._svc
  local http, herr = errors.pair(common.transport_of(svc, opts))
  if not http then return errors.fail_with("media", up._spec.id, herr) end
  local base = exchange.base_headers(up._req)
  local n = opts.num_retries
  if n == nil then n = common.DEFAULT_RETRIES end
  local sleep = common.sleeper(opts, svc)
  local failures = 0
  local started = up.resumable_progress
  local checked = false
  while true do
    local done, err
    if not up.resumable_uri then
      done, err = errors.pair(start_session(up, http, base, opts))
      if done then
        done, err = errors.pair(send_chunk(up, http, base, opts))
      end
    elseif up._in_error then
      done, err = errors.pair(query_session(up, http, base, opts))
      if done == false then
        done, err = errors.pair(send_chunk(up, http, base, opts))
      end
    else
      done, err = errors.pair(send_chunk(up, http, base, opts))
    end
    if done == nil and err and err.chunk_from and not checked then
      -- A refused chunk: ask where the server stands; an offset other
      -- than the chunk's explains the refusal, and the upload goes on.
      checked = true
      local qdone, qerr = errors.pair(query_session(up, http, base, opts))
      if qdone then
        done, err = true, nil
      elseif qdone == false and up.resumable_progress ~= err.chunk_from then
        done, err = false, nil
        if up.resumable_progress <= started then
          -- nothing gained yet: send the right chunk now
          done, err = errors.pair(send_chunk(up, http, base, opts))
        end
      elseif qdone == nil then
        err = qerr
      else
        up._in_error = false
      end
    end
    if done then return status_of(up, true), up.response end
    if done == false and up.resumable_progress > started then
      return status_of(up, false), nil
    end
    if done == false then
      -- A 308 that took nothing: the server wants the chunk again.
      err = errors.new("media", up._spec.id, "the server kept none of the chunk",
                       { retryable = true, kind = "no_progress", uri = redact(up.uri) })
      up._in_error = true
    end
    if not retryable(err) or failures >= n then
      if failures > 0 and errors.is(err) then
        err = errors.new(err.module, err.step, tostring(err.message) ..
                         format(" (gave up after %d attempts)", failures + 1), err)
      end
      return errors.ret(err)
    end
    failures = failures + 1
    sleep(common.delay_for(failures, err, opts))
  end
end

return _M
