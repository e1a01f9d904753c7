--- The transport cases every gauth transport must pass, written once and
-- run against the curl transport in plain Lua and against the cosocket
-- transport inside nginx (spec/70-openresty_spec.lua).
--
-- Each case: `name`; `setup(fake, ctx)` (in busted: script the fake);
-- `requests(ctx)` -> array of request tables (runs in either place, so it
-- only builds plain data from `ctx`, the servers' URLs); `check(r, ctx,
-- fake)` (in busted) where `r[i]` is the normalised result of request i:
-- `{ res = {status, reason, headers, body, new_connections} | nil,
--    err = {message, shape_ok (nil, msg, err with tostring(err) == msg),
--    retryable, too_large, kind, module} | nil, raised = message
--    (when request raised) | nil, elapsed = s }`,
-- and `untrusted_fake` is the fake behind `ctx.untrusted`.
--
-- ctx: `fake` (https://localhost:port of the fake Google, trusted CA),
-- `untrusted` (https://localhost:port of a fake whose certificate comes
-- from another CA), `raw` (http://127.0.0.1:port of nginx's raw locations),
-- `raw6` (the same over http://[::1]:port), `closed` (a port with nothing
-- listening), `tmp` (a directory both sides can read and write).
--
-- Cases marked `double = true` are about what a transport accepts, not
-- about the network: spec/91-testing_spec.lua runs them against
-- gauth.testing's doubles too, with `fake` nil (their checks look at the
-- fake only when there is one).
--
-- `_M.ngx_only` holds cases for the cosocket transport alone (where
-- libcurl's answer differs, e.g. in which errors it calls retryable).
-- @module support.transport_cases

local _M = {}

-- luassert, for the checks (run in busted only; never loaded in nginx).
local assert = setmetatable({}, {
  __index = function(_, k) return require("luassert")[k] end,
  __call = function(_, ...) return require("luassert")(...) end,
})

--- Run `reqs` on transport `t`; results in the normalised shape.
-- @tparam function clock seconds
function _M.run(t, reqs, clock)
  local out = {}
  for i, req in ipairs(reqs) do
    local t0 = clock()
    local ok, res, msg, err = pcall(t.request, t, req)
    local r = { elapsed = clock() - t0, via = ngx and "ngx" or "curl" }  -- luacheck: ignore ngx
    if not ok then
      r.raised = tostring(res)
    elseif res then
      r.res = { status = res.status, reason = res.reason, headers = res.headers,
                body = res.body, new_connections = res.new_connections,
                written = res.written }
    else
      -- the public shape: nil, msg (a string), err (its object)
      r.err = { message = tostring(msg),
                shape_ok = type(msg) == "string" and type(err) == "table"
                           and tostring(err) == msg,
                retryable = err and err.retryable,
                too_large = err and err.too_large, kind = err and err.kind,
                module = err and err.module }
    end
    out[i] = r
  end
  return out
end

local cases, ngx_only = {}, {}
_M.cases, _M.ngx_only = cases, ngx_only

-- Every failure a case sees must have the shape nil, msg, err.
local function shaped(t)
  local check = t.check
  t.check = function(r, ...)
    for i, x in ipairs(r) do
      if x.err then
        assert.is_true(x.err.shape_ok, "request " .. i .. " failed without nil, msg, err: "
                       .. tostring(x.err.message))
      end
    end
    return check(r, ...)
  end
  return t
end
local function case(t) t = shaped(t); cases[#cases + 1] = t; cases[t.name] = t end
local function ngx_case(t) t = shaped(t); ngx_only[#ngx_only + 1] = t; cases[t.name] = t end

local function write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("*a")
  f:close()
  return data
end

local BIG = string.rep("0123456789abcdef", 4096)  -- 64 KiB

case {
  name = "GET: status, lower-case headers, repeated headers joined, body",
  setup = function(fake)
    fake:script("/c/get", { status = 200, headers = { ["X-Multi"] = { "a", "b" },
      ["X-Trail"] = "v  " }, body = { ok = true } })
  end,
  requests = function(ctx)
    return { { method = "GET", url = ctx.fake .. "/c/get?x=1#frag",
               headers = { accept = "application/json" } } }
  end,
  check = function(r, _, fake)
    local res = assert(r[1].res, r[1].err and r[1].err.message)
    assert.equal(200, res.status)
    assert.equal("OK", res.reason)
    assert.equal('{"ok": true}', res.body)
    assert.equal("a, b", res.headers["x-multi"])
    assert.equal("v", res.headers["x-trail"])
    assert.matches("^application/json", res.headers["content-type"])
    local rec = fake:requests("/c/get")[1]
    assert.equal("GET", rec.method)
    assert.equal("x=1", rec.query)
    assert.equal("application/json", rec.headers.accept)
  end,
}

case {
  name = "POST: body and Content-Length sent; an empty POST sends Content-Length: 0",
  requests = function(ctx)
    return {
      { method = "POST", url = ctx.fake .. "/c/post",
        headers = { ["content-type"] = "application/x-www-form-urlencoded" },
        body = "a=1&b=%20" },
      { method = "POST", url = ctx.fake .. "/c/post-empty" },
      { method = "PUT", url = ctx.fake .. "/c/put", body = BIG },
    }
  end,
  check = function(r, _, fake)
    for i = 1, 3 do assert(r[i].res, r[i].err and r[i].err.message) end
    local rec = fake:requests("/c/post")[1]
    assert.equal("POST", rec.method)
    assert.equal("a=1&b=%20", rec.body)
    assert.equal("9", rec.headers["content-length"])
    assert.equal("application/x-www-form-urlencoded", rec.headers["content-type"])
    assert.equal("0", fake:requests("/c/post-empty")[1].headers["content-length"])
    local put = fake:requests("/c/put")[1]
    assert.equal("PUT", put.method)
    assert.equal(#BIG, #put.body)
    assert.equal(BIG, put.body)
  end,
}

case {
  name = "HEAD has no body; 204 has no body",
  setup = function(fake)
    fake:script("/c/head", { status = 200, body = "not sent for HEAD" })
    fake:script("/c/204", { status = 204 })
  end,
  requests = function(ctx)
    return { { method = "HEAD", url = ctx.fake .. "/c/head" },
             { method = "DELETE", url = ctx.fake .. "/c/204" } }
  end,
  check = function(r)
    assert.equal(200, r[1].res.status)
    assert.equal("", r[1].res.body)
    assert.equal(204, r[2].res.status)
    assert.equal("", r[2].res.body)
  end,
}

case {
  name = "an error status is a response, not an error",
  setup = function(fake)
    fake:script("/c/503", { status = 503, headers = { ["Retry-After"] = "7" },
                            body = { error = { code = 503 } } })
  end,
  requests = function(ctx) return { { url = ctx.fake .. "/c/503" } } end,
  check = function(r)
    assert.is_nil(r[1].err)
    assert.equal(503, r[1].res.status)
    assert.equal("7", r[1].res.headers["retry-after"])
    assert.matches('"code": 503', r[1].res.body)
  end,
}

case {
  name = "a connection is kept alive and reused",
  requests = function(ctx)
    return { { url = ctx.fake .. "/c/ka1" }, { url = ctx.fake .. "/c/ka2" } }
  end,
  check = function(r, _, fake)
    assert.equal(404, r[1].res.status)
    assert.equal(404, r[2].res.status)
    assert.equal(0, r[2].res.new_connections)
    assert.equal(fake:requests("/c/ka1")[1].conn, fake:requests("/c/ka2")[1].conn)
  end,
}

case {
  name = "a chunked body is decoded",
  requests = function(ctx)
    return { { url = ctx.raw .. "/raw/chunked?n=100000&pieces=7" } }
  end,
  check = function(r)
    local res = assert(r[1].res, r[1].err and r[1].err.message)
    assert.equal(200, res.status)
    assert.equal("chunked", res.headers["transfer-encoding"])
    assert.equal(100000, #res.body)
    assert.equal(string.rep("x", 100000), res.body)
  end,
}

case {
  name = "a body delimited by the end of the connection is read to the end",
  requests = function(ctx)
    return { { url = ctx.raw .. "/raw/close?n=70000" },
             { url = ctx.raw .. "/raw/close?n=5&v=1.0" } }
  end,
  check = function(r)
    local res = assert(r[1].res, r[1].err and r[1].err.message)
    assert.equal(200, res.status)
    assert.is_nil(res.headers["content-length"])
    assert.equal(string.rep("y", 70000), res.body)
    assert.equal("yyyyy", r[2].res.body)
  end,
}

case {
  name = "a 100 Continue before the answer is skipped",
  requests = function(ctx) return { { url = ctx.raw .. "/raw/continue" } } end,
  check = function(r)
    assert.equal(200, r[1].res.status)
    assert.equal("ok", r[1].res.body)
  end,
}

case {
  name = "max_body refuses a larger body (Content-Length and chunked)",
  setup = function(fake)
    fake:script("/c/big", { { status = 200, body = BIG }, { status = 200, body = BIG } })
  end,
  requests = function(ctx)
    return { { url = ctx.fake .. "/c/big", max_body = 1000 },
             { url = ctx.raw .. "/raw/chunked?n=5000&pieces=5", max_body = 1000 },
             { url = ctx.raw .. "/raw/chunked?n=1000&pieces=3", max_body = 1000 },
             { url = ctx.fake .. "/c/big", max_body = 0 } }
  end,
  check = function(r)
    for i = 1, 2 do
      assert.is_nil(r[i].res)
      assert.is_true(r[i].err.too_large)
      assert.equal("max_body", r[i].err.kind)
      assert.is_true(r[i].err.shape_ok)
      assert.is_false(r[i].err.retryable)
      assert.matches("max_body", r[i].err.message)
    end
    assert.equal(1000, #r[3].res.body)
    assert.equal(#BIG, #r[4].res.body)  -- 0: no cap
  end,
}

case {
  name = "a server that never answers times out (retryable)",
  setup = function(fake) fake:script("/c/hang", { hang = true }) end,
  requests = function(ctx) return { { url = ctx.fake .. "/c/hang", timeout = 1 } } end,
  check = function(r, _, fake)
    assert.is_nil(r[1].res)
    assert.is_true(r[1].err.retryable)
    assert.equal("timeout", r[1].err.kind)
    assert.is_true(r[1].err.shape_ok)
    assert.matches("[Tt]ime", r[1].err.message)
    -- the server had the request and held it; the client gave up (a hang
    -- guard of ten times the timeout, not a window)
    assert.equal(1, #fake:requests("/c/hang"))
    assert.is_true(r[1].elapsed < 10, "elapsed " .. r[1].elapsed)
  end,
}

-- The state a trickling location of nginx (support/ngx_app.lua raw_trickle)
-- has reached: "started", "aborted after N", "completed". Read over HTTP
-- from busted until it is no longer "started" (hang guard: 20 s).
local function trickle_state(ctx, id)
  local http = require "socket.http"
  local deadline = require("socket").gettime() + 20
  while true do
    local body = http.request(ctx.raw .. "/result?key=trickle%20" .. id)
    body = body and body:gsub("%s+$", "")
    if body ~= "started" or require("socket").gettime() > deadline then return body end
    require("socket").sleep(0.1)
  end
end

case {
  name = "the timeout covers the whole request: a peer trickling bytes is cut off",
  requests = function(ctx)
    local via = ngx and "ngx" or "curl"  -- luacheck: ignore ngx
    -- 40 bytes, one every 0.5 s: 20 s to send, against a 2 s timeout.
    return {
      { url = ctx.raw .. "/raw/trickle?part=head&n=40&every=0.5&id=" .. via .. "-head",
        timeout = 2 },
      { url = ctx.raw .. "/raw/trickle?part=body&n=40&every=0.5&id=" .. via .. "-body",
        timeout = 2 },
    }
  end,
  check = function(r, ctx)
    for i, part in ipairs({ "head", "body" }) do
      assert.is_nil(r[i].res, part)
      assert.is_true(r[i].err.retryable, part)
      assert.equal("timeout", r[i].err.kind, part)
      assert.equal("http", r[i].err.module)
      assert.matches("[Tt]ime", r[i].err.message)
      -- The request ended: the server saw the connection go away before
      -- it had sent everything (it would have taken 20 s).
      assert.matches("^aborted after %d+$", trickle_state(ctx, r[i].via .. "-" .. part))
    end
  end,
}

case {
  name = "connection refused is retryable",
  requests = function(ctx) return { { url = ctx.closed .. "/", connect_timeout = 2 } } end,
  check = function(r)
    assert.is_nil(r[1].res)
    assert.is_true(r[1].err.retryable)
    assert.equal("connect", r[1].err.kind)
    assert.is_true(r[1].err.shape_ok)
    assert.equal("http", r[1].err.module)
  end,
}

case {
  name = "a connection closed without an answer, or mid-body, is retryable",
  setup = function(fake)
    -- Twice: a transport may retry once when the connection it took from
    -- its pool is closed without an answer (as libcurl does).
    fake:script("/c/drop", { { drop = true }, { drop = true } })
    fake:script("/c/trunc", { status = 200, body = BIG, truncate = true })
  end,
  requests = function(ctx)
    return { { url = ctx.fake .. "/c/drop" }, { url = ctx.fake .. "/c/trunc" } }
  end,
  check = function(r)
    for i = 1, 2 do
      assert.is_nil(r[i].res)
      assert.is_true(r[i].err.retryable, r[i].err.message)
      assert.equal("read", r[i].err.kind, r[i].err.message)
    end
  end,
}

case {
  name = "a certificate from an untrusted CA is refused (not retryable)",
  requests = function(ctx) return { { url = ctx.untrusted .. "/c/secret", body = "s" ,
                                      method = "POST" } } end,
  check = function(r, _, _, untrusted_fake)
    assert.is_nil(r[1].res)
    assert.is_false(r[1].err.retryable)
    -- One wording on every transport (issue 18 item 6).
    assert.equal("tls_verify", r[1].err.kind)
    assert.matches("TLS: the certificate of localhost:%d+ is not trusted %(", r[1].err.message)
    assert.matches("; give its CA to both transports, the same PEM file: GAUTH_CA_FILE "
      .. "(or ca_file) for libcurl (plain Lua, init_by_lua) and lua_ssl_trusted_certificate "
      .. "for nginx workers", r[1].err.message, 1, true)
    assert.equal(0, #untrusted_fake:requests())
  end,
}

case {
  name = "a header the transport cannot send raises (a programming error)",
  double = true,
  requests = function(ctx)
    local u = ctx.fake .. "/c/never"
    return { { url = u, headers = { ["bad name"] = "v" } },
             { url = u, headers = { ["x-true"] = true } },
             { url = u, headers = { ["x-fn"] = print } },
             { url = u, headers = { ["x-list"] = { "ok", {} } } },
             { url = u, headers = { ["x-list"] = { "ok", 2 }, ["x-off"] = false } } }
  end,
  check = function(r, _, fake)
    assert.matches("bad header name bad name", r[1].raised)
    assert.matches("bad value for header x%-true", r[2].raised)
    assert.matches("bad value for header x%-fn", r[3].raised)
    assert.matches("bad value for header x%-list", r[4].raised)
    for i = 1, 4 do assert.is_nil(r[i].res) end
    -- strings, numbers and false are what a header takes
    assert.is_nil(r[5].raised)
    assert.equal(404, r[5].res.status)
    if not fake then return end
    local got = fake:requests("/c/never")
    assert.equal(1, #got)
    assert.equal("ok, 2", got[1].headers["x-list"])
    assert.is_nil(got[1].headers["x-off"])
  end,
}

case {
  name = "a header value with CR or LF is refused, naming the header only",
  double = true,
  requests = function(ctx)
    return { { url = ctx.fake .. "/c/inject",
               headers = { ["x-evil"] = "a\r\nx-injected: 1" } } }
  end,
  check = function(r, _, fake)
    assert.is_nil(r[1].res)
    assert.is_false(r[1].err.retryable)
    assert.equal("header_value", r[1].err.kind)
    assert.is_true(r[1].err.shape_ok)
    assert.matches("x%-evil", r[1].err.message)
    assert.is_nil(r[1].err.message:find("injected", 1, true))
    if fake then assert.equal(0, #fake:requests("/c/inject")) end
  end,
}

case {
  name = "a method other than GET, HEAD, POST, PUT, PATCH, DELETE raises",
  double = true,
  requests = function(ctx)
    local u = ctx.fake .. "/c/method"
    return { { method = "BREW", url = u }, { method = "get", url = u }, { method = 1, url = u },
             { method = "PATCH", url = u, body = "{}" } }
  end,
  check = function(r, _, fake)
    assert.matches(": unsupported method BREW$", r[1].raised)
    assert.matches(": unsupported method get$", r[2].raised)
    assert.matches(": unsupported method 1$", r[3].raised)
    for i = 1, 3 do assert.is_nil(r[i].res) end
    assert.is_nil(r[4].raised)
    assert.equal(404, r[4].res.status)
    if fake then
      local got = fake:requests("/c/method")
      assert.equal(1, #got)
      assert.equal("PATCH", got[1].method)
    end
  end,
}

case {
  name = "a negative, NaN or non-number timeout, or a fractional max_body, raises",
  double = true,
  requests = function(ctx)
    local u = ctx.fake .. "/c/limits"
    return { { url = u, timeout = -1 }, { url = u, connect_timeout = -0.5 },
             { url = u, timeout = "5" }, { url = u, max_body = 1.5 }, { url = u, max_body = -1 },
             { url = u, timeout = 0 / 0 },
             { url = u, timeout = 5, connect_timeout = 5, max_body = 65536 } }
  end,
  check = function(r, _, fake)
    assert.matches(": timeout must be a non%-negative number$", r[1].raised)
    assert.matches(": connect_timeout must be a non%-negative number$", r[2].raised)
    assert.matches(": timeout must be a non%-negative number$", r[3].raised)
    assert.matches(": max_body must be a non%-negative integer$", r[4].raised)
    assert.matches(": max_body must be a non%-negative integer$", r[5].raised)
    assert.matches(": timeout must be a non%-negative number$", r[6].raised)
    for i = 1, 6 do assert.is_nil(r[i].res) end
    assert.is_nil(r[7].raised)
    assert.equal(404, r[7].res.status)
    if fake then assert.equal(1, #fake:requests("/c/limits")) end
  end,
}

-- The raw listener of the case below (busted side only: setup and check).
local dot_listener

case {
  name = "dot segments in the path go on the wire byte for byte (o/../acl is not a bucket ACL)",
  setup = function(_, ctx)
    dot_listener = require("helpers").start_raw_listener()
    ctx.listener = dot_listener.url
  end,
  requests = function(ctx)
    local base = ctx.listener .. "/storage/v1/b/bkt/o/"
    return { { method = "POST", url = base .. "../acl", body = "{}",
               headers = { ["content-type"] = "application/json" } },
             { method = "DELETE", url = base .. "%2e%2e" },
             { method = "GET", url = base .. "a/./b/%2E%2e/../c?x=/../y" } }
  end,
  check = function(r)
    local l = dot_listener
    dot_listener = nil
    local lines = l:request_lines()
    l:stop()
    for i = 1, 3 do assert(r[i].res, r[i].err and r[i].err.message or r[i].raised) end
    assert.same({ "POST /storage/v1/b/bkt/o/../acl HTTP/1.1",
                  "DELETE /storage/v1/b/bkt/o/%2e%2e HTTP/1.1",
                  "GET /storage/v1/b/bkt/o/a/./b/%2E%2e/../c?x=/../y HTTP/1.1" }, lines)
  end,
}

case {
  name = "an IPv6 literal host is connected",
  requests = function(ctx) return { { url = ctx.raw6 .. "/raw/echo" } } end,
  check = function(r)
    local res = assert(r[1].res, r[1].err and r[1].err.message)
    assert.equal(200, res.status)
    assert.matches('"host":"%[::1%]:%d+"', res.body)
  end,
}

case {
  name = "redirects: not followed by default; followed on request; 303 turns into GET",
  setup = function(fake)
    fake:script("/c/r1", { status = 302, headers = { Location = "/c/r2" } })
    fake:script("/c/r1", { status = 302, headers = { Location = "/c/r2" } })
    fake:script("/c/r2", { status = 200, body = "final" })
    fake:script("/c/r3", { status = 303, headers = { Location = "r2" } })
    fake:script("/c/r2", { status = 200, body = "after 303" })
  end,
  requests = function(ctx)
    return { { url = ctx.fake .. "/c/r1" },
             { url = ctx.fake .. "/c/r1", follow_redirects = true },
             { method = "POST", body = "x", url = ctx.fake .. "/c/r3",
               follow_redirects = true },
             -- Regression: the POST body was sent after the GET that
             -- followed a 303, and read as the next request.
             { url = ctx.fake .. "/c/after" } }
  end,
  check = function(r, _, fake)
    assert.equal(302, r[1].res.status)
    assert.equal("/c/r2", r[1].res.headers.location)
    assert.equal(200, r[2].res.status)
    assert.equal("final", r[2].res.body)
    assert.equal(200, r[3].res.status)
    assert.equal("after 303", r[3].res.body)
    local recs = fake:requests("/c/r2")
    assert.equal("GET", recs[#recs].method)
    assert.equal("", recs[#recs].body)
    assert.equal(404, r[4].res.status)
    assert.equal(1, #fake:requests("/c/after"))
  end,
}

case {
  name = "authorization does not follow a redirect to another host",
  requests = function(ctx)
    local to = (ctx.raw6 .. "/raw/echo"):gsub("[^%w%-%._~]", function(c)
      return ("%%%02X"):format(c:byte())
    end)
    return { { url = ctx.raw .. "/raw/redirect?to=" .. to, follow_redirects = true,
               headers = { authorization = "Bearer secret", ["x-other"] = "kept" } } }
  end,
  check = function(r)
    local res = assert(r[1].res, r[1].err and r[1].err.message)
    assert.equal(200, res.status)
    assert.matches('"x%-other":"kept"', res.body)
    assert.is_nil(res.body:find("authorization", 1, true))
  end,
}

case {
  name = "upload_file sends a file's range; download_file appends a 2xx body only",
  setup = function(fake, ctx)
    write(ctx.tmp .. "/up.bin", "0123456789" .. BIG)
    os.remove(ctx.tmp .. "/down.bin")
    write(ctx.tmp .. "/down.bin", "old:")
    fake:script("/c/down", { status = 200, body = BIG })
    fake:script("/c/down404", { status = 404, body = "no such object" })
  end,
  requests = function(ctx)
    return {
      { method = "PUT", url = ctx.fake .. "/c/up", upload_file = ctx.tmp .. "/up.bin",
        upload_offset = 10, upload_length = 100 },
      { method = "POST", url = ctx.fake .. "/c/up-all", upload_file = ctx.tmp .. "/up.bin" },
      { url = ctx.fake .. "/c/down", download_file = ctx.tmp .. "/down.bin" },
      { url = ctx.fake .. "/c/down404", download_file = ctx.tmp .. "/down.bin" },
    }
  end,
  check = function(r, ctx, fake)
    for i = 1, 4 do assert(r[i].res, r[i].err and r[i].err.message) end
    assert.equal(BIG:sub(1, 100), fake:requests("/c/up")[1].body)
    assert.equal("100", fake:requests("/c/up")[1].headers["content-length"])
    assert.equal("0123456789" .. BIG, fake:requests("/c/up-all")[1].body)
    assert.equal(200, r[3].res.status)
    assert.equal("", r[3].res.body)
    assert.equal(#BIG, r[3].res.written)
    assert.equal(404, r[4].res.status)
    assert.equal("no such object", r[4].res.body)
    assert.equal("old:" .. BIG, read(ctx.tmp .. "/down.bin"))
  end,
}

ngx_case {
  name = "a malformed chunked body is refused (not retryable)",
  requests = function(ctx) return { { url = ctx.raw .. "/raw/badchunk" } } end,
  check = function(r)
    assert.is_nil(r[1].res)
    assert.is_false(r[1].err.retryable)
    assert.matches("chunk", r[1].err.message)
  end,
}

ngx_case {
  name = "a header block over 100 KiB is refused",
  requests = function(ctx) return { { url = ctx.raw .. "/raw/bighead" } } end,
  check = function(r)
    assert.is_nil(r[1].res)
    assert.is_false(r[1].err.retryable)
    assert.equal("header_size", r[1].err.kind)
  end,
}

ngx_case {
  name = "https to an IP literal fails verification, with a hint",
  requests = function(ctx)
    return { { url = (ctx.fake:gsub("localhost", "127.0.0.1")) .. "/c/ip" } }
  end,
  check = function(r, _, fake)
    assert.is_nil(r[1].res)
    assert.is_false(r[1].err.retryable)
    assert.matches("host names only", r[1].err.message)
    assert.equal(0, #fake:requests("/c/ip"))
  end,
}

ngx_case {
  name = "a host name needs nginx's resolver (the error says so)",
  requests = function()
    return { { url = "https://oauth2.googleapis.com/token", method = "POST" } }
  end,
  check = function(r)
    assert.is_nil(r[1].res)
    assert.matches("resolver", r[1].err.message)
  end,
}

return _M
