-- gauth.id_token.fetch / credentials and the universe domain, judged by
-- Google's Node library (google-auth-library, one node process for the
-- batch, spec/support/idtoken_judge.js) on the same loopback servers:
-- both ask for ID tokens of an impersonated key file (IAM generateIdToken),
-- of the metadata server (ADC on Compute Engine), of an external account
-- in another universe through its service account (STS and IAM at that
-- universe's hosts), and read the universe domain from the metadata
-- server; the spec compares what each sent, request by request. Google's
-- fixed hosts reach the fake (fake_google.py, a certificate for those
-- names from the test CA) only through the loopback CONNECT proxy; the
-- metadata server is plain http on loopback, never proxied. Every ID
-- token either side got verifies with PyJWT against the fake's key.
local helpers = require "helpers"
local judges = require "support.judges"
local cjson = require "cjson.safe"
local token_cache = require "gauth.token_cache"
local ea = require "gauth.external_account"
local ce = require "gauth.compute_engine"
local id_token = require "gauth.id_token"

local q = helpers.shell_quote
local UNIVERSE = "judge-universe.test"
local HOSTS = { "oauth2.googleapis.com", "iamcredentials.googleapis.com",
                "sts." .. UNIVERSE, "iamcredentials." .. UNIVERSE }
local TARGET = "run-invoker@proj.iam.gserviceaccount.com"
local IAM_PATH = "/v1/projects/-/serviceAccounts/" .. TARGET
local AUD = "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/pool/providers/oidc"
local JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
local RUN_1 = "https://one-abc123-uc.a.run.app"
local RUN_2 = "https://two-abc123-uc.a.run.app/path?x=1"
local RUN_3 = "https://three-abc123-uc.a.run.app"

describe("ID tokens and the universe domain, judged by google-auth-library (Node)", function()
  local fake, meta, proxy, key, server_pem, home

  lazy_setup(function()
    local cert, ckey = judges.google_cert(HOSTS)
    fake = helpers.start_fake({ cert_file = cert, key_file = ckey })
    meta = helpers.start_fake({ tls = false })
    local routes = {}
    for _, h in ipairs(HOSTS) do routes[h .. ":443"] = "127.0.0.1:" .. fake.port end
    proxy = judges.start_connect_proxy(routes)
    key = helpers.make_rsa_key()
    server_pem = fake:get_config().server_public_pem
    -- Node's HOME: no gcloud credentials file to find.
    home = helpers.tmpdir() .. "/node-home"
    os.execute("mkdir -p " .. q(home))
  end)

  lazy_teardown(function()
    proxy.stop()
    meta:stop()
    fake:stop()
  end)

  local function configure()
    fake:reset()
    fake:config({ refresh_tokens = helpers.user_refresh_tokens(),
                  federation = { oidc_public_pem = key.public_pem } })
    meta:reset()
    -- The universe domain: one answer, then a 404 (googleapis.com).
    meta:script("/computeMetadata/v1/universe/universe-domain",
      { { status = 200, body = UNIVERSE }, { status = 404, body = "Not Found\n" } })
  end

  local function verify(tok, aud)
    return assert(helpers.pyjwt_verify(tok, server_pem, { audience = aud,
      issuer = "https://accounts.google.com" }))
  end

  -- host method path, and the request, of every request a server got.
  local function seen(server, host_of)
    local out = {}
    for _, r in ipairs(server:requests()) do
      out[#out + 1] = { line = (host_of or r.headers.host) .. " " .. r.method .. " " .. r.path, req = r }
    end
    return out
  end

  local function pick(list, line)
    local found = {}
    for _, e in ipairs(list) do
      if e.line == line then found[#found + 1] = e.req end
    end
    return found
  end

  local function query(r)
    local t = {}
    for k, v in (r.query or ""):gmatch("([^&=]+)=([^&]*)") do
      t[k] = helpers.urldecode and helpers.urldecode(v) or v:gsub("%%(%x%x)", function(h)
        return string.char(tonumber(h, 16)) end)
    end
    return t
  end

  it("sends the requests Node sends, to the same hosts, and both tokens verify", function()
    -- The credentials both are given.
    local subject = helpers.tmpname("subject", ".txt")
    local now = os.time()
    helpers.write_file(subject, helpers.pyjwt_encode({ iss = "https://issuer.example", sub = "workload-1",
      aud = "gauth-test", iat = now, exp = now + 600 }, key.private_pem))
    local imp_file = { type = "impersonated_service_account",
      service_account_impersonation_url = "https://iamcredentials.googleapis.com" .. IAM_PATH
        .. ":generateAccessToken",
      source_credentials = { type = "authorized_user", client_id = helpers.USER.client_id,
        client_secret = helpers.USER.client_secret, refresh_token = helpers.USER.refresh_token } }
    local imp_path = helpers.tmpname("impersonated", ".json")
    helpers.write_file(imp_path, cjson.encode(imp_file))
    local ea_cfg = { type = "external_account", audience = AUD, subject_token_type = JWT_TYPE,
      universe_domain = UNIVERSE, credential_source = { file = subject } }
    local ea_imp = {}
    for k, v in pairs(ea_cfg) do ea_imp[k] = v end
    ea_imp.service_account_impersonation_url = "https://iamcredentials." .. UNIVERSE .. IAM_PATH
      .. ":generateAccessToken"
    local transport = { ca_file = helpers.certs().ca_file, proxy = proxy.url, retry = false }
    local function with(t)
      local o = { cache = token_cache.new() }
      for k, v in pairs(transport) do o[k] = v end
      for k, v in pairs(t) do o[k] = v end
      return o
    end

    -- gauth.
    configure()
    local ours = {}
    local tok, msg = id_token.fetch(RUN_1, with({ include_email = true,
      env = { GOOGLE_APPLICATION_CREDENTIALS = imp_path } }))
    assert(tok, msg)
    ours[1] = tok
    tok, msg = id_token.fetch(RUN_2, with({ env = { GCE_METADATA_HOST = meta.host_port } }))
    assert(tok, msg)
    ours[2] = tok
    local source = assert(ea.from_info(ea_imp, with({ env = {} })))
    tok, msg = id_token.fetch(RUN_3, { source = source })
    assert(tok, msg)
    ours[3] = tok
    local universes = {}
    for i = 1, 2 do
      local c = assert(ce.credentials({ env = { GCE_METADATA_HOST = meta.host_port }, retry = false }))
      universes[i] = assert(c:get_universe_domain())
    end
    local our_google, our_meta = seen(fake), seen(meta, "metadata")
    assert.same({}, (function()
      local refused = {}
      for _, cn in ipairs(proxy.connects()) do
        if cn.refused then refused[#refused + 1] = cn.target end
      end
      return refused
    end)())
    local our_connects = #proxy.connects()

    -- Node, on the same servers set up the same way.
    configure()
    local env = "env -u GOOGLE_APPLICATION_CREDENTIALS -u HTTP_PROXY -u http_proxy"
      .. " METADATA_SERVER_DETECTION=assume-present HOME=" .. q(home)
      .. " GCE_METADATA_HOST=" .. q(meta.host_port)
      .. " HTTPS_PROXY=" .. q(proxy.url) .. " https_proxy=" .. q(proxy.url)
      .. " NO_PROXY=127.0.0.1 no_proxy=127.0.0.1"
      .. " NODE_EXTRA_CA_CERTS=" .. q(helpers.certs().ca_file) .. " "
    local res = judges.run_json(env .. "node " .. q(judges.support_dir .. "/idtoken_judge.js"), { cases = {
      { op = "id_token", credentials = imp_file, audience = RUN_1 },
      { op = "id_token", credentials = cjson.null, audience = RUN_2 },
      { op = "impersonated_id_token", source = ea_cfg, target = TARGET, audience = RUN_3,
        include_email = false },
      { op = "universe" }, { op = "universe" },
    } })
    for i = 1, 3 do assert(res[i].token, "node case " .. i .. ": " .. tostring(res[i].error)) end
    local their_google, their_meta = seen(fake), seen(meta, "metadata")
    for _, cn in ipairs(proxy.connects()) do
      assert.is_false(cn.refused, "refused CONNECT " .. tostring(cn.target))
    end
    assert.is_true(#proxy.connects() > our_connects)

    -- The same ID tokens, as far as a token says: audience, account.
    local auds = { RUN_1, RUN_2, RUN_3 }
    for i = 1, 3 do
      local a, b = verify(ours[i], auds[i]), verify(res[i].token, auds[i])
      assert.equal(b.email, a.email, "email of case " .. i)
      assert.equal(b.sub, a.sub, "sub of case " .. i)
    end
    assert.equal(TARGET, verify(ours[1], RUN_1).email)
    -- The universe domain: the metadata server's answer, then its 404.
    assert.same({ UNIVERSE, "googleapis.com" }, universes)
    assert.same({ UNIVERSE, "googleapis.com" }, { res[4].universe, res[5].universe })

    -- 1. Impersonated key file: the source's refresh, then generateIdToken
    -- at iamcredentials.googleapis.com with its token.
    local line = "oauth2.googleapis.com POST /token"
    local mine, theirs = pick(our_google, line), pick(their_google, line)
    assert.equal(1, #mine)
    assert.equal(1, #theirs)
    assert.equal(theirs[1].form.grant_type, mine[1].form.grant_type)
    assert.equal(theirs[1].form.refresh_token, mine[1].form.refresh_token)
    line = "iamcredentials.googleapis.com POST " .. IAM_PATH .. ":generateIdToken"
    mine, theirs = pick(our_google, line), pick(their_google, line)
    assert.equal(1, #mine)
    assert.equal(1, #theirs)
    assert.equal(theirs[1].json.audience, mine[1].json.audience)
    assert.equal(theirs[1].json.includeEmail, mine[1].json.includeEmail)
    assert.equal(RUN_1, mine[1].json.audience)
    assert.matches("^Bearer fake%-token%-", mine[1].headers.authorization)
    assert.matches("^application/json", mine[1].headers["content-type"])
    assert.matches("^application/json", theirs[1].headers["content-type"])

    -- 2. The metadata server: identity for the audience, format=full.
    line = "metadata GET /computeMetadata/v1/instance/service-accounts/default/identity"
    mine, theirs = pick(our_meta, line), pick(their_meta, line)
    assert.equal(1, #mine)
    assert.equal(1, #theirs)
    assert.same(query(theirs[1]), query(mine[1]))
    assert.same({ audience = RUN_2, format = "full" }, query(mine[1]))
    assert.equal(theirs[1].headers["metadata-flavor"], mine[1].headers["metadata-flavor"])

    -- 3. An external account of another universe: STS at sts.<universe>,
    -- then generateIdToken at iamcredentials.<universe> with the STS token.
    line = "sts." .. UNIVERSE .. " POST /v1/token"
    mine, theirs = pick(our_google, line), pick(their_google, line)
    assert.equal(1, #mine)
    assert.equal(1, #theirs)
    for _, k in ipairs({ "grant_type", "audience", "subject_token_type", "requested_token_type",
                         "scope", "subject_token" }) do
      assert.equal(theirs[1].form[k], mine[1].form[k], k)
    end
    line = "iamcredentials." .. UNIVERSE .. " POST " .. IAM_PATH .. ":generateIdToken"
    mine, theirs = pick(our_google, line), pick(their_google, line)
    assert.equal(1, #mine)
    assert.equal(1, #theirs)
    assert.equal(theirs[1].json.audience, mine[1].json.audience)
    assert.equal(theirs[1].json.includeEmail, mine[1].json.includeEmail)
    -- Nothing went to googleapis.com for that account.
    for _, e in ipairs(our_google) do
      if e.req.json and e.req.json.audience == RUN_3 then
        assert.equal("iamcredentials." .. UNIVERSE, e.req.headers.host)
      end
    end

    -- 4. The universe domain: the same read, twice each.
    line = "metadata GET /computeMetadata/v1/universe/universe-domain"
    mine, theirs = pick(our_meta, line), pick(their_meta, line)
    assert.equal(2, #mine)
    assert.equal(2, #theirs)
    assert.equal(theirs[1].headers["metadata-flavor"], mine[1].headers["metadata-flavor"])
    assert.equal(theirs[1].query or "", mine[1].query or "")
  end)

  -- Node's JWT client asks www.googleapis.com whatever the universe, so
  -- google-auth (Python)'s facts judge this one: service_account
  -- IDTokenCredentials outside googleapis.com call generateIdToken at
  -- iamcredentials.<universe> with a self-signed JWT (iss = sub = the
  -- account, scope .../auth/iam, one hour, no aud) and {audience,
  -- includeEmail, useEmailAzp}. PyJWT checks the JWT and the ID token.
  it("a service account of another universe: IAM generateIdToken with a self-signed JWT", function()
    configure()
    local path, info = helpers.make_service_account_file({ extra = { universe_domain = UNIVERSE } })
    fake:config({ public_keys = { [info.kid] = info.public_pem } })
    local sa = require "gauth.service_account"
    local o = { ca_file = helpers.certs().ca_file, proxy = proxy.url, retry = false,
                cache = token_cache.new() }
    local src = assert(sa.from_file(path, o))
    assert.equal(UNIVERSE, src.universe_domain)
    local c = assert(id_token.credentials(src, { audience = RUN_1 }))
    local tok, exp = c:token()
    assert.is_string(tok, exp)
    local claims = verify(tok, RUN_1)
    assert.equal(info.client_email, claims.email)
    assert.is_number(exp)
    assert.equal(tok, (c:token()))
    local rs = fake:requests()
    assert.equal(1, #rs)
    local r = rs[1]
    assert.equal("iamcredentials." .. UNIVERSE, r.headers.host)
    assert.equal("POST", r.method)
    assert.equal("/v1/projects/-/serviceAccounts/" .. info.client_email .. ":generateIdToken", r.path)
    assert.same({ audience = RUN_1, includeEmail = true, useEmailAzp = true }, r.json)
    local bearer = r.headers.authorization:match("^Bearer (.+)$")
    local header = helpers.jwt_parts(bearer)
    assert.equal(info.kid, header.kid)
    assert.equal("RS256", header.alg)
    local jwt_claims = assert(helpers.pyjwt_verify(bearer, info.public_pem, {}))
    assert.equal(info.client_email, jwt_claims.iss)
    assert.equal(info.client_email, jwt_claims.sub)
    assert.equal("https://www.googleapis.com/auth/iam", jwt_claims.scope)
    assert.equal(3600, jwt_claims.exp - jwt_claims.iat)
    assert.is_nil(jwt_claims.aud)
    assert.is_nil(jwt_claims.target_audience)
    -- The key file's own constructor, another audience: the same call.
    local d = assert(sa.id_token_credentials(path, { target_audience = RUN_3, ca_file = o.ca_file,
      proxy = proxy.url, retry = false, cache = token_cache.new() }))
    assert.equal(info.client_email, verify(assert(d:token()), RUN_3).email)
    assert.equal(2, #fake:requests())
    assert.same({}, fake:requests("/token"))
    -- IAM refuses: nil, msg, err naming the permission; nothing cached.
    fake:script("/v1/projects/-/serviceAccounts/" .. info.client_email .. ":generateIdToken",
      { status = 403, body = { error = { code = 403, status = "PERMISSION_DENIED",
        message = "Permission 'iam.serviceAccounts.getOpenIdToken' denied." } } })
    local e = assert(id_token.credentials(src, { audience = RUN_2, cache = token_cache.new() }))
    local none, msg, err = e:token()
    assert.is_nil(none)
    helpers.assert_failure(msg, err, "iam", "response")
    assert.equal(403, err.status)
    assert.truthy(msg:find("denied on service account " .. info.client_email, 1, true), msg)
  end)
end)
