-- gauth.batch against spec/support/fake_upload.py over TLS on loopback: the
-- fake parses each batch with Python's email package, answers every
-- embedded request and returns multipart/mixed; batch URIs are compared
-- with googleapiclient 1.7.12's for every Discovery fixture (spec/fixtures).

local helpers = require "helpers"
local fake_upload = require "support.fake_upload"
local cjson = require "cjson.safe"

local discovery = require "gauth.discovery"
local batch = require "gauth.batch"
local media = require "gauth.media"
local testing = require "gauth.testing"

describe("gauth.batch", function()
  local DRIVE = helpers.discovery_doc("drive.v3.json")
  local STORAGE = helpers.discovery_doc("storage.v1.json")

  local srv, http, creds, drive

  local function build(doc, c, prefix)
    return assert(discovery.build_from_document(doc, {
      api_endpoint = srv.url .. (prefix or "/drive/v3/"), http = http, credentials = c or creds }))
  end

  local function objects(...)
    for _, id in ipairs({ ... }) do
      srv:put_object{ id = id, data = "data of " .. id, mimeType = "text/plain", name = "name-" .. id }
    end
  end

  lazy_setup(function()
    srv = fake_upload.start{ tls = true }
    http = srv:transport()
  end)

  lazy_teardown(function()
    if srv then srv:stop() end  -- closes http too
  end)

  before_each(function()
    srv:reset()
    creds = testing.credentials{ token = { "tok-1", "tok-2", "tok-3" } }
    drive = build(DRIVE)
  end)

  it("posts to rootUrl + batchPath of each API, as googleapiclient does (compared with it)", function()
    local dir = helpers.discovery_dir()
    local ok, list = helpers.sh("ls " .. helpers.shell_quote(dir) .. "/*.json")
    assert(ok, list)
    local cases, svcs = {}, {}
    for path in list:gmatch("[^\n]+") do
      if not path:match("directory_list") then
        local doc = assert(helpers.read_file(path))
        local d = cjson.decode(doc)
        if d and d.rootUrl then
          cases[#cases + 1] = { doc = path, batch_uri = true }
          svcs[#svcs + 1] = { assert(discovery.build_from_document(doc)), d }
        end
      end
    end
    local input = helpers.write_file(helpers.tmpname("ref-batch", ".json"), assert(cjson.encode(cases)))
    local rok, out = helpers.sh(helpers.python .. " " .. helpers.support_dir .. "/ref_media.py " .. input)
    assert(rok, out)
    local ref = assert(cjson.decode(out))
    assert.is_true(#cases >= 10)
    for i, c in ipairs(svcs) do
      local b = c[1]:new_batch_http_request()
      assert.equal(ref[i].batch_uri, b.batch_uri, cases[i].doc)
      assert.not_equal("https://www.googleapis.com/batch", b.batch_uri)
      assert.equal(c[2].rootUrl .. (c[2].batchPath or "batch"), b.batch_uri)
    end
    -- an api_endpoint moves it to that host, keeping the path
    assert.equal(srv.url .. "/batch/drive/v3", drive:new_batch_http_request().batch_uri)
    local custom = drive:new_batch_http_request{ batch_uri = "https://example.test/b" }
    assert.equal("https://example.test/b", custom.batch_uri)
  end)

  it("sends one multipart/mixed request whose parts Python's email package reads", function()
    objects("a", "b")
    local got = {}
    local b = drive:new_batch_http_request{ callback = function(id, resp, msg, err)
      got[#got + 1] = { "batch", id, resp, err, msg }
    end }
    assert(b:add(drive:files():get{ fileId = "a", fields = "id,name" }, function(id, resp, msg, err)
      got[#got + 1] = { "own", id, resp, err, msg }
    end))
    assert(b:add(drive:files():update{ fileId = "b", body = { name = "renamed", starred = true } },
                 nil, "upd/b x"))
    assert(b:add(drive:files():get{ fileId = "missing" }))
    assert.equal(3, b:count())
    assert.is_true(b:execute())

    local r = srv:requests{ kind = "batch" }
    assert.equal(1, #r)
    r = r[1]
    assert.equal("POST", r.method)
    assert.equal("/batch/drive/v3", r.path)
    assert.matches('^multipart/mixed; boundary="[^"]+"$', r.headers["content-type"])
    assert.equal("Bearer tok-1", r.headers.authorization)
    local parts = r.batch
    assert.equal(3, #parts)
    for _, p in ipairs(parts) do
      assert.equal("application/http", p.content_type)
      assert.equal("binary", p.headers["content-transfer-encoding"])
      assert.matches("^<.+>$", p.content_id)
      assert.equal("Bearer tok-1", p.req_headers.authorization)
      assert.equal(srv.host or srv.url:match("^https://([^/]+)"), p.req_headers.host)
      assert.is_nil(p.req_headers["accept-encoding"])
    end
    assert.equal("GET", parts[1].method)
    assert.equal("/drive/v3/files/a", parts[1].path)
    assert.equal("fields=id%2Cname&alt=json", parts[1].query)
    assert.equal("PATCH", parts[2].method)
    assert.equal("application/json", parts[2].req_headers["content-type"])
    assert.same({ name = "renamed", starred = true }, cjson.decode(parts[2].body))
    assert.equal(tostring(#parts[2].body), parts[2].req_headers["content-length"])
    assert.matches(" %+ upd/b%%20x>$", parts[2].content_id)

    -- per request: its own callback, then the batch's; in the order added
    assert.equal(4, #got)
    assert.same({ "own", "1" }, { got[1][1], got[1][2] })
    assert.equal("a", got[1][3].id)
    assert.is_nil(got[1][4])
    assert.same({ "batch", "1" }, { got[2][1], got[2][2] })
    assert.equal(got[1][3], got[2][3])
    assert.equal("upd/b x", got[3][2])
    assert.equal("renamed", got[3][3].name)
    assert.equal("2", got[4][2])
    assert.is_nil(got[4][3])
    local err = got[4][4]
    helpers.assert_failure(got[4][5], err)
    assert.is_nil(got[1][5])
    assert.equal("batch", err.module)
    assert.equal("drive.files.get", err.step)
    assert.equal(404, err.status)
    assert.equal("notFound", err.reason)
    assert.equal("2", err.request_id)
    assert.equal("File not found: missing.", err.message)
    -- the update went through
    assert.equal("renamed", srv:object("b").name)
  end)

  it("matches answers to requests by Content-ID, whatever their order", function()
    objects("a", "b", "c")
    srv:config{ batch_reverse = true }
    local seen = {}
    local b = drive:new_batch_http_request{ callback = function(id, resp) seen[#seen + 1] = id .. "=" .. resp.id end }
    for _, id in ipairs({ "a", "b", "c" }) do b:add(drive:files():get{ fileId = id }, nil, "r-" .. id) end
    assert(b:execute())
    assert.same({ "r-a=a", "r-b=b", "r-c=c" }, seen)
  end)

  it("resends the parts that answer 401 once, after dropping their credentials' token", function()
    objects("a", "b", "c")
    -- drive's parts carry a good token; storage's a rejected one at first
    local gcs_creds = testing.credentials{ token = { "bad-1", "good-2" } }
    local gcs = build(STORAGE, gcs_creds, "/storage/v1/")
    srv:config{ reject_tokens = { "bad-1" } }
    local results = {}
    local b = drive:new_batch_http_request{ callback = function(id, resp, msg)
      results[id] = resp and resp.id or msg
    end }
    b:add(drive:files():get{ fileId = "a" }, nil, "d-a")
    b:add(gcs:objects():get{ bucket = "bkt", object = "b" }, nil, "g-b")
    b:add(drive:files():get{ fileId = "c" }, nil, "d-c")
    assert(b:execute())
    assert.same({ ["d-a"] = "a", ["g-b"] = "b", ["d-c"] = "c" }, results)
    local r = srv:requests{ kind = "batch" }
    assert.equal(2, #r)
    assert.equal(3, #r[1].batch)
    assert.equal(401, r[1].batch[2].status)
    assert.equal("Bearer bad-1", r[1].batch[2].req_headers.authorization)
    assert.equal(1, #r[2].batch)
    assert.equal("Bearer good-2", r[2].batch[1].req_headers.authorization)
    assert.equal("/storage/v1/b/bkt/o/b", r[2].batch[1].path)
    assert.equal(1, gcs_creds.invalidations)
    assert.equal(0, creds.invalidations)
  end)

  it("gives the callback the 401 when the part fails again after the refresh", function()
    objects("b")
    local gcs_creds = testing.credentials{ token = { "bad-1", "bad-2" } }
    local gcs = build(STORAGE, gcs_creds, "/storage/v1/")
    srv:config{ reject_tokens = { "bad-1", "bad-2" } }
    local outcome = {}
    local b = drive:new_batch_http_request()
    b:add(gcs:objects():get{ bucket = "bkt", object = "b" },
          function(id, resp, msg, err) outcome = { id, resp, msg, err } end)
    assert(b:execute())
    assert.equal("1", outcome[1])
    assert.is_nil(outcome[2])
    helpers.assert_failure(outcome[3], outcome[4], "batch", "storage.objects.get")
    assert.equal(401, outcome[4].status)
    assert.equal("authError", outcome[4].reason)
    assert.is_false(outcome[4].retryable)
    local r = srv:requests{ kind = "batch" }
    assert.equal(2, #r)  -- resent once, not more
    assert.equal("Bearer bad-2", r[2].batch[1].req_headers.authorization)
    assert.equal(1, gcs_creds.invalidations)
  end)

  it("refreshes the token of the batch request itself after a 401", function()
    objects("a")
    srv:config{ reject_tokens = { "tok-1" } }
    local got
    local b = drive:new_batch_http_request()
    b:add(drive:files():get{ fileId = "a" }, function(_, resp) got = resp end)
    assert(b:execute())
    assert.equal("a", got.id)
    -- POST refused (tok-1), POST with tok-2 whose part still carried tok-1
    -- (made before), the part resent with tok-3
    local r = srv:requests{ kind = "batch" }
    assert.equal(3, #r)
    assert.equal("Bearer tok-2", r[2].headers.authorization)
    assert.equal("Bearer tok-3", r[3].batch[1].req_headers.authorization)
  end)

  it("returns nil, err when the batch request itself fails; no callback runs", function()
    objects("a")
    srv:inject{ { on = "batch", status = 400, json = { error = { code = 400,
      message = "Too many requests in batch", status = "INVALID_ARGUMENT",
      errors = { { reason = "badRequest", message = "Too many requests in batch" } } } } } }
    local called = false
    local b = drive:new_batch_http_request{ callback = function() called = true end }
    b:add(drive:files():get{ fileId = "a" })
    local ok, msg, err = b:execute()
    assert.is_nil(ok)
    helpers.assert_failure(msg, err)
    assert.equal("batch", err.module)
    assert.equal("execute", err.step)
    assert.equal(400, err.status)
    assert.equal("badRequest", err.reason)
    assert.equal("Too many requests in batch", err.message)
    assert.is_false(called)
    -- a 503 is retried only when asked
    srv:inject{ { on = "batch", status = 503 } }
    local delays = {}
    assert(b:execute{ num_retries = 1, sleep = function(d) delays[#delays + 1] = d end })
    assert.is_true(called)
    assert.equal(1, #delays)
  end)

  it("refuses a part whose Content-Type or other header has CR/LF (injection), sending nothing", function()
    objects("a")
    local called = false
    local b = drive:new_batch_http_request{ callback = function() called = true end }
    local upd = drive:files():update{ fileId = "a", body = { name = "x" } }
    upd.headers["content-type"] = "application/json\r\nX-Injected: 1\r\n\r\n{}"
    assert(b:add(upd, nil, "evil"))
    local ok, msg, err = b:execute()
    assert.is_nil(ok)
    assert.equal("gauth.batch: execute: request evil: header content-type has a value with"
                 .. " CR, LF, NUL or another control character", msg)
    assert.equal("batch", err.module)
    assert.equal("execute", err.step)
    assert.equal("evil", err.request_id)
    assert.equal("content-type", err.header)
    assert.is_false(err.retryable)
    -- any other header of a part, NUL and other controls included
    b = drive:new_batch_http_request{ callback = function() called = true end }
    local get = drive:files():get{ fileId = "a" }
    get.headers["x-extra"] = "a\0b"
    assert(b:add(get, nil, "nul"))
    ok, msg, err = b:execute()
    assert.is_nil(ok)
    assert.equal("gauth.batch: execute: request nul: header x-extra has a value with"
                 .. " CR, LF, NUL or another control character", msg)
    assert.equal("x-extra", err.header)
    assert.is_false(called)
    assert.equal(0, #srv:requests())
  end)

  it("refuses to send credentials to an http:// host that is not loopback, before any connection", function()
    -- "gauth-remote.localhost" is not a loopback name to gauth, yet libcurl
    -- resolves every *.localhost name to loopback itself: a batch that got
    -- past the check would reach this listener (the control below).
    local l = helpers.start_raw_listener()
    local sent = {}
    local real = assert(require("gauth.http").new())
    local recording = { request = function(_, req)
      sent[#sent + 1] = req.url
      return real:request(req)
    end }
    local remote = "http://gauth-remote.localhost:" .. l.port .. "/drive/v3/"
    local svc = assert(discovery.build_from_document(DRIVE, {
      api_endpoint = remote, http = recording, credentials = creds }))
    local called = false
    local b = svc:new_batch_http_request{ callback = function() called = true end }
    assert(b:add(svc:files():get{ fileId = "a" }))
    local ok, msg, err = b:execute()
    assert.is_nil(ok)
    assert.equal("gauth.batch: execute: refusing to send credentials to gauth-remote.localhost"
      .. " over http (https is required except for a loopback host) [http://gauth-remote.localhost:"
      .. l.port .. "/batch/drive/v3]", msg)
    helpers.assert_failure(msg, err, "batch", "execute")
    assert.equal("insecure_url", err.kind)
    assert.is_false(err.retryable)
    assert.is_false(called)
    assert.same({}, sent)
    assert.same({}, l:heads())
    -- The control: without credentials the same batch does go out, and
    -- reaches the listener (whose "ok" is no multipart answer).
    local open = assert(discovery.build_from_document(DRIVE, { api_endpoint = remote, http = recording }))
    local o = open:new_batch_http_request()
    assert(o:add(open:files():get{ fileId = "a" }))
    assert.is_nil((o:execute()))
    assert.equal(1, #sent)
    assert.matches("^POST /batch/drive/v3 HTTP/1%.1$", l:request_lines()[1])
    l:stop()
  end)

  it("holds at most 1000 requests; the 1001st is refused with nil, err", function()
    local b = drive:new_batch_http_request()
    for i = 1, 1000 do
      assert.is_true(b:add(drive:files():get{ fileId = "f" .. i }))
    end
    local ok, msg, err = b:add(drive:files():get{ fileId = "f1001" })
    assert.is_nil(ok)
    helpers.assert_failure(msg, err)
    assert.equal("batch", err.module)
    assert.equal("add", err.step)
    assert.equal("too_many_parts", err.kind)
    assert.equal("gauth.batch: add: a batch holds at most 1000 requests (Google's limit); start another batch",
                 tostring(err))
    assert.equal(1000, b:count())
    assert.equal(batch.MAX_PARTS, b:count())
  end)

  it("sends 1000 parts in one request", function()
    objects("a")
    local n = 0
    local b = drive:new_batch_http_request{ callback = function(_, resp) if resp then n = n + 1 end end }
    for _ = 1, 1000 do b:add(drive:files():get{ fileId = "a" }) end
    assert(b:execute())
    assert.equal(1000, n)
    local r = srv:requests{ kind = "batch" }
    assert.equal(1, #r)
    assert.equal(1000, #r[1].batch)
  end)

  it("numbers requests, refuses duplicates, uploads and non-requests", function()
    local b = drive:new_batch_http_request()
    b:add(drive:files():get{ fileId = "x" }, nil, "2")
    b:add(drive:files():get{ fileId = "y" })
    assert.same({ "2", "1" }, b.order)
    b:add(drive:files():get{ fileId = "z" })
    assert.same({ "2", "1", "3" }, b.order)
    assert.has_error(function() b:add(drive:files():get{ fileId = "x" }, nil, "2") end,
      "gauth.batch: add: a request with id 2 is already in the batch")
    local up = assert(drive:files():create{ media_body = media.media_string("x") })
    assert.has_error(function() b:add(up) end,
      "gauth.batch: add: media uploads cannot be batched (Google's rule)")
    assert.has_error(function() b:add({}) end, "gauth.batch: add: req must be a request of gauth.discovery")
    assert.has_error(function() b:add(drive:files():get{ fileId = "x" }, 42) end,
      "gauth.batch: callback must be a function")
    assert.has_error(function() b.add(nil, drive:files():get{ fileId = "x" }) end,
      "gauth.batch: add: call it with a colon (batch:add(req))")
    assert.has_error(function() drive:new_batch_http_request{ callback = 1 } end,
      "gauth.batch: callback must be a function")
    -- an empty batch sends nothing
    assert.is_true(drive:new_batch_http_request():execute())
    assert.equal(0, #srv:requests())
  end)

  describe("split_multipart", function()
    it("splits at delimiter lines, CRLF or LF, ignoring preamble and epilogue", function()
      local body = "preamble\r\n--b1\r\nA: 1\r\n\r\none\r\n--b1 \r\nA: 2\n\ntwo\n--b1--\r\nepilogue"
      assert.same({ "A: 1\r\n\r\none", "A: 2\n\ntwo" }, batch.split_multipart(body, "b1"))
      -- "--b1" inside a line is not a delimiter
      assert.same({ "x --b1 y" }, batch.split_multipart("--b1\r\nx --b1 y\r\n--b1--", "b1"))
    end)

    it("reports a body without delimiters or without the closing one", function()
      local v, msg, err = batch.split_multipart("nothing", "b1")
      assert.is_nil(v)
      helpers.assert_failure(msg, err, "batch", "multipart")
      assert.equal("no multipart delimiter found", err.message)
      v, msg, err = batch.split_multipart("--b1\r\none\r\n--b1\r\ntwo", "b1")
      assert.is_nil(v)
      helpers.assert_failure(msg, err, "batch", "multipart")
      assert.equal("the multipart body ends without its closing delimiter", err.message)
    end)
  end)
end)
