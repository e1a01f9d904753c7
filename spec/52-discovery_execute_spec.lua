-- gauth.discovery over the network, nothing mocked below HTTP: execute(),
-- pages() and build() against the fake Google (spec/support/fake_google.py)
-- over HTTPS with the test CA, through the libcurl transport, authorised by
-- service-account credentials that get their tokens from the fake's token
-- endpoint. Real Discovery documents come from spec/fixtures/discovery;
-- what the server received is read back from the
-- fake's records. Retries sleep through a recorder, not the clock.

local cjson = require "cjson"
local helpers = require "helpers"
local discovery = require "gauth.discovery"
local sa = require "gauth.service_account"
local token_cache = require "gauth.token_cache"
local curl = require "gauth.transport.curl"
local errors = require "gauth.errors"
local socket = require "socket"

local q = helpers.shell_quote
local PROJECT = "exemplary-example-123"
local SCOPE_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
local SCOPE_SQL = "https://www.googleapis.com/auth/sqlservice.admin"
local LIST_PATH = "/sql/v1beta4/projects/" .. PROJECT .. "/instances"

local function closed_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return port
end

-- The text of the Discovery fixture <name> (spec/fixtures/discovery).
local docs = {}
local function shared_doc(name)
  if not docs[name] then docs[name] = helpers.discovery_doc(name) end
  return docs[name]
end

local function google_error(code, status, message, reason, extra)
  local e = { code = code, status = status, message = message }
  if reason then e.errors = { { reason = reason, domain = "global", message = message } } end
  for k, v in pairs(extra or {}) do e[k] = v end
  return { error = e }
end

describe("gauth.discovery against the fake over HTTPS", function()
  local fake, key_path, info, http
  local slept

  local function sleep(s) slept[#slept + 1] = s end
  local function half() return 0.5 end

  lazy_setup(function()
    fake = helpers.start_fake({ tls = true })
    key_path, info = helpers.make_service_account_file({ token_uri = fake.token_uri })
    http = assert(curl.new({ ca_file = fake.ca_file, timeout = 10 }))
  end)

  lazy_teardown(function()
    fake:stop()
  end)

  before_each(function()
    slept = {}
    fake:reset()
    fake:config({ public_keys = { [info.kid] = info.public_pem } })
    discovery.clear_cache()
  end)

  -- Service-account credentials on a token cache of their own, trusting
  -- the test CA.
  local function creds(opts)
    opts = opts or {}
    if opts.scopes == nil then opts.scopes = { SCOPE_SQL } end
    if opts.scopes == false then opts.scopes = nil end
    opts.cache = token_cache.new()
    opts.ca_file = fake.ca_file
    return assert(sa.from_file(key_path, opts))
  end

  -- A service from a shared document, sending to the fake.
  local function service(name, opts)
    local text = shared_doc(name)
    if not text then return nil end
    opts = opts or {}
    if opts.credentials == nil then opts.credentials = creds() end
    if opts.credentials == false then opts.credentials = nil end
    opts.http = opts.http or http
    opts.api_endpoint = opts.api_endpoint or (fake.url .. "/")
    opts.sleep = opts.sleep or sleep
    return assert(discovery.build_from_document(text, opts))
  end

  local function token_requests()
    return fake:requests("/token")
  end

  describe("execute()", function()
    it("sends the token of real credentials and decodes the answer", function()
      local sql = service("sqladmin.v1beta4.json")
      if not sql then return end
      fake:script(LIST_PATH, { { status = 200, body = {
        kind = "sql#instancesList", items = { { name = "exemplary-mysql" } } } } })
      local req = sql:instances():list({ project = PROJECT, maxResults = 5 })
      local resp, err = req:execute()
      assert.is_nil(err)
      assert.equals("sql#instancesList", resp.kind)
      assert.equals("exemplary-mysql", resp.items[1].name)

      local toks = token_requests()
      assert.equals(1, #toks)
      local _, claims = helpers.jwt_parts(toks[1].form.assertion)
      assert.equals(SCOPE_SQL, claims.scope)
      local issued = fake:tokens()
      local api = fake:requests(LIST_PATH)
      assert.equals(1, #api)
      local r = api[1]
      assert.equals("GET", r.method)
      local tok = r.headers.authorization:match("^Bearer (%S+)$")
      assert.truthy(issued[tok], "the token the fake issued")
      assert.equals(SCOPE_SQL, issued[tok].scope)
      assert.same({ alt = "json", maxResults = "5" }, r.query_params)
      assert.equals("application/json", r.headers.accept)
      assert.matches("gzip", r.headers["accept-encoding"])
      assert.equals("gauth/" .. discovery._VERSION, r.headers["user-agent"])
      assert.matches("gauth/", r.headers["x-goog-api-client"])
      assert.is_nil(r.headers["content-type"])
      assert.equals(req.uri, fake.url .. r.path .. "?" .. r.query)

      -- the token is cached: a second call makes no exchange
      fake:script(LIST_PATH, { { status = 200, body = {} } })
      assert.same({}, req:execute())
      assert.equals(1, #token_requests())
      local again = fake:requests(LIST_PATH)
      assert.equals(r.headers.authorization, again[2].headers.authorization)
      assert.equals(r.conn, again[2].conn, "one kept-alive connection")
    end)

    it("returns {} for an empty 2xx body, and the text for methods without a response", function()
      local sql = service("sqladmin.v1beta4.json")
      if not sql then return end
      fake:script(LIST_PATH, { { status = 204 } })
      assert.same({}, sql:instances():list({ project = PROJECT }):execute())
      local st = service("storage.v1.json")
      if not st then return end
      -- storage.objects.delete has no response schema
      fake:script("/b/bkt/o/a/b", { { status = 200, body = "" } })
      local req = st:objects():delete({ bucket = "bkt", object = "a/b" })
      assert.equals("DELETE", req.method)
      assert.equals("", req:execute())
      local got = fake:requests({ method = "DELETE" })
      assert.equals(1, #got)
      assert.equals("/b/bkt/o/a%2Fb", got[1].path)
    end)

    it("returns Google's error with status, reason, message, details, body and uri", function()
      local sql = service("sqladmin.v1beta4.json", { api_key = "secret-key" })
      if not sql then return end
      local body = google_error(404, "NOT_FOUND", "The Cloud SQL instance does not exist.",
        "instanceDoesNotExist", { details = { { ["@type"] = "type.googleapis.com/google.rpc.ErrorInfo",
                                                reason = "INSTANCE_MISSING" } } })
      local path = LIST_PATH .. "/nope"
      fake:script(path, { { status = 404, body = body } })
      local resp, msg, err = sql:instances():get({ project = PROJECT, instance = "nope" }):execute()
      assert.is_nil(resp)
      helpers.assert_failure(msg, err)
      assert.is_true(errors.is(err))
      assert.equals("discovery", err.module)
      assert.equals("sql.instances.get", err.step)
      assert.equals(404, err.status)
      assert.equals("instanceDoesNotExist", err.reason)
      assert.equals("The Cloud SQL instance does not exist.", err.message)
      assert.same(body.error.details, err.details)
      assert.same(body, cjson.decode(err.body))
      assert.is_false(err.retryable)
      assert.equals(fake.url .. path .. "?key=REDACTED&alt=json", err.uri)
      assert.equals("gauth.discovery: sql.instances.get: The Cloud SQL instance does not exist."
                    .. " (HTTP 404 instanceDoesNotExist) [" .. err.uri .. "]", tostring(err))
      assert.not_matches("secret%-key", tostring(err))
      assert.equals(1, #fake:requests(path), "a 404 is not retried")

      -- error.status is the reason when there is no errors list; a message
      -- over several lines prints on one
      fake:script(LIST_PATH, { { status = 400, body = google_error(400, "INVALID_ARGUMENT",
        "Invalid value at 'filter'\n  (TYPE_STRING), \"x\"") } })
      resp, msg, err = sql:instances():list({ project = PROJECT, filter = "x" }):execute()
      assert.is_nil(resp)
      helpers.assert_failure(msg, err)
      assert.equals(400, err.status)
      assert.equals("INVALID_ARGUMENT", err.google_status)
      assert.matches("^Invalid value at 'filter'", err.message)
      assert.not_matches("\n", tostring(err))
      assert.matches("Invalid value at 'filter' %(TYPE_STRING%), \"x\" %(HTTP 400 INVALID_ARGUMENT%)",
                     tostring(err))

      -- an answer that is not Google's JSON: the status line's reason
      fake:script(LIST_PATH, { { status = 502, body = "<html>bad gateway</html>" } })
      resp, msg, err = sql:instances():list({ project = PROJECT }):execute({ num_retries = 0 })
      assert.is_nil(resp)
      helpers.assert_failure(msg, err)
      assert.equals(502, err.status)
      assert.equals("Bad Gateway", err.message)
      assert.equals("<html>bad gateway</html>", err.body)
      assert.is_nil(err.reason)
      assert.is_true(err.retryable)

      -- the fake's own 404 for a path nobody scripted
      resp, msg, err = sql:instances():get({ project = PROJECT, instance = "other" }):execute()
      assert.is_nil(resp)
      helpers.assert_failure(msg, err)
      assert.equals(404, err.status)
      assert.equals("NOT_FOUND", err.google_status)
    end)

    it("retries 5xx on a GET with backoff, and gives up after 3 retries", function()
      local sql = service("sqladmin.v1beta4.json")
      if not sql then return end
      fake:script(LIST_PATH, { { status = 503 }, { status = 500 }, { status = 200, body = { kind = "k" } } })
      local resp = assert(sql:instances():list({ project = PROJECT }):execute({ random = half }))
      assert.equals("k", resp.kind)
      assert.equals(3, #fake:requests(LIST_PATH))
      assert.same({ 0.75, 1.5 }, slept)

      slept = {}
      local unavailable = google_error(503, "UNAVAILABLE", "try later")
      fake:script(LIST_PATH, { { status = 503, body = unavailable }, { status = 503, body = unavailable },
                               { status = 503, body = unavailable }, { status = 503, body = unavailable },
                               { status = 200, body = {} } })
      local _, msg, err = sql:instances():list({ project = PROJECT }):execute({ random = half })
      helpers.assert_failure(msg, err)
      assert.equals(503, err.status)
      assert.equals("UNAVAILABLE", err.google_status)
      assert.equals(4, err.attempts)
      assert.matches("gave up after 4 attempts", err.message)
      assert.equals(3 + 4, #fake:requests(LIST_PATH))
      assert.equals(3, #slept)
      assert.equals(1, #fake:pending_scripts()[LIST_PATH], "the fifth answer was never asked for")
    end)

    it("honours Retry-After on a 429, and on a 503", function()
      local sql = service("sqladmin.v1beta4.json")
      if not sql then return end
      fake:script(LIST_PATH, {
        { status = 429, headers = { ["Retry-After"] = "7" },
          body = google_error(429, "RESOURCE_EXHAUSTED", "quota", "rateLimitExceeded") },
        { status = 503, headers = { ["Retry-After"] = "2" } },
        { status = 200, body = { ok = true } } })
      assert.same({ ok = true }, sql:instances():list({ project = PROJECT }):execute())
      assert.same({ 7, 2 }, slept)
      assert.equals(3, #fake:requests(LIST_PATH))

      -- a Retry-After past max_delay (32 s) is not waited for
      slept = {}
      fake:reset()
      fake:config({ public_keys = { [info.kid] = info.public_pem } })
      fake:script(LIST_PATH, { { status = 429, headers = { ["Retry-After"] = "3600" } } })
      local _, msg, err = sql:instances():list({ project = PROJECT }):execute()
      helpers.assert_failure(msg, err)
      assert.equals(429, err.status)
      assert.equals(3600, err.retry_after)
      assert.same({}, slept)
      assert.equals(1, #fake:requests(LIST_PATH))
    end)

    it("retries a 403 for rate limits, not for other reasons", function()
      local sql = service("sqladmin.v1beta4.json")
      if not sql then return end
      fake:script(LIST_PATH, {
        { status = 403, body = google_error(403, "PERMISSION_DENIED", "Rate Limit Exceeded", "rateLimitExceeded") },
        { status = 403, body = google_error(403, "PERMISSION_DENIED", "User Rate Limit Exceeded",
                                            "userRateLimitExceeded") },
        { status = 200, body = {} } })
      assert.same({}, sql:instances():list({ project = PROJECT }):execute({ random = half }))
      assert.equals(3, #fake:requests(LIST_PATH))
      assert.equals(2, #slept)

      fake:script(LIST_PATH, { { status = 403, body = google_error(403, "PERMISSION_DENIED",
        "The client is not authorized to make this request.", "notAuthorized") } })
      local _, msg, err = sql:instances():list({ project = PROJECT }):execute()
      helpers.assert_failure(msg, err)
      assert.equals(403, err.status)
      assert.equals("notAuthorized", err.reason)
      assert.is_false(err.retryable)
      assert.equals(4, #fake:requests(LIST_PATH))
      assert.equals(2, #slept)
    end)

    it("does not retry a POST by default; does with num_retries", function()
      local sql = service("sqladmin.v1beta4.json")
      if not sql then return end
      local inst = { name = "new-instance", databaseVersion = "POSTGRES_15",
                     settings = { tier = "db-f1-micro", userLabels = { team = "a" } } }
      fake:script(LIST_PATH, { { status = 503 } })
      local req = sql:instances():insert({ project = PROJECT, body = inst })
      assert.equals("POST", req.method)
      local _, msg, err = req:execute()
      helpers.assert_failure(msg, err)
      assert.equals(503, err.status)
      assert.is_true(err.retryable)
      assert.equals(1, #fake:requests(LIST_PATH))
      assert.same({}, slept)

      fake:script(LIST_PATH, { { status = 503 }, { status = 200, body = { kind = "sql#operation" } } })
      local resp = assert(req:execute({ num_retries = 2, random = half }))
      assert.equals("sql#operation", resp.kind)
      local got = fake:requests(LIST_PATH)
      assert.equals(3, #got)
      for i = 1, 3 do
        assert.equals("POST", got[i].method)
        assert.equals("application/json", got[i].headers["content-type"])
        assert.same(inst, got[i].json)
      end
      assert.same({ 0.75 }, slept)

      -- num_retries given to the service applies to its POSTs too
      slept = {}
      sql = service("sqladmin.v1beta4.json", { num_retries = 1 })
      fake:script(LIST_PATH, { { status = 500 }, { status = 200, body = {} } })
      assert.same({}, sql:instances():insert({ project = PROJECT, body = inst }):execute())
      assert.equals(5, #fake:requests(LIST_PATH))
      assert.equals(1, #slept)
    end)

    it("refreshes the credentials once after a 401 and retries with the new token", function()
      local sql = service("sqladmin.v1beta4.json")
      if not sql then return end
      local unauth = google_error(401, "UNAUTHENTICATED",
        "Request had invalid authentication credentials.", "authError")
      fake:script(LIST_PATH, { { status = 401, body = unauth }, { status = 200, body = { kind = "k" } } })
      local resp = assert(sql:instances():list({ project = PROJECT }):execute())
      assert.equals("k", resp.kind)
      assert.equals(2, #token_requests(), "two token exchanges")
      local got = fake:requests(LIST_PATH)
      assert.equals(2, #got)
      assert.not_equals(got[1].headers.authorization, got[2].headers.authorization)
      assert.equals("Bearer fake-token-2", got[2].headers.authorization)
      assert.same({}, slept, "no backoff before the retry after a 401")

      -- a second 401 is the answer
      fake:script(LIST_PATH, { { status = 401, body = unauth }, { status = 401, body = unauth } })
      local _, msg, err = sql:instances():list({ project = PROJECT }):execute()
      helpers.assert_failure(msg, err)
      assert.equals(401, err.status)
      assert.equals("authError", err.reason)
      assert.equals(3, #token_requests())
      assert.equals(4, #fake:requests(LIST_PATH))
    end)

    it("never sends credentials over plain http to a remote rootUrl (a planted document)", function()
      local text = shared_doc("sqladmin.v1beta4.json")
      if not text then return end
      local doc = cjson.decode(text)
      doc.rootUrl = "http://attacker.example/"
      -- anything that would leave loopback raises here, before a socket
      local guard = helpers.loopback_guard()
      local function refused(opts, media)
        opts.http = guard
        opts.sleep = sleep
        local svc = assert(discovery.build_from_document(cjson.encode(doc), opts))
        local req = svc:instances():list({ project = PROJECT })
        local res, e2, e3 = req:execute({ num_retries = 2 })
        assert.is_nil(res)
        local err = errors.of(e2, e3)
        assert.equals(tostring(err), tostring(e2))
        assert.equals("gauth.discovery: sql.instances.list: refusing to send credentials to"
                      .. " attacker.example over http (https is required except for a loopback"
                      .. " host) [http://attacker.example/sql/v1beta4/projects/" .. PROJECT
                      .. "/instances?" .. (opts.api_key and "key=REDACTED&" or "") .. "alt=json]",
                      tostring(err))
        assert.equals("discovery", err.module)
        assert.equals("insecure_url", err.kind)
        assert.is_false(err.retryable)
        assert.is_nil(tostring(err):find("KEY-42", 1, true))
        return svc, media
      end
      local c = creds()
      refused({ credentials = c })
      refused({ api_key = "SECRET-API-KEY-42" })
      -- the token was never even asked for
      assert.equals(0, #token_requests())
      assert.same({}, slept)
      -- plain http to a loopback host is allowed (emulators, tests)
      doc.rootUrl = "http://127.0.0.1:" .. closed_port() .. "/"
      local svc = assert(discovery.build_from_document(cjson.encode(doc), { credentials = c,
        http = guard, sleep = sleep }))
      local res, e2, e3 = svc:instances():list({ project = PROJECT }):execute({ num_retries = 0 })
      assert.is_nil(res)
      assert.is_true(errors.of(e2, e3).retryable, tostring(e2))  -- connection refused: it was sent
      assert.equals(1, #token_requests())
    end)

    it("returns the credentials' failure without calling the API", function()
      local sql = service("sqladmin.v1beta4.json")
      if not sql then return end
      fake:config({ public_keys = { [info.kid] = helpers.make_rsa_key().public_pem } })
      local _, msg, err = sql:instances():list({ project = PROJECT }):execute()
      helpers.assert_failure(msg, err)
      assert.is_true(errors.is(err))
      assert.equals("discovery", err.module)
      assert.matches("Invalid JWT Signature", tostring(err))
      assert.equals(0, #fake:requests(LIST_PATH))
    end)

    it("pages() walks every page; _next makes the next request", function()
      local sql = service("sqladmin.v1beta4.json")
      if not sql then return end
      fake:script(LIST_PATH, {
        { status = 200, body = { items = { { name = "a" } }, nextPageToken = "tok 2/=" } },
        { status = 200, body = { items = { { name = "b" } }, nextPageToken = "tok3" } },
        { status = 200, body = { items = { { name = "c" } } } },
      })
      local names = {}
      for page, extra in sql:instances():list({ project = PROJECT, filter = "state:RUNNABLE" }):pages() do
        assert.is_nil(extra)
        names[#names + 1] = page.items[1].name
      end
      assert.same({ "a", "b", "c" }, names)
      local got = fake:requests(LIST_PATH)
      assert.equals(3, #got)
      assert.is_nil(got[1].query_params.pageToken)
      assert.equals("tok 2/=", got[2].query_params.pageToken)
      assert.equals("tok3", got[3].query_params.pageToken)
      for i = 1, 3 do assert.equals("state:RUNNABLE", got[i].query_params.filter) end
      assert.equals(1, #token_requests())

      -- the same by hand with list_next
      fake:script(LIST_PATH, { { status = 200, body = { items = {}, nextPageToken = "p2" } },
                               { status = 200, body = { items = {} } } })
      local instances = sql:instances()
      local req, n = instances:list({ project = PROJECT }), 0
      while req do
        local resp = assert(req:execute())
        n = n + 1
        req = instances:list_next(req, resp)
      end
      assert.equals(2, n)
      assert.equals("p2", fake:requests(LIST_PATH)[5].query_params.pageToken)

      -- an error ends the walk; the body never sees it; req.last_error has it
      fake:script(LIST_PATH, { { status = 200, body = { nextPageToken = "x" } },
                               { status = 400, body = google_error(400, "INVALID_ARGUMENT", "bad token") } })
      local seen = {}
      local lreq = instances:list({ project = PROJECT })
      for page in lreq:pages() do
        assert.is_table(page)
        seen[#seen + 1] = "page"
      end
      assert.same({ "page" }, seen)
      helpers.assert_failure(lreq.last_message, lreq.last_error, "discovery")
      assert.equals(400, lreq.last_error.status)
      assert.equals("INVALID_ARGUMENT", lreq.last_error.google_status)
    end)

    it("pages() puts the token in the body where the method takes it there", function()
      local logging = service("logging.v2.json")
      if not logging then return end
      local path = "/v2/entries:list"
      fake:script(path, { { status = 200, body = { entries = { { logName = "l1" } }, nextPageToken = "n2" } },
                          { status = 200, body = { entries = { { logName = "l2" } } } } })
      local got = {}
      local req = logging:entries():list({ body = { resourceNames = { "projects/" .. PROJECT },
                                                    pageSize = 1 } })
      assert.equals("POST", req.method)
      for page in req:pages() do got[#got + 1] = page.entries[1].logName end
      assert.same({ "l1", "l2" }, got)
      local sent = fake:requests(path)
      assert.equals(2, #sent)
      assert.is_nil(sent[1].json.pageToken)
      assert.same({ resourceNames = { "projects/" .. PROJECT }, pageSize = 1, pageToken = "n2" },
                  sent[2].json)
    end)

    it("sends a GET longer than 2048 bytes as a POST with x-http-method-override", function()
      local compute = service("compute.v1.json")
      if not compute then return end
      local path = "/projects/p/zones/us-central1-a/instances"
      local filter = "name = " .. string.rep("instance-x ", 200)
      fake:script(path, { { status = 200, body = { kind = "compute#instanceList", items = {} } } })
      local req = compute:instances():list({ project = "p", zone = "us-central1-a", filter = filter })
      assert.equals("POST", req.method)
      local resp = assert(req:execute())
      assert.equals("compute#instanceList", resp.kind)
      local got = fake:requests(path)
      assert.equals(1, #got)
      local r = got[1]
      assert.equals("POST", r.method)
      assert.equals("", r.query)
      assert.equals("GET", r.headers["x-http-method-override"])
      assert.equals("application/x-www-form-urlencoded", r.headers["content-type"])
      assert.same({ filter = filter, alt = "json" }, r.form)
      assert.matches("^Bearer ", r.headers.authorization)
    end)

    it("returns transport errors as nil, err: connection refused, retried as a GET is", function()
      local sql = service("sqladmin.v1beta4.json",
                          { api_endpoint = "https://127.0.0.1:" .. closed_port() .. "/" })
      if not sql then return end
      local resp, msg, err = sql:instances():list({ project = PROJECT }):execute({ random = half })
      assert.is_nil(resp)
      helpers.assert_failure(msg, err)
      assert.is_true(errors.is(err))
      assert.equals("discovery", err.module)
      assert.equals("sql.instances.list", err.step)
      assert.equals(7, err.curl_code)
      assert.is_true(err.retryable)
      assert.equals(4, err.attempts)
      assert.matches("^gauth%.discovery: sql%.instances%.list: .*[Cc]onnect", tostring(err))
      assert.equals(" [" .. err.uri .. "]", tostring(err):sub(-#err.uri - 3))
      assert.matches("^https://127%.0%.0%.1:%d+/sql/v1beta4/projects/[%w-]+/instances%?alt=json$", err.uri)
      assert.same({ 0.75, 1.5, 3 }, slept)
      slept = {}
      resp, msg, err = sql:instances():insert({ project = PROJECT, body = {} }):execute()
      assert.is_nil(resp)
      helpers.assert_failure(msg, err)
      assert.equals(7, err.curl_code)
      assert.same({}, slept, "a POST is not retried")
    end)

    it("returns a timeout as nil, err, and retries it within num_retries", function()
      local sql = service("sqladmin.v1beta4.json")
      if not sql then return end
      fake:script(LIST_PATH, { { hang = true } })
      local t0 = socket.gettime()
      local resp, msg, err = sql:instances():list({ project = PROJECT }):execute({ timeout = 0.3, num_retries = 0 })
      local dt = socket.gettime() - t0
      assert.is_nil(resp)
      helpers.assert_failure(msg, err)
      assert.equals("discovery", err.module)
      assert.equals(28, err.curl_code)
      assert.is_true(err.retryable)
      assert.is_true(dt < 3, "took " .. dt .. " s")

      fake:script(LIST_PATH, { { hang = true }, { drop = true }, { status = 200, body = { kind = "k" } } })
      resp = assert(sql:instances():list({ project = PROJECT }):execute({ timeout = 0.3, random = half }))
      assert.equals("k", resp.kind)
      assert.equals(4, #fake:requests(LIST_PATH))
      assert.equals(2, #slept)

      -- a deadline bounds all the attempts together
      slept = {}
      fake:script(LIST_PATH, { { hang = true }, { hang = true } })
      t0 = socket.gettime()
      resp, msg, err = sql:instances():list({ project = PROJECT }):execute({ deadline = 0.4, timeout = 5 })
      assert.is_nil(resp)
      helpers.assert_failure(msg, err)
      dt = socket.gettime() - t0
      assert.equals(28, err.curl_code)
      assert.is_true(dt < 3, "took " .. dt .. " s")
    end)

    it("scopes scope-less service-account credentials to the document's scopes", function()
      local text = shared_doc("sqladmin.v1beta4.json")
      if not text then return end
      local bare = creds({ scopes = false })
      assert.is_true(bare:requires_scopes())
      -- the fake, like Google, refuses an exchange without scopes
      local tok, tmsg, terr = bare:token()
      assert.is_nil(tok)
      helpers.assert_failure(tmsg, terr)
      assert.equals("invalid_scope", terr.oauth_error)
      fake:reset()
      fake:config({ public_keys = { [info.kid] = info.public_pem } })

      local sql = service("sqladmin.v1beta4.json", { credentials = bare })
      fake:script(LIST_PATH, { { status = 200, body = {} } })
      assert.same({}, sql:instances():list({ project = PROJECT }):execute())
      local toks = token_requests()
      assert.equals(1, #toks)
      local _, claims = helpers.jwt_parts(toks[1].form.assertion)
      assert.equals(SCOPE_PLATFORM .. " " .. SCOPE_SQL, claims.scope)
      assert.is_nil(bare.scopes, "the caller's credentials are not changed")

      -- credentials with scopes keep theirs
      sql = service("sqladmin.v1beta4.json", { credentials = creds({ scopes = { SCOPE_SQL } }) })
      fake:script(LIST_PATH, { { status = 200, body = {} } })
      assert(sql:instances():list({ project = PROJECT }):execute())
      toks = token_requests()
      _, claims = helpers.jwt_parts(toks[2].form.assertion)
      assert.equals(SCOPE_SQL, claims.scope)
    end)
  end)

  describe("Google down (issue 18 item 4)", function()
    it("a token failure is not retried by execute's retry loop", function()
      local sql = service("sqladmin.v1beta4.json", { credentials = creds({
        retry = { attempts = 2, initial = 0.01, max_delay = 0.01, jitter = false } }) })
      local down = {}
      for i = 1, 10 do down[i] = { status = 503, body = google_error(503, "UNAVAILABLE", "down") } end
      fake:script("/token", down)
      local resp, msg, err = sql:instances():list({ project = PROJECT }):execute({ num_retries = 3 })
      assert.is_nil(resp)
      local e = errors.of(msg, err)
      assert.matches("^gauth%.discovery: sql%.instances%.list: ", tostring(msg))
      assert.equals("discovery", e.module)
      assert.is_true(e.token_failed)
      assert.equals(503, e.status)
      -- The exchange's own two attempts; the API loop slept and retried nothing.
      assert.equals(2, #token_requests())
      assert.equals(0, #fake:requests(LIST_PATH))
      assert.same({}, slept)
    end)

    it("one deadline covers the token fetch too", function()
      local sql = service("sqladmin.v1beta4.json")
      -- The token endpoint answers after 3 s; the call may take 0.5 s in all.
      fake:script("/token", { { delay = 3 } })
      local resp, msg, err = sql:instances():list({ project = PROJECT })
        :execute({ deadline = 0.5, num_retries = 3 })
      assert.is_nil(resp)
      local e = errors.of(msg, err)
      assert.matches("^gauth%.discovery: sql%.instances%.list: ", tostring(msg))
      assert.is_true(e.token_failed)
      assert.matches("deadline", tostring(msg))
      assert.equals(1, #token_requests())
      assert.equals(0, #fake:requests(LIST_PATH))
      assert.is_nil(require("gauth.retry").deadline())
    end)
  end)

  describe("metrics and hooks (issue 18 item 7)", function()
    local metrics = require "gauth.metrics"
    local gauth = require "gauth"

    after_each(function() metrics.off() end)

    it("host_of names the host of each URL, a longer port or another scheme included", function()
      -- host_of remembers the last URL's scheme://authority: a URL that
      -- only starts like it ("https://h:1" and "https://h:12") is another host.
      local cases = {
        { "https://h.example:1/x", "h.example:1" }, { "https://h.example:12/x", "h.example:12" },
        { "https://h.example:1", "h.example:1" }, { "https://h.example:1?q", "h.example:1" },
        { "https://h.example:1#f", "h.example:1" }, { "https://h.example:1.evil/x", "h.example:1.evil" },
        { "http://u:p@h.example:1/x", "h.example:1" }, { "no url", "?" }, { 42, "?" },
      }
      for _, c in ipairs(cases) do assert.equal(c[2], metrics.host_of(c[1]), tostring(c[1])) end
    end)

    it("gauth.on: events for refresh, failure and retry; counters in Prometheus text", function()
      local events = {}
      for _, ev in ipairs({ "refresh", "failure", "retry" }) do
        local ok, msg, err = gauth.on(ev, function(d) events[#events + 1] = { ev, d } end)
        assert.is_true(ok)
        assert.is_nil(msg)
        assert.is_nil(err)
      end
      local c = creds({ scopes = { "https://www.googleapis.com/auth/test.metrics" },
        retry = { attempts = 2, initial = 0.01, max_delay = 0.01, jitter = false } })
      local label = tostring(c)
      local sql = service("sqladmin.v1beta4.json", { credentials = c })
      fake:script("/token", { { status = 503, body = google_error(503, "UNAVAILABLE", "down") },
                              { status = 503, body = google_error(503, "UNAVAILABLE", "down") } })
      assert.is_nil(sql:instances():list({ project = PROJECT }):execute())
      fake:script(LIST_PATH, { { status = 500, body = google_error(500, "INTERNAL", "oops") },
                               { status = 200, body = { kind = "sql#instancesList" } } })
      assert.equals("sql#instancesList",
        sql:instances():list({ project = PROJECT }):execute({ random = half }).kind)
      assert.equals("sql#instancesList",
        (function() fake:script(LIST_PATH, { { status = 200, body = { kind = "sql#instancesList" } } })
          return sql:instances():list({ project = PROJECT }):execute().kind end)())
      local kinds = {}
      for _, e in ipairs(events) do kinds[#kinds + 1] = e[1] end
      -- token: retry, failure; next call: refresh; API: retry
      assert.same({ "retry", "failure", "refresh", "retry" }, kinds)
      assert.equals(label, events[2][2].credential)
      assert.matches("HTTP 503", events[2][2].message, 1, true)
      assert.equals(label, events[3][2].credential)
      assert.equals("discovery", events[4][2].module)
      assert.equals(1, events[4][2].attempt)
      -- No secret in what the hooks saw.
      for _, e in ipairs(events) do
        assert.is_nil(tostring(e[2].message):find("BEGIN PRIVATE KEY", 1, true))
      end

      local text = metrics.prometheus()
      local function value(name, labels)
        for line in text:gmatch("[^\n]+") do
          local n, l, v = line:match("^([%w_]+){(.-)} (%S+)$")
          if n == name and l == labels then return tonumber(v) end
        end
      end
      local cl = 'credential="' .. label .. '",key="' .. c:cache_key():sub(-8) .. '"'
      assert.equals(2, value("gauth_token_exchanges_total", cl))
      assert.equals(1, value("gauth_token_failures_total", cl))
      -- token() calls: a failure, then an exchange (misses); then a hit.
      assert.equals(2, value("gauth_cache_misses_total", cl))
      assert.is_true(value("gauth_cache_hits_total", cl) >= 1)
      assert.is_true(value("gauth_token_refresh_seconds_total", cl) > 0)
      local host = fake.url:match("^https://([^/]+)")
      assert.is_true(value("gauth_api_requests_total",
        'host="' .. host .. '",status="500"') >= 1)
      assert.is_true(value("gauth_api_requests_total",
        'host="' .. host .. '",status="200"') >= 2)
      assert.is_true(value("gauth_api_retries_total", 'host="' .. host .. '"') >= 1)
      assert.matches("# TYPE gauth_token_exchanges_total counter", text, 1, true)
      local errline = text:match("gauth_token_last_error_timestamp_seconds{" .. cl:gsub("%p", "%%%0")
                                 .. ',error="([^\n]*)"} %d+')
      assert.matches("HTTP 503", errline, 1, true)
    end)

    it("gauth.on refuses an unknown event (nil, msg, err) and raises without a function", function()
      local ok, msg, err = gauth.on("refreshed", function() end)
      assert.is_nil(ok)
      assert.equals("gauth.metrics: on: unknown event refreshed (known: failure, refresh, retry)", msg)
      assert.equals("metrics", err.module)
      assert.equals("on", err.step)
      assert.error_matches(function() gauth.on("refresh", "not a function") end,
        "gauth.on: fn must be a function", 1, true)
    end)
  end)

  describe("build()", function()
    local dir
    local TEMPLATE_PATH = "/discovery/v1/apis/{api}/{apiVersion}/rest"
    local DOC_PATH = "/discovery/v1/apis/sqladmin/v1beta4/rest"

    before_each(function()
      dir = helpers.tmpname("discovery-cache")
    end)

    local function opts(extra)
      local o = { http = http, cache_dir = dir, discovery_url = fake.url .. TEMPLATE_PATH,
                  api_endpoint = fake.url .. "/", credentials = creds(), sleep = sleep }
      for k, v in pairs(extra or {}) do o[k] = v end
      return o
    end

    local function cache_files()
      local _, out = helpers.sh("ls " .. q(dir) .. " 2>/dev/null")
      local list = {}
      for name in out:gmatch("%S+") do list[#list + 1] = dir .. "/" .. name end
      return list
    end

    it("fetches the document, caches it in the process and on disk, and the service works", function()
      local text = shared_doc("sqladmin.v1beta4.json")
      if not text then return end
      fake:script(DOC_PATH, { { status = 200, body = text } })
      local sql = assert(discovery.build("sqladmin", "v1beta4", opts()))
      local got = fake:requests(DOC_PATH)
      assert.equals(1, #got)
      assert.equals("GET", got[1].method)
      assert.equals("application/json", got[1].headers.accept)
      assert.is_nil(got[1].headers.authorization, "documents are fetched without credentials")

      fake:script(LIST_PATH, { { status = 200, body = { kind = "sql#instancesList" } } })
      local resp = assert(sql:instances():list({ project = PROJECT }):execute())
      assert.equals("sql#instancesList", resp.kind)

      -- in-process cache: no second request
      assert(discovery.build("sqladmin", "v1beta4", opts()))
      assert.equals(1, #fake:requests(DOC_PATH))

      -- disk cache: written whole, read after the process cache is cleared
      local files = cache_files()
      assert.equals(1, #files)
      assert.not_matches("%.tmp%.", files[1])
      local cached = assert(helpers.read_file(files[1]))
      assert.equals(text, cached:match("^gauth%-discovery%-cache 1 %d+\n(.*)$"))
      discovery.clear_cache()
      sql = assert(discovery.build("sqladmin", "v1beta4", opts()))
      assert.equals(1, #fake:requests(DOC_PATH))
      assert.matches(LIST_PATH, sql:instances():list({ project = PROJECT }).uri, 1, true)
    end)

    it("reads the disk cache from a fresh process", function()
      local text = shared_doc("sqladmin.v1beta4.json")
      if not text then return end
      fake:script(DOC_PATH, { { status = 200, body = text } })
      assert(discovery.build("sqladmin", "v1beta4", opts()))
      assert.equals(1, #fake:requests(DOC_PATH))
      local root = helpers.root
      local build_dir = os.getenv("GAUTH_BUILD")
        or (root .. "/build/" .. (jit and "5.1" or _VERSION:match("%d+%.%d+")))  -- luacheck: ignore
      local lua = os.getenv("GAUTH_LUA") or (jit and "luajit" or "lua5.4")  -- luacheck: ignore
      local script = helpers.write_file(helpers.tmpname("fresh", ".lua"), ([[
        local discovery = require "gauth.discovery"
        local http = assert(require("gauth.transport.curl").new({ ca_file = %q }))
        local svc = assert(discovery.build("sqladmin", "v1beta4", {
          http = http, cache_dir = %q, discovery_url = %q, api_endpoint = %q }))
        io.write(svc:instances():list({ project = %q }).uri)
      ]]):format(fake.ca_file, dir, fake.url .. TEMPLATE_PATH, fake.url .. "/", PROJECT))
      local ok, out = helpers.sh(("LUA_PATH=%s LUA_CPATH=%s %s %s"):format(
        q(root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;;"), q(build_dir .. "/?.so;;"),
        q(lua), q(script)))
      assert(ok, out)
      assert.equals(fake.url .. LIST_PATH .. "?alt=json", out)
      assert.equals(1, #fake:requests(DOC_PATH), "no second fetch")
    end)

    it("refetches an expired cache file and a corrupt one", function()
      local text = shared_doc("sqladmin.v1beta4.json")
      if not text then return end
      fake:script(DOC_PATH, { { status = 200, body = text }, { status = 200, body = text },
                              { status = 200, body = text }, { status = 200, body = text } })
      assert(discovery.build("sqladmin", "v1beta4", opts()))
      local file = cache_files()[1]
      -- written two days ago: older than the default day
      helpers.write_file(file, "gauth-discovery-cache 1 " .. (os.time() - 2 * 86400) .. "\n" .. text)
      discovery.clear_cache()
      local before = os.time()
      assert(discovery.build("sqladmin", "v1beta4", opts()))
      local after = os.time() + 1
      assert.equals(2, #fake:requests(DOC_PATH))
      local stamp = tonumber(helpers.read_file(file):match("^gauth%-discovery%-cache 1 (%d+)\n"))
      -- rewritten with the time of the build: read between before and after
      assert.is_true(before <= stamp and stamp <= after, "stamp " .. stamp)

      -- a shorter max age makes a younger file stale
      helpers.write_file(file, "gauth-discovery-cache 1 " .. (os.time() - 120) .. "\n" .. text)
      discovery.clear_cache()
      assert(discovery.build("sqladmin", "v1beta4", opts()))
      assert.equals(2, #fake:requests(DOC_PATH), "within a day: from disk")
      discovery.clear_cache()
      assert(discovery.build("sqladmin", "v1beta4", opts({ cache_max_age = 60 })))
      assert.equals(3, #fake:requests(DOC_PATH))

      -- corrupt: cut in the middle
      helpers.write_file(file, "gauth-discovery-cache 1 " .. os.time() .. "\n" .. text:sub(1, 5000))
      discovery.clear_cache()
      local sql = assert(discovery.build("sqladmin", "v1beta4", opts()))
      assert.equals(4, #fake:requests(DOC_PATH))
      assert.equals(text, helpers.read_file(file):match("\n(.*)$"))
      assert.is_function(sql.instances)
    end)

    it("returns nil, err for an unknown API (404), after trying each URL", function()
      local t1 = fake.url .. TEMPLATE_PATH
      local t2 = fake.url .. "/{api}/$discovery/rest?version={apiVersion}"
      local s, msg, err = discovery.build("nope", "v9", opts({ discovery_url = { t1, t2 } }))
      assert.is_nil(s)
      helpers.assert_failure(msg, err)
      assert.is_true(errors.is(err))
      assert.equals(404, err.status)
      assert.matches("unknown API or version: nope v9", tostring(err))
      local got = fake:requests()
      assert.equals(2, #got)
      assert.equals("/discovery/v1/apis/nope/v9/rest", got[1].path)
      assert.equals("/nope/$discovery/rest", got[2].path)
      assert.equals("version=v9", got[2].query)
      assert.same({}, cache_files())
    end)

    it("falls back to the second URL when the first answers 404", function()
      local text = shared_doc("sqladmin.v1beta4.json")
      if not text then return end
      local t2 = fake.url .. "/{api}/$discovery/rest?version={apiVersion}"
      fake:script("/sqladmin/$discovery/rest", { { status = 200, body = text } })
      local sql = assert(discovery.build("sqladmin", "v1beta4",
                                         opts({ discovery_url = { fake.url .. TEMPLATE_PATH, t2 } })))
      local got = fake:requests()
      assert.equals(2, #got)
      assert.equals(DOC_PATH, got[1].path)
      assert.equals("/sqladmin/$discovery/rest", got[2].path)
      assert.equals("version=v1beta4", got[2].query)
      assert.is_function(sql.instances)
      -- the document is cached under the URL that had it
      discovery.clear_cache()
      assert(discovery.build("sqladmin", "v1beta4", opts({ discovery_url = { fake.url .. TEMPLATE_PATH, t2 } })))
      assert.equals(3, #fake:requests(), "the first URL is asked again, the second comes from disk")
    end)

    it("returns other failures as nil, err", function()
      fake:script(DOC_PATH, { { status = 500, body = google_error(500, "INTERNAL", "oops") },
                              { status = 200, body = "<html>not a document</html>" } })
      local s, msg, err = discovery.build("sqladmin", "v1beta4", opts())
      assert.is_nil(s)
      helpers.assert_failure(msg, err)
      assert.equals(500, err.status)
      s, msg, err = discovery.build("sqladmin", "v1beta4", opts())
      assert.is_nil(s)
      helpers.assert_failure(msg, err)
      assert.matches("not a Discovery document", tostring(err))
      s, msg, err = discovery.build("sqladmin", "v1beta4",
        opts({ discovery_url = "https://127.0.0.1:" .. closed_port() .. TEMPLATE_PATH }))
      assert.is_nil(s)
      helpers.assert_failure(msg, err)
      assert.equals("discovery", err.module)
      assert.equals(7, err.curl_code)
      assert.same({}, cache_files())
    end)

    it("keeps the disk cache in a 0700 folder, files 0600, the API key in no file name", function()
      local text = shared_doc("sqladmin.v1beta4.json")
      if not text then return end
      fake:script(DOC_PATH, { { status = 200, body = text } })
      dir = dir .. "/a/b"  -- parents made too
      assert(discovery.build("sqladmin", "v1beta4", opts({ api_key = "SECRET-API-KEY-42" })))
      assert.equals("SECRET-API-KEY-42", helpers.parse_form(fake:requests(DOC_PATH)[1].query).key)
      local core = require "gauth.core"
      local kind, mode = core.file_stat(dir)
      assert.equals("dir", kind)
      assert.equals(tonumber("700", 8), mode)
      local files = cache_files()
      assert.equals(1, #files)
      assert.is_nil(files[1]:find("SECRET", 1, true))
      assert.is_nil(files[1]:find("key", 1, true))
      kind, mode = core.file_stat(files[1])
      assert.equals("file", kind)
      assert.equals(tonumber("600", 8), mode)
    end)

    it("ignores, with a warning, cache files and folders of another user or writable by others", function()
      local text = shared_doc("sqladmin.v1beta4.json")
      if not text then return end
      local responses = {}
      for i = 1, 5 do responses[i] = { status = 200, body = text } end
      fake:script(DOC_PATH, responses)
      -- a planted document: its rootUrl sends tokens to another host
      local planted = cjson.decode(text)
      planted.rootUrl = "http://attacker.example/"
      local planted_text = "gauth-discovery-cache 1 " .. os.time() .. "\n" .. cjson.encode(planted)
      assert(discovery.build("sqladmin", "v1beta4", opts()))
      local file = cache_files()[1]
      local real_list = cjson.decode(text).rootUrl .. LIST_PATH:sub(2) .. "?alt=json"
      local warnings = {}
      local real_stderr = io.stderr
      io.stderr = { write = function(_, ...)  -- luacheck: ignore
        warnings[#warnings + 1] = table.concat({ ... })
      end }
      local ok, err = pcall(function()
        local function build_again()
          discovery.clear_cache()
          local o = opts()
          o.api_endpoint = nil  -- the document's rootUrl says where requests go
          local svc = assert(discovery.build("sqladmin", "v1beta4", o))
          return svc:instances():list({ project = PROJECT }).uri
        end
        -- another user's file
        helpers.write_file(file, planted_text)
        assert(os.execute("chown 65534 " .. q(file)))
        assert.equals(real_list, build_again())
        assert.equals(2, #fake:requests(DOC_PATH))
        -- our own file, but writable by others
        assert(os.execute("chown 0 " .. q(file) .. " && chmod 0666 " .. q(file)))
        helpers.write_file(file, planted_text)
        assert.equals(real_list, build_again())
        assert.equals(3, #fake:requests(DOC_PATH))
        -- a folder writable by its group: neither read nor written
        assert(os.execute("chmod 0600 " .. q(file) .. " && chmod 0770 " .. q(dir)))
        helpers.write_file(file, planted_text)
        assert.equals(real_list, build_again())
        assert.equals(4, #fake:requests(DOC_PATH))
        assert.equals(planted_text, helpers.read_file(file))
        -- made ours alone again: the file is read (the planted rootUrl is
        -- then what credentials are refused for: see the execute specs)
        assert(os.execute("chmod 0700 " .. q(dir)))
        assert.equals("http://attacker.example/sql/v1beta4/projects/" .. PROJECT .. "/instances?alt=json",
                      build_again())
        assert.equals(4, #fake:requests(DOC_PATH))
      end)
      io.stderr = real_stderr  -- luacheck: ignore
      assert(ok, err)
      local all = table.concat(warnings, "\n")
      assert.matches("gauth.discovery: not using the disk cache " .. file
                     .. ": owned by another user (uid 65534)", all, 1, true)
      assert.matches("gauth.discovery: not using the disk cache " .. file
                     .. ": writable by its group or by others", all, 1, true)
      assert.matches("gauth.discovery: not using the disk cache " .. dir
                     .. ": writable by its group or by others", all, 1, true)
    end)

    it("with cache = false fetches every time and writes nothing", function()
      local text = shared_doc("sqladmin.v1beta4.json")
      if not text then return end
      fake:script(DOC_PATH, { { status = 200, body = text }, { status = 200, body = text } })
      assert(discovery.build("sqladmin", "v1beta4", opts({ cache = false })))
      assert(discovery.build("sqladmin", "v1beta4", opts({ cache = false })))
      assert.equals(2, #fake:requests(DOC_PATH))
      assert.same({}, cache_files())
    end)
  end)
end)
