--- The one rule for header values gauth writes. A leaf: it requires
-- nothing. Internal.
-- @module gauth.lib.http_header

local find = string.find

local _M = { _VERSION = "0.1.0" }

--- Can `v` be written as a header or MIME header value? RFC 9110 (5.5):
-- visible characters, obs-text, spaces and tabs. CR and LF would end the
-- line and let the value inject headers (or a body), NUL would cut it
-- short; the other control characters are not valid either. The one rule
-- for every header gauth writes (both transports, multipart and batch
-- parts; `csrc/http_headers.c` applies the same one).
-- @tparam string v
-- @treturn boolean
function _M.value_ok(v)
  return not find(v, "[%z\1-\8\10-\31\127]")
end

return _M
