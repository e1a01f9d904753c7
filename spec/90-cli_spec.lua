-- The `gauth` command (gauth.cli, bin/gauth) against the emulator: each
-- command in-process (cli.main with captured streams) and as a subprocess
-- of the interpreter under test (GAUTH_LUA), success and failure, exit
-- codes and output. Loopback only.
--
-- SMOKE TESTS of gauth against its own emulator: what the emulator accepts
-- is not an independent judgement of what Google would. The requests and
-- tokens themselves are judged elsewhere (googleapiclient in 51/52, PyJWT
-- and openssl in 03/20, Google's Node libraries).

local cli = require "gauth.cli"
local emulator = require "gauth.emulator"
local cjson = require "cjson.safe"
local helpers = require "helpers"

local q = helpers.shell_quote
local ROOT = helpers.root
local LUA = os.getenv("GAUTH_LUA") or "lua5.4"
local BUILD = os.getenv("GAUTH_BUILD")
  or (ROOT .. "/build/" .. (jit and "5.1" or _VERSION:match("%d+%.%d+")))  -- luacheck: ignore
local PROJECT = "exemplary-example-123"
local SCOPE_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
local SCOPE_SQL = "https://www.googleapis.com/auth/sqlservice.admin"

-- A small document of our own: nested resources, a repeated, a boolean and
-- an integer parameter, a method named with a Lua keyword.
local function name_param()
  return { type = "string", location = "path", required = true,
           pattern = "^projects/[^/]+/locations/[^/]+$" }
end
local TESTDOC = {
  kind = "discovery#restDescription", discoveryVersion = "v1",
  id = "gauthtest:v1", name = "gauthtest", version = "v1",
  rootUrl = "https://gauthtest.googleapis.com/", servicePath = "",
  auth = { oauth2 = { scopes = { [SCOPE_PLATFORM] = { description = "all" } } } },
  parameters = { prettyPrint = { type = "boolean", location = "query" } },
  schemas = {
    Location = { id = "Location", type = "object", properties = {
      name = { type = "string" },
      labels = { type = "array", items = { type = "string" } } } },
  },
  resources = {
  -- Served by the emulator's Discovery endpoint: bytes to download.
  documents = { methods = {
    get = { id = "gauthtest.documents.get", httpMethod = "GET",
            path = "discovery/v1/apis/{api}/{version}/rest", parameterOrder = { "api", "version" },
            parameters = { api = { type = "string", location = "path", required = true },
                           version = { type = "string", location = "path", required = true } },
            response = { ["$ref"] = "Location" }, supportsMediaDownload = true },
  } },
  files = { methods = {
    upload = { id = "gauthtest.files.upload", httpMethod = "POST", path = "v1/files",
               request = { ["$ref"] = "Location" }, response = { ["$ref"] = "Location" },
               supportsMediaUpload = true,
               mediaUpload = { accept = { "text/*" }, maxSize = "1KB",
                               protocols = { simple = { multipart = true, path = "/upload/v1/files" } } } },
  } },
  projects = { resources = { locations = { methods = {
    get = { id = "gauthtest.projects.locations.get", path = "v1/{+name}",
            httpMethod = "GET", parameterOrder = { "name" },
            parameters = { name = name_param(),
                           tags = { type = "string", location = "query", repeated = true },
                           verbose = { type = "boolean", location = "query" },
                           pageSize = { type = "integer", location = "query" } },
            response = { ["$ref"] = "Location" } },
    ["import"] = { id = "gauthtest.projects.locations.import", path = "v1/{+name}:import",
                   httpMethod = "POST", parameterOrder = { "name" },
                   parameters = { name = name_param() },
                   request = { ["$ref"] = "Location" }, response = { ["$ref"] = "Location" } },
  } } } } },
}

local function sink()
  local buf = {}
  local s = {}
  function s.write(self, ...)
    for i = 1, select("#", ...) do buf[#buf + 1] = tostring((select(i, ...))) end
    return self
  end
  function s.flush() return true end
  function s.text() return table.concat(buf) end
  return s
end

-- cli.main in this process: code, stdout, stderr.
local function run(argv, stdin_text)
  local out, err = sink(), sink()
  local stdin = stdin_text and { read = function() return stdin_text end } or nil
  local code = cli.main(argv, { stdout = out, stderr = err, stdin = stdin })
  return code, out.text(), err.text()
end

-- bin/gauth as a subprocess: code, stdout, stderr. `env` is a string of
-- VAR=value words; ADC sees no credentials but those given there.
local function gauth(args, env)
  local list = {}
  for i, a in ipairs(args) do list[i] = q(a) end
  local out, err = helpers.tmpname("cli-out"), helpers.tmpname("cli-err")
  local cmd = ("cd %s && env -u GOOGLE_APPLICATION_CREDENTIALS -u CLOUDSDK_CONFIG "
    .. "-u GOOGLE_CLOUD_PROJECT -u SSL_CERT_FILE -u CURL_CA_BUNDLE -u XDG_CACHE_HOME "
    .. "HOME=%s NO_GCE_CHECK=true LUA_PATH=%s LUA_CPATH=%s %s %s bin/gauth %s >%s 2>%s </dev/null; echo $?")
    :format(q(ROOT), q(helpers.tmpdir()),
      q(ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;;"), q(BUILD .. "/?.so;;"),
      env or "", q(LUA), table.concat(list, " "), q(out), q(err))
  local p = assert(io.popen(cmd))
  local code = tonumber(p:read("*a"):match("(%d+)%s*$"))
  p:close()
  local o, e = helpers.read_file(out) or "", helpers.read_file(err) or ""
  os.remove(out); os.remove(err)
  return code, o, e
end

-- The one line an error prints.
local function one_line(err)
  assert.matches("^gauth: [^\n]+\n$", err)
end

local function jwt_claims(tok)
  local _, claims = helpers.jwt_parts(tok)
  return claims
end

local function token_requests(emu)
  local list = {}
  for _, r in ipairs(assert(emu:requests())) do
    if r.endpoint == "token" then list[#list + 1] = r end
  end
  return list
end

describe("gauth command", function()
  local emu, key_file, discovery_url, cache_dir

  lazy_setup(function()
    key_file = helpers.tmpname("cli-key", ".json")
    emu = assert(emulator.start{ new_key_file = key_file, documents = { TESTDOC } })
    discovery_url = emu.discovery_url
    cache_dir = helpers.tmpname("cli-cache")
  end)

  teardown(function()
    if emu then emu:stop() end
  end)

  before_each(function()
    assert(emu:clear_requests())
  end)

  local function call_args(...)
    local a = { "call", ... }
    a[#a + 1] = "--discovery-url"
    a[#a + 1] = discovery_url
    a[#a + 1] = "--cache-dir"
    a[#a + 1] = cache_dir
    return a
  end

  describe("general", function()
    it("--help and help print the usage on stdout, exit 0", function()
      local code, out, err = run({ "--help" })
      assert.are.equal(0, code)
      assert.are.equal(cli.USAGE, out)
      assert.are.equal("", err)
      code, out = run({ "token", "-h" })
      assert.are.equal(0, code)
      assert.matches("usage: gauth", out)
      code, out = run({ "help" })
      assert.are.equal(0, code)
      assert.matches("gauth discovery fetch API VERSION", out, 1, true)
    end)

    it("--version, as a subprocess too", function()
      local code, out, err = gauth({ "--version" })
      assert.are.equal(0, code, err)
      assert.matches("^gauth 0%.1%.0 %(.+%)\n$", out)
      assert.are.equal("", err)
    end)

    it("usage errors exit 2 with one line on stderr", function()
      for _, argv in ipairs({
        {}, { "bogus" }, { "token", "--bogus" }, { "token", "--key-file" },
        { "token", "--dry-run" }, { "token", "extra" }, { "token", "--id-token" },
        { "token", "--audience", "a" }, { "token", "--id-token", "--audience", "a", "--scopes", "x" },
        { "token", "--key-file=" }, { "token", "--id-token=yes" },
        { "token", "--key-file", "a", "--key-file", "b" },
        { "call", "sqladmin" }, { "discovery" }, { "discovery", "list" },
        { "discovery", "fetch", "sqladmin" }, { "discovery", "fetch", "a", "b", "--dry-run" },
        { "--ca-file", "/nonexistent/ca.pem", "token" },
      }) do
        local code, out, err = run(argv)
        assert.are.equal(2, code, table.concat(argv, " ") .. ": " .. err)
        assert.are.equal("", out)
        one_line(err)
      end
      local _, _, err = run({ "token", "--bogus" })
      assert.are.equal("gauth: unknown option --bogus (try gauth --help)\n", err)
      _, _, err = run({ "token", "--dry-run" })
      assert.are.equal("gauth: --dry-run does not apply to gauth token (try gauth --help)\n", err)
    end)

    it("a bad argv is a programming error", function()
      assert.has_error(function() cli.main("token") end, "gauth.cli: main: argv must be a table")
    end)

    it("pretty_json: indented, keys sorted, slashes as they are", function()
      local null = cjson.null
      assert.are.equal('{\n  "a": [\n    1,\n    2.5,\n    "x/y"\n  ],\n  "b": null,\n'
        .. '  "c": {},\n  "d": "tab\\there \\"q\\" \\u0001"\n}',
        cli.pretty_json({ d = 'tab\there "q" \1', c = {}, b = null, a = { 1, 2.5, "x/y" } }))
      assert.are.equal("0.1", cli.pretty_json(0.1))
      assert.are.equal("12345678901234", cli.pretty_json(12345678901234))
      assert.are.equal("null", cli.pretty_json(0 / 0))
      assert.are.equal("true", cli.pretty_json(true))
    end)

    it("progress_bar draws one redrawn line and ends it at the total", function()
      local s = sink()
      local bar = cli.progress_bar(s, "upload")
      bar(0, 2048)
      bar(1024, 2048)
      bar(2048, 2048)
      bar(2048, 2048)  -- nothing after the end
      local text = s.text()
      assert.are.equal("\rupload [" .. (" "):rep(30) .. "]   0% 0 B/2.0 KiB"
        .. "\rupload [" .. ("="):rep(15) .. (" "):rep(15) .. "]  50% 1.0 KiB/2.0 KiB"
        .. "\rupload [" .. ("="):rep(30) .. "] 100% 2.0 KiB/2.0 KiB\n", text)
      local s2 = sink()
      cli.progress_bar(s2)(3 * 1048576)
      assert.are.equal("\r3.0 MiB", s2.text())
      if not os.getenv("GAUTH_PROGRESS") then
        assert.is_false(cli.is_terminal(s2))
      end
    end)
  end)

  describe("token", function()
    it("prints an access token for a key file (subprocess), cloud-platform by default", function()
      local code, out, err = gauth({ "token", "--key-file", key_file })
      assert.are.equal(0, code, err)
      assert.are.equal("", err)
      assert.matches("^ya29%.[%w_.-]+\n$", out)
      local reqs = token_requests(emu)
      assert.are.equal(1, #reqs)
      assert.are.equal(200, reqs[1].status)
      assert.are.equal(SCOPE_PLATFORM, reqs[1].claims.scope)
      assert.is_nil(reqs[1].claims.sub)
    end)

    it("--scopes (short names too) and --subject go into the assertion", function()
      local code, out, err = run({ "token", "--key-file", key_file,
        "--scopes", "sqlservice.admin," .. SCOPE_PLATFORM, "--scopes=openid",
        "--subject", "user@example.org" })
      assert.are.equal(0, code, err)
      assert.matches("^ya29%.", out)
      local reqs = token_requests(emu)
      assert.are.equal(1, #reqs)
      assert.are.equal(SCOPE_SQL .. " " .. SCOPE_PLATFORM .. " openid", reqs[1].claims.scope)
      assert.are.equal("user@example.org", reqs[1].claims.sub)
    end)

    it("--id-token --audience prints a Google-signed ID token for the audience", function()
      local code, out, err = gauth({ "token", "--key-file", key_file, "--id-token",
                                     "--audience", "https://service.example/" })
      assert.are.equal(0, code, err)
      local claims = jwt_claims(out:gsub("\n$", ""))
      assert.are.equal("https://service.example/", claims.aud)
      assert.matches("^gauth%-emulator@", claims.email)
    end)

    it("ADC: GOOGLE_APPLICATION_CREDENTIALS names the key file (subprocess)", function()
      local code, out, err = gauth({ "token" }, "GOOGLE_APPLICATION_CREDENTIALS=" .. q(key_file))
      assert.are.equal(0, code, err)
      assert.matches("^ya29%.[%w_.-]+\n$", out)
      code, out, err = gauth({ "token", "--id-token", "--audience", "aud-1" },
                             "GOOGLE_APPLICATION_CREDENTIALS=" .. q(key_file))
      assert.are.equal(0, code, err)
      assert.are.equal("aud-1", jwt_claims(out:gsub("\n$", "")).aud)
    end)

    it("ADC with nothing to find exits 1 saying what was tried", function()
      local code, out, err = gauth({ "token" })
      assert.are.equal(1, code)
      assert.are.equal("", out)
      one_line(err)
      assert.matches("could not find default credentials", err, 1, true)
      assert.matches("GOOGLE_APPLICATION_CREDENTIALS", err, 1, true)
    end)

    it("a bad key file exits 1 naming the file and never a key", function()
      local bad = helpers.write_file(helpers.tmpname("bad-key", ".json"), "{ not json")
      local code, out, err = run({ "token", "--key-file", bad })
      assert.are.equal(1, code)
      assert.are.equal("", out)
      one_line(err)
      assert.matches(bad, err, 1, true)
      assert.matches("not a JSON object", err, 1, true)

      local info = cjson.decode(helpers.read_file(key_file))
      info.private_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
      local broken = helpers.write_file(helpers.tmpname("broken-key", ".json"), cjson.encode(info))
      code, out, err = gauth({ "token", "--key-file", broken })
      assert.are.equal(1, code)
      assert.are.equal("", out)
      one_line(err)
      assert.matches("private_key", err, 1, true)
      assert.is_nil(err:find("AAAA", 1, true))

      code, out, err = run({ "token", "--key-file", helpers.tmpname("missing", ".json") })
      assert.are.equal(1, code)
      assert.are.equal("", out)
      assert.matches("cannot read", err, 1, true)
    end)

    it("a key the token endpoint does not know exits 1 with its refusal", function()
      local key = assert(emulator.make_key{ token_uri = emu.token_uri })
      local path = helpers.tmpname("unknown-key", ".json")
      assert(emulator.write_key_file(path, key))
      local code, out, err = gauth({ "token", "--key-file", path })
      assert.are.equal(1, code)
      assert.are.equal("", out)
      one_line(err)
      assert.matches("invalid_grant", err, 1, true)
      assert.matches("HTTP 400", err, 1, true)
    end)

    it("--ca-file: trusts the given CA for an https token endpoint, and only then", function()
      local fake = helpers.start_fake({ tls = true })
      local path, info = helpers.make_service_account_file({ token_uri = fake.token_uri })
      fake:config({ public_keys = { [info.kid] = info.public_pem } })
      local code, out, err = gauth({ "--ca-file", fake.ca_file, "token", "--key-file", path })
      assert.are.equal(0, code, err)
      assert.matches("^fake%-token%-%d+\n$", out)
      code, out, err = gauth({ "token", "--key-file", path })
      fake:stop()
      assert.are.equal(1, code)
      assert.are.equal("", out)
      one_line(err)
      assert.matches("certificate", err)
    end)
  end)

  describe("verify", function()
    it("prints the claims of a valid ID token; exit 1 and which check failed otherwise", function()
      local code, tok, err = gauth({ "token", "--key-file", key_file, "--id-token",
                                     "--audience", "https://service.example/" })
      assert.are.equal(0, code, err)
      tok = tok:gsub("\n$", "")
      local certs = emu.url .. "/oauth2/v1/certs"
      local out
      -- a subprocess, the token as an argument
      code, out, err = gauth({ "verify", "--audience", "https://service.example/",
                               "--certs-url", certs, tok })
      assert.are.equal(0, code, err)
      assert.are.equal("", err)
      local claims = assert(cjson.decode(out))
      assert.are.equal("https://service.example/", claims.aud)
      assert.matches("^gauth%-emulator@", claims.email)
      -- in-process, from stdin ("-"), with the JWK Set and a "Bearer " prefix
      code, out, err = run({ "verify", "--audience", "https://service.example/",
                             "--certs-url", emu.url .. "/oauth2/v3/certs", "-" },
                           "Bearer " .. tok .. "\n")
      assert.are.equal(0, code, err)
      assert.are.equal(claims.sub, assert(cjson.decode(out)).sub)
      -- refusals: one line naming the check, never the token
      local cases = {
        { { "--audience", "https://other.example/", tok }, "gauth.id_token: claims: audience mismatch" },
        { { "--audience", "a", "--iap", tok }, "gauth.id_token: verify: alg RS256 not allowed" },
        { { "--audience", "a", "x.y" }, "gauth.id_token: decode: malformed: 2 segments (a JWS has 3)" },
      }
      for _, c in ipairs(cases) do
        local argv = { "verify", "--certs-url", certs }
        for _, a in ipairs(c[1]) do argv[#argv + 1] = a end
        code, out, err = run(argv)
        assert.are.equal(1, code)
        assert.are.equal("", out)
        assert.are.equal("gauth: " .. c[2] .. "\n", err)
        assert.is_nil(err:find(tok:sub(-20), 1, true))
      end
      -- no --audience: checked otherwise, and said so
      code, out, err = run({ "verify", "--certs-url", certs, tok })
      assert.are.equal(0, code)
      assert.matches("the audience is not checked", err)
      assert.are.equal("https://service.example/", assert(cjson.decode(out)).aud)
      -- usage
      code, out, err = run({ "verify", tok, tok })
      assert.are.equal(2, code)
      assert.are.equal("", out)
      one_line(err)
      code = run({ "verify", "--subject", "x", tok })
      assert.are.equal(2, code)
    end)
    it("trims a 1 MB input with long white-space runs inside in linear time", function()
      -- "^%s*(.-)%s*$" took minutes on this (quadratic in the runs' length):
      -- the spec would hang far past the suite's budget
      local big = "  Bearer a" .. ("  \t "):rep(250000) .. "b \n"
      local code, out, err = run({ "verify", "--audience", "a", "--certs-url",
                                   emu.url .. "/oauth2/v1/certs", "-" }, big)
      assert.are.equal(1, code)
      assert.are.equal("", out)
      assert.are.equal("gauth: gauth.id_token: decode: malformed: token of 1000002 bytes"
        .. " (limit 65536)\n", err)
      -- only the ends are trimmed
      code, out, err = run({ "verify", "--audience", "a", "-" }, " \n\t ")
      assert.are.equal(1, code)
      assert.are.equal("", out)
      assert.are.equal("gauth: gauth.id_token: decode: malformed: 1 segment (a JWS has 3)\n", err)
    end)
    it("--iap: prints the claims of a valid IAP assertion (ES256, IAP's issuer, a JWK Set)", function()
      local IAP_AUD = "/projects/123/global/backendServices/456"
      local ec = helpers.make_ec_key()
      local now = os.time()
      local input = helpers.tmpname("iap-in", ".json")
      helpers.write_file(input, cjson.encode({ keys = { ec = ec.private_pem }, jwk = { "ec" },
        tokens = { { key = "ec", alg = "ES256", headers = { kid = "iap1" },
          claims = { iss = "https://cloud.google.com/iap", aud = IAP_AUD, sub = "accounts.google.com:42",
                     email = "user@example.com", iat = now - 5, exp = now + 600 } } } }))
      local ok, text = helpers.sh("/usr/bin/python3 " .. q(helpers.support_dir .. "/idtoken_tool.py")
        .. " " .. q(input))
      assert(ok, text)
      local made = assert(cjson.decode(text))
      local tok, jwk = made.tokens[1], made.jwk.ec
      jwk.kid, jwk.alg, jwk.use = "iap1", "ES256", "sig"
      local fake = helpers.start_fake({ tls = false })
      -- one answer per gauth process below
      local answer = { status = 200, body = { keys = { jwk } },
                       headers = { ["Cache-Control"] = "public, max-age=3600" } }
      fake:script("/certs/iap", { answer, answer, answer })
      local certs = fake.url .. "/certs/iap"
      local code, out, err = gauth({ "verify", "--iap", "--audience", IAP_AUD, "--certs-url", certs, tok })
      local requests = #fake:requests("/certs/iap")
      -- refusals: another audience, and the same assertion without --iap
      -- (Google's OAuth 2.0 issuers are not IAP's)
      local c2, out2, err2 = gauth({ "verify", "--iap", "--audience", "/projects/123/other", "--certs-url",
                                     certs, tok })
      local c3, out3, err3 = gauth({ "verify", "--audience", IAP_AUD, "--certs-url", certs, tok })
      fake:stop()
      assert.are.equal(0, code, err)
      assert.are.equal("", err)
      local claims = assert(cjson.decode(out))
      assert.are.equal("https://cloud.google.com/iap", claims.iss)
      assert.are.equal(IAP_AUD, claims.aud)
      assert.are.equal("user@example.com", claims.email)
      assert.are.equal(1, requests)
      assert.are.equal(1, c2)
      assert.are.equal("", out2)
      assert.are.equal("gauth: gauth.id_token: claims: audience mismatch\n", err2)
      assert.are.equal(1, c3)
      assert.are.equal("", out3)
      assert.are.equal("gauth: gauth.id_token: claims: issuer mismatch\n", err3)
      assert.is_nil((err2 .. err3):find(tok:sub(-20), 1, true))
    end)
  end)

  describe("call", function()
    it("prints the JSON response of instances.list (subprocess)", function()
      local code, out, err = gauth(call_args("sqladmin", "v1beta4", "instances.list",
        "project=" .. PROJECT, "--key-file", key_file))
      assert.are.equal(0, code, err)
      assert.are.equal("", err)
      local resp = assert(cjson.decode(out))
      assert.are.equal("sql#instancesList", resp.kind)
      local names = {}
      for _, inst in ipairs(resp.items) do names[#names + 1] = inst.name end
      table.sort(names)
      assert.are.same({ "exemplary-mysql", "exemplary-postgres" }, names)
      assert.matches('\n  "kind": "sql#instancesList"\n}\n$', out)
      -- The service applied the API's scopes to the key file's credentials.
      local reqs = token_requests(emu)
      assert.are.equal(1, #reqs)
      assert.matches(SCOPE_SQL, reqs[1].claims.scope, 1, true)
    end)

    it("--body inserts (from text, a file, stdin); the instance is then there", function()
      local code, out, err = run(call_args("sqladmin", "v1beta4", "instances.insert",
        "project=" .. PROJECT, "--key-file", key_file,
        "--body", '{"name":"cli-one","databaseVersion":"POSTGRES_15","settings":{"tier":"db-f1-micro"}}'))
      assert.are.equal(0, code, err)
      assert.are.equal("sql#operation", cjson.decode(out).kind)
      local file = helpers.write_file(helpers.tmpname("body", ".json"),
        '{"name":"cli-two","settings":{"tier":"db-f1-micro"}}')
      code, out, err = run(call_args("sqladmin", "v1beta4", "instances.insert",
        "project=" .. PROJECT, "--key-file", key_file, "--body", "@" .. file))
      assert.are.equal(0, code, err)
      assert.is_table(cjson.decode(out))
      code, out, err = run(call_args("sqladmin", "v1beta4", "instances.insert",
        "project=" .. PROJECT, "--key-file", key_file, "--body", "@-"),
        '{"name":"cli-three","settings":{"tier":"db-f1-micro"}}')
      assert.are.equal(0, code, err)
      assert.is_table(cjson.decode(out))
      for _, name in ipairs({ "cli-one", "cli-two", "cli-three" }) do
        code, out, err = run(call_args("sqladmin", "v1beta4", "instances.get",
          "project=" .. PROJECT, "instance=" .. name, "--key-file", key_file))
        assert.are.equal(0, code, err)
        assert.are.equal(name, cjson.decode(out).name)
      end
    end)

    it("an API error exits 1 with one line: message, status, reason; no token", function()
      local code, out, err = gauth(call_args("sqladmin", "v1beta4", "instances.get",
        "project=" .. PROJECT, "instance=nope", "--key-file", key_file))
      assert.are.equal(1, code)
      assert.are.equal("", out)
      one_line(err)
      assert.matches("HTTP 404 instanceDoesNotExist", err, 1, true)
      assert.is_nil(err:find("ya29", 1, true))
      assert.is_nil(err:find("Bearer", 1, true))
    end)

    it("unknown method, resource or API; a resource given as a method", function()
      local code, out, err = run(call_args("sqladmin", "v1beta4", "instances.lst",
        "project=" .. PROJECT, "--key-file", key_file))
      assert.are.equal(2, code)
      assert.are.equal("", out)
      assert.are.equal("gauth: instances has no method 'lst' (methods: delete, get, insert, list)\n", err)
      code, out, err = run(call_args("sqladmin", "v1beta4", "backups.list", "--key-file", key_file))
      assert.are.equal(2, code)
      assert.are.equal("", out)
      assert.are.equal("gauth: sqladmin has no resource 'backups' (resources: instances, operations)\n", err)
      code, out, err = run(call_args("sqladmin", "v1beta4", "instances", "--key-file", key_file))
      assert.are.equal(2, code)
      assert.are.equal("", out)
      assert.are.equal("gauth: instances is a resource, not a method "
        .. "(its methods: delete, get, insert, list)\n", err)
      code, out, err = gauth(call_args("nosuchapi", "v1", "things.list", "--key-file", key_file))
      assert.are.equal(1, code)
      assert.are.equal("", out)
      one_line(err)
      assert.matches("unknown API or version: nosuchapi v1", err, 1, true)
      -- no token was asked for any of them
      assert.are.equal(0, #token_requests(emu))
    end)

    it("parameter mistakes are usage errors", function()
      local cases = {
        { { "instances.list", "project=" .. PROJECT, "bogus=1" }, "bogus: unknown parameter" },
        { { "instances.list" }, "project: missing required parameter" },
        { { "instances.list", "project" }, "expected NAME=VALUE, got 'project'" },
        { { "instances.list", "project=a", "project=b" }, "project given twice" },
        { { "instances.list", "project=a", "maxResults=many" }, "expected an integer" },
        { { "instances.list", "project=a", "body=x" }, "give the request body with --body" },
        { { "instances.insert", "project=a", "--body", "[1" }, "--body must be a JSON object (malformed JSON)" },
        { { "instances.insert", "project=a", "--body", "42" }, "--body must be a JSON object" },
        { { "instances.insert", "project=a", "--body", "[]" }, "--body must be a JSON object" },
        { { "instances.insert", "project=a", "--body", "@/nonexistent/b.json" }, "/nonexistent/b.json" },
        { { "instances.list", "project=a", "--body", "{}" }, "body: unknown parameter" },
      }
      for _, c in ipairs(cases) do
        local argv = call_args("sqladmin", "v1beta4", (table.unpack or unpack)(c[1]))  -- luacheck: ignore
        argv[#argv + 1] = "--dry-run"
        local code, out, err = run(argv)
        assert.are.equal(2, code, c[2] .. ": " .. err)
        assert.are.equal("", out)
        one_line(err)
        assert.matches(c[2], err, 1, true)
      end
    end)

    it("--dry-run prints the request, fetches no token, redacts authorization", function()
      local code, out, err = gauth(call_args("sqladmin", "v1beta4", "instances.insert",
        "project=" .. PROJECT, "prettyPrint=false", "--key-file", key_file, "--dry-run",
        "--body", '{"name":"dry","settings":{"tier":"db-f1-micro"}}'))
      assert.are.equal(0, code, err)
      assert.are.equal("", err)
      local api = emu.url .. "/sql/v1beta4/projects/" .. PROJECT .. "/instances"
      local v = jit and "5.1" or _VERSION:match("%d+%.%d+")  -- luacheck: ignore
      local client = "gl-lua/" .. v .. (jit and (" luajit/" .. jit.version:match("[%d.]+[%w.-]*")) or "")  -- luacheck: ignore
      assert.are.equal(table.concat({
        "POST " .. api .. "?prettyPrint=false&alt=json",
        "accept: application/json",
        "accept-encoding: gzip, deflate",
        "authorization: Bearer <redacted>",
        "content-type: application/json",
        "user-agent: gauth/0.1.0",
        "x-goog-api-client: " .. client .. " gauth/0.1.0",
        "" }, "\n"), out:match("^(.-\n)\n"))
      assert.are.same({ name = "dry", settings = { tier = "db-f1-micro" } },
        cjson.decode(out:match("\n\n(.*)\n$")))
      assert.are.equal(0, #token_requests(emu))
      -- nothing was inserted
      code = run(call_args("sqladmin", "v1beta4", "instances.get", "project=" .. PROJECT,
        "instance=dry", "--key-file", key_file))
      assert.are.equal(1, code)
    end)

    it("--dry-run: nested resources, repeated, boolean and integer parameters, keyword names", function()
      local code, out, err = run(call_args("gauthtest", "v1", "projects.locations.get",
        "name=projects/p/locations/l", "tags=a", "tags=b c", "verbose=true", "pageSize=5",
        "--dry-run"))
      assert.are.equal(0, code, err)
      assert.are.equal("GET " .. emu.url .. "/v1/projects/p/locations/l"
        .. "?pageSize=5&tags=a&tags=b+c&verbose=true&alt=json", out:match("^([^\n]*)"))
      assert.matches("\nauthorization: Bearer <redacted>\n", out, 1, true)
      for _, m in ipairs({ "projects.locations.import", "projects.locations.import_" }) do
        code, out, err = run(call_args("gauthtest", "v1", m, "name=projects/p/locations/l",
          "--body", '{"labels":[]}', "--dry-run"))
        assert.are.equal(0, code, err)
        assert.are.equal("POST " .. emu.url .. "/v1/projects/p/locations/l:import?alt=json",
          out:match("^([^\n]*)"))
        assert.are.equal('{"labels":[]}\n', out:match("\n\n(.*)$"))
      end
      code, out, err = run(call_args("gauthtest", "v1", "projects.locations.get",
        "name=projects/p/locations/l", "verbose=maybe", "--dry-run"))
      assert.are.equal(2, code)
      assert.are.equal("", out)
      assert.matches("expected a boolean", err, 1, true)
      code, out, err = run(call_args("gauthtest", "v1", "projects.locations.get",
        "name=bad", "--dry-run"))
      assert.are.equal(2, code)
      assert.are.equal("", out)
      assert.matches("does not match the pattern", err, 1, true)
      code, out, err = run(call_args("gauthtest", "v1", "projects.zones.get", "--dry-run"))
      assert.are.equal(2, code)
      assert.are.equal("", out)
      assert.are.equal("gauth: projects has no resource 'zones' (resources: locations)\n", err)
    end)

    it("--dry-run hides credentials put in the query", function()
      local code, out, err = run(call_args("sqladmin", "v1beta4", "instances.list",
        "project=" .. PROJECT, "access_token=SECRET1", "oauth_token=SECRET2", "--dry-run"))
      assert.are.equal(0, code, err)
      assert.is_nil(out:find("SECRET", 1, true))
      assert.matches("access_token=<redacted>", out, 1, true)
      assert.matches("oauth_token=<redacted>", out, 1, true)
    end)

    it("--output downloads the media into a file; a progress bar only when asked", function()
      local file = helpers.tmpname("download", ".json")
      local code, out, err = gauth(call_args("gauthtest", "v1", "documents.get", "api=sqladmin",
        "version=v1beta4", "--output", file, "--key-file", key_file), "GAUTH_PROGRESS=1")
      assert.are.equal(0, code, err)
      assert.are.equal("", out)
      local doc = assert(cjson.decode(helpers.read_file(file)))
      assert.are.equal("sqladmin", doc.name)
      local size = #helpers.read_file(file)
      assert.matches("^\rdownload " .. file:match("([^/]*)$"):gsub("%p", "%%%0") .. " %[=+%] 100%% ", err)
      assert.matches("\n$", err)
      assert.matches(("%.1f KiB/%.1f KiB\n"):format(size / 1024, size / 1024), err, 1, true)
      -- The request asked for the bytes (alt=media).
      local seen
      for _, r in ipairs(assert(emu:requests())) do
        if r.path == "/discovery/v1/apis/sqladmin/v1beta4/rest" then seen = true end
      end
      assert.is_true(seen)
      -- stderr is a file here, not a terminal: no bar.
      code, out, err = gauth(call_args("gauthtest", "v1", "documents.get", "api=sqladmin",
        "version=v1beta4", "--output", file, "--key-file", key_file))
      assert.are.equal(0, code, err)
      assert.are.equal("", out)
      assert.are.equal("", err)
    end)

    it("media options: mistakes are usage errors", function()
      local text = helpers.write_file(helpers.tmpname("upload", ".txt"), "hello")
      for _, c in ipairs({
        { { "instances.list", "project=p", "--output", "/tmp/x" }, "has no media download" },
        { { "instances.list", "project=p", "--media", text }, "takes no media upload" },
        { { "instances.list", "project=p", "--media-type", "text/plain" }, "--media-type goes with --media" },
        { { "instances.list", "project=p", "--media", text, "--output", "/tmp/x" }, "do not go together" },
      }) do
        local argv = call_args("sqladmin", "v1beta4", (table.unpack or unpack)(c[1]))  -- luacheck: ignore
        argv[#argv + 1] = "--dry-run"
        local code, out, err = run(argv)
        assert.are.equal(2, code, err)
        assert.are.equal("", out)
        one_line(err)
        assert.matches(c[2], err, 1, true)
      end
      local code, out, err = run(call_args("gauthtest", "v1", "files.upload",
        "--media", helpers.tmpname("missing", ".txt"), "--dry-run"))
      assert.are.equal(2, code, err)
      assert.are.equal("", out)
      assert.matches("cannot open the file", err, 1, true)
    end)

    it("--media: the upload request (dry run), a type the method refuses", function()
      local text = helpers.write_file(helpers.tmpname("upload", ".txt"), "hello")
      local code, out, err = run(call_args("gauthtest", "v1", "files.upload", "--media", text,
        "--body", '{"name":"n"}', "--dry-run"))
      assert.are.equal(0, code, err)
      assert.are.equal("POST " .. emu.url .. "/upload/v1/files?alt=json&uploadType=multipart",
        out:match("^([^\n]*)"))
      assert.matches('\n\n{"name":"n"}\n', out, 1, true)
      assert.matches("[media: " .. text .. ", 5 bytes, text/plain, uploadType=multipart]\n", out, 1, true)
      code, out, err = run(call_args("gauthtest", "v1", "files.upload", "--media", text,
        "--media-type", "image/png", "--dry-run"))
      assert.are.equal(2, code)
      assert.are.equal("", out)
      one_line(err)
      assert.matches("not accepted", err, 1, true)
    end)

    it("--api-endpoint replaces the document's root URL", function()
      local code, out, err = run(call_args("sqladmin", "v1beta4", "instances.list",
        "project=" .. PROJECT, "--dry-run", "--api-endpoint", "https://sql.example.test/"))
      assert.are.equal(0, code, err)
      assert.are.equal("GET https://sql.example.test/sql/v1beta4/projects/" .. PROJECT
        .. "/instances?alt=json", out:match("^([^\n]*)"))
    end)

    it("a bad key file fails the call before anything is fetched", function()
      local bad = helpers.write_file(helpers.tmpname("bad-key", ".json"), '{"type":"service_account"}')
      local code, out, err = run(call_args("sqladmin", "v1beta4", "instances.list",
        "project=" .. PROJECT, "--key-file", bad))
      assert.are.equal(1, code)
      assert.are.equal("", out)
      one_line(err)
      assert.matches("client_email", err, 1, true)
      assert.are.equal(0, #assert(emu:requests()))
    end)
  end)

  describe("discovery fetch", function()
    it("fills the cache (subprocess); calls then need no fetch", function()
      local dir = helpers.tmpname("fetch-cache")
      local code, out, err = gauth({ "discovery", "fetch", "sqladmin", "v1",
        "--discovery-url", discovery_url, "--cache-dir", dir })
      assert.are.equal(0, code, err)
      assert.are.equal("", err)
      assert.are.equal("sqladmin v1: cached in " .. dir .. "\n", out)
      local _, listing = helpers.sh("ls " .. q(dir))
      assert.matches("sqladmin.*v1.*%.json", listing)
      local fetched = 0
      for _, r in ipairs(assert(emu:requests())) do
        if r.endpoint == "discovery" then fetched = fetched + 1 end
      end
      assert.are.equal(1, fetched)

      -- A fresh process reads it from the cache: no discovery request.
      assert(emu:clear_requests())
      code, out, err = gauth({ "call", "sqladmin", "v1", "instances.list", "project=" .. PROJECT,
        "--dry-run", "--discovery-url", discovery_url, "--cache-dir", dir })
      assert.are.equal(0, code, err)
      assert.matches("^GET " .. emu.url:gsub("%p", "%%%0") .. "/v1/projects/", out)
      assert.are.same({}, assert(emu:requests()))

      -- Fetching again fetches anew (refreshes a stale or corrupt copy).
      code = gauth({ "discovery", "fetch", "sqladmin", "v1",
        "--discovery-url", discovery_url, "--cache-dir", dir })
      assert.are.equal(0, code)
      assert.are.equal(1, #assert(emu:requests()))
    end)

    it("an unknown API exits 1; an unwritable cache directory exits 1", function()
      local code, out, err = run({ "discovery", "fetch", "nosuchapi", "v1",
        "--discovery-url", discovery_url, "--cache-dir", helpers.tmpname("fetch-cache") })
      assert.are.equal(1, code)
      assert.are.equal("", out)
      one_line(err)
      assert.matches("unknown API or version: nosuchapi v1", err, 1, true)

      local file = helpers.write_file(helpers.tmpname("not-a-dir"), "x")
      code, out, err = gauth({ "discovery", "fetch", "sqladmin", "v1beta4",
        "--discovery-url", discovery_url, "--cache-dir", file .. "/sub" })
      assert.are.equal(1, code)
      assert.are.equal("", out)
      one_line(err)
      assert.matches("could not write it under " .. file .. "/sub", err, 1, true)
    end)
  end)
  describe("examples/list_instances.lua", function()
    it("runs against the emulator with the command at its top", function()
      local out = helpers.tmpname("example-out")
      -- HOME: the Discovery cache goes to the run's temporary directory.
      local ok, msg = helpers.sh(("cd %s && env -u XDG_CACHE_HOME HOME=%s GAUTH_DISCOVERY_URL=%s "
        .. "LUA_PATH=%s LUA_CPATH=%s %s examples/list_instances.lua %s >%s"):format(
        q(ROOT), q(helpers.tmpdir()), q(discovery_url),
        q(ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;;"), q(BUILD .. "/?.so;;"),
        q(LUA), q(key_file), q(out)))
      assert(ok, msg)
      local resp = assert(cjson.decode(helpers.read_file(out)))
      assert.are.equal("sql#instancesList", resp.kind)
      local names = {}
      for _, inst in ipairs(resp.items) do names[inst.name] = true end
      assert.is_true(names["exemplary-mysql"])
      assert.is_true(names["exemplary-postgres"])
    end)
  end)
end)
