-- gauth.external_account inside a real nginx (LuaJIT; the nginx specs run in
-- the LuaJIT pass of spec/run.sh only, as DECISIONS says): file, url and aws
-- sources over cosockets and the shared-dict token store (one exchange for
-- all workers), and the executable source refused in a worker.
local helpers = require "helpers"
local nginx = require "support.nginx"
local cjson = require "cjson.safe"

local LUAJIT_PASS = (os.getenv("GAUTH_LUA_VERSION") or (jit and "5.1" or "5.4")) == "5.1"

local AUD = "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/pool/providers/oidc"
local AWS_AUD = "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/pool/providers/aws"
local JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
local AK, SK = "AKIANGINXTEST0001", "nginx/secret+key"

if LUAJIT_PASS then
describe("gauth.external_account inside nginx", function()
  local fake, imds, srv, key, dir

  local function write_config(name, t)
    local p = dir .. "/" .. name .. ".json"
    helpers.write_file(p, cjson.encode(t))
    return p
  end

  lazy_setup(function()
    fake = helpers.start_fake({ tls = false })
    imds = helpers.start_fake({ tls = false })
    key = helpers.make_rsa_key()
    dir = helpers.tmpname("ngx-ea", "")
    assert(os.execute("mkdir -p " .. helpers.shell_quote(dir)))
    local now = os.time()
    local subject = helpers.pyjwt_encode({ iss = "https://i.example", sub = "s", iat = now,
      exp = now + 3600 }, key.private_pem)
    helpers.write_file(dir .. "/subject.txt", subject)
    local base = { type = "external_account", audience = AUD, subject_token_type = JWT_TYPE,
                   token_url = fake.url .. "/v1/token" }
    local function with(extra)
      local t = {}
      for k, v in pairs(base) do t[k] = v end
      for k, v in pairs(extra) do t[k] = v end
      return t
    end
    write_config("file", with({ credential_source = { file = dir .. "/subject.txt" } }))
    write_config("url", with({ credential_source = { url = fake.url .. "/subject-token" } }))
    write_config("aws", with({ audience = AWS_AUD,
      subject_token_type = "urn:ietf:params:aws:token-type:aws4_request",
      credential_source = { environment_id = "aws1",
        regional_cred_verification_url =
          "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
        region_url = imds.url .. "/latest/meta-data/placement/availability-zone",
        url = imds.url .. "/latest/meta-data/iam/security-credentials",
        imdsv2_session_token_url = imds.url .. "/latest/api/token" } }))
    -- The same sources under other cache keys (a header, an audience), for
    -- the cold bursts below.
    write_config("url_burst", with({ credential_source = { url = fake.url .. "/subject-token",
      headers = { ["x-burst"] = "1" } } }))
    write_config("aws_burst", with({ audience = AWS_AUD .. "-burst",
      subject_token_type = "urn:ietf:params:aws:token-type:aws4_request",
      credential_source = { environment_id = "aws1",
        regional_cred_verification_url =
          "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
        region_url = imds.url .. "/latest/meta-data/placement/availability-zone",
        url = imds.url .. "/latest/meta-data/iam/security-credentials",
        imdsv2_session_token_url = imds.url .. "/latest/api/token" } }))
    write_config("exec", with({ credential_source = { executable = { command = "/bin/true" } } }))
    fake:config({ federation = { oidc_public_pem = key.public_pem, aws_keys = { [AK] = SK },
                                 served_token = { text = subject } } })
    imds:config({ federation = { aws = { zone = "us-east-1a", role = "r", access_key_id = AK,
                                         secret_access_key = SK, token = "t", imdsv2 = true } } })
    local err
    srv, err = nginx.start({
      workers = 2,
      http = "lua_shared_dict gauth 1m;\n",
      server = ([[
        location = /fast { return 200 "fast\n"; }
        location = /token {
          content_by_lua_block {
            local which = ngx.var.arg_which
            local ea = require "gauth.external_account"
            local c, msg = ea.from_file(%q .. "/" .. which .. ".json",
              { env = { GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES = "1" } })
            if not c then ngx.status = 500 ngx.say(msg) return end
            local tok, tmsg, terr = c:token()
            ngx.header["content-type"] = "application/json"
            ngx.say(require("cjson").encode({ token = tok, err = tmsg,
              step = terr and terr.step, pid = ngx.worker.pid(),
              ngx_transport = require("gauth.http").default().ngx_t ~= nil,
              curl_transport = require("gauth.http").default().curl_t ~= nil }))
          }
        }
      ]]):format(dir),
    })
    assert(srv, err)
  end)

  lazy_teardown(function()
    if srv then srv:stop() end
    fake:stop()
    imds:stop()
  end)

  local function get(which)
    local status, body = srv:get("/token?which=" .. which)
    assert.equal(200, status, body)
    return cjson.decode(body)
  end

  -- 20 concurrent cold requests for `which` on 2 workers (STS slowed down
  -- so that they overlap): how many distinct tokens they got.
  local function burst(which)
    fake:script("/v1/token", { delay = 0.5 })
    local tokens, n = {}, 0
    for _, x in ipairs(srv:parallel("/token?which=" .. which, 20)) do
      assert.equal(200, x.status, x.body)
      local r = cjson.decode(x.body)
      assert.is_string(r.token, r.err)
      if not tokens[r.token] then n = n + 1 end
      tokens[r.token] = true
    end
    return n
  end

  it("file source: 20 concurrent cold requests on 2 workers make one STS exchange", function()
    assert.equal(1, burst("file"))
    assert.equal(1, #fake:requests("/v1/token"))
  end)

  it("url and aws sources: 20 concurrent cold requests on 2 workers make one exchange each", function()
    local sts0, subj0, imds0 = #fake:requests("/v1/token"), #fake:requests("/subject-token"), #imds:requests()
    assert.equal(1, burst("url_burst"))
    assert.equal(sts0 + 1, #fake:requests("/v1/token"))
    local subj = fake:requests("/subject-token")
    assert.equal(subj0 + 1, #subj)
    assert.equal("1", subj[#subj].headers["x-burst"])
    assert.equal(1, burst("aws_burst"))
    assert.equal(sts0 + 2, #fake:requests("/v1/token"))
    -- One IMDS round: the session token (PUT), region, role, credentials.
    assert.equal(imds0 + 4, #imds:requests())
  end)

  it("url source: fetched over cosockets, the worker answering others meanwhile", function()
    fake:script("/subject-token", { delay = 2 })
    local sts_before = #fake:requests("/v1/token")
    local out = helpers.tmpname("ngx-url", ".json")
    os.execute(("curl -s --max-time 20 -o %s '%s/token?which=url' &")
      :format(helpers.shell_quote(out), srv.url))
    fake:wait_requests("/subject-token", 1, 10)
    -- The subject token request is pending: /fast answers now.
    for _ = 1, 4 do
      local status, body = srv:get("/fast")
      assert.equal(200, status)
      assert.equal("fast\n", body)
    end
    assert.equal(sts_before, #fake:requests("/v1/token"))
    local r
    for _ = 1, 200 do
      r = cjson.decode(helpers.read_file(out) or "")
      if r then break end
      os.execute("sleep 0.1")
    end
    assert.is_table(r)
    assert.is_string(r.token, r.err)
    -- Cosockets only: no libcurl handle was ever made in this worker.
    assert.is_true(r.ngx_transport)
    assert.is_false(r.curl_transport)
  end)

  it("aws source: IMDSv2 and the signed request over cosockets", function()
    local r = get("aws")
    assert.is_string(r.token, r.err)
    assert.is_false(r.curl_transport)
    local rs = imds:requests()
    assert.equal("PUT", rs[#rs - 3].method)
    assert.equal(8, #rs)  -- the burst's round, then this one
  end)

  it("executable source: refused in a worker with a clear error", function()
    local r = get("exec")
    assert.is_nil(r.token)
    assert.equal("executable", r.step)
    assert.matches("^gauth%.external_account: executable: not allowed inside nginx workers", r.err)
  end)
end)
end
