-- gauth.storage: V4 signed URLs and POST policies, judged by Google's Node
-- client (@google-cloud/storage: same key, same options, pinned clock:
-- byte-identical URLs and fields), by an independent Python stand-in
-- (cryptography + hmac, from Google's description of V4 signing) for what
-- Node cannot sign (HMAC, HEAD, payload hashes, ports), and by a loopback
-- server that recomputes the signature of real requests.
local helpers = require "helpers"
local judges = require "support.judges"
local storage = require "gauth.storage"
local sa = require "gauth.service_account"
local http = require "gauth.http"
local errors = require "gauth.errors"

local NOW = 1577836800          -- 2020-01-01T00:00:00Z
local LEAP = 1709251199         -- 2024-02-29T23:59:59Z
local HMAC = { access_id = "GOOG1EHMACACCESSIDEXAMPLE", secret = "bGoa+V7g/yqDXvKRqq+JTFn4uQZbPiQJo4pf9RzJ" }
local SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

-- Every case both ways: gauth's options and the Node client's.
local URL_CASES = {
  { name = "plain GET", object = "file.txt", method = "GET" },
  { name = "spaces", object = "my folder/my file.txt" },
  { name = "plus, equals, ampersand", object = "a+b=c&d.txt" },
  { name = "tilde", object = "~user/x~y" },
  { name = "percent", object = "100%/x%20y%" },
  { name = "unicode", object = "donn\195\169es/\230\151\165\230\156\172\232\170\158/\240\159\152\128.txt" },
  { name = "dots that are not segments", object = "a..b/..c/d../...x" },
  { name = "trailing slash", object = "folder/sub/" },
  { name = "reserved characters", object = "!'()*,;:@$[]#?" },
  { name = "PUT with headers folded", object = "up.bin", method = "PUT",
    headers = { { "Content-Type", "text/plain" }, { "x-goog-meta-note", "  two   spaces  " },
                { "x-goog-acl", "private" } } },
  { name = "DELETE", object = "gone.txt", method = "DELETE", expires = 60 },
  { name = "POST starts a resumable upload", object = "big.iso", method = "POST",
    headers = { { "x-goog-resumable", "start" } } },
  { name = "query parameters", object = "q.txt",
    query = { { "generation", "1577836800123456" },
              { "response-content-disposition", 'attachment; filename="r\195\169sum\195\169 1.pdf"' },
              { "userProject", "my-project" } } },
  { name = "x-goog-content-sha256 header", object = "hashed", method = "PUT",
    headers = { { "x-goog-content-sha256", SHA } } },
  { name = "virtual hosted", object = "v/h.txt", style = "virtual_hosted" },
  { name = "bucket-bound host name", object = "cdn.txt", style = "bucket_bound_hostname",
    bbh = "cdn.example.com", node_cname = "https://cdn.example.com" },
  { name = "bucket-bound URL", object = "cdn2.txt", style = "bucket_bound_hostname",
    bbh = "http://media.example.org", node_cname = "http://media.example.org" },
  { name = "api_endpoint", object = "e.txt", api_endpoint = "https://storage.private.example.com" },
  { name = "universe_domain", object = "u.txt", universe = "example-universe.net" },
  { name = "seven days", object = "long.txt", expires = 604800 },
  { name = "a leap day late at night", object = "leap.txt", now = LEAP, expires = 1 },
  -- The scheme option: the host is signed, the scheme is not (Node says it
  -- with an http:// cname or apiEndpoint).
  { name = "scheme http, bucket-bound host name", object = "s.txt", style = "bucket_bound_hostname",
    bbh = "cdn.example.com", scheme = "http", node_cname = "http://cdn.example.com" },
  { name = "scheme http, path style", object = "p t.txt", scheme = "http",
    node_api_endpoint = "http://storage.googleapis.com" },
}

local ACTIONS = { GET = "read", PUT = "write", DELETE = "delete", POST = "resumable" }

local function pairs_map(list)
  local t = {}
  for _, kv in ipairs(list or {}) do t[kv[1]] = kv[2] end
  return t
end

local function gauth_opts(c, signer)
  local o = {
    bucket = c.bucket or "gauth-judge-bucket", object = c.object, method = c.method,
    expires = c.expires or 900, headers = c.headers and pairs_map(c.headers),
    query = c.query and pairs_map(c.query), url_style = c.style,
    bucket_bound_hostname = c.bbh, api_endpoint = c.api_endpoint,
    universe_domain = c.universe, now = c.now or NOW, payload_sha256 = c.payload_sha256,
    scheme = c.scheme,
  }
  for k, v in pairs(signer) do o[k] = v end
  return o
end

local function node_case(c)
  return {
    kind = "url", now = c.now or NOW, bucket = c.bucket or "gauth-judge-bucket",
    object = c.object, action = ACTIONS[c.method or "GET"], expires = c.expires or 900,
    headers = c.headers or {}, query = c.query or {}, virtual = c.style == "virtual_hosted",
    cname = c.node_cname, api_endpoint = c.node_api_endpoint or c.api_endpoint, universe = c.universe,
  }
end

describe("gauth.storage", function()
  local key, creds

  lazy_setup(function()
    local _, info = helpers.make_service_account_file({
      client_email = "signer@gauth-judge.iam.gserviceaccount.com" })
    key = info
    creds = assert(sa.from_info(info.data))
  end)

  describe("signed_url", function()
    it("matches Google's Node client byte for byte (RSA, every option, unusual names)", function()
      local node_cases, mine = {}, {}
      for i, c in ipairs(URL_CASES) do
        node_cases[i] = node_case(c)
        local url, msg, err = storage.signed_url(gauth_opts(c, { credentials = creds }))
        assert(url, c.name .. ": " .. tostring(msg))
        assert.is_nil(err)
        mine[i] = url
      end
      local got = judges.node_storage({ client_email = key.client_email,
                                        private_key = key.private_pem }, node_cases)
      assert.equal(#URL_CASES, #got)
      for i, c in ipairs(URL_CASES) do
        assert.is_nil(got[i].error, c.name .. ": node: " .. tostring(got[i].error))
        assert.equal(got[i].url, mine[i], c.name)
        if c.scheme then assert.equal(c.scheme .. "://", mine[i]:sub(1, #c.scheme + 3), c.name) end
      end
    end)

    it("is accepted by the Python stand-in, RSA and HMAC, every method with HEAD, payload hashes", function()
      local cases, checks = {}, {}
      local extra = {
        { name = "HEAD", object = "head.txt", method = "HEAD" },
        { name = "payload_sha256 option", object = "p.bin", method = "PUT", payload_sha256 = SHA },
        { name = "bucket only", object = nil, query = { { "prefix", "a b/" } } },
        { name = "api_endpoint with a port", object = "x y", api_endpoint = "http://127.0.0.1:8443" },
      }
      local all = {}
      for _, c in ipairs(URL_CASES) do all[#all + 1] = c end
      for _, c in ipairs(extra) do all[#all + 1] = c end
      for _, signer in ipairs({ { credentials = creds }, { hmac = HMAC } }) do
        for _, c in ipairs(all) do
          local url, msg = storage.signed_url(gauth_opts(c, signer))
          assert(url, c.name .. ": " .. tostring(msg))
          local hdrs = pairs_map(c.headers)
          local case = { method = c.method or "GET", url = url, headers = hdrs,
                         payload = c.payload_sha256, object = c.object }
          if signer.hmac then case.secret = HMAC.secret else case.public_pem = key.public_pem end
          cases[#cases + 1] = case
          checks[#checks + 1] = (signer.hmac and "HMAC " or "RSA ") .. c.name
          if signer.hmac then
            assert.matches("X%-Goog%-Algorithm=GOOG4%-HMAC%-SHA256", url)
            assert.matches("X%-Goog%-Credential=" .. HMAC.access_id .. "%%2F", url)
          end
          assert.is_nil(url:find(HMAC.secret, 1, true))
        end
      end
      local res = judges.py_storage_check(cases)
      for i, r in ipairs(res) do
        assert.is_true(r.ok, checks[i] .. ": " .. tostring(r.reason))
      end
      -- The stand-in's canonical request of the payload case carries the hash.
      local n = #URL_CASES + 2
      assert.matches("\n" .. SHA .. "$", res[n].canonical_request)
      -- and the stand-in refuses what is wrong: another method, a header
      -- not sent, another secret, a changed path.
      local url = assert(storage.signed_url(gauth_opts(URL_CASES[10], { hmac = HMAC })))
      local bad = judges.py_storage_check({
        { method = "POST", url = url, headers = pairs_map(URL_CASES[10].headers), secret = HMAC.secret },
        { method = "PUT", url = url, headers = {}, secret = HMAC.secret },
        { method = "PUT", url = url, headers = pairs_map(URL_CASES[10].headers), secret = "other" },
        { method = "PUT", url = url:gsub("up%.bin", "up2.bin"), headers = pairs_map(URL_CASES[10].headers),
          secret = HMAC.secret },
      })
      assert.equal("HMAC signature mismatch", bad[1].reason)
      assert.equal("signed header content-type not sent", bad[2].reason)
      assert.equal("HMAC signature mismatch", bad[3].reason)
      assert.equal("HMAC signature mismatch", bad[4].reason)
    end)

    it("is accepted by a real loopback server that recomputes the signature (200), refused when altered (403)",
       function()
      local srv = judges.start_storage_server({
        [key.client_email] = { public_pem = key.public_pem },
        [HMAC.access_id] = { secret = HMAC.secret },
      })
      local t = assert(http.new())
      local ok, err = pcall(function()
        local function go(method, url, headers, body)
          local res = assert(t:request({ method = method, url = url, headers = headers, body = body }))
          return res.status, res.body
        end
        for _, signer in ipairs({ { credentials = creds }, { hmac = HMAC } }) do
          for _, c in ipairs({
            { method = "GET", object = "d\195\169j\195\160 vu/a+b~c%.txt" },
            { method = "PUT", object = "in/file 1.txt", headers = { { "content-type", "text/plain" } },
              body = "hello" },
            { method = "POST", object = "big", headers = { { "x-goog-resumable", "start" } } },
            { method = "DELETE", object = "old/" },
            { method = "HEAD", object = "h" },
            { method = "PUT", object = "hashed", body = "",
              headers = { { "x-goog-content-sha256", SHA } } },
          }) do
            local url = assert(storage.signed_url(gauth_opts({
              object = c.object, method = c.method, headers = c.headers,
              api_endpoint = srv.url, now = os.time() }, signer)))
            local status, body = go(c.method, url, pairs_map(c.headers), c.body)
            assert.equal(200, status, c.method .. " " .. c.object .. ": " .. tostring(body))
          end
          -- Altered: another method, a missing signed header, another object.
          local url = assert(storage.signed_url(gauth_opts({ object = "f", method = "PUT",
            headers = { { "content-type", "text/plain" } }, api_endpoint = srv.url, now = os.time() }, signer)))
          local status, body = go("GET", url, nil)
          assert.equal(403, status)
          assert.matches("SignatureDoesNotMatch", body)
          status = go("PUT", url, nil, "x")
          assert.equal(403, status)
          status = go("PUT", (url:gsub("/f%?", "/g?")), { ["content-type"] = "text/plain" }, "x")
          assert.equal(403, status)
          -- Expired: signed an hour ago for ten minutes.
          url = assert(storage.signed_url(gauth_opts({ object = "f", expires = 600,
            api_endpoint = srv.url, now = os.time() - 3600 }, signer)))
          status, body = go("GET", url)
          assert.equal(403, status)
          assert.matches("expired", body)
        end
      end)
      t:close()
      srv.stop()
      assert(ok, err)
    end)

    it("refuses bad options with nil, a message and an error naming the option", function()
      local base = { hmac = HMAC, bucket = "b", object = "o", now = NOW }
      local function try(changes)
        local o = {}
        for k, v in pairs(base) do o[k] = v end
        for k, v in pairs(changes) do o[k] = v end
        if changes.no_hmac then o.hmac = nil end
        if changes.no_bucket then o.bucket = nil end
        o.no_hmac, o.no_bucket = nil, nil
        return storage.signed_url(o)
      end
      local cases = {
        { { method = "PATCH" }, "method", "method must be GET, PUT, POST, DELETE or HEAD" },
        { { expires = 604801 }, "expires", "at most 604800" },
        { { expires = 0 }, "expires", "must be positive" },
        { { expires = -5 }, "expires", "must be positive" },
        { { expires = 1.5 }, "expires", "whole number" },
        { { no_bucket = true }, "bucket", "bucket is required" },
        { { bucket = "a/b" }, "bucket", "must be a bucket name" },
        { { headers = { ["x:y"] = "1" } }, "headers", "not an HTTP token" },
        { { headers = { ["x\r\ny"] = "1" } }, "headers", "not an HTTP token" },
        { { headers = { ["x-a"] = "1\r\nx-b: 2" } }, "headers.x-a", "without CR, LF" },
        { { headers = { ["X-A"] = "1", ["x-a"] = "2" } }, "headers.x-a", "given twice" },
        { { headers = { Host = "evil.example" } }, "headers.host", "signed from the URL" },
        { { object = "caf\233" }, "object", "not valid UTF-8" },
        { { object = "\237\160\128" }, "object", "not valid UTF-8" },
        { { object = "\192\175" }, "object", "not valid UTF-8" },
        { { object = "a/../b" }, "object", '"." or ".." segment' },
        { { object = "." }, "object", '"." or ".." segment' },
        { { credentials = creds }, "credentials", "exclude each other" },
        { { no_hmac = true }, "credentials", "or hmac is required" },
        { { hmac = { access_id = "id" } }, "hmac.secret", "non-empty string" },
        { { url_style = "sideways" }, "url_style", "must be" },
        { { url_style = "bucket_bound_hostname" }, "bucket_bound_hostname", "is required" },
        { { scheme = "ftp" }, "scheme", "https" },
        { { api_endpoint = "ftp://x" }, "api_endpoint", "http or https" },
        { { api_endpoint = "https://x/path" }, "api_endpoint", "without a path" },
        { { payload_sha256 = "abc" }, "payload_sha256", "64 hex" },
        { { query = { ["X-Goog-Date"] = "1" } }, "query.X-Goog-Date", "set by the signing" },
        { { now = "yesterday" }, "now", "epoch seconds" },
      }
      for _, c in ipairs(cases) do
        local v, msg, err = try(c[1])
        assert.is_nil(v, c[2])
        assert.is_string(msg)
        assert.matches("^gauth%.storage: options: ", msg)
        assert.truthy(msg:find(c[3], 1, true), msg)
        assert.is_true(errors.is(err))
        assert.equal("storage", err.module)
        assert.equal("options", err.step)
        assert.equal(c[2], err.option)
        assert.is_nil(msg:find(HMAC.secret, 1, true))
      end
    end)

    it("says which credentials cannot sign, without a secret", function()
      local au = require "gauth.authorized_user"
      local path = helpers.make_authorized_user_file()
      local user = assert(au.from_file(path))
      local v, msg, err = storage.signed_url({ credentials = user, bucket = "b", object = "o" })
      assert.is_nil(v)
      assert.matches("^gauth%.storage: signing: the credentials cannot sign: gauth%.authorized_user: signing: ", msg)
      assert.equal("signing", err.step)
      assert.equal("authorized_user", err.cause.module)
      assert.is_nil(msg:find(helpers.USER.refresh_token, 1, true))
    end)
  end)

  describe("post_policy", function()
    local POLICY_CASES = {
      { name = "conditions and fields", object = "uploads/${filename}",
        conditions = { { "starts-with", "$key", "uploads/" }, { "content-length-range", 0, 1048576 },
                       { acl = "public-read" } },
        fields = { { "acl", "public-read" }, { "success_action_status", "201" },
                   { "x-goog-meta-owner", "ren\195\169e" } } },
      { name = "non-ASCII and escapes", object = "\230\151\165\230\156\172/\240\159\152\128 \"q\"\\b\tc",
        conditions = { { "eq", "$x-goog-meta-t", "line\nbreak \1 \127 \226\128\168" } },
        fields = { { "x-goog-meta-t", "line\nbreak \1 \127 \226\128\168" } } },
      { name = "virtual hosted", object = "v.txt", style = "virtual_hosted" },
      { name = "bucket-bound", object = "b.txt", style = "bucket_bound_hostname",
        bbh = "https://uploads.example.com", node_cname = "https://uploads.example.com" },
      { name = "universe", object = "u.txt", universe = "example-universe.net" },
      { name = "x-ignore fields", object = "i.txt",
        fields = { { "cache-control", "no-cache" }, { "x-ignore-note", "not in the policy" } } },
      { name = "seven days", object = "w", expires = 604800 },
      { name = "success_action_redirect", object = "r.txt",
        fields = { { "success_action_redirect", "https://app.example.com/done?id=1&next=/a b" } } },
    }

    local function policy_opts(c, signer)
      local o = { bucket = "gauth-judge-bucket", object = c.object, expires = c.expires or 3600,
                  conditions = c.conditions, fields = c.fields and pairs_map(c.fields),
                  url_style = c.style, bucket_bound_hostname = c.bbh,
                  universe_domain = c.universe, now = NOW }
      for k, v in pairs(signer) do o[k] = v end
      return o
    end

    it("matches Google's Node client: URL, every field, the policy document byte for byte", function()
      local node_cases, mine = {}, {}
      for i, c in ipairs(POLICY_CASES) do
        local res, msg, err = storage.post_policy(policy_opts(c, { credentials = creds }))
        assert(res, c.name .. ": " .. tostring(msg))
        assert.is_nil(err)
        mine[i] = res
        node_cases[i] = { kind = "policy", now = NOW, bucket = "gauth-judge-bucket",
          object = c.object, expires = c.expires or 3600, conditions = c.conditions or {},
          fields = c.fields or {}, virtual = c.style == "virtual_hosted",
          cname = c.node_cname, universe = c.universe }
      end
      local got = judges.node_storage({ client_email = key.client_email,
                                        private_key = key.private_pem }, node_cases)
      for i, c in ipairs(POLICY_CASES) do
        assert.is_nil(got[i].error, c.name .. ": node: " .. tostring(got[i].error))
        assert.equal(got[i].url, mine[i].url, c.name)
        assert.same(got[i].fields, mine[i].fields, c.name)
      end
      -- Non-ASCII went into the document as \u escapes (a surrogate pair
      -- for the emoji).
      local doc = require("gauth.core").b64_decode(mine[2].fields.policy)
      assert.truthy(doc:find("\\u65e5\\u672c/\\ud83d\\ude00", 1, true))
      assert.is_nil(doc:find("[\128-\255]"))
    end)

    it("is accepted by the Python stand-in with an HMAC key and with RSA", function()
      local cases = {}
      for _, c in ipairs(POLICY_CASES) do
        local h = assert(storage.post_policy(policy_opts(c, { hmac = HMAC })))
        assert.equal("GOOG4-HMAC-SHA256", h.fields["x-goog-algorithm"])
        cases[#cases + 1] = { policy = true, fields = h.fields, secret = HMAC.secret }
        local r = assert(storage.post_policy(policy_opts(c, { credentials = creds })))
        cases[#cases + 1] = { policy = true, fields = r.fields, public_pem = key.public_pem }
      end
      for i, r in ipairs(judges.py_storage_check(cases)) do
        assert.is_true(r.ok, i .. ": " .. tostring(r.reason))
      end
      -- api_endpoint: the form posts to the bucket on that endpoint.
      local r = assert(storage.post_policy({ hmac = HMAC, bucket = "bk", object = "o",
        api_endpoint = "http://127.0.0.1:9000", now = NOW }))
      assert.equal("http://127.0.0.1:9000/bk/", r.url)
    end)

    it("refuses bad options naming them", function()
      local cases = {
        { { object = nil }, "object", "is required" },
        { { conditions = { "starts-with" } }, "conditions", "conditions[1] must be a table" },
        { { conditions = { { "eq", "$key", 1.5 } } }, "conditions", "conditions[1][3] must be a whole number" },
        { { fields = { policy = "x" } }, "fields.policy", "not a form field" },
        { { fields = { ["x-goog-signature"] = "x" } }, "fields.x-goog-signature", "not a form field" },
        { { fields = { ACL = "x" } }, "fields.ACL", "lower-case" },
        { { expires = 604801 }, "expires", "at most" },
        { { hmac = HMAC, credentials = creds }, "credentials", "exclude each other" },
      }
      for _, c in ipairs(cases) do
        local o = { hmac = HMAC, bucket = "b", object = "o", now = NOW }
        for k, v in pairs(c[1]) do o[k] = v end
        if c[1].object == nil and c[2] == "object" then o.object = nil end
        local v, msg, err = storage.post_policy(o)
        assert.is_nil(v, c[2])
        assert.truthy(msg:find(c[3], 1, true), msg)
        assert.equal("options", err.step)
        assert.equal(c[2], err.option)
      end
    end)
  end)
end)
