-- gauth.nginx.require_id_token in a real nginx with 4 workers (LuaJIT, so
-- this runs in the LuaJIT pass of spec/run.sh only): the key set fetched
-- once for all workers from a loopback certificate server, 401 with
-- WWW-Authenticate on every rejection (why logged at info, never the
-- token), claims in ngx.ctx for later phases, IAP's header and keys.
local helpers = require "helpers"
local nginx = require "support.nginx"

local LUAJIT_PASS = (os.getenv("GAUTH_LUA_VERSION") or (jit and "5.1" or "5.4")) == "5.1"
local q = helpers.shell_quote
local AUD = "https://push.example.com/push"
local IAP_AUD = "/projects/123/global/backendServices/456"
local EMAIL = "pusher@my-project.iam.gserviceaccount.com"

if LUAJIT_PASS then
describe("gauth.nginx.require_id_token", function()
  local fake, srv, keys, tok, t0

  -- n concurrent requests with one header (curl CLI, all at once).
  local function parallel(path, n, header)
    local dir = helpers.tmpname("par")
    os.execute("mkdir -p " .. q(dir))
    local args = { "curl -s --parallel --parallel-immediate --parallel-max " .. n,
                   "--max-time 60", "-H " .. q(header) }
    for i = 1, n do
      args[#args + 1] = q(srv.url .. path) .. " -o " .. q(dir .. "/" .. i)
    end
    local ok, out = helpers.sh(table.concat(args, " "))
    assert(ok, out)
    local bodies = {}
    for i = 1, n do bodies[i] = helpers.read_file(dir .. "/" .. i) end
    return bodies
  end

  lazy_setup(function()
    fake = helpers.start_fake()
    keys = { rsa = helpers.make_rsa_key{ cert = true }, ec = helpers.make_ec_key() }
    local now = os.time()
    t0 = now
    local function c(over)
      local t = { iss = "https://accounts.google.com", aud = AUD, sub = "1",
                  email = EMAIL, email_verified = true, iat = now - 5, exp = now + 3600 }
      for k, v in pairs(over or {}) do t[k] = v end
      return t
    end
    local specs = {
      valid = { key = "rsa", alg = "RS256", headers = { kid = "r1" }, claims = c() },
      expired = { key = "rsa", alg = "RS256", headers = { kid = "r1" },
                  claims = c({ iat = now - 7200, exp = now - 3600 }) },
      other_aud = { key = "rsa", alg = "RS256", headers = { kid = "r1" },
                    claims = c({ aud = "https://elsewhere.example" }) },
      other_email = { key = "rsa", alg = "RS256", headers = { kid = "r1" },
                      claims = c({ email = "someone@example.com", firebase = { tenant = "t1" } }) },
      forged = { key = "rsa", alg = "RS256", headers = { kid = "e1" }, claims = c() },
      iap = { key = "ec", alg = "ES256", headers = { kid = "e1" },
              claims = c({ iss = "https://cloud.google.com/iap", aud = IAP_AUD }) },
      -- as IAP signs them: email, no email_verified
      iap_plain = { key = "ec", alg = "ES256", headers = { kid = "e1" },
                    claims = c({ iss = "https://cloud.google.com/iap", aud = IAP_AUD,
                                 email_verified = "drop", sub = "7" }) },
      iap_other = { key = "ec", alg = "ES256", headers = { kid = "e1" },
                    claims = c({ iss = "https://cloud.google.com/iap", aud = IAP_AUD,
                                 email_verified = "drop", email = "someone@example.com", sub = "8" }) },
      short = { key = "rsa", alg = "RS256", headers = { kid = "r1" },
                claims = c({ exp = now + 600 }) },
      iap_rs = { key = "rsa", alg = "RS256", headers = { kid = "r1" },
                 claims = c({ iss = "https://cloud.google.com/iap", aud = IAP_AUD }) },
      other_iss = { key = "rsa", alg = "RS256", headers = { kid = "r1" },
                    claims = c({ iss = "https://issuer.example" }) },
      -- issued a minute ahead (a guard with clock_skew takes it), and one
      -- living two days (over the default max_lifetime)
      future = { key = "rsa", alg = "RS256", headers = { kid = "r1" },
                 claims = c({ iat = now + 60, sub = "4" }) },
      long_life = { key = "rsa", alg = "RS256", headers = { kid = "r1" },
                    claims = c({ exp = now + 2 * 86400, sub = "5" }) },
      -- longer than MAX_CACHED_TOKEN: verified on every request
      long = { key = "rsa", alg = "RS256", headers = { kid = "r1" },
               claims = c({ sub = "6", pad = string.rep("p", 5000) }) },
      -- tokens no worker has a verdict for yet (the stale-keys case)
      stale_b = { key = "rsa", alg = "RS256", headers = { kid = "r1" }, claims = c({ sub = "2" }) },
      stale_c = { key = "rsa", alg = "RS256", headers = { kid = "r1" }, claims = c({ sub = "3" }) },
    }
    for _, s in pairs(specs) do
      if s.claims.email_verified == "drop" then s.claims.email_verified = nil end
    end
    local names, list = {}, {}
    for name, s in pairs(specs) do names[#names + 1] = name; list[#list + 1] = s end
    local path = helpers.tmpname("idt", ".json")
    helpers.write_file(path, helpers.json_encode({
      keys = { rsa = keys.rsa.private_pem, ec = keys.ec.private_pem },
      tokens = list, jwk = { "ec" } }))
    local ok, out = helpers.sh("/usr/bin/python3 " .. q(helpers.support_dir
      .. "/idtoken_tool.py") .. " " .. q(path))
    assert(ok, out)
    out = assert(helpers.json_decode(out))
    tok = {}
    for i, name in ipairs(names) do tok[name] = out.tokens[i] end
    local jwk = out.jwk.ec
    jwk.kid, jwk.alg, jwk.use = "e1", "ES256", "sig"
    -- One answer each: a second fetch would get a 404 and show.
    fake:script("/certs/pem", { status = 200, body = { r1 = keys.rsa.cert_pem },
      headers = { ["Cache-Control"] = "public, max-age=3600" } })
    fake:script("/certs/iap", { status = 200, body = { keys = { jwk } },
      headers = { ["Cache-Control"] = "public, max-age=3600" } })
    local base = "https://localhost:" .. fake.port
    local err
    srv, err = nginx.start({
      workers = 4,
      listen_opts = "reuseport",
      trusted_ca = helpers.certs().ca_file,
      -- The key cache's clock runs `keys_ahead` seconds ahead (0 unless a
      -- test moves it), and a failed key-set fetch may be tried again after
      -- 1 s instead of 30: the stale-keys case sets both in motion.
      http = [[lua_shared_dict gauth 1m; lua_shared_dict test_clock 64k;
        init_worker_by_lua_block {
          local id_token = require "gauth.id_token"
          id_token.set_default_cache(assert(id_token.new_cache({ refetch_interval = 1,
            now = function() return ngx.now() + (ngx.shared.test_clock:get("keys_ahead") or 0) end })))
        }]],
      server = ([[
        location = /push {
          access_by_lua_block {
            local c = require("gauth.nginx").require_id_token{
              audience = %q, certs_url = %q, allowed_emails = { %q } }
            ngx.ctx.returned = c == ngx.ctx.gauth_claims
          }
          content_by_lua_block {
            ngx.say(require("cjson").encode({ pid = ngx.worker.pid(),
              email = ngx.ctx.gauth_claims.email, returned = ngx.ctx.returned }))
          }
        }
        location = /other {
          access_by_lua_block {
            require("gauth.nginx").require_id_token{ audience = "https://other.example",
              certs_url = %q }
          }
          content_by_lua_block { ngx.say("other") }
        }
        location = /clocked {
          # the same guard on a clock the spec moves (shared by all workers)
          access_by_lua_block {
            require("gauth.nginx").require_id_token{ audience = %q, certs_url = %q,
              now = function() return ngx.now() + (ngx.shared.test_clock:get("ahead") or 0) end }
          }
          content_by_lua_block { ngx.say("in") }
        }
        location = /clock {
          content_by_lua_block {
            ngx.shared.test_clock:set("ahead", tonumber(ngx.var.arg_ahead))
            ngx.say("ok")
          }
        }
        location = /down {
          access_by_lua_block {
            require("gauth.nginx").require_id_token{ audience = %q,
              certs_url = %q .. ngx.var.arg_how }
          }
          content_by_lua_block { ngx.say("let in") }
        }
        location = /badnow {
          access_by_lua_block {
            require("gauth.nginx").require_id_token{ audience = %q, certs_url = %q, now = "soon" }
          }
          content_by_lua_block { ngx.say("let in") }
        }
        location = /issuers {
          access_by_lua_block {
            require("gauth.nginx").require_id_token{ audience = %q, certs_url = %q,
              issuers = { "https://issuer.example" } }
          }
          content_by_lua_block { ngx.say(ngx.ctx.gauth_claims.iss) }
        }
        location = /stale {
          access_by_lua_block {
            require("gauth.nginx").require_id_token{ audience = %q, certs_url = %q }
          }
          content_by_lua_block { ngx.say("in") }
        }
        location = /keys_clock {
          content_by_lua_block {
            ngx.shared.test_clock:set("keys_ahead", tonumber(ngx.var.arg_ahead))
            ngx.say("ok")
          }
        }
        location = /iap {
          access_by_lua_block {
            require("gauth.nginx").require_id_token{ audience = %q,
              header = "x-goog-iap-jwt-assertion", certs_url = %q }
          }
          content_by_lua_block { ngx.say(ngx.ctx.gauth_claims.iss) }
        }
        # verdicts on one key set, guards that differ in their time checks
        location = /lenient {
          access_by_lua_block {
            require("gauth.nginx").require_id_token{ audience = %q, certs_url = %q,
              clock_skew = 120, max_lifetime = false }
          }
          content_by_lua_block { ngx.say("in") }
        }
        location = /strict {
          access_by_lua_block {
            require("gauth.nginx").require_id_token{ audience = %q, certs_url = %q }
          }
          content_by_lua_block { ngx.say("in") }
        }
        location = /clocked_skew {
          access_by_lua_block {
            require("gauth.nginx").require_id_token{ audience = %q, certs_url = %q, clock_skew = 150,
              now = function() return ngx.now() + (ngx.shared.test_clock:get("ahead") or 0) end }
          }
          content_by_lua_block { ngx.say("in") }
        }
        # IAP's header on the RSA key set an Authorization guard also uses
        location = /iap_rsa_keys {
          access_by_lua_block {
            require("gauth.nginx").require_id_token{ audience = %q,
              header = "x-goog-iap-jwt-assertion", certs_url = %q }
          }
          content_by_lua_block { ngx.say("in") }
        }
        # a handler that edits the claims it was handed
        location = /edits_claims {
          access_by_lua_block {
            require("gauth.nginx").require_id_token{ audience = %q, certs_url = %q }
          }
          content_by_lua_block {
            local c = ngx.ctx.gauth_claims
            -- what an earlier request's handler left in the table, if any
            ngx.say("edited ", tostring(c.tag), " ", tostring(c.firebase.tag))
            c.email, c.aud, c.exp = %q, "https://other.example", c.exp + 86400
            c.tag, c.firebase.tag = "seen", "seen"
          }
        }
        location = /iap_emails {
          access_by_lua_block {
            require("gauth.nginx").require_id_token{ audience = %q,
              header = "x-goog-iap-jwt-assertion", certs_url = %q, allowed_emails = { %q } }
          }
          content_by_lua_block { ngx.say(ngx.ctx.gauth_claims.email) }
        }
        location = /badopts {
          access_by_lua_block {
            local w = ngx.var.arg_w
            local o = { audience = %q, certs_url = %q }
            if w == "skew_nan" then o.clock_skew = 0/0
            elseif w == "skew_neg" then o.clock_skew = -1
            elseif w == "life_nan" then o.max_lifetime = 0/0
            elseif w == "life_str" then o.max_lifetime = "x"
            elseif w == "now_nan" then o.now = function() return 0/0 end
            elseif w == "now_inf" then o.now = 1/0 end
            require("gauth.nginx").require_id_token(o)
          }
          content_by_lua_block { ngx.say("let in") }
        }
        location = /bearer_iap_claims {
          access_by_lua_block {
            require("gauth.nginx").require_id_token{ audience = %q, certs_url = %q,
              issuers = "https://cloud.google.com/iap" }
          }
          content_by_lua_block { ngx.say("in") }
        }
      ]]):format(AUD, base .. "/certs/pem", EMAIL, base .. "/certs/pem",
                 AUD, base .. "/certs/pem", AUD, base .. "/certs/",
                 AUD, base .. "/certs/pem",
                 AUD, base .. "/certs/pem", AUD, base .. "/certs/stale",
                 IAP_AUD, base .. "/certs/iap",
                 AUD, base .. "/certs/pem", AUD, base .. "/certs/pem", AUD, base .. "/certs/pem",
                 IAP_AUD, base .. "/certs/pem", AUD, base .. "/certs/pem", EMAIL,
                 IAP_AUD, base .. "/certs/iap", EMAIL, AUD, base .. "/certs/pem",
                 IAP_AUD, base .. "/certs/pem"),
    })
    assert(srv, err)
  end)

  lazy_teardown(function()
    if srv then srv:stop() end
    if fake then fake:stop() end
  end)

  it("lets valid tokens in on every worker, the key set fetched once for all", function()
    local bodies = parallel("/push", 48, "Authorization: Bearer " .. tok.valid)
    local pids = {}
    for _, b in ipairs(bodies) do
      local v = assert(helpers.json_decode(b or ""), tostring(b))
      assert.are.equal(EMAIL, v.email)
      assert.is_true(v.returned)
      pids[v.pid] = true
    end
    local n = 0
    for _ in pairs(pids) do n = n + 1 end
    assert.is_true(n >= 2, "answers came from " .. n .. " worker(s)")
    assert.are.equal(1, #fake:requests("/certs/pem"))
    -- the scheme in any case
    local status, body = srv:get("/push", { headers = { Authorization = "bearer " .. tok.valid } })
    assert.are.equal(200, status)
    assert.matches(EMAIL, body, 1, true)
  end)

  it("answers 401 with WWW-Authenticate, logs why at info and never the token", function()
    local cases = {
      { nil, "no authorization header" },
      { "Basic dXNlcjpwYXNz", "Authorization is not a Bearer token" },
      { "Bearer " .. tok.expired, "gauth%.id_token: claims: expired 36%d%d s ago" },
      { "Bearer " .. tok.other_aud, "gauth%.id_token: claims: audience mismatch" },
      { "Bearer " .. tok.other_email, "gauth%.nginx: claims: email not allowed" },
      { "Bearer " .. tok.forged, "gauth%.id_token: verify: unknown kid e1" },
      { "Bearer a.b", "gauth%.id_token: decode: malformed: 2 segments" },
    }
    for _, c in ipairs(cases) do
      local mark = #srv:log()
      local status, body, headers = srv:get("/push", { headers = { Authorization = c[1] } })
      assert.are.equal(401, status, c[2])
      assert.are.equal('Bearer error="invalid_token"', headers["www-authenticate"])
      assert.is_nil(body:find(EMAIL, 1, true))
      local log = srv:log_since(mark)
      assert.matches("[info]", log, 1, true)
      assert.matches("gauth: require_id_token: " .. c[2], log)
      if c[1] then
        local token = c[1]:gsub("^%S+ ", "")
        assert.is_nil(log:find(token, 1, true))
        assert.is_nil(log:find(token:sub(-16), 1, true))
      end
    end
    -- rejections fetch no more than the one early refetch an unknown kid
    -- may make per interval
    assert.is_true(#fake:requests("/certs/pem") <= 2)
  end)

  it("hands each request its own claims: a handler's edits reach neither later requests nor verdicts", function()
    -- other_email's verdict is cached on the workers /edits_claims ran on,
    -- whose handler then rewrote email, aud and exp and added fields at
    -- the top and inside a nested claim of the table it was handed; the
    -- next request bearing the token (on any worker) sees none of it
    local h = { headers = { Authorization = "Bearer " .. tok.other_email } }
    for _ = 1, 16 do
      local status, body = srv:get("/edits_claims", h)
      assert.are.equal(200, status)
      assert.are.equal("edited nil nil\n", body)
    end
    for _ = 1, 16 do
      local mark = #srv:log()
      assert.are.equal(401, (srv:get("/push", h)))
      assert.matches("gauth: require_id_token: gauth.nginx: claims: email not allowed",
        srv:log_since(mark), 1, true)
    end
  end)

  it("lends a verdict only to the very value verified: another payload under its signature is refused", function()
    -- valid's verdict cached on every worker
    for _ = 1, 12 do
      assert.are.equal(200, (srv:get("/push", { headers = { Authorization = "Bearer " .. tok.valid } })))
    end
    local sig = tok.valid:match("%.([^.]*)$")
    local signed_other = tok.other_email:match("^(.*%.)[^.]*$")
    local spliced = signed_other .. sig
    for _ = 1, 12 do
      local mark = #srv:log()
      local status, _, headers = srv:get("/push", { headers = { Authorization = "Bearer " .. spliced } })
      assert.are.equal(401, status)
      assert.are.equal('Bearer error="invalid_token"', headers["www-authenticate"])
      assert.matches("gauth: require_id_token: gauth.id_token: verify: bad signature",
        srv:log_since(mark), 1, true)
    end
    -- the same token, the scheme written otherwise: its own verdict
    for _ = 1, 4 do
      assert.are.equal(200, (srv:get("/push", { headers = { Authorization = "BEARER " .. tok.valid } })))
    end
  end)

  it("checks each location's audience on verdicts it has cached", function()
    assert.are.equal(200, (srv:get("/push", { headers = { Authorization = "Bearer " .. tok.valid } })))
    local status, _, headers = srv:get("/other", { headers = { Authorization = "Bearer " .. tok.valid } })
    assert.are.equal(401, status)
    assert.are.equal('Bearer error="invalid_token"', headers["www-authenticate"])
  end)

  it("never lets a cached verdict outlive the token's exp", function()
    local h = { headers = { Authorization = "Bearer " .. tok.short } }
    assert.are.equal(200, (srv:get("/clock?ahead=0")))
    -- once per worker at least: every worker now holds the verdict
    for _ = 1, 12 do assert.are.equal(200, (srv:get("/clocked", h))) end
    -- 700 s on: the verdicts are still in every LRU (their real-time TTL
    -- is 600 s), but exp has passed on the guard's clock
    assert.are.equal(200, (srv:get("/clock?ahead=700")))
    for _ = 1, 12 do
      local mark = #srv:log()
      local status, _, headers = srv:get("/clocked", h)
      assert.are.equal(401, status)
      assert.are.equal('Bearer error="invalid_token"', headers["www-authenticate"])
      assert.matches("gauth: require_id_token: gauth%.id_token: claims: expired 10%d s ago",
                     srv:log_since(mark))
    end
    assert.are.equal(200, (srv:get("/clock?ahead=0")))
    assert.are.equal(200, (srv:get("/clocked", h)))
  end)

  it("holds a cached verdict to each guard's clock_skew: in until exp + skew, out after", function()
    local h = { headers = { Authorization = "Bearer " .. tok.short } }
    assert.are.equal(200, (srv:get("/clock?ahead=0")))
    for _, b in ipairs(parallel("/clocked_skew", 16, "Authorization: Bearer " .. tok.short)) do
      assert.are.equal("in\n", b)
    end
    -- 100 s past exp (the short token's exp is t0 + 600): within this
    -- guard's 150 s, outside /clocked's none
    assert.are.equal(200, (srv:get("/clock?ahead=" .. (t0 + 700 - os.time()))))
    for _, b in ipairs(parallel("/clocked_skew", 16, "Authorization: Bearer " .. tok.short)) do
      assert.are.equal("in\n", b)
    end
    assert.are.equal(401, (srv:get("/clocked", h)))
    -- 230 s past exp: out on every worker, verdict cached or not
    assert.are.equal(200, (srv:get("/clock?ahead=" .. (t0 + 830 - os.time()))))
    for _ = 1, 12 do
      local mark = #srv:log()
      local status, _, headers = srv:get("/clocked_skew", h)
      assert.are.equal(401, status)
      assert.are.equal('Bearer error="invalid_token"', headers["www-authenticate"])
      assert.matches("gauth: require_id_token: gauth%.id_token: claims: expired 2%d%d s ago",
                     srv:log_since(mark))
    end
    assert.are.equal(200, (srv:get("/clock?ahead=0")))
  end)

  it("checks a verdict cached by a lenient guard against a strict one's iat and lifetime", function()
    local cases = {
      { tok.future, "gauth: require_id_token: gauth%.id_token: claims: issued %d+ s in the future %(iat%)" },
      { tok.long_life, "gauth: require_id_token: gauth%.id_token: claims: lifetime 17280%d s exceeds "
                       .. "max_lifetime 86400" },
    }
    for _, c in ipairs(cases) do
      -- every worker (or nearly) holds the lenient guard's verdict
      for _, b in ipairs(parallel("/lenient", 24, "Authorization: Bearer " .. c[1])) do
        assert.are.equal("in\n", b)
      end
      for _ = 1, 12 do
        local mark = #srv:log()
        local status, body, headers = srv:get("/strict", { headers = { Authorization = "Bearer " .. c[1] } })
        assert.are.equal(401, status)
        assert.is_nil(body:find("in\n", 1, true))
        assert.are.equal('Bearer error="invalid_token"', headers["www-authenticate"])
        assert.matches(c[2], srv:log_since(mark))
      end
      -- the lenient guard's verdicts stand
      assert.are.equal(200, (srv:get("/lenient", { headers = { Authorization = "Bearer " .. c[1] } })))
    end
  end)

  it("verifies a token longer than MAX_CACHED_TOKEN on every request, in and out as any other", function()
    assert.is_true(#tok.long > 4096)
    for _, b in ipairs(parallel("/strict", 8, "Authorization: Bearer " .. tok.long)) do
      assert.are.equal("in\n", b)
    end
    local status = srv:get("/other", { headers = { Authorization = "Bearer " .. tok.long } })
    assert.are.equal(401, status)
  end)

  it("never lends IAP's guard a verdict an Authorization guard cached on the same key set", function()
    for _, b in ipairs(parallel("/bearer_iap_claims", 24, "Authorization: Bearer " .. tok.iap_rs)) do
      assert.are.equal("in\n", b)
    end
    for _ = 1, 12 do
      local mark = #srv:log()
      local status = srv:get("/iap_rsa_keys", { headers = { ["X-Goog-IAP-JWT-Assertion"] = tok.iap_rs } })
      assert.are.equal(401, status)
      assert.matches("verify: alg RS256 not allowed", srv:log_since(mark), 1, true)
    end
  end)

  it("refuses a bad now option as a programming error (500, not a 401 or a pass)", function()
    local mark = #srv:log()
    local status, body = srv:get("/badnow", { headers = { Authorization = "Bearer " .. tok.valid } })
    assert.are.equal(500, status)
    assert.is_nil(body:find("let in", 1, true))
    assert.matches("now must be a finite number or a function returning one", srv:log_since(mark), 1, true)
  end)

  it("refuses NaN, infinite and negative time options as programming errors (500), never a pass", function()
    local cases = {
      skew_nan = "clock_skew must be a finite number >= 0",
      skew_neg = "clock_skew must be a finite number >= 0",
      life_nan = "max_lifetime must be false or a finite number > 0",
      life_str = "max_lifetime must be false or a finite number > 0",
      now_nan = "now must be a finite number or a function returning one",
      now_inf = "now must be a finite number or a function returning one",
    }
    for w, want in pairs(cases) do
      -- an expired token and a valid one whose verdict is cached: neither passes
      for _, t in ipairs({ tok.expired, tok.valid, tok.valid }) do
        local mark = #srv:log()
        local status, body = srv:get("/badopts?w=" .. w, { headers = { Authorization = "Bearer " .. t } })
        assert.are.equal(500, status, w)
        assert.is_nil(body:find("let in", 1, true), w)
        assert.matches("gauth.nginx: require_id_token: " .. want, srv:log_since(mark), 1, true)
      end
    end
  end)

  it("lets nothing through when the key set cannot be had (500, garbage, empty, refused), and never hangs", function()
    fake:script("/certs/e500", { status = 500, body = { error = "down" } })
    fake:script("/certs/garbage", { status = 200, body_b64 = "PGh0bWw+bm90IGpzb24=",
      headers = { ["Content-Type"] = "text/html" } })
    fake:script("/certs/empty", { status = 200, body = {} })
    local cases = {
      { "e500", "gauth%.id_token: keys: key set unavailable: fetch answered HTTP 500" },
      { "garbage", "gauth%.id_token: keys: key set unavailable: fetch gave a bad key set: "
                   .. "key set is not a JSON object" },
      { "empty", "gauth%.id_token: keys: key set unavailable: fetch gave a bad key set: "
                 .. "key set is empty" },
    }
    for _, c in ipairs(cases) do
      local mark = #srv:log()
      local status, body, headers = srv:get("/down?how=" .. c[1],
        { headers = { Authorization = "Bearer " .. tok.valid } })
      assert.are.equal(401, status, c[1])
      assert.are.equal('Bearer error="invalid_token"', headers["www-authenticate"])
      assert.is_nil(body:find("let in", 1, true))
      local log = srv:log_since(mark)
      assert.matches("gauth: require_id_token: " .. c[2], log)
      assert.is_nil(log:find(tok.valid, 1, true))
    end
  end)

  it("checks the issuers option: another issuer's token gets 401, the listed one gets in", function()
    local status, body = srv:get("/issuers", { headers = { Authorization = "Bearer " .. tok.other_iss } })
    assert.are.equal(200, status, body)
    assert.are.equal("https://issuer.example\n", body)
    -- Google's issuer is not in this location's list; the issuer listed
    -- here is not Google's, which /push (the default list) wants.
    for _, c in ipairs({ { "/issuers", tok.valid }, { "/push", tok.other_iss } }) do
      local mark = #srv:log()
      local st, b, headers = srv:get(c[1], { headers = { Authorization = "Bearer " .. c[2] } })
      assert.are.equal(401, st, c[1])
      assert.are.equal('Bearer error="invalid_token"', headers["www-authenticate"])
      assert.is_nil(b:find("issuer.example", 1, true))
      local log = srv:log_since(mark)
      assert.matches("gauth: require_id_token: gauth.id_token: claims: issuer mismatch", log, 1, true)
      assert.is_nil(log:find(c[2], 1, true))
    end
  end)

  it("serves the keys it holds while key-set fetches fail, until well past their age", function()
    -- One answer (max-age 60): every later fetch gets the fake's 404.
    fake:script("/certs/stale", { status = 200, body = { r1 = keys.rsa.cert_pem },
      headers = { ["Cache-Control"] = "public, max-age=60" } })
    local h = function(t) return { headers = { Authorization = "Bearer " .. t } } end
    assert.are.equal(200, (srv:get("/stale", h(tok.valid))))
    assert.are.equal(1, #fake:requests("/certs/stale"))
    -- 120 s on for the key cache: the set is past its age. Past the 1 s
    -- refetch interval (a state, not a window) a refetch may be tried.
    assert.are.equal(200, (srv:get("/keys_clock?ahead=120")))
    os.execute("sleep 1.2")
    local mark = #srv:log()
    for _, b in ipairs(parallel("/stale", 16, "Authorization: Bearer " .. tok.stale_b)) do
      assert.are.equal("in\n", b)
    end
    local fetches = #fake:requests("/certs/stale")
    assert.is_true(fetches >= 2, fetches .. " fetches")
    local log = srv:log_since(mark)
    assert.matches("gauth: key set https://localhost:" .. fake.port .. "/certs/stale: fetch answered HTTP 404;"
      .. " the keys held keep serving", log, 1, true)
    -- Six hours and more past their age the old keys serve no more: 401.
    assert.are.equal(200, (srv:get("/keys_clock?ahead=" .. (60 + 6 * 3600 + 120))))
    os.execute("sleep 1.2")
    mark = #srv:log()
    local status, body, headers = srv:get("/stale", h(tok.stale_c))
    assert.are.equal(401, status)
    assert.are.equal('Bearer error="invalid_token"', headers["www-authenticate"])
    assert.is_nil(body:find("in\n", 1, true))
    assert.matches("gauth: require_id_token: gauth.id_token: keys: key set unavailable", srv:log_since(mark),
                   1, true)
    assert.are.equal(200, (srv:get("/keys_clock?ahead=0")))
  end)

  it("takes IAP's header with IAP's issuer and ES256 keys", function()
    local status, body = srv:get("/iap", { headers = { ["X-Goog-IAP-JWT-Assertion"] = tok.iap } })
    assert.are.equal(200, status, body)
    assert.are.equal("https://cloud.google.com/iap\n", body)
    local mark = #srv:log()
    status = srv:get("/iap", { headers = { ["X-Goog-IAP-JWT-Assertion"] = tok.iap_rs } })
    assert.are.equal(401, status)
    assert.matches("verify: alg RS256 not allowed", srv:log_since(mark), 1, true)
    -- an Authorization header is not IAP's
    status = srv:get("/iap", { headers = { Authorization = "Bearer " .. tok.iap } })
    assert.are.equal(401, status)
    -- allowed_emails on IAP's assertion: its email, with no email_verified
    -- (IAP does not send one); another email is refused
    for _ = 1, 2 do
      status, body = srv:get("/iap_emails", { headers = { ["X-Goog-IAP-JWT-Assertion"] = tok.iap_plain } })
      assert.are.equal(200, status, body)
      assert.are.equal(EMAIL .. "\n", body)
      mark = #srv:log()
      status = srv:get("/iap_emails", { headers = { ["X-Goog-IAP-JWT-Assertion"] = tok.iap_other } })
      assert.are.equal(401, status)
      assert.matches("gauth.nginx: claims: email not allowed", srv:log_since(mark), 1, true)
    end

    assert.are.equal(1, #fake:requests("/certs/iap"))
  end)
end)
end
