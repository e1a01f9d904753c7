-- The libcurl transport (gauth.core's Http, gauth.transport.curl, gauth.http)
-- against the fake Google server on loopback: real sockets, real TLS with a
-- test CA made at test time, nothing mocked below the HTTP line.
local helpers = require "helpers"
local core = require "gauth.core"
local curl = require "gauth.transport.curl"
local ghttp = require "gauth.http"
local errors = require "gauth.errors"
local socket = require "socket"

-- Every byte value, NULs included.
local BINARY = {}
for i = 0, 255 do BINARY[#BINARY + 1] = string.char(i) end
BINARY = table.concat(BINARY) .. "\0\r\n\r\n" .. table.concat(BINARY):reverse()

-- A loopback port with nothing listening on it.
local closed_port = helpers.closed_port

local function lua_interpreter()
  return os.getenv("GAUTH_LUA") or (jit and "luajit" or "lua5.4")
end

describe("gauth.core Http", function()
  local fake, certs

  lazy_setup(function()
    certs = helpers.certs()
    fake = helpers.start_fake({ tls = true })
  end)
  lazy_teardown(function() fake:stop() end)
  before_each(function() fake:reset() end)

  it("http_version returns libcurl's version string", function()
    local v = core.http_version()
    assert.is_string(v)
    assert.matches("^libcurl/%d+%.%d+", v)
  end)

  it("http_new returns an Http object that prints its address", function()
    local h, err = core.http_new()
    assert.is_nil(err)
    assert.equal("userdata", type(h))
    assert.matches("^gauth%.Http %(0?x?%x+%)$", tostring(h))
    assert.equal("gauth object", getmetatable(h))
    h:close()
  end)

  it("perform returns one table: status, reason, headers, body, connections, bytes written", function()
    fake:script("/core", { status = 201, headers = { ["X-One"] = "1" }, body = "created" })
    local h = core.http_new()
    local res, msg, info = h:perform("GET", fake.url .. "/core",
      { Accept = "text/plain" }, nil, { ca_file = certs.ca_file, timeout = 5 })
    assert.is_nil(msg)
    assert.is_nil(info)
    assert.equal(201, res.status)
    assert.equal("Created", res.reason)
    assert.equal("1", res.headers["x-one"])
    assert.equal("7", res.headers["content-length"])
    assert.equal("created", res.body)
    assert.equal(1, res.new_connections)
    assert.equal(0, res.written)
    assert.is_nil(res.decoded)
    assert.equal("text/plain", fake:requests("/core")[1].headers.accept)
    h:close()
  end)

  it("perform returns nil, the message and { curl_code } on failure", function()
    local h = core.http_new()
    local port = closed_port()
    local res, msg, info = h:perform("GET",
      "http://127.0.0.1:" .. port .. "/", nil, nil, { connect_timeout = 5 })
    assert.is_nil(res)
    assert.matches("^gauth%.core: http: Couldn't connect to server %(7%): .*" .. port, msg)
    assert.same({ curl_code = 7 }, info)
    h:close()
  end)

  it("perform takes a header table and keeps its lines only while they hold", function()
    local h = core.http_new()
    local o = { ca_file = certs.ca_file, timeout = 5 }
    local function send(headers)
      fake:script("/map", { status = 200, body = "ok" })
      local res = h:perform("GET", fake.url .. "/map", headers, nil, o)
      assert.equal(200, res.status)
      assert.equal("table", type(res.headers))
      assert.equal("ok", res.body)
      assert.equal(0, res.written)
      assert.equal("OK", res.reason)
      assert.is_nil(res.decoded)
      assert.is_number(res.new_connections)
      local reqs = fake:requests("/map")
      return reqs[#reqs].headers
    end
    local map = { Accept = "text/plain", ["X-N"] = 7, ["x-r"] = { "a", 2 },
                  ["x-off"] = false, ["content-length"] = "999" }
    for _ = 1, 2 do
      local got = send(map)
      assert.equal("text/plain", got.accept)
      assert.equal("7", got["x-n"])
      assert.equal("a, 2", got["x-r"])
      assert.is_nil(got["x-off"])
      assert.is_nil(got["content-length"])
    end
    -- A changed value, then a header gone, then none at all: each request
    -- carries what its own table says, nothing kept from the last.
    map["X-N"] = "8"
    assert.equal("8", send(map)["x-n"])
    map.Accept = nil
    local got = send(map)
    assert.equal("*/*", got.accept)  -- libcurl's own, not the last request's
    assert.equal("8", got["x-n"])
    got = send(nil)
    assert.is_nil(got["x-n"])
    assert.is_nil(got["x-r"])
    assert.equal("a", send({ ["x-r"] = { "a" } })["x-r"])
    h:close()
  end)

  it("perform returns a header table's problem as nil, a message, { kind, header }", function()
    local h = core.http_new()
    local o = { ca_file = certs.ca_file, timeout = 5 }
    local name = "gauth.core: http: a header name is not a token"
    local typ = "gauth.core: http: a header value is not a string, a number, an array of them or false"
    local val = "gauth.core: http: a header value contains CR, LF, NUL or another control character"
    local cases = {
      { { ["bad name"] = "v" }, "bad name", "header_name", name },
      { { [""] = "v" }, "", "header_name", name },
      { { [1] = "v" }, 1, "header_name", name },
      { { ["x-f"] = print }, "x-f", "header_type", typ },
      { { ["x-t"] = true }, "x-t", "header_type", typ },
      { { ["x-l"] = { "ok", {} } }, "x-l", "header_type", typ },
      { { ["accept-encoding"] = 1 }, "accept-encoding", "header_type", typ },
      { { authorization = "Bearer a\r\nx-injected: 1" }, "authorization", "header_value", val },
      { { ["x-l"] = { "ok", "a\0b" } }, "x-l", "header_value", val },
    }
    for _, c in ipairs(cases) do
      local res, msg, info = h:perform("GET", fake.url .. "/never", c[1], nil, o)
      assert.is_nil(res)
      assert.equal(c[4], msg)
      assert.same({ kind = c[3], header = c[2] }, info)
    end
    assert.same({}, fake:requests("/never"))
    h:close()
  end)

  it("close is idempotent and is the __gc; a closed handle raises", function()
    local h = core.http_new()
    h:close()
    h:close()
    assert.has_error(function() h:perform("GET", fake.url) end,
      "gauth.core: http: the handle is closed")
    -- The object still prints after close.
    assert.matches("^gauth%.Http", tostring(h))
    for _ = 1, 50 do core.http_new() end
    collectgarbage(); collectgarbage()
  end)

  if _VERSION == "Lua 5.4" then
    it("closes at the end of a to-be-closed variable (Lua 5.4)", function()
      local f = assert(load([[
        local core = ...
        local keep
        do
          local h <close> = core.http_new()
          keep = h
        end
        return keep
      ]]))
      local h = f(core)
      assert.has_error(function() h:perform("GET", fake.url) end,
        "gauth.core: http: the handle is closed")
    end)
  end

  it("raises on bad arguments", function()
    local h = core.http_new()
    local u = fake.url .. "/x"
    assert.has_error(function() h.perform(nil, "GET", u) end,
      "bad argument #1 to 'perform' (gauth.Http expected, got nil)")
    assert.has_error(function() h:perform("BREW", u) end, "bad argument #1 to 'perform' (invalid option 'BREW')")
    assert.has_error(function() h:perform("GET", nil) end, "bad argument #2 to 'perform' (string expected, got nil)")
    assert.has_error(function() h:perform("GET", u .. "\0x") end,
      "bad argument #2 to 'perform' (URL contains a NUL byte)")
    assert.has_error(function() h:perform("GET", u, "accept: */*") end,
      "bad argument #3 to 'perform' (table expected, got string)")
    assert.has_error(function() h:perform("POST", u, nil, {}) end,
      "bad argument #4 to 'perform' (string expected, got table)")
    assert.has_error(function() h:perform("GET", u, nil, "body") end,
      "gauth.core: http: a GET request cannot have a body")
    assert.has_error(function() h:perform("HEAD", u, nil, "body") end,
      "gauth.core: http: a HEAD request cannot have a body")
    assert.has_error(function() h:perform("GET", u, nil, nil, "opts") end,
      "bad argument #5 to 'perform' (table expected, got string)")
    assert.has_error(function() h:perform("GET", u, nil, nil, { timeout = -1 }) end,
      "gauth.core: http: opts.timeout must be between 0 and 1e9 seconds")
    assert.has_error(function() h:perform("GET", u, nil, nil, { timeout = "5" }) end,
      "gauth.core: http: opts.timeout must be a number")
    assert.has_error(function() h:perform("GET", u, nil, nil, { max_body = 1.5 }) end,
      "gauth.core: http: opts.max_body must be a non-negative integer")
    assert.has_error(function() h:perform("GET", u, nil, nil, { ca_file = 1 }) end,
      "gauth.core: http: opts.ca_file must be a string")
    assert.has_error(function() h:perform("POST", u, nil, "b", { upload_file = "/etc/hostname" }) end,
      "gauth.core: http: body and opts.upload_file are exclusive")
    assert.has_error(function() h:perform("POST", u, nil, nil, { upload_offset = 1 }) end,
      "gauth.core: http: opts.upload_offset/upload_length need opts.upload_file")
    -- Nothing reached the server, and the handle still works.
    assert.same({}, fake:requests())
    fake:script("/x", { status = 200, body = "fine" })
    local res = h:perform("GET", u, nil, nil, { ca_file = certs.ca_file })
    assert.equal(200, res.status)
    assert.equal("fine", res.body)
    h:close()
  end)

  it("returns only the last response's headers and body after redirects", function()
    fake:script("/hop1", { status = 302, headers = { Location = "/hop2", ["X-Hop"] = "1" },
                           body = "redirect body" })
    fake:script("/hop2", { status = 200, headers = { ["X-Final"] = "yes" }, body = "final" })
    local h = core.http_new()
    local res = h:perform("GET", fake.url .. "/hop1", nil, nil,
      { ca_file = certs.ca_file, follow = true })
    assert.equal(200, res.status)
    assert.equal("final", res.body)
    assert.equal("OK", res.reason)
    assert.equal("yes", res.headers["x-final"])
    assert.is_nil(res.headers["x-hop"])
    assert.is_nil(res.headers.location)
    h:close()
  end)

  it("streams an upload window from a file (upload_file, offset, length)", function()
    local path = helpers.write_file(helpers.tmpname("upload"), "0123456789" .. BINARY)
    fake:script("/up", { status = 200, body = "ok" })
    fake:script("/up", { status = 200, body = "ok" })
    local h = core.http_new()
    local res = h:perform("PUT", fake.url .. "/up", { ["content-type"] = "application/octet-stream" },
      nil, { ca_file = certs.ca_file, upload_file = path, upload_offset = 10,
             upload_length = #BINARY })
    assert.equal(200, res.status)
    res = h:perform("POST", fake.url .. "/up", nil, nil,
      { ca_file = certs.ca_file, upload_file = path, upload_offset = 4 })
    assert.equal(200, res.status)
    local reqs = fake:requests("/up")
    assert.equal("PUT", reqs[1].method)
    assert.equal(BINARY, reqs[1].body)
    assert.equal(tostring(#BINARY), reqs[1].headers["content-length"])
    assert.equal("application/octet-stream", reqs[1].headers["content-type"])
    assert.equal("POST", reqs[2].method)
    assert.equal("456789" .. BINARY, reqs[2].body)
    assert.is_nil(reqs[2].headers["content-type"])
    h:close()
  end)

  it("keeps nothing of one kind of request in the next on one handle", function()
    -- perform() sets only what changed when a request is of the same kind
    -- as the one before, and starts from libcurl's defaults otherwise:
    -- every switch here is checked by what the server received.
    local path = helpers.write_file(helpers.tmpname("kinds"), "file body")
    local h = core.http_new()
    local base = { ca_file = certs.ca_file, timeout = 5 }
    local function opts(extra)
      local o = {}
      for k, v in pairs(base) do o[k] = v end
      for k, v in pairs(extra or {}) do o[k] = v end
      return o
    end
    local seq = {
      { "GET", nil, nil, { ["Accept-Encoding"] = "gzip", ["X-First"] = "1" } },
      { "GET", nil, nil, nil },                  -- accept_encoding dropped
      { "GET", nil, nil, nil },                  -- same kind again
      { "HEAD", nil, nil, nil },
      { "GET", nil, nil, nil },                  -- a body again after HEAD
      { "POST", "payload", nil, nil },
      { "POST", "two", nil, nil },               -- same kind, another body
      { "PUT", nil, { upload_file = path }, nil },
      { "PUT", nil, { upload_file = path, upload_offset = 5 }, nil },
      { "DELETE", nil, nil, nil },
      { "PATCH", nil, nil, nil },                -- no body: Content-Length: 0
      { "GET", nil, nil, nil },
      { "GET", nil, nil, nil },
    }
    for i = 1, #seq do fake:script("/k" .. i, { status = 200, body = "answer" .. i }) end
    for i, r in ipairs(seq) do
      local res = h:perform(r[1], fake.url .. "/k" .. i, r[4], r[2], opts(r[3]))
      assert.equal(200, res.status, "request " .. i)
      assert.equal(r[1] == "HEAD" and "" or "answer" .. i, res.body, "request " .. i)
    end
    local function got(i) return fake:requests("/k" .. i)[1] end
    for i, r in ipairs(seq) do
      assert.equal(r[1], got(i).method, "request " .. i)
    end
    assert.equal("gzip", got(1).headers["accept-encoding"])
    assert.equal("1", got(1).headers["x-first"])
    for _, i in ipairs({ 2, 3, 4, 5, 12, 13 }) do
      local q = got(i)
      assert.is_nil(q.headers["accept-encoding"], "request " .. i)
      assert.is_nil(q.headers["x-first"], "request " .. i)
      assert.is_nil(q.headers["content-length"], "request " .. i)
      assert.is_nil(q.headers["content-type"], "request " .. i)
      assert.equal("", q.body, "request " .. i)
    end
    assert.equal("payload", got(6).body)
    assert.equal("two", got(7).body)
    assert.equal("3", got(7).headers["content-length"])
    assert.equal("file body", got(8).body)
    assert.equal("body", got(9).body)
    assert.equal("4", got(9).headers["content-length"])
    assert.equal("", got(10).body)
    assert.is_nil(got(10).headers["content-length"])
    assert.equal("", got(11).body)
    assert.equal("0", got(11).headers["content-length"])
    h:close()
  end)

  it("overwrites timeouts, max_body and redirects between requests of one kind", function()
    local h = core.http_new()
    local ca = certs.ca_file
    fake:script("/t1", { status = 200, body = "one" })
    fake:script("/t2", { status = 200, body = "two", delay = 0.6 })
    fake:script("/t3", { status = 200, body = "three", delay = 0.6 })
    assert.equal(200, h:perform("GET", fake.url .. "/t1", nil, nil, { ca_file = ca, timeout = 0.3 }).status)
    -- The 0.3 s limit is gone once the next request has none.
    local res = h:perform("GET", fake.url .. "/t2", nil, nil, { ca_file = ca })
    assert.equal(200, res.status)
    assert.equal("two", res.body)
    local none, _, info = h:perform("GET", fake.url .. "/t3", nil, nil, { ca_file = ca, timeout = 0.3 })
    assert.is_nil(none)
    assert.same({ curl_code = 28 }, info)
    -- max_body is set, then lifted.
    fake:script("/m1", { status = 200, body = "small" })
    fake:script("/m2", { status = 200, body = string.rep("y", 100) })
    fake:script("/m3", { status = 200, body = string.rep("z", 100) })
    assert.equal(200, h:perform("GET", fake.url .. "/m1", nil, nil, { ca_file = ca, max_body = 10 }).status)
    res = h:perform("GET", fake.url .. "/m2", nil, nil, { ca_file = ca })
    assert.equal(200, res.status)
    assert.equal(string.rep("y", 100), res.body)
    _, _, info = h:perform("GET", fake.url .. "/m3", nil, nil, { ca_file = ca, max_body = 10 })
    assert.equal("max_body", info.kind)
    -- follow, then not.
    fake:script("/r1", { status = 302, headers = { Location = "/r2" } })
    fake:script("/r2", { status = 200, body = "landed" })
    fake:script("/r3", { status = 302, headers = { Location = "/r2" } })
    res = h:perform("GET", fake.url .. "/r1", nil, nil, { ca_file = ca, follow = true })
    assert.equal(200, res.status)
    assert.equal("landed", res.body)
    assert.equal(302, h:perform("GET", fake.url .. "/r3", nil, nil, { ca_file = ca }).status)
    assert.equal(1, #fake:requests("/r2"))
    h:close()
  end)

  it("reports an upload file that is missing or shorter than the window", function()
    local h = core.http_new()
    local path = helpers.tmpname("missing")
    local res, msg, info = h:perform("POST", fake.url .. "/up", nil, nil,
      { ca_file = certs.ca_file, upload_file = path })
    assert.is_nil(res)
    assert.equal("gauth.core: http: upload_file: " .. path .. ": No such file or directory", msg)
    assert.same({ kind = "file" }, info)
    local short = helpers.write_file(helpers.tmpname("short"), "abc")
    res, msg, info = h:perform("POST", fake.url .. "/up", nil, nil,
      { ca_file = certs.ca_file, upload_file = short, upload_offset = 1, upload_length = 5 })
    assert.is_nil(res)
    assert.equal("gauth.core: http: upload_file: " .. short
      .. ": upload_offset/upload_length past the end of the file", msg)
    assert.same({ kind = "file" }, info)
    assert.same({}, fake:requests("/up"))
    h:close()
  end)

  it("appends a 2xx body to download_file and keeps an error body in memory", function()
    local path = helpers.write_file(helpers.tmpname("download"), "head:")
    fake:script("/dl", { status = 200, body = BINARY })
    fake:script("/dl", { status = 404, body = '{"error":"gone"}' })
    fake:script("/dlr", { status = 302, headers = { Location = "/dl" }, body = "redirect page" })
    fake:script("/dl", { status = 206, body = "tail" })
    local h = core.http_new()
    local res = h:perform("GET", fake.url .. "/dl", nil, nil,
      { ca_file = certs.ca_file, download_file = path })
    assert.equal(200, res.status)
    assert.equal("", res.body)
    assert.equal(#BINARY, res.written)
    res = h:perform("GET", fake.url .. "/dl", nil, nil,
      { ca_file = certs.ca_file, download_file = path })
    assert.equal(404, res.status)
    assert.equal('{"error":"gone"}', res.body)
    assert.equal(0, res.written)
    res = h:perform("GET", fake.url .. "/dlr", nil, nil,
      { ca_file = certs.ca_file, download_file = path, follow = true })
    assert.equal(206, res.status)
    assert.equal("", res.body)
    assert.equal(4, res.written)
    assert.equal("head:" .. BINARY .. "tail", helpers.read_file(path))
    h:close()
  end)

  it("reports a download_file that cannot be opened", function()
    local h = core.http_new()
    local path = helpers.tmpname("nodir") .. "/file"
    local res, msg, info = h:perform("GET", fake.url .. "/dl", nil, nil,
      { ca_file = certs.ca_file, download_file = path })
    assert.is_nil(res)
    assert.equal("gauth.core: http: download_file: " .. path .. ": No such file or directory", msg)
    assert.same({ kind = "file" }, info)
    h:close()
  end)
end)

describe("gauth.transport.curl", function()
  local fake, plain, certs, t

  lazy_setup(function()
    certs = helpers.certs()
    fake = helpers.start_fake({ tls = true })
    plain = helpers.start_fake({ tls = false })
    t = assert(curl.new({ ca_file = certs.ca_file, timeout = 10 }))
  end)
  lazy_teardown(function()
    t:close()
    fake:stop()
    plain:stop()
  end)
  before_each(function() fake:reset() end)

  describe("new", function()
    it("returns a transport with the documented defaults", function()
      local tr, err = curl.new()
      assert.is_nil(err)
      assert.equal(30, tr.timeout)
      assert.equal(10, tr.connect_timeout)
      assert.equal(64 * 1024 * 1024, tr.max_body)
      assert.is_nil(tr.ca_file)
      assert.matches("^gauth%.transport%.curl: gauth%.Http", tostring(tr))
      assert.is_true(tr:close())
      assert.equal("gauth.transport.curl: closed", tostring(tr))
    end)

    it("trusts the CA in GAUTH_CA_FILE when no ca_file is given (one CA for both transports)", function()
      fake:script("/envca", { status = 200, body = "trusted" })
      local code = ([[
        package.path = %q; package.cpath = %q
        local t = require("gauth.transport.curl").new({ timeout = 10 })
        local res, msg, err = t:request({ url = %q })
        if res then io.write("status ", res.status, " ", res.body)
        else io.write("error ", tostring(err.kind), " ", msg) end
      ]]):format(package.path, package.cpath, fake.url .. "/envca")
      local function run(env)
        local p = io.popen(env .. " " .. helpers.shell_quote(lua_interpreter()) .. " -e "
                           .. helpers.shell_quote(code) .. " 2>&1")
        local out = p:read("*a")
        p:close()
        return out
      end
      assert.equal("status 200 trusted",
        run("env -u SSL_CERT_FILE -u CURL_CA_BUNDLE GAUTH_CA_FILE=" .. helpers.shell_quote(certs.ca_file)))
      -- Without it (and an empty one is unset): the system store, which does
      -- not know the test CA; the wording both transports share.
      local out = run("env -u SSL_CERT_FILE -u CURL_CA_BUNDLE GAUTH_CA_FILE=")
      assert.matches("^error tls_verify gauth%.http: request: TLS: the certificate of "
        .. "127%.0%.0%.1:%d+ is not trusted", out)
      assert.matches("GAUTH_CA_FILE (or ca_file) for libcurl", out, 1, true)
      assert.equal(1, #fake:requests("/envca"))
    end)

    it("raises on bad options", function()
      assert.has_error(function() curl.new("x") end, "gauth.transport.curl: opts must be a table")
      assert.has_error(function() curl.new({ timeout = -1 }) end,
        "gauth.transport.curl: timeout must be a non-negative number")
      assert.has_error(function() curl.new({ connect_timeout = "10" }) end,
        "gauth.transport.curl: connect_timeout must be a non-negative number")
      assert.has_error(function() curl.new({ max_body = 0.5 }) end,
        "gauth.transport.curl: max_body must be a non-negative integer")
      assert.has_error(function() curl.new({ ca_file = true }) end, "gauth.transport.curl: ca_file must be a string")
    end)
  end)

  describe("request", function()
    for _, method in ipairs({ "GET", "POST", "PUT", "PATCH", "DELETE" }) do
      it("sends " .. method .. " over verified TLS", function()
        fake:script("/m", { status = 200, headers = { ["X-Method"] = method },
                            body = "answer to " .. method })
        local body = (method ~= "GET" and method ~= "DELETE") and ('{"m":"' .. method .. '"}') or nil
        local res, err = t:request({ method = method, url = fake.url .. "/m?a=1&b=%2F",
          headers = { ["content-type"] = body and "application/json" or nil }, body = body })
        assert.is_nil(err)
        assert.equal(200, res.status)
        assert.equal("OK", res.reason)
        assert.equal("answer to " .. method, res.body)
        assert.equal(method, res.headers["x-method"])
        local r = fake:requests("/m")[1]
        assert.equal(method, r.method)
        assert.equal("a=1&b=%2F", r.query)
        assert.equal(body or "", r.body)
        if body then
          assert.equal("application/json", r.headers["content-type"])
          assert.equal(tostring(#body), r.headers["content-length"])
        end
        assert.is_nil(r.headers.expect)
      end)
    end

    it("sends an empty POST/PUT/PATCH with Content-Length: 0", function()
      for _, method in ipairs({ "POST", "PUT", "PATCH" }) do
        fake:script("/empty", { status = 204 })
        local res = assert(t:request({ method = method, url = fake.url .. "/empty" }))
        assert.equal(204, res.status)
        assert.equal("", res.body)
      end
      for i, r in ipairs(fake:requests("/empty")) do
        assert.equal(({ "POST", "PUT", "PATCH" })[i], r.method)
        assert.equal("0", r.headers["content-length"])
        assert.is_nil(r.headers["content-type"])
      end
    end)

    it("sends HEAD and gets headers without a body", function()
      fake:script("/head", { status = 200, body = "not sent" })
      local res, err = t:request({ method = "HEAD", url = fake.url .. "/head" })
      assert.is_nil(err)
      assert.equal(200, res.status)
      assert.equal("", res.body)
      assert.equal("8", res.headers["content-length"])
      assert.equal("HEAD", fake:requests("/head")[1].method)
      -- The handle is fine for a GET with a body right after a HEAD.
      fake:script("/head", { status = 200, body = "now sent" })
      res = assert(t:request({ url = fake.url .. "/head" }))
      assert.equal("now sent", res.body)
    end)

    it("defaults to GET", function()
      fake:script("/d", { status = 200, body = "x" })
      assert.equal(200, assert(t:request({ url = fake.url .. "/d" })).status)
      assert.equal("GET", fake:requests("/d")[1].method)
    end)

    it("does not leak a previous request's body or method into the next", function()
      fake:script("/a", { status = 200 })
      fake:script("/b", { status = 200 })
      assert(t:request({ method = "PUT", url = fake.url .. "/a", body = "payload" }))
      assert(t:request({ url = fake.url .. "/b" }))
      local r = fake:requests("/b")[1]
      assert.equal("GET", r.method)
      assert.equal("", r.body)
      assert.is_nil(r.headers["content-length"])
    end)

    it("round-trips headers: lower-case names, repeated values joined", function()
      fake:script("/h", { status = 200, headers = {
        ["Set-Cookie"] = { "a=1", "b=2" }, ["X-Mixed-Case"] = "V  ",
        ["X-Empty"] = "" } })
      local res = assert(t:request({ url = fake.url .. "/h", headers = {
        ["x-goog-api-client"] = "gl-lua/5.4 gauth/0.1.0",
        ["user-agent"] = "gauth-spec/1",
        ["x-repeated"] = { "one", "two" },
        ["x-number"] = 42,
        ["x-left-out"] = false,
      } }))
      assert.equal("a=1, b=2", res.headers["set-cookie"])
      assert.equal("V", res.headers["x-mixed-case"])
      assert.equal("", res.headers["x-empty"])
      assert.equal("ESF", res.headers.server)
      local h = fake:requests("/h")[1].headers
      assert.equal("gl-lua/5.4 gauth/0.1.0", h["x-goog-api-client"])
      assert.equal("gauth-spec/1", h["user-agent"])
      assert.equal("one, two", h["x-repeated"])
      assert.equal("42", h["x-number"])
      assert.is_nil(h["x-left-out"])
    end)

    it("round-trips a binary body both ways", function()
      fake:script("/bin", { status = 200, body = BINARY })
      local res = assert(t:request({ method = "POST", url = fake.url .. "/bin",
        headers = { ["content-type"] = "application/octet-stream",
                    ["content-length"] = "3" }, body = BINARY }))
      assert.equal(BINARY, res.body)
      assert.equal(#BINARY, #res.body)
      local r = fake:requests("/bin")[1]
      assert.equal(BINARY, r.body)
      assert.equal(tostring(#BINARY), r.headers["content-length"])
      assert.equal("application/octet-stream", r.headers["content-type"])
    end)

    it("keeps the connection alive across requests", function()
      local tr = assert(curl.new({ ca_file = certs.ca_file }))
      fake:script("/k", { status = 200, body = "1" })
      fake:script("/k", { status = 200, body = "2" })
      fake:script("/k", { status = 200, body = "3" })
      local r1 = assert(tr:request({ url = fake.url .. "/k" }))
      local r2 = assert(tr:request({ method = "POST", url = fake.url .. "/k", body = "x" }))
      local r3 = assert(tr:request({ url = fake.url .. "/k" }))
      assert.equal(1, r1.new_connections)
      assert.equal(0, r2.new_connections)
      assert.equal(0, r3.new_connections)
      local reqs = fake:requests("/k")
      assert.equal(3, #reqs)
      assert.equal(reqs[1].conn, reqs[2].conn)
      assert.equal(reqs[1].conn, reqs[3].conn)
      tr:close()
    end)

    it("reconnects after the server closed the kept-alive connection", function()
      local tr = assert(curl.new({ ca_file = certs.ca_file }))
      fake:script("/k", { status = 200, headers = { Connection = "close" }, body = "1" })
      fake:script("/k", { status = 200, body = "2" })
      assert.equal("1", assert(tr:request({ url = fake.url .. "/k" })).body)
      local r2 = assert(tr:request({ url = fake.url .. "/k" }))
      assert.equal("2", r2.body)
      assert.equal(1, r2.new_connections)
      local reqs = fake:requests("/k")
      assert.are_not.equal(reqs[1].conn, reqs[2].conn)
      tr:close()
    end)

    it("times out on a server that never answers", function()
      fake:script("/hang", { hang = true })
      local t0 = socket.gettime()
      local res, msg, err = t:request({ url = fake.url .. "/hang", timeout = 0.5 })
      local dt = socket.gettime() - t0
      assert.is_nil(res)
      helpers.assert_failure(msg, err)
      assert.is_true(errors.is(err))
      assert.equal("http", err.module)
      assert.equal("request", err.step)
      assert.equal(28, err.curl_code)
      assert.is_true(err.retryable)
      assert.matches("^gauth%.http: request: Timeout was reached %(28%)", tostring(err))
      assert.equal(1, #fake:requests("/hang"))  -- it had the request and held it
      assert.is_true(dt < 5, "took " .. dt)        -- hang guard: ten times the timeout
      -- The transport is usable again afterwards.
      fake:script("/ok", { status = 200, body = "ok" })
      assert.equal("ok", assert(t:request({ url = fake.url .. "/ok" })).body)
    end)

    it("reports a refused connection as retryable", function()
      local port = closed_port()
      local res, msg, err = t:request({ url = "http://127.0.0.1:" .. port .. "/",
        headers = { authorization = "Bearer SECRET-TOKEN" }, method = "POST",
        body = "assertion=SECRET-BODY" })
      assert.is_nil(res)
      helpers.assert_failure(msg, err)
      assert.equal(7, err.curl_code)
      assert.is_true(err.retryable)
      assert.matches("^gauth%.http: request: Couldn't connect to server %(7%)", tostring(err))
      -- Never a secret in the message.
      assert.is_nil(tostring(err):find("SECRET", 1, true))
    end)

    it("reports a dropped connection and a truncated body as retryable", function()
      -- A fresh transport: on a reused connection that the server closes
      -- without a word, libcurl itself retries once on a new one.
      local tr = assert(curl.new({ ca_file = certs.ca_file }))
      fake:script("/drop", { drop = true })
      local res, msg, err = tr:request({ url = fake.url .. "/drop" })
      assert.is_nil(res)
      helpers.assert_failure(msg, err)
      assert.equal(52, err.curl_code)
      assert.is_true(err.retryable)
      fake:script("/trunc", { status = 200, body = string.rep("x", 1000), truncate = true })
      res, msg, err = tr:request({ url = fake.url .. "/trunc" })
      assert.is_nil(res)
      helpers.assert_failure(msg, err)
      assert.equal(18, err.curl_code)
      assert.is_true(err.retryable)
      tr:close()
    end)

    it("refuses a certificate from another CA before sending anything", function()
      local untrusted = helpers.start_fake({ untrusted = true })
      local res, msg, err = t:request({ method = "POST", url = untrusted.url .. "/token",
        body = "assertion=secret" })
      local reqs = untrusted:requests()
      untrusted:stop()
      assert.is_nil(res)
      helpers.assert_failure(msg, err)
      assert.equal(60, err.curl_code)
      assert.is_false(err.retryable)
      assert.matches("SSL", tostring(err))
      assert.same({}, reqs)
    end)

    it("refuses a certificate for another host name", function()
      local wrong = helpers.start_fake({ wronghost = true })
      local res, msg, err = t:request({ url = wrong.url .. "/" })
      local reqs = wrong:requests()
      wrong:stop()
      assert.is_nil(res)
      helpers.assert_failure(msg, err)
      assert.equal(60, err.curl_code)
      assert.is_false(err.retryable)
      assert.same({}, reqs)
    end)

    it("does not trust the test CA without ca_file (system store)", function()
      local tr = assert(curl.new())
      local res, msg, err = tr:request({ url = fake.url .. "/" })
      tr:close()
      assert.is_nil(res)
      helpers.assert_failure(msg, err)
      assert.equal(60, err.curl_code)
      assert.same({}, fake:requests())
    end)

    it("takes the CA bundle from SSL_CERT_FILE, then CURL_CA_BUNDLE", function()
      fake:script("/env", { status = 200, body = "env ok" })
      fake:script("/env", { status = 200, body = "env ok" })
      local code = ([[
        package.path = %q; package.cpath = %q
        local t = require("gauth.transport.curl").new()
        local res, err = t:request({ url = %q })
        io.write(res and res.body or tostring(err))
      ]]):format(package.path, package.cpath, fake.url .. "/env")
      local lua = lua_interpreter()
      local q = helpers.shell_quote
      local env = "env -u SSL_CERT_FILE -u CURL_CA_BUNDLE "
      local ok, out = helpers.sh(env .. "SSL_CERT_FILE=" .. q(certs.ca_file)
        .. " CURL_CA_BUNDLE=" .. q(certs.other_ca_file) .. " " .. lua .. " -e " .. q(code))
      assert.is_true(ok, out)
      assert.equal("env ok", out)
      ok, out = helpers.sh(env .. "CURL_CA_BUNDLE=" .. q(certs.ca_file) .. " "
        .. lua .. " -e " .. q(code))
      assert.is_true(ok, out)
      assert.equal("env ok", out)
      ok, out = helpers.sh(env .. "SSL_CERT_FILE=" .. q(certs.other_ca_file) .. " "
        .. lua .. " -e " .. q(code))
      assert.is_true(ok, out)
      assert.matches("%(60%)", out)
      assert.equal(2, #fake:requests("/env"))
    end)

    it("never sends loopback traffic through a proxy from the environment", function()
      -- The proxy is a closed port: a request that went through it would
      -- fail to connect; a direct one reaches the fake.
      fake:script("/direct", { status = 200, body = "direct" })
      local code = ([[
        package.path = %q; package.cpath = %q
        local curl = require("gauth.transport.curl")
        local t = curl.new({ ca_file = %q })
        local res, err = t:request({ url = %q })
        io.write(res and res.body or tostring(err))
      ]]):format(package.path, package.cpath, certs.ca_file, fake.url .. "/direct")
      local proxy = "http://127.0.0.1:" .. closed_port()
      local q = helpers.shell_quote
      local ok, out = helpers.sh("env -u no_proxy NO_PROXY=.example.com http_proxy=" .. proxy
        .. " https_proxy=" .. proxy .. " HTTPS_PROXY=" .. proxy .. " ALL_PROXY=" .. proxy
        .. " " .. lua_interpreter() .. " -e " .. q(code))
      assert.is_true(ok, out)
      -- the user's own NO_PROXY list does not name loopback: direct all the same
      assert.equal("direct", out)
      assert.equal(1, #fake:requests("/direct"))
    end)

    it("never sends 127.0.0.2, ::1 or localhost through a proxy (a logging proxy gets nothing)", function()
      -- The proxy is a raw listener that logs what it receives (and answers
      -- 200): a loopback request that went through it would be logged there.
      local proxy = helpers.start_raw_listener()
      local targets = { helpers.start_raw_listener({ host = "127.0.0.2" }),
                        helpers.start_raw_listener({ host = "::1" }),
                        helpers.start_raw_listener({ host = "127.0.0.1" }) }
      local urls = { targets[1].url .. "/two", targets[2].url .. "/six",
                     "http://localhost:" .. targets[3].port .. "/name",
                     -- a host that is not loopback: through the proxy (so the
                     -- proxy is honoured at all), never resolved
                     "http://gauth-proxied.invalid/far" }
      local code = ([[
        package.path = %q; package.cpath = %q
        local t = require("gauth.transport.curl").new({ timeout = 10 })
        for _, u in ipairs({ %q, %q, %q, %q }) do
          local res, err = t:request({ url = u })
          io.write(res and res.status or tostring(err), "\n")
        end
      ]]):format(package.path, package.cpath, urls[1], urls[2], urls[3], urls[4])
      local p = proxy.url
      local q = helpers.shell_quote
      local ok, out = helpers.sh("env -u no_proxy -u NO_PROXY http_proxy=" .. p
        .. " https_proxy=" .. p .. " HTTP_PROXY=" .. p .. " HTTPS_PROXY=" .. p
        .. " ALL_PROXY=" .. p .. " " .. lua_interpreter() .. " -e " .. q(code))
      local got = proxy:request_lines()
      local direct = {}
      for i, l in ipairs(targets) do direct[i] = l:request_lines(); l:stop() end
      proxy:stop()
      assert.is_true(ok, out)
      assert.equal("200\n200\n200\n200\n", out)
      assert.same({ "GET http://gauth-proxied.invalid/far HTTP/1.1" }, got)
      assert.same({ { "GET /two HTTP/1.1" }, { "GET /six HTTP/1.1" }, { "GET /name HTTP/1.1" } },
                  direct)
    end)

    it("enforces max_body on a declared and on a decoded length", function()
      fake:script("/big", { status = 200, body = string.rep("a", 5000) })
      local res, msg, err = t:request({ url = fake.url .. "/big", max_body = 1000 })
      assert.is_nil(res)
      helpers.assert_failure(msg, err, "http", "request")
      assert.is_true(err.too_large)
      assert.equal("max_body", err.kind)
      assert.is_false(err.retryable)
      assert.matches("larger than max_body %(1000 bytes%)", tostring(err))
      -- gzip of 100000 zeros is ~100 bytes on the wire; decoded it is not.
      local raw = helpers.tmpname("zeros")
      helpers.write_file(raw, string.rep("\0", 100000))
      assert(helpers.sh("gzip -9 -n " .. helpers.shell_quote(raw)))
      local gz = assert(helpers.read_file(raw .. ".gz"))
      assert.is_true(#gz < 1000)
      fake:script("/gz", { status = 200, headers = { ["Content-Encoding"] = "gzip" }, body = gz })
      res, msg, err = t:request({ url = fake.url .. "/gz", max_body = 1000,
                             headers = { ["accept-encoding"] = "gzip" } })
      assert.is_nil(res)
      helpers.assert_failure(msg, err)
      assert.is_true(err.too_large)
      assert.equal(23, err.curl_code)
      -- Within the cap, the body comes back decoded.
      fake:script("/gz", { status = 200, headers = { ["Content-Encoding"] = "gzip" }, body = gz })
      res = assert(t:request({ url = fake.url .. "/gz",
                               headers = { ["Accept-Encoding"] = "gzip" } }))
      assert.equal(100000, #res.body)
      assert.equal(string.rep("\0", 100000), res.body)
      assert.equal("gzip", res.decoded)
      assert.is_nil(res.headers["content-encoding"])
      assert.is_nil(res.headers["content-length"])
      assert.equal("gzip", fake:requests("/gz")[2].headers["accept-encoding"])
      -- Without accept-encoding nothing is asked for or decoded.
      fake:script("/gz", { status = 200, headers = { ["Content-Encoding"] = "gzip" }, body = gz })
      res = assert(t:request({ url = fake.url .. "/gz" }))
      assert.equal(gz, res.body)
      assert.equal("gzip", res.headers["content-encoding"])
      assert.is_nil(fake:requests("/gz")[3].headers["accept-encoding"])
    end)

    it("does not follow redirects unless asked", function()
      fake:script("/r", { status = 302, headers = { Location = "/t" }, body = "moved" })
      local res = assert(t:request({ url = fake.url .. "/r" }))
      assert.equal(302, res.status)
      assert.equal("/t", res.headers.location)
      assert.equal("moved", res.body)
      fake:script("/r", { status = 302, headers = { Location = "/t" } })
      fake:script("/t", { status = 200, body = "there" })
      res = assert(t:request({ url = fake.url .. "/r", follow_redirects = true }))
      assert.equal(200, res.status)
      assert.equal("there", res.body)
    end)

    it("never follows a redirect from https to http", function()
      fake:script("/down", { status = 302, headers = { Location = plain.url .. "/x" } })
      local res, msg, err = t:request({ url = fake.url .. "/down", follow_redirects = true })
      assert.is_nil(res)
      helpers.assert_failure(msg, err)
      assert.equal(1, err.curl_code)
      assert.same({}, plain:requests())
    end)

    it("speaks plain http to loopback", function()
      plain:script("/p", { status = 200, body = "plain" })
      local res, err = t:request({ method = "POST", url = plain.url .. "/p", body = "b" })
      assert.is_nil(err)
      assert.equal(200, res.status)
      assert.equal("plain", res.body)
      assert.equal("b", plain:requests("/p")[1].body)
    end)

    it("refuses other protocols", function()
      local res, msg, err = t:request({ url = "file:///etc/passwd" })
      assert.is_nil(res)
      helpers.assert_failure(msg, err)
      assert.equal(1, err.curl_code)
      assert.is_false(err.retryable)
    end)

    it("returns an error, not the value, for a header value with CR or LF", function()
      local res, msg, err = t:request({ url = fake.url .. "/", headers = {
        authorization = "Bearer abc\r\nx-injected: 1" } })
      assert.is_nil(res)
      helpers.assert_failure(msg, err)
      assert.equal("header_value", err.kind)
      assert.is_true(errors.is(err))
      assert.is_false(err.retryable)
      assert.equal("gauth.http: request: header authorization has a value with CR, LF, NUL or"
                   .. " another control character", tostring(err))
      res, msg, err = t:request({ url = fake.url .. "/", headers = { ["x-list"] = { "ok", "a\0b" } } })
      assert.is_nil(res)
      helpers.assert_failure(msg, err)
      assert.equal("gauth.http: request: header x-list has a value with CR, LF, NUL or"
                   .. " another control character", tostring(err))
      assert.same({}, fake:requests())
    end)

    it("refuses an accept-encoding value with CR/LF (libcurl would send it as it is), sending nothing", function()
      for _, v in ipairs({ "gzip\r\nx-injected: 1", "gzip\0", "gzip\1" }) do
        local res, e2, e3 = t:request({ url = fake.url .. "/ae", headers = { ["accept-encoding"] = v } })
        assert.is_nil(res)
        local err = errors.of(e2, e3)
        assert.equal(tostring(err), tostring(e2))
        assert.equal("gauth.http: request: header accept-encoding has a value with CR, LF, NUL or"
                     .. " another control character", tostring(err))
        assert.is_false(err.retryable)
        assert.equal("accept-encoding", err.header)
      end
      assert.same({}, fake:requests())
      -- a tab is a valid header character
      local res = t:request({ url = fake.url .. "/ae", headers = { ["accept-encoding"] = "gzip,\tdeflate" } })
      assert.equal(404, res.status)
    end)

    it("passes streaming options through", function()
      local src = helpers.write_file(helpers.tmpname("src"), BINARY)
      local dst = helpers.tmpname("dst")
      fake:script("/s", { status = 200, body = "stored" })
      local res = assert(t:request({ method = "PUT", url = fake.url .. "/s", upload_file = src }))
      assert.equal("stored", res.body)
      assert.equal(BINARY, fake:requests("/s")[1].body)
      fake:script("/s", { status = 200, body = BINARY })
      res = assert(t:request({ url = fake.url .. "/s", download_file = dst }))
      assert.equal("", res.body)
      assert.equal(#BINARY, res.written)
      assert.equal(BINARY, helpers.read_file(dst))
    end)

    it("raises on bad arguments", function()
      assert.has_error(function() t:request() end, "gauth.transport.curl: request must be a table")
      assert.has_error(function() t:request({ method = "BREW", url = fake.url }) end,
        "gauth.transport.curl: unsupported method BREW")
      assert.has_error(function() t:request({ method = "get", url = fake.url }) end,
        "gauth.transport.curl: unsupported method get")
      assert.has_error(function() t:request({ url = 42 }) end, "gauth.transport.curl: url must be a string")
      assert.has_error(function() t:request({ url = fake.url, body = {} }) end,
        "gauth.transport.curl: body must be a string")
      assert.has_error(function() t:request({ url = fake.url, headers = "x" }) end,
        "gauth.transport.curl: headers must be a table")
      assert.has_error(function() t:request({ url = fake.url, headers = { ["bad name"] = "v" } }) end,
        "gauth.transport.curl: bad header name bad name")
      assert.has_error(function() t:request({ url = fake.url, headers = { [1] = "v" } }) end,
        "gauth.transport.curl: bad header name 1")
      assert.has_error(function() t:request({ url = fake.url, headers = { x = {} , y = print } }) end,
        "gauth.transport.curl: bad value for header y")
      assert.has_error(function() t:request({ url = fake.url, timeout = -1 }) end,
        "gauth.transport.curl: timeout must be a non-negative number")
      assert.has_error(function() t:request({ url = fake.url, max_body = "1" }) end,
        "gauth.transport.curl: max_body must be a non-negative integer")
      assert.same({}, fake:requests())
    end)

    it("raises after close", function()
      local tr = assert(curl.new({ ca_file = certs.ca_file }))
      assert.is_true(tr:close())
      assert.is_true(tr:close())
      assert.has_error(function() tr:request({ url = fake.url }) end,
        "gauth.transport.curl: the transport is closed")
    end)
  end)
end)

describe("gauth.http", function()
  it("new returns the libcurl transport outside nginx", function()
    local t, err = ghttp.new({ timeout = 3 })
    assert.is_nil(err)
    assert.equal(curl, getmetatable(t).__index)
    assert.equal(3, t.timeout)
    t:close()
  end)

  it("new raises on bad options like the transport", function()
    assert.has_error(function() ghttp.new({ timeout = "x" }) end,
      "gauth.transport.curl: timeout must be a non-negative number")
  end)

  it("default returns one shared transport; set_default replaces it", function()
    local a = assert(ghttp.default())
    assert.equal(a, ghttp.default())
    local mine = assert(curl.new({ timeout = 1 }))
    ghttp.set_default(mine)
    assert.equal(mine, ghttp.default())
    ghttp.set_default(nil)
    local b = assert(ghttp.default())
    assert.are_not.equal(mine, b)
    assert.has_error(function() ghttp.set_default({}) end, "gauth.http: set_default needs a transport (with :request)")
    mine:close()
  end)
end)
