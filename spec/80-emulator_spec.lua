-- gauth.emulator: the local stand-in for Google. Talks to it with the curl
-- command, raw luasocket, PyJWT and (where Debian has them) Google's own
-- Python client libraries; never with gauth's own transport, so that these
-- specs judge the emulator and not the code it is meant to test. The one
-- exception is the last block ("with gauth's own credentials and
-- discovery"): a SMOKE TEST of gauth against its own emulator, which
-- proves only that the two agree, not that either agrees with Google.

local cjson = require "cjson.safe"
local helpers = require "helpers"
local socket = require "socket"
local emulator = require "gauth.emulator"
local jwt = require "gauth.jwt"

local PY = "/usr/bin/python3"   -- Debian's, with python3-jwt (not pyenv's)
local PROJECT = "exemplary-example-123"
local JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
local SCOPE_SQL = "https://www.googleapis.com/auth/sqlservice.admin"
local SCOPE_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
local MSG_TIME_WINDOW = "Invalid JWT: Token must be a short-lived token "
  .. "(60 minutes) and in a reasonable timeframe. Check your iat and exp "
  .. "values in the JWT claim."

------------------------------------------------------------------------
-- helpers

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function run(cmd)
  local r = os.execute(cmd)
  return r == true or r == 0
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function urlenc(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end

local function mktemp_dir()
  local p = io.popen("mktemp -d")
  local d = p:read("*l")
  p:close()
  return d
end

-- One HTTP exchange with the curl command.
-- @return { status, headers (lower-case), body, json }
local function http(method, url, opts)
  opts = opts or {}
  local hf, bf = os.tmpname(), os.tmpname()
  local cmd = { "curl -s -S --max-time 20 -o", q(bf), "-D", q(hf),
                "-w '%{http_code}'", "-X", method }
  for k, v in pairs(opts.headers or {}) do
    cmd[#cmd + 1] = "-H " .. q(k .. ": " .. v)
  end
  local df
  if opts.body then
    df = os.tmpname()
    write(df, opts.body)
    cmd[#cmd + 1] = "--data-binary @" .. q(df)
  end
  cmd[#cmd + 1] = q(url)
  local p = io.popen(table.concat(cmd, " ") .. " 2>&1")
  local code = p:read("*a")
  p:close()
  local head, body = read(hf) or "", read(bf) or ""
  os.remove(hf); os.remove(bf)
  if df then os.remove(df) end
  -- -D writes every header block (100 Continue first); keep the last.
  local blocks = {}
  for block in (head .. "\r\n\r\n"):gmatch("(.-)\r\n\r\n") do
    if block ~= "" then blocks[#blocks + 1] = block end
  end
  local headers = {}
  for line in ((blocks[#blocks] or "") .. "\r\n"):gmatch("(.-)\r\n") do
    local k, v = line:match("^([^:]+):%s*(.*)$")
    if k then headers[k:lower()] = v end
  end
  return { status = tonumber(code), headers = headers, body = body,
           json = cjson.decode(body) }
end

local function form(pairs_list)
  local out = {}
  for i, kv in ipairs(pairs_list) do out[i] = urlenc(kv[1]) .. "=" .. urlenc(kv[2]) end
  return table.concat(out, "&")
end

local PYJWT = [[
import json, sys, jwt
a = json.load(open(sys.argv[1]))
print(jwt.encode(a["claims"], a["key"], algorithm="RS256", headers=a.get("headers")))
]]

-- A JWT made by PyJWT: an implementation that is not gauth's.
local function pyjwt(claims, pem, headers)
  local inp = os.tmpname()
  write(inp, cjson.encode({ claims = claims, key = pem, headers = headers }))
  local p = io.popen(PY .. " -c " .. q(PYJWT) .. " " .. q(inp) .. " 2>&1")
  local out = p:read("*a")
  p:close()
  os.remove(inp)
  local tok = out:match("^%s*([%w_%-]+%.[%w_%-]+%.[%w_%-]+)%s*$")
  assert(tok, "PyJWT failed: " .. out)
  return tok
end

-- A service-account key file shaped like Google's, with a 2048-bit RSA key
-- made by the openssl command.
local function new_key(dir, name, token_uri)
  local pem_path = dir .. "/" .. name .. ".pem"
  assert(run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "
             .. q(pem_path) .. " 2>/dev/null"), "openssl genpkey failed")
  local pem = read(pem_path)
  os.remove(pem_path)
  local key = {
    type = "service_account",
    project_id = PROJECT,
    private_key_id = ("%08x"):format(math.random(0, 0x7fffffff)) .. "0123456789abcdef0123456789abcdef",
    private_key = pem,
    client_email = name .. "@" .. PROJECT .. ".iam.gserviceaccount.com",
    client_id = "109876543210987654321",
    auth_uri = "https://accounts.google.com/o/oauth2/auth",
    token_uri = token_uri or "https://oauth2.googleapis.com/token",
    auth_provider_x509_cert_url = "https://www.googleapis.com/oauth2/v1/certs",
    client_x509_cert_url = "https://www.googleapis.com/robot/v1/metadata/x509/x",
  }
  local path = dir .. "/" .. name .. ".json"
  write(path, cjson.encode(key))
  return key, path
end

local function pid_alive(pid)
  local s = read("/proc/" .. pid .. "/stat")
  if not s then return false end
  local state = s:match("^%d+ %(.*%) (%S+)")
  return state ~= "Z" and state ~= "X"
end

-- Raw bytes to the server; returns everything it answers until it closes
-- (or `timeout` passes), and whether it did close.
local function raw(port, data, timeout)
  local s = socket.tcp()
  s:settimeout(timeout or 3)
  assert(s:connect("127.0.0.1", port))
  s:send(data)
  local got, err, partial = s:receive("*a")
  s:close()
  return got or partial, got ~= nil or err ~= "timeout"
end

-- Read one HTTP response off a keep-alive socket.
local function read_response(s)
  local status_line = assert(s:receive("*l"))
  local headers = {}
  while true do
    local line = assert(s:receive("*l"))
    if line == "" then break end
    local k, v = line:match("^([^:]+):%s*(.*)$")
    headers[k:lower()] = v
  end
  local body = s:receive(tonumber(headers["content-length"] or 0))
  return tonumber(status_line:match("^HTTP/1%.1 (%d+)")), headers, body
end

local function has_python_client()
  return run(PY .. " -c 'import googleapiclient.discovery, google.oauth2.service_account, "
             .. "google_auth_httplib2' 2>/dev/null")
end

------------------------------------------------------------------------

describe("gauth.emulator", function()
  local dir, key, key_path, other_key, emu

  local function assertion(over, signer, headers)
    local now = os.time()
    local claims = { iss = key.client_email, scope = SCOPE_SQL,
                     aud = emu.token_uri, iat = now, exp = now + 3600 }
    for k, v in pairs(over or {}) do
      if v == false then claims[k] = nil else claims[k] = v end
    end
    signer = signer or key
    return pyjwt(claims, signer.private_key,
                 headers or { kid = signer.private_key_id })
  end

  local function exchange(a, extra)
    local body = { { "grant_type", JWT_BEARER }, { "assertion", a } }
    for _, kv in ipairs(extra or {}) do body[#body + 1] = kv end
    return http("POST", emu.token_uri, { body = form(body), headers = {
      ["Content-Type"] = "application/x-www-form-urlencoded" } })
  end

  local function token(scope)
    local r = exchange(assertion({ scope = scope or SCOPE_SQL }))
    assert.are.equal(200, r.status, r.body)
    return r.json.access_token
  end

  local function api(method, path, tok, body)
    local headers = {}
    if tok then headers.Authorization = "Bearer " .. tok end
    if body then headers["Content-Type"] = "application/json" end
    return http(method, emu.url .. path, { headers = headers, body = body })
  end

  local V1 = "/v1/projects/" .. PROJECT .. "/instances"
  local V1BETA4 = "/sql/v1beta4/projects/" .. PROJECT .. "/instances"

  lazy_setup(function()
    math.randomseed(os.time())
    dir = mktemp_dir()
    key, key_path = new_key(dir, "emulator-spec")
    other_key = new_key(dir, "not-registered")
    emu = assert(emulator.start{ port = 0, key_file = key_path })
    -- The client side of the key file points at the emulator.
    key.token_uri = emu.token_uri
    write(key_path, cjson.encode(key))
  end)

  lazy_teardown(function()
    if emu then emu:stop() end
    if dir then run("rm -rf " .. q(dir)) end
  end)

  describe("start and stop", function()
    it("starts on a free loopback port and describes itself", function()
      assert.matches("^http://127%.0%.0%.1:%d+$", emu.url)
      assert.is_true(emu.port > 0)
      assert.are.equal(emu.url .. "/token", emu.token_uri)
      assert.are.equal("127.0.0.1:" .. emu.port, emu.metadata_host)
      assert.are.equal(PROJECT, emu.project)
      assert.is_true(pid_alive(emu.pid))
      assert.is_true(emu:running())
    end)

    it("stop() ends the child process and is idempotent", function()
      local e = assert(emulator.start{ port = 0 })
      local pid = e.pid
      assert.is_true(pid_alive(pid))
      assert.is_true(e:stop())
      assert.is_false(pid_alive(pid))
      assert.is_false(e:running())
      assert.is_true(e:stop())
      -- Nothing listens there any more.
      local s = socket.tcp()
      s:settimeout(1)
      assert.is_nil(s:connect("127.0.0.1", e.port))
      s:close()
    end)

    it("does not outlive a parent that never called stop()", function()
      local lua = os.getenv("GAUTH_LUA") or "lua5.4"
      local code = ("package.path = %q; package.cpath = %q; "
        .. "local e = assert(require('gauth.emulator').start{}); "
        .. "io.write(e.pid, '\\n'); io.stdout:flush(); os.exit(0, false)"):format(
        package.path, package.cpath)
      local p = io.popen(q(lua) .. " -e " .. q(code))
      local pid = tonumber(p:read("*l"))
      p:close()
      assert.truthy(pid)
      local gone = false
      for _ = 1, 400 do
        if not pid_alive(pid) then gone = true break end
        require("gauth.core").sleep(0.01)
      end
      assert.is_true(gone)
    end)

    it("refuses to bind anything but loopback", function()
      local e, msg, err = emulator.start{ host = "0.0.0.0" }
      assert.is_nil(e)
      helpers.assert_failure(msg, err)
      assert.matches("loopback only", tostring(err))
      assert.are.equal("emulator", err.module)
      local srv, msg_err2, err2 = emulator.new{ host = "10.1.2.3" }
      assert.is_nil(srv)
      helpers.assert_failure(msg_err2, err2)
      assert.matches("loopback only", tostring(err2))
    end)

    it("reports a key it cannot read, without starting anything", function()
      local bad = dir .. "/bad.json"
      write(bad, '{"type":"service_account","client_email":"x@y","private_key":"not a key"}')
      local e, msg, err = emulator.start{ key_file = bad }
      assert.is_nil(e)
      helpers.assert_failure(msg, err)
      assert.matches("cannot read private_key", tostring(err))
      local e2, msg_err2, err2 = emulator.start{ key_file = dir .. "/missing.json" }
      assert.is_nil(e2)
      helpers.assert_failure(msg_err2, err2)
      assert.matches("key_file", tostring(err2))
    end)

    it("reports a child that cannot start", function()
      local e, msg, err = emulator.start{ lua = dir .. "/no-such-lua", timeout = 5 }
      assert.is_nil(e)
      helpers.assert_failure(msg, err)
      assert.matches("exited", tostring(err))
    end)

    it("restarts on the same port at once (SO_REUSEADDR before bind)", function()
      local e = assert(emulator.start{ port = 0 })
      local port = e.port
      -- The server closes this connection first: its side lingers in
      -- TIME_WAIT, which refuses a bind without SO_REUSEADDR.
      assert.are.same({}, assert(e:requests()))
      assert.is_true(e:stop())
      local e2, err = emulator.start{ port = port, timeout = 5 }
      assert.is_nil(err)
      assert.are.equal(port, e2.port)
      assert.are.same({}, assert(e2:requests()))
      assert.is_true(e2:stop())
      -- In process too.
      local srv = assert(emulator.new{ port = 0 })
      port = srv.port
      local c = socket.tcp()
      c:settimeout(5)
      assert(c:connect("127.0.0.1", port))
      c:send("GET /discovery/v1/apis HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      for _ = 1, 10 do srv:step(0.05) end
      local status = read_response(c)
      c:close()
      assert.are.equal(200, status)
      srv:close()
      local srv2, err2 = emulator.new{ port = port }
      assert.is_nil(err2)
      assert.are.equal(port, srv2.port)
      srv2:close()
    end)

    it("start and new give the one handle type, with methods", function()
      local srv = assert(emulator.new{ port = 0, instances = {} })
      assert.equal(getmetatable(emu), getmetatable(srv))
      assert.equal(emulator.Handle, getmetatable(srv).__index)
      for _, h in ipairs({ emu, srv }) do
        assert.equal(h.url .. "/token", h.token_uri)
        assert.equal(h.url .. "/discovery/v1/apis/{api}/{apiVersion}/rest", h.discovery_url)
      end
      -- In process: requests()/clear_requests() read and clear the trace;
      -- running() until stop(); close() is stop()'s old name.
      local s = socket.tcp()
      s:settimeout(5)
      assert(s:connect("127.0.0.1", srv.port))
      s:send("GET /discovery/v1/apis HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      for _ = 1, 10 do srv:step(0.05) end
      assert.equal(200, (read_response(s)))
      s:close()
      assert.equal(1, #assert(srv:requests()))
      assert.is_true(srv:clear_requests())
      assert.same({}, assert(srv:requests()))
      assert.is_true(srv:running())
      assert.is_true(srv:stop())
      assert.is_false(srv:running())
      assert.is_true(srv:close())
      -- Programming errors raise, naming the fix.
      assert.error_matches(function() emu.stop() end,
        "gauth.emulator: stop is a method: call it as emu:stop()", 1, true)
      assert.error_matches(function() emu:step(0) end,
        "gauth.emulator: step is for a server made by new (start's runs in its child)", 1, true)
      -- A child that is gone: requests() answers nil, msg, err.
      local e = assert(emulator.start{ port = 0 })
      assert.is_true(e:stop())
      local list, msg, err = e:requests()
      assert.is_nil(list)
      helpers.assert_failure(msg, err, "emulator", "requests")
    end)

    it("reports an occupied port", function()
      local e, msg, err = emulator.start{ port = emu.port, timeout = 5 }
      assert.is_nil(e)
      helpers.assert_failure(msg, err)
      assert.matches("bind", tostring(err))
    end)

    it("serves in-process too (new/step/close)", function()
      local srv = assert(emulator.new{ port = 0, instances = {} })
      assert.matches("^http://127%.0%.0%.1:%d+$", srv.url)
      local s = socket.tcp()
      s:settimeout(5)
      assert(s:connect("127.0.0.1", srv.port))
      s:send("GET /discovery/v1/apis HTTP/1.1\r\nHost: x\r\n\r\n")
      for _ = 1, 10 do srv:step(0.05) end
      local status, _, body = read_response(s)
      s:close()
      srv:close()
      assert.are.equal(200, status)
      assert.are.equal("discovery#directoryList", cjson.decode(body).kind)
      assert.are.equal(1, #srv:requests())
    end)
  end)

  describe("token endpoint", function()
    it("accepts an assertion made by PyJWT and answers like Google", function()
      local r = exchange(assertion())
      assert.are.equal(200, r.status, r.body)
      assert.matches("^application/json", r.headers["content-type"])
      assert.matches("^ya29%.", r.json.access_token)
      assert.are.equal(3599, r.json.expires_in)
      assert.are.equal("Bearer", r.json.token_type)
      assert.matches("no%-store", r.headers["cache-control"])
    end)

    it("accepts an assertion without kid, and a JSON body", function()
      local r = exchange(assertion(nil, nil, {}))
      assert.are.equal(200, r.status, r.body)
      local j = http("POST", emu.token_uri, {
        body = cjson.encode({ grant_type = JWT_BEARER, assertion = assertion() }),
        headers = { ["Content-Type"] = "application/json" } })
      assert.are.equal(200, j.status, j.body)
    end)

    it("refuses a bad signature", function()
      local r = exchange(assertion(nil, other_key, { kid = key.private_key_id }))
      assert.are.equal(400, r.status)
      assert.are.same({ error = "invalid_grant",
                        error_description = "Invalid JWT Signature." }, r.json)
      -- A tampered payload is the same failure.
      local a = assertion()
      local h, _, s = a:match("^([^.]+)%.([^.]+)%.([^.]+)$")
      local forged = require("gauth.core").b64url_encode(cjson.encode({
        iss = key.client_email, scope = SCOPE_PLATFORM, aud = emu.token_uri,
        iat = os.time(), exp = os.time() + 3600 }))
      r = exchange(h .. "." .. forged .. "." .. s)
      assert.are.equal(400, r.status)
      assert.are.equal("Invalid JWT Signature.", r.json.error_description)
      r = exchange("not-a-jwt")
      assert.are.same({ error = "invalid_grant",
                        error_description = "Invalid JWT Signature." }, r.json)
    end)

    it("refuses the wrong audience", function()
      local r = exchange(assertion({ aud = "https://oauth2.googleapis.com/token" }))
      assert.are.equal(400, r.status)
      assert.are.equal("invalid_grant", r.json.error)
      assert.are.equal("Invalid JWT: Failed audience check. The expected value was "
                       .. emu.token_uri, r.json.error_description)
    end)

    it("refuses expired, future and too long-lived assertions", function()
      local now = os.time()
      for _, c in ipairs({
        { iat = now - 7200, exp = now - 3600 },   -- expired
        { iat = now + 600, exp = now + 1200 },    -- issued in the future
        { iat = now, exp = now + 7200 },          -- lives two hours
        { iat = false, exp = now + 60 },          -- no iat
        { iat = now, exp = "soon" },              -- not a number
      }) do
        local r = exchange(assertion(c))
        assert.are.equal(400, r.status, r.body)
        assert.are.same({ error = "invalid_grant", error_description = MSG_TIME_WINDOW },
                        r.json)
      end
    end)

    it("refuses an unknown account, a missing scope, a bad grant type", function()
      local r = exchange(assertion({ iss = "stranger@" .. PROJECT .. ".iam.gserviceaccount.com" }))
      assert.are.same({ error = "invalid_grant",
                        error_description = "Invalid grant: account not found" }, r.json)
      r = exchange(assertion({ scope = false }))
      assert.are.equal(400, r.status)
      assert.are.equal("invalid_scope", r.json.error)
      r = http("POST", emu.token_uri, { body = "grant_type=password&username=x" })
      assert.are.same({ error = "unsupported_grant_type",
                        error_description = "Invalid grant_type: password" }, r.json)
      r = http("POST", emu.token_uri, { body = "grant_type=" .. urlenc(JWT_BEARER) })
      assert.are.same({ error = "invalid_request",
                        error_description = "Missing required parameter: assertion" }, r.json)
      r = http("GET", emu.token_uri)
      assert.are.equal(405, r.status)
    end)

    it("issues an ID token for target_audience, verifiable with its certs", function()
      local r = exchange(assertion({ scope = false, target_audience = "https://svc.example" }))
      assert.are.equal(200, r.status, r.body)
      assert.is_nil(r.json.access_token)
      local certs = http("GET", emu.url .. "/oauth2/v3/certs").json
      assert.are.equal("RSA", certs.keys[1].kty)
      local claims = assert(jwt.decode(r.json.id_token, { keys = certs,
                                                          audience = "https://svc.example" }))
      assert.are.equal("https://accounts.google.com", claims.iss)
      assert.are.equal(key.client_email, claims.email)
      -- Google's PEM (v1) format carries the same key.
      local v1 = http("GET", emu.url .. "/oauth2/v1/certs").json
      local pem = v1[certs.keys[1].kid]
      assert.matches("BEGIN CERTIFICATE", pem)
      assert.truthy(jwt.decode(r.json.id_token, { keys = pem }))
    end)

    it("serves its certificates in both formats, with a max-age, for gauth.id_token", function()
      local id_token = require "gauth.id_token"
      local r = exchange(assertion({ scope = false, target_audience = "https://svc.example" }))
      assert.are.equal(200, r.status, r.body)
      for _, path in ipairs({ "/oauth2/v1/certs", "/oauth2/v3/certs" }) do
        local o = { certs_url = emu.url .. path, cache = assert(id_token.new_cache()) }
        local claims = assert(id_token.verify_oauth2_token(r.json.id_token, "https://svc.example", o))
        assert.are.equal(key.client_email, claims.email)
        local v, msg, err = id_token.verify_oauth2_token(r.json.id_token, "https://other.example", o)
        assert.is_nil(v)
        assert.are.equal("gauth.id_token: claims: audience mismatch", msg)
        assert.are.equal("aud", err.check)
        local res = http("GET", emu.url .. path)
        assert.are.equal(3600, id_token.max_age(res.headers["cache-control"]))
      end
    end)

    it("refuses a subject not allowed for delegation", function()
      local e = assert(emulator.start{ keys = { key }, subjects = { "boss@example.com" } })
      local now = os.time()
      local function try(sub)
        local a = pyjwt({ iss = key.client_email, sub = sub, scope = SCOPE_SQL,
                          aud = e.token_uri, iat = now, exp = now + 600 },
                        key.private_key, { kid = key.private_key_id })
        return http("POST", e.token_uri, { body = form({ { "grant_type", JWT_BEARER },
                                                         { "assertion", a } }) })
      end
      local ok_r, bad_r = try("boss@example.com"), try("intern@example.com")
      e:stop()
      assert.are.equal(200, ok_r.status, ok_r.body)
      assert.are.equal(401, bad_r.status)
      assert.are.equal("unauthorized_client", bad_r.json.error)
    end)

    it("serves the refresh_token grant for authorized_user files", function()
      local user = { type = "authorized_user", client_id = "client-1.apps.example",
                     client_secret = "s3cret", refresh_token = "1//refresh-me" }
      local user_path = dir .. "/adc.json"
      write(user_path, cjson.encode(user))
      local e = assert(emulator.start{ key_file = user_path })
      local function refresh(id, secret, rt)
        return http("POST", e.token_uri, { body = form({
          { "grant_type", "refresh_token" }, { "client_id", id },
          { "client_secret", secret }, { "refresh_token", rt } }) })
      end
      local good = refresh(user.client_id, user.client_secret, user.refresh_token)
      local wrong_secret = refresh(user.client_id, "nope", user.refresh_token)
      local wrong_client = refresh("other", "nope", user.refresh_token)
      local wrong_token = refresh(user.client_id, user.client_secret, "1//other")
      local listed = http("GET", e.url .. V1, { headers = {
        Authorization = "Bearer " .. tostring(good.json and good.json.access_token) } })
      e:stop()
      assert.are.equal(200, good.status, good.body)
      assert.are.equal("Bearer", good.json.token_type)
      assert.matches("cloud%-platform", good.json.scope)
      assert.are.equal(200, listed.status)
      assert.are.same({ error = "invalid_client", error_description = "Unauthorized" },
                      wrong_secret.json)
      assert.are.equal(401, wrong_secret.status)
      assert.are.same({ error = "invalid_client",
                        error_description = "The OAuth client was not found." },
                      wrong_client.json)
      assert.are.equal(400, wrong_token.status)
      assert.are.equal("invalid_grant", wrong_token.json.error)
    end)
  end)

  describe("metadata server", function()
    local MD = "/computeMetadata/v1/"
    local FLAVOR = { ["Metadata-Flavor"] = "Google" }

    it("requires Metadata-Flavor: Google", function()
      local r = http("GET", emu.url .. MD .. "project/project-id")
      assert.are.equal(403, r.status)
      assert.matches("Missing Metadata%-Flavor:Google header", r.body)
      assert.are.equal("Google", r.headers["metadata-flavor"])
      r = http("GET", emu.url .. MD .. "project/project-id",
               { headers = { ["Metadata-Flavor"] = "google-ish" } })
      assert.are.equal(403, r.status)
      r = http("GET", emu.url .. MD .. "project/project-id", { headers = {
        ["Metadata-Flavor"] = "Google", ["X-Forwarded-For"] = "10.0.0.1" } })
      assert.are.equal(403, r.status)
    end)

    it("answers the ping, project, email and scopes", function()
      local r = http("GET", emu.url .. "/", { headers = FLAVOR })
      assert.are.equal(200, r.status)
      assert.are.equal("Google", r.headers["metadata-flavor"])
      assert.are.equal(PROJECT, http("GET", emu.url .. MD .. "project/project-id",
                                     { headers = FLAVOR }).body)
      local sa = MD .. "instance/service-accounts/default/"
      assert.are.equal(key.client_email, http("GET", emu.url .. sa .. "email",
                                              { headers = FLAVOR }).body)
      local info = http("GET", emu.url .. sa .. "?recursive=true", { headers = FLAVOR }).json
      assert.are.equal(key.client_email, info.email)
      assert.are.same({ SCOPE_PLATFORM }, info.scopes)
      assert.are.equal(404, http("GET", emu.url .. MD .. "no/such/thing",
                                 { headers = FLAVOR }).status)
      assert.are.equal(404, http("GET", emu.url .. MD
        .. "instance/service-accounts/someone-else@x/email", { headers = FLAVOR }).status)
    end)

    it("issues tokens the API accepts, and identity tokens", function()
      local sa = emu.url .. MD .. "instance/service-accounts/default/"
      local r = http("GET", sa .. "token", { headers = FLAVOR })
      assert.are.equal(200, r.status)
      assert.are.equal("Google", r.headers["metadata-flavor"])
      assert.are.equal("Bearer", r.json.token_type)
      assert.is_true(r.json.expires_in > 3000)
      assert.are.equal(200, api("GET", V1, r.json.access_token).status)
      -- Narrowed scopes are honoured, so the API may refuse them.
      local narrow = http("GET", sa .. "token?scopes=" .. urlenc("https://www.googleapis.com/auth/userinfo.email"),
                          { headers = FLAVOR })
      assert.are.equal(403, api("GET", V1, narrow.json.access_token).status)

      local idt = http("GET", sa .. "identity?audience=https%3A%2F%2Fapp.example&format=full",
                       { headers = FLAVOR })
      assert.are.equal(200, idt.status)
      local certs = http("GET", emu.url .. "/oauth2/v3/certs").json
      local claims = assert(jwt.decode(idt.body, { keys = certs, audience = "https://app.example" }))
      assert.are.equal(key.client_email, claims.email)
      assert.are.equal(PROJECT, claims.google.compute_engine.project_id)
      local none = http("GET", sa .. "identity", { headers = FLAVOR })
      assert.are.equal(400, none.status)
      assert.matches("audience", none.body)
    end)
  end)

  describe("discovery", function()
    it("serves its own sqladmin v1beta4 document, pointing at itself", function()
      local r = http("GET", emu.url .. "/discovery/v1/apis/sqladmin/v1beta4/rest")
      assert.are.equal(200, r.status)
      assert.matches("^application/json", r.headers["content-type"])
      local d = assert(r.json, "valid JSON")
      assert.are.equal("discovery#restDescription", d.kind)
      assert.are.equal("v1", d.discoveryVersion)
      assert.are.equal("sqladmin", d.name)
      assert.are.equal("v1beta4", d.version)
      assert.are.equal(emu.url .. "/", d.rootUrl)
      assert.are.equal("", d.servicePath)
      assert.are.equal("batch", d.batchPath)
      for _, p in ipairs({ "alt", "fields", "key", "prettyPrint", "quotaUser" }) do
        assert.are.equal("query", d.parameters[p].location)
      end
      local m = d.resources.instances.methods
      assert.are.equal("sql.instances.list", m.list.id)
      assert.are.equal("sql/v1beta4/projects/{project}/instances", m.list.path)
      assert.are.equal("GET", m.list.httpMethod)
      assert.are.same({ "project" }, m.list.parameterOrder)
      assert.is_true(m.list.parameters.project.required)
      assert.are.equal("path", m.list.parameters.project.location)
      assert.are.equal("InstancesListResponse", m.list.response["$ref"])
      assert.are.equal("DatabaseInstance", m.insert.request["$ref"])
      assert.are.equal("Operation", m.delete.response["$ref"])
      assert.are.same({ "project", "instance" }, m.get.parameterOrder)
      -- Every $ref names a schema that is there.
      local function check(t)
        if type(t) ~= "table" then return end
        if t["$ref"] then assert.truthy(d.schemas[t["$ref"]], t["$ref"]) end
        for _, v in pairs(t) do check(v) end
      end
      check(d)
      for _, meth in pairs(m) do
        assert.truthy(meth.scopes[1])
        for _, s in ipairs(meth.scopes) do assert.truthy(d.auth.oauth2.scopes[s]) end
      end
      local v1 = http("GET", emu.url .. "/discovery/v1/apis/sqladmin/v1/rest").json
      assert.are.equal("v1/projects/{project}/instances/{instance}",
                       v1.resources.instances.methods.get.path)
    end)

    it("lists its documents and answers 404 for others", function()
      local list = http("GET", emu.url .. "/discovery/v1/apis").json
      assert.are.equal("discovery#directoryList", list.kind)
      assert.truthy(#list.items >= 2)
      local r = http("GET", emu.url .. "/discovery/v1/apis/nope/v9/rest")
      assert.are.equal(404, r.status)
      assert.are.equal(404, r.json.error.code)
      assert.are.equal("NOT_FOUND", r.json.error.status)
      assert.are.equal(200, http("GET", emu.url .. "/$discovery/rest?version=v1beta4").status)
    end)

    it("serves the documents it is given, pointed at itself", function()
      local docs = { { kind = "discovery#restDescription", name = "tiny", version = "v2",
                       rootUrl = "https://tiny.googleapis.com/", servicePath = "tiny/v2/",
                       resources = {} },
                     helpers.discovery("storage.v1.json") }
      local e = assert(emulator.start{ documents = docs })
      local tiny = http("GET", e.url .. "/discovery/v1/apis/tiny/v2/rest").json
      local storage = http("GET", e.url .. "/discovery/v1/apis/storage/v1/rest").json
      e:stop()
      assert.are.equal(e.url .. "/", tiny.rootUrl)
      assert.are.equal(e.url .. "/tiny/v2/", tiny.baseUrl)
      assert.are.equal(e.url .. "/", storage.rootUrl)
      assert.truthy(storage.resources.buckets)
    end)
  end)

  describe("Cloud SQL Admin instances", function()
    it("lists the seed with a valid token", function()
      local r = api("GET", V1BETA4, token())
      assert.are.equal(200, r.status, r.body)
      assert.are.equal("sql#instancesList", r.json.kind)
      assert.are.equal(2, #r.json.items)
      local first = r.json.items[1]
      assert.are.equal("sql#instance", first.kind)
      assert.are.equal(PROJECT, first.project)
      assert.are.equal("RUNNABLE", first.state)
      assert.are.equal(emu.url .. V1BETA4 .. "/" .. first.name, first.selfLink)
      assert.is_nil(r.json.nextPageToken)
      -- The cloud-platform scope is as good.
      assert.are.equal(200, api("GET", V1, token(SCOPE_PLATFORM)).status)
      -- Another project has no instances: no items at all, as Google does.
      local other = api("GET", "/v1/projects/another-project/instances", token())
      assert.are.same({ kind = "sql#instancesList" }, other.json)
    end)

    it("gets, inserts, refuses duplicates and deletes", function()
      local tok = token()
      local got = api("GET", V1 .. "/exemplary-mysql", tok)
      assert.are.equal(200, got.status)
      assert.are.equal("exemplary-mysql", got.json.name)
      assert.are.equal(PROJECT .. ":us-central1:exemplary-mysql", got.json.connectionName)

      local ins = api("POST", V1, tok, cjson.encode({ name = "spec-db",
        databaseVersion = "POSTGRES_16", region = "asia-east1",
        settings = { tier = "db-g1-small" } }))
      assert.are.equal(200, ins.status, ins.body)
      assert.are.equal("sql#operation", ins.json.kind)
      assert.are.equal("CREATE", ins.json.operationType)
      assert.are.equal("DONE", ins.json.status)
      assert.are.equal("spec-db", ins.json.targetId)
      assert.are.equal(key.client_email, ins.json.user)
      local op = api("GET", "/v1/projects/" .. PROJECT .. "/operations/" .. ins.json.name, tok)
      assert.are.equal(200, op.status)
      assert.are.equal(ins.json.name, op.json.name)

      local new = api("GET", V1 .. "/spec-db", tok).json
      assert.are.equal("POSTGRES_16", new.databaseVersion)
      assert.are.equal("db-g1-small", new.settings.tier)
      assert.are.equal(3, #api("GET", V1, tok).json.items)

      local dup = api("POST", V1, tok, cjson.encode({ name = "spec-db" }))
      assert.are.equal(409, dup.status)
      assert.are.equal(409, dup.json.error.code)
      assert.are.equal("instanceAlreadyExists", dup.json.error.errors[1].reason)
      assert.are.equal("global", dup.json.error.errors[1].domain)

      local del = api("DELETE", V1 .. "/spec-db", tok)
      assert.are.equal(200, del.status)
      assert.are.equal("DELETE", del.json.operationType)
      local gone = api("GET", V1 .. "/spec-db", tok)
      assert.are.equal(404, gone.status)
      assert.are.same({ error = { code = 404, status = "NOT_FOUND",
        message = "The Cloud SQL instance does not exist.",
        errors = { { message = "The Cloud SQL instance does not exist.",
                     domain = "global", reason = "instanceDoesNotExist" } } } }, gone.json)
      assert.are.equal(404, api("DELETE", V1 .. "/spec-db", tok).status)
      assert.are.equal(2, #api("GET", V1, tok).json.items)
    end)

    it("refuses bad insert bodies", function()
      local tok = token()
      local r = api("POST", V1, tok, "{not json")
      assert.are.equal(400, r.status)
      assert.are.equal("INVALID_ARGUMENT", r.json.error.status)
      r = api("POST", V1, tok, cjson.encode({ databaseVersion = "MYSQL_8_0" }))
      assert.are.equal(400, r.status)
      assert.are.equal("required", r.json.error.errors[1].reason)
      r = api("POST", V1, tok, cjson.encode({ name = "Bad_Name" }))
      assert.are.equal(400, r.status)
    end)

    it("answers 401 without credentials, in Google's shape", function()
      local r = api("GET", V1)
      assert.are.equal(401, r.status)
      assert.matches('^Bearer realm=', r.headers["www-authenticate"])
      assert.are.equal(401, r.json.error.code)
      assert.are.equal("UNAUTHENTICATED", r.json.error.status)
      assert.matches("^Request is missing required authentication credential", r.json.error.message)
      assert.are.equal("required", r.json.error.errors[1].reason)
      for _, bad in ipairs({ "ya29.made-up", "a.b.c" }) do
        r = api("GET", V1, bad)
        assert.are.equal(401, r.status)
        assert.matches("^Request had invalid authentication credentials", r.json.error.message)
        assert.are.same({ message = "Invalid Credentials", domain = "global",
                          reason = "authError", location = "Authorization",
                          locationType = "header" }, r.json.error.errors[1])
      end
      r = http("GET", emu.url .. V1, { headers = { Authorization = "Basic dTpw" } })
      assert.are.equal(401, r.status)
      -- Writes are refused the same way, and change nothing.
      r = api("POST", V1, nil, cjson.encode({ name = "sneaky" }))
      assert.are.equal(401, r.status)
      r = api("DELETE", V1 .. "/exemplary-mysql")
      assert.are.equal(401, r.status)
      assert.are.equal(200, api("GET", V1 .. "/exemplary-mysql", token()).status)
    end)

    it("answers 403 for a token without the right scope", function()
      local r = api("GET", V1, token("https://www.googleapis.com/auth/devstorage.read_only"))
      assert.are.equal(403, r.status)
      assert.are.equal("PERMISSION_DENIED", r.json.error.status)
      assert.are.equal("Request had insufficient authentication scopes.", r.json.error.message)
      assert.are.equal("insufficientPermissions", r.json.error.errors[1].reason)
      assert.are.equal("ACCESS_TOKEN_SCOPE_INSUFFICIENT", r.json.error.details[1].reason)
      assert.matches('error="insufficient_scope"', r.headers["www-authenticate"])
    end)

    it("refuses expired tokens", function()
      local e = assert(emulator.start{ keys = { key }, token_lifetime = 1 })
      local now = os.time()
      local a = pyjwt({ iss = key.client_email, scope = SCOPE_SQL, aud = e.token_uri,
                        iat = now, exp = now + 600 }, key.private_key)
      local t = http("POST", e.token_uri, { body = form({ { "grant_type", JWT_BEARER },
                                                          { "assertion", a } }) })
      local fresh = http("GET", e.url .. V1, { headers = { Authorization = "Bearer " .. t.json.access_token } })
      require("gauth.core").sleep(1.2)
      local stale = http("GET", e.url .. V1, { headers = { Authorization = "Bearer " .. t.json.access_token } })
      e:stop()
      assert.are.equal(200, fresh.status)
      assert.are.equal(401, stale.status)
      assert.are.equal("authError", stale.json.error.errors[1].reason)
    end)

    it("accepts a self-signed JWT for the API, as Google does", function()
      local now = os.time()
      local sj = pyjwt({ iss = key.client_email, sub = key.client_email,
                         aud = emu.url .. "/", iat = now, exp = now + 600 },
                       key.private_key, { kid = key.private_key_id })
      assert.are.equal(200, api("GET", V1, sj).status)
      local forged = pyjwt({ iss = key.client_email, aud = emu.url .. "/",
                             iat = now, exp = now + 600 }, other_key.private_key)
      assert.are.equal(401, api("GET", V1, forged).status)
    end)

    it("pages with maxResults and pageToken", function()
      local instances = {}
      for i = 1, 7 do
        instances[i] = { name = ("paged-%02d"):format(i), project = "paging-project" }
      end
      local e = assert(emulator.start{ keys = { key }, instances = instances })
      local now = os.time()
      local a = pyjwt({ iss = key.client_email, scope = SCOPE_SQL, aud = e.token_uri,
                        iat = now, exp = now + 600 }, key.private_key)
      local tok = http("POST", e.token_uri, { body = form({ { "grant_type", JWT_BEARER },
                                                            { "assertion", a } }) }).json.access_token
      local base = e.url .. "/v1/projects/paging-project/instances"
      local auth = { Authorization = "Bearer " .. tok }
      local names, pages, page_token = {}, 0, nil
      repeat
        local url = base .. "?maxResults=3" .. (page_token and ("&pageToken=" .. urlenc(page_token)) or "")
        local r = http("GET", url, { headers = auth })
        assert.are.equal(200, r.status, r.body)
        pages = pages + 1
        for _, it in ipairs(r.json.items) do names[#names + 1] = it.name end
        page_token = r.json.nextPageToken
      until not page_token or pages > 10
      local bad_max = http("GET", base .. "?maxResults=lots", { headers = auth })
      local bad_token = http("GET", base .. "?pageToken=garbage", { headers = auth })
      local all = http("GET", base, { headers = auth }).json
      local seed = http("GET", e.url .. V1, { headers = auth }).json
      e:stop()
      assert.are.equal(3, pages)
      assert.are.same({ "paged-01", "paged-02", "paged-03", "paged-04", "paged-05",
                        "paged-06", "paged-07" }, names)
      assert.are.equal(7, #all.items)
      assert.is_nil(all.nextPageToken)
      assert.are.equal(400, bad_max.status)
      assert.are.equal("INVALID_ARGUMENT", bad_max.json.error.status)
      assert.are.equal(400, bad_token.status)
      -- Given instances replace the seed.
      assert.is_nil(seed.items)
    end)

    it("takes a long GET sent as POST with X-HTTP-Method-Override", function()
      local r = http("POST", emu.url .. V1, { body = "maxResults=1", headers = {
        Authorization = "Bearer " .. token(), ["X-HTTP-Method-Override"] = "GET",
        ["Content-Type"] = "application/x-www-form-urlencoded" } })
      assert.are.equal(200, r.status, r.body)
      assert.are.equal(1, #r.json.items)
      assert.truthy(r.json.nextPageToken)
    end)

    it("answers 404 and 405 for paths and methods it does not serve", function()
      local tok = token()
      assert.are.equal(404, api("GET", "/v1/projects/" .. PROJECT .. "/databases", tok).status)
      assert.are.equal(404, api("GET", "/nothing/here", tok).status)
      local r = api("PUT", V1 .. "/exemplary-mysql", tok, "{}")
      assert.are.equal(405, r.status)
      assert.are.equal("GET, DELETE", r.headers.allow)
    end)
  end)

  describe("HTTP robustness", function()
    it("answers garbage with 400 and lives on", function()
      for _, junk in ipairs({
        "GARBAGE\r\n\r\n",
        "\0\1\2\3\255\254 binary junk\n",
        "GET /v1 HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        "GET /v1 HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        "GET /v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET relative HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /v1 HTTP/1.1\r\n\r\n",   -- no Host
      }) do
        local got, closed = raw(emu.port, junk)
        assert.truthy(got:find("^HTTP/1%.1 400 "), junk)
        assert.is_true(closed, "the server closes after a 400")
        assert.matches("\r\nConnection: close\r\n", got)
        local body = got:match("\r\n\r\n(.*)$")
        assert.are.equal(400, cjson.decode(body).error.code)
      end
      for status, req in pairs({
        [505] = "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        [431] = "GET / HTTP/1.1\r\nHost: x\r\nX: " .. ("a"):rep(70000) .. "\r\n\r\n",
        [413] = "POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n",
      }) do
        local got, closed = raw(emu.port, req)
        assert.truthy(got:find("^HTTP/1%.1 " .. status .. " "), got)
        assert.is_true(closed)
      end
      -- A client that connects and goes away, or sends half a request.
      local s = socket.tcp()
      assert(s:connect("127.0.0.1", emu.port))
      s:send("POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf")
      s:close()
      -- Still serving.
      assert.are.equal(200, http("GET", emu.url .. "/discovery/v1/apis").status)
      assert.is_true(emu:running())
    end)

    it("keeps connections alive and serves several clients at once", function()
      local a, b = socket.tcp(), socket.tcp()
      a:settimeout(5); b:settimeout(5)
      assert(a:connect("127.0.0.1", emu.port))
      assert(b:connect("127.0.0.1", emu.port))
      -- a sends half a request; b is served meanwhile.
      a:send("GET /discovery/v1/apis HTTP/1.1\r\nHo")
      b:send("GET /discovery/v1/apis HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.are.equal(200, (read_response(b)))
      a:send("st: x\r\n\r\n")
      local status, headers = read_response(a)
      assert.are.equal(200, status)
      assert.are.equal("keep-alive", headers.connection)
      -- HEAD: the length of the GET, no body (the next answer follows).
      b:send("HEAD /discovery/v1/apis HTTP/1.1\r\nHost: x\r\n\r\n")
      local hs = assert(b:receive("*l"))
      local hlen
      repeat
        local line = assert(b:receive("*l"))
        hlen = hlen or tonumber(line:match("^Content%-Length: (%d+)"))
      until line == ""
      assert.matches("^HTTP/1%.1 200", hs)
      assert.truthy(hlen > 0)
      -- Two pipelined requests on one connection, then a chunked POST.
      b:send("GET /discovery/v1/apis HTTP/1.1\r\nHost: x\r\n\r\n"
             .. "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.are.equal(200, (read_response(b)))
      assert.are.equal(404, (read_response(b)))
      b:send("POST /token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
             .. "Content-Type: application/x-www-form-urlencoded\r\n\r\n"
             .. "5\r\ngrant\r\n9\r\n_type=foo\r\n0\r\n\r\n")
      local st, _, body = read_response(b)
      assert.are.equal(400, st)
      assert.are.equal("Invalid grant_type: foo", cjson.decode(body).error_description)
      a:close(); b:close()
    end)

    it("answers Expect: 100-continue before the body", function()
      local s = socket.tcp()
      s:settimeout(5)
      assert(s:connect("127.0.0.1", emu.port))
      s:send("POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: 18\r\nExpect: 100-continue\r\n\r\n")
      assert.are.equal("HTTP/1.1 100 Continue", s:receive("*l"))
      assert.are.equal("", s:receive("*l"))
      s:send("grant_type=nothing")
      local st = read_response(s)
      s:close()
      assert.are.equal(400, st)
    end)
  end)

  describe("trace", function()
    it("records what it served, never a token or an assertion", function()
      assert.is_true(emu:clear_requests())
      local a = assertion()
      local r = exchange(a)
      local tok = r.json.access_token
      api("GET", V1 .. "?maxResults=1", tok)
      api("GET", V1)
      http("GET", emu.url .. "/discovery/v1/apis/sqladmin/v1beta4/rest")
      local list = assert(emu:requests())
      assert.are.equal(4, #list)
      local t = list[1]
      assert.are.equal("POST", t.method)
      assert.are.equal("/token", t.path)
      assert.are.equal(200, t.status)
      assert.are.equal("token", t.endpoint)
      assert.are.equal("jwt-bearer", t.grant_type)
      assert.are.equal(key.client_email, t.claims.iss)
      assert.are.equal(SCOPE_SQL, t.claims.scope)
      assert.are.equal(emu.token_uri, t.claims.aud)
      assert.is_true(t.verified)
      assert.are.equal("sql.instances.list", list[2].call)
      assert.are.equal(key.client_email, list[2].principal)
      assert.are.equal("1", list[2].query.maxResults)
      assert.are.equal(401, list[3].status)
      assert.are.equal("missing", list[3].auth)
      assert.are.equal("discovery", list[4].endpoint)
      local text = cjson.encode(list)
      assert.is_nil(text:find(tok, 1, true))
      assert.is_nil(text:find(a, 1, true))
      assert.is_nil(text:find(a:match("[^.]+$"), 1, true))
      -- Secret query parameters are redacted.
      api("GET", V1 .. "?access_token=" .. tok)
      local last = emu:requests()
      last = last[#last]
      assert.are.equal(200, last.status)
      assert.are.equal("[redacted]", last.query.access_token)
    end)
  end)

  describe("keys and the command line", function()
    it("make_key and write_key_file make a Google-shaped key file, mode 0600", function()
      local k = assert(emulator.make_key{ project = "p-1", token_uri = emu.token_uri })
      assert.are.equal("service_account", k.type)
      assert.are.equal("gauth-emulator@p-1.iam.gserviceaccount.com", k.client_email)
      assert.matches("^%x+$", k.private_key_id)
      assert.matches("BEGIN PRIVATE KEY", k.private_key)
      local path = dir .. "/made.json"
      assert.is_true(emulator.write_key_file(path, k))
      local p = io.popen("stat -c %a " .. q(path))
      local mode = p:read("*l")
      p:close()
      assert.are.equal("600", mode)
      assert.are.same(k, cjson.decode(read(path)))
      local ok, msg, err = emulator.write_key_file(dir .. "/no/such/dir/k.json", k)
      assert.is_nil(ok)
      helpers.assert_failure(msg, err)
      assert.matches("write key file", tostring(err))
    end)

    it("start{ new_key_file } makes a key that works at once", function()
      local path = dir .. "/fresh.json"
      local e = assert(emulator.start{ new_key_file = path })
      local k = cjson.decode(read(path))
      local now = os.time()
      local a = pyjwt({ iss = k.client_email, scope = SCOPE_SQL, aud = k.token_uri,
                        iat = now, exp = now + 600 }, k.private_key, { kid = k.private_key_id })
      local r = http("POST", k.token_uri, { body = form({ { "grant_type", JWT_BEARER },
                                                          { "assertion", a } }) })
      e:stop()
      assert.are.equal(e.token_uri, k.token_uri)
      assert.are.equal(path, e.key_file)
      assert.are.equal(200, r.status, r.body)
    end)

    it("bin/gauth-emulator prints its URL and serves", function()
      local lua = os.getenv("GAUTH_LUA") or "lua5.4"
      local out, pidf, keyf = dir .. "/cli.out", dir .. "/cli.pid", dir .. "/cli-key.json"
      local cmd = ("LUA_PATH=%s LUA_CPATH=%s %s bin/gauth-emulator --port 0 --project cli-proj "
        .. "--new-key-file %s --trace >%s 2>%s & echo $! >%s"):format(
        q(package.path), q(package.cpath), q(lua), q(keyf), q(out), q(dir .. "/cli.err"), q(pidf))
      assert(run(cmd))
      local url
      for _ = 1, 500 do
        url = (read(out) or ""):match("^(http://[^\n]+)\n")
        if url then break end
        require("gauth.core").sleep(0.01)
      end
      local pid = tonumber(read(pidf))
      local ok, r, k = pcall(function()
        assert.matches("^http://127%.0%.0%.1:%d+$", url)
        local kk = cjson.decode(read(keyf))
        local rr = http("GET", url .. "/computeMetadata/v1/project/project-id",
                        { headers = { ["Metadata-Flavor"] = "Google" } })
        return rr, kk
      end)
      run("kill " .. pid)
      for _ = 1, 300 do
        if not pid_alive(pid) then break end
        require("gauth.core").sleep(0.01)
      end
      assert(ok, r)
      assert.are.equal("cli-proj", r.body)
      assert.are.equal(url .. "/token", k.token_uri)
      assert.is_false(pid_alive(pid))
      assert.matches("GET /computeMetadata/v1/project/project%-id 200", read(dir .. "/cli.err"))
      local help = io.popen(q(lua) .. " bin/gauth-emulator --bogus 2>&1; echo rc=$?")
      local text = help:read("*a")
      help:close()
      assert.matches("unknown argument", text)
      assert.matches("rc=2", text)
    end)
  end)

  describe("Google's own Python client against the emulator", function()
    local PY_GUIDE = [[
import json, os, sys
from google.oauth2 import service_account
from google.auth import compute_engine
import googleapiclient.discovery

SCOPES = ['https://www.googleapis.com/auth/sqlservice.admin']
mode, arg, discovery_url = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == 'key':
    credentials = service_account.Credentials.from_service_account_file(arg, scopes=SCOPES)
else:
    credentials = compute_engine.Credentials()
sqladmin = googleapiclient.discovery.build('sqladmin', 'v1beta4', credentials=credentials,
    discoveryServiceUrl=discovery_url, cache_discovery=False)
response = sqladmin.instances().list(project='exemplary-example-123').execute()
print(json.dumps(response))
]]

    local function run_py(mode, arg, env)
      local script = dir .. "/guide.py"
      write(script, PY_GUIDE)
      local disc = emu.url .. "/discovery/v1/apis/{api}/{apiVersion}/rest"
      local p = io.popen((env or "") .. " " .. PY .. " " .. q(script) .. " " .. mode .. " "
                         .. q(arg) .. " " .. q(disc) .. " 2>&1")
      local out = p:read("*a")
      p:close()
      return out
    end

    it("runs the guide's complete example with a service-account key file", function()
      assert.is_true(has_python_client(), "python3-googleapi / python3-google-auth (make deps)")
      local out = run_py("key", key_path)
      local resp = cjson.decode(out)
      assert.truthy(resp, out)
      assert.are.equal("sql#instancesList", resp.kind)
      assert.are.equal(2, #resp.items)
    end)

    it("runs it with Compute Engine credentials from the metadata server", function()
      assert.is_true(has_python_client(), "python3-googleapi / python3-google-auth (make deps)")
      local out = run_py("gce", "-", "GCE_METADATA_ROOT=" .. q(emu.metadata_host)
                                     .. " GCE_METADATA_IP=" .. q(emu.metadata_host))
      local resp = cjson.decode(out)
      assert.truthy(resp, out)
      assert.are.equal(2, #resp.items)
    end)
  end)

  describe("with gauth's own credentials and discovery", function()
    it("runs the guide's complete example end to end", function()
      local sa = require "gauth.service_account"
      local discovery = require "gauth.discovery"
      assert.is_true(emu:clear_requests())
      local creds = assert(sa.from_file(key_path, { scopes = { SCOPE_SQL } }))
      local sqladmin = assert(discovery.build("sqladmin", "v1beta4", { credentials = creds,
        discovery_url = emu.url .. "/discovery/v1/apis/{api}/{apiVersion}/rest", cache = false }))
      local response = assert(sqladmin:instances():list({ project = PROJECT }):execute())
      assert.are.equal("sql#instancesList", response.kind)
      assert.are.equal(2, #response.items)
      local trace = assert(emu:requests())
      assert.are.same({ "GET", "POST", "GET" },
                      { trace[1].method, trace[2].method, trace[3].method })
      assert.are.equal("discovery", trace[1].endpoint)
      assert.are.equal("jwt-bearer", trace[2].grant_type)
      assert.are.equal(SCOPE_SQL, trace[2].claims.scope)
      assert.are.equal("sql.instances.list", trace[3].call)
      assert.are.equal(key.client_email, trace[3].principal)
      -- Whole numbers come back as integers on 5.4 too (they print as 200).
      assert.are.equal("200", tostring(trace[3].status))
    end)
  end)
end)
