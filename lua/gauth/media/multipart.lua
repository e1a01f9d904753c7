--- MIME multipart bodies as googleapiclient writes them: a random
-- boundary that none of the content holds, and the parts framed by it
-- (CRLF line ends). Internal: used for multipart/related uploads (gauth.media)
-- and multipart/mixed batches (gauth.batch).
-- @module gauth.media.multipart

local core = require "gauth.core"

local select = select
local gsub = string.gsub
local find = string.find
local byte = string.byte
local format = string.format
local concat = table.concat

local _M = {}

--- `n` random bytes as 2n lowercase hex digits (boundaries, batch
-- Content-IDs).
local function random_hex(n)
  local raw = core.random_bytes(n)
  return (gsub(raw, ".", function(c) return format("%02x", byte(c)) end))
end
_M.random_hex = random_hex

--- A boundary in Python's email style, "===============<hex>==" with
-- `n` random bytes, that none of the texts given (nil ones skipped) holds.
-- @tparam number n
-- @param ... the texts the body will carry
function _M.boundary(n, ...)
  local nt = select("#", ...)
  while true do
    local b = "===============" .. random_hex(n) .. "=="
    local clash = false
    for i = 1, nt do
      local t = select(i, ...)
      if t and find(t, b, 1, true) then clash = true; break end
    end
    if not clash then return b end
  end
end

--- The body around the content of its last part: `head` (each part
-- opened by its delimiter line, the last one's content left out) and
-- `tail` (the close delimiter), so that a large last content can be
-- streamed between them. Each part is its MIME header lines, an empty
-- line, then its content.
-- @tparam string boundary
-- @tparam table parts the parts as strings, the last without its content
-- @return head, tail
function _M.frame(boundary, parts)
  local out = {}
  for i = 1, #parts do
    out[#out + 1] = "--" .. boundary .. "\r\n"
    out[#out + 1] = parts[i]
    if i < #parts then out[#out + 1] = "\r\n" end
  end
  return concat(out), "\r\n--" .. boundary .. "--\r\n"
end

--- The whole body of `parts` (strings: MIME header lines, an empty line,
-- the content) under `boundary`.
function _M.encode(boundary, parts)
  local head, tail = _M.frame(boundary, parts)
  return head .. tail
end

return _M
