-- gauth.downscoped and gauth.sts against the fake's STS endpoint (HTTPS
-- with a certificate for sts.googleapis.com from the test CA): requests
-- compared field by field with google-auth-library's DownscopedClient,
-- which reaches the same fake through a CONNECT proxy (any other host
-- fails the spec); caching, expiry, retries, refusals, and rule
-- validation naming the rule and the field.
local helpers = require "helpers"
local judges = require "support.judges"
local downscoped = require "gauth.downscoped"
local sts = require "gauth.sts"
local au = require "gauth.authorized_user"
local errors = require "gauth.errors"
local token_cache = require "gauth.token_cache"
local cjson = require "cjson.safe"

local sleeps, fast_retry = helpers.recorded_retry()

local BUCKET = "//storage.googleapis.com/projects/_/buckets/gauth-bucket"
local RULES = {
  { available_resource = BUCKET,
    available_permissions = { "inRole:roles/storage.objectViewer", "inRole:roles/storage.legacyBucketReader" },
    availability_condition = {
      expression = "resource.name.startsWith('projects/_/buckets/gauth-bucket/objects/public/')",
      title = "public \"objects\"", description = "only under public/ \226\156\147" } },
  { available_resource = "//storage.googleapis.com/projects/_/buckets/other",
    available_permissions = { "inRole:roles/storage.objectCreator" } },
}

-- The same boundary as google-auth's camelCase object.
local function node_boundary(rules)
  local out = {}
  for i, r in ipairs(rules) do
    local o = { availableResource = r.available_resource,
                availablePermissions = r.available_permissions }
    if r.availability_condition then o.availabilityCondition = r.availability_condition end
    out[i] = o
  end
  return { accessBoundary = { accessBoundaryRules = out } }
end

describe("gauth.downscoped", function()
  local fake, proxy, user_file, ca

  lazy_setup(function()
    helpers.install_loopback_guard()
    local cert, key = judges.google_cert({ "sts.googleapis.com" })
    fake = helpers.start_fake({ cert_file = cert, key_file = key })
    ca = fake.ca_file
    proxy = judges.start_connect_proxy({ ["sts.googleapis.com:443"] = "127.0.0.1:" .. fake.port })
    user_file = helpers.make_authorized_user_file({ extra = { token_uri = fake.token_uri } })
  end)

  lazy_teardown(function()
    proxy.stop()
    fake:stop()
    helpers.remove_loopback_guard()
  end)

  before_each(function()
    helpers.clear(sleeps)
    fake:reset()
    fake:config({ refresh_tokens = helpers.user_refresh_tokens() })
  end)

  local function source()
    return assert(au.from_file(user_file, { ca_file = ca, cache = token_cache.new(),
                                            retry = fast_retry() }))
  end

  local function new(src, opts)
    opts = opts or {}
    if opts.rules == nil then opts.rules = RULES end
    opts.token_url = opts.token_url or (fake.url .. "/v1/token")
    opts.ca_file = ca
    opts.cache = opts.cache or token_cache.new()
    opts.retry = opts.retry or fast_retry()
    return downscoped.new(src or source(), opts)
  end

  local function exchanges()
    return fake:requests("/v1/token")
  end

  it("sends what google-auth-library's DownscopedClient sends, field by field", function()
    local src = source()
    local subject, src_exp = assert(src:token())
    local c = assert(new(src))
    local tok = assert(c:token())
    local node = judges.node_downscoped(proxy, {
      { source_token = subject, source_expiry = math.floor(src_exp * 1000),
        boundary = node_boundary(RULES) } })
    assert.is_nil(node[1].error, node[1].error)
    local rs = exchanges()
    assert.equal(2, #rs)
    local mine, theirs = rs[1], rs[2]
    assert.equal("POST", theirs.method)
    assert.same(theirs.form, mine.form)
    -- The boundary is the same JSON text, not only the same value.
    assert.equal(theirs.form.options, mine.form.options)
    assert.same(node_boundary(RULES), cjson.decode(mine.form.options))
    assert.equal(subject, mine.form.subject_token)
    assert.equal("urn:ietf:params:oauth:grant-type:token-exchange", mine.form.grant_type)
    assert.equal(theirs.headers["content-type"], mine.headers["content-type"])
    -- Both tokens are the fake's downscoped tokens of that subject.
    local issued = fake:tokens()
    assert.equal("sts", issued[tok].kind)
    assert.equal("sts", issued[node[1].token].kind)
    assert.equal(subject, issued[tok].subject)
    -- Node went only to sts.googleapis.com, through the proxy.
    for _, cn in ipairs(proxy.connects()) do
      assert.is_false(cn.refused, tostring(cn.target))
      assert.equal("sts.googleapis.com:443", cn.target)
    end
    assert.is_true(#proxy.connects() >= 1)
  end)

  it("a non-gauth source never gets the token of a collected source at the same address", function()
    -- Each user's source is a plain table, dropped and collected before
    -- the next user comes, so Lua reuses its address: keyed by tostring,
    -- user i+1 would be handed user i's downscoped token.
    local cache = token_cache.new()
    local users, wrong = 30, {}
    local au_src = source()
    for i = 1, users do
      -- a subject token of this user's own, minted by the fake
      au_src:invalidate()
      local subject, sub_exp = assert(au_src:token())
      local src = { token = function() return subject, sub_exp end }
      local c = assert(new(src, { cache = cache }))
      local tok = assert(c:token())
      local minted = fake:tokens()[tok]
      if not (minted and minted.subject == subject) then wrong[#wrong + 1] = i end
      src, c = nil, nil  -- luacheck: ignore
      collectgarbage("collect")
      collectgarbage("collect")
    end
    assert.same({}, wrong)
    assert.equal(users, #exchanges())
  end)

  it("refuses the boundaries google-auth refuses, and more, naming the rule and field", function()
    local eleven = {}
    for i = 1, 11 do eleven[i] = RULES[2] end
    local node = judges.node_downscoped(proxy, {
      { source_token = "x", source_expiry = 0, boundary = node_boundary(eleven) },
      { source_token = "x", source_expiry = 0,
        boundary = node_boundary({ { available_resource = BUCKET, available_permissions = {} } }) },
      { source_token = "x", source_expiry = 0, boundary = node_boundary({}) },
    })
    assert.matches("more than 10 access boundary rules", node[1].error)
    assert.matches("At least one permission", node[2].error)
    assert.matches("At least one access boundary rule", node[3].error)
    local cases = {
      { eleven, "rules has 11 access boundary rules; at most 10", nil, "rules" },
      { { { available_resource = BUCKET, available_permissions = {} } },
        "rules[1].available_permissions is required (a non-empty array)", 1, "available_permissions" },
      { {}, "rules needs at least one access boundary rule", nil, "rules" },
      { { RULES[2], { available_permissions = { "inRole:roles/x" } } },
        "rules[2].available_resource is required (a non-empty string)", 2, "available_resource" },
      { { { available_resource = BUCKET, available_permissions = { "roles/storage.admin" } } },
        "rules[1].available_permissions[1] must be a string starting with inRole:", 1,
        "available_permissions" },
      { { { available_resource = BUCKET, available_permissions = { "inRole:r" },
            availability_condition = { title = "t" } } },
        "rules[1].availability_condition.expression is required (a non-empty string)", 1,
        "availability_condition.expression" },
      { { { available_resource = BUCKET, available_permissions = { "inRole:r" }, extra = 1 } },
        "rules[1] has an unknown field extra", 1, "extra" },
      { "rules", "rules must be an array of access boundary rules", nil, "rules" },
    }
    for _, c in ipairs(cases) do
      local v, msg, err = downscoped.new(source(), { rules = c[1] })
      assert.is_nil(v)
      assert.equal("gauth.downscoped: options: " .. c[2], msg)
      assert.equal("downscoped", err.module)
      assert.equal("options", err.step)
      assert.equal(c[3], err.rule)
      assert.equal(c[4], err.field)
    end
    assert.equal(0, #exchanges())
  end)

  it("caches like any credentials: one exchange for many token() calls, a new one after invalidate", function()
    local c = assert(new())
    local t1 = assert(c:token())
    assert.equal(t1, (c:token()))
    assert.equal(1, #exchanges())
    c:invalidate()
    local t2 = assert(c:token())
    assert.are_not.equal(t1, t2)
    assert.equal(2, #exchanges())
    -- Another boundary is another cache entry, even on a shared cache.
    local cache = token_cache.new()
    local a = assert(new(nil, { cache = cache }))
    local b = assert(new(nil, { cache = cache, rules = { RULES[2] } }))
    assert.are_not.equal(a:cache_key(), b:cache_key())
  end)

  it("expires when STS says, else when the source's token does", function()
    fake:config({ sts_expires_in = 1200 })
    -- a standing clock: the expiry is arithmetic, not a window
    local t0 = os.time()
    local c = assert(new(nil, { now = t0 }))
    local _, exp = c:token()
    assert.equal(t0 + 1200, exp)
    fake:config({ sts_expires_in = false })
    local src = source()
    local _, src_exp = assert(src:token())
    local d = assert(new(src))
    local _, exp2 = d:token()
    assert.equal(src_exp, exp2)
  end)

  it("retries 5xx and 429 at STS, and reports a refusal with no token in it", function()
    fake:script("/v1/token", { { status = 503, body = "busy" },
                               { status = 429, body = { error = "rate" } } })
    local c = assert(new())
    assert(c:token())
    assert.equal(3, #exchanges())
    assert.equal(2, #sleeps)
    fake:script("/v1/token", { status = 400, body = { error = "invalid_grant",
      error_description = "The subject token is invalid." } })
    local d = assert(new())
    local subject = assert(d.source:token())
    local v, msg, err = d:token()
    assert.is_nil(v)
    assert.equal("gauth.downscoped: token response: the STS endpoint refused the token exchange: "
      .. "invalid_grant: The subject token is invalid. (HTTP 400 invalid_grant) [" .. fake.url .. "/v1/token]", msg)
    assert.is_nil(msg:find(subject, 1, true))
    assert.equal("table", type(err))
    assert.equal("downscoped", err.module)
    assert.equal("token response", err.step)
    assert.equal(400, err.status)
    assert.equal("invalid_grant", err.oauth_error)
    assert.equal("Bad Request", err.http_reason)
    assert.is_false(err.retryable)
    assert.equal("gauth.downscoped: token response: the STS endpoint refused the token exchange: "
      .. "invalid_grant: The subject token is invalid. (HTTP 400 invalid_grant) [" .. fake.url .. "/v1/token]",
      tostring(err))
    assert.is_nil(tostring(err):find(subject, 1, true))
  end)

  it("takes the STS host from the universe domain and never sends a token in clear text", function()
    local c = assert(downscoped.new(source(), { rules = RULES, universe_domain = "example-universe.net" }))
    assert.equal("https://sts.example-universe.net/v1/token", c.token_url)
    assert.equal("https://sts.googleapis.com/v1/token", assert(downscoped.new(source(), { rules = RULES })).token_url)
    local d = assert(new(nil, { token_url = "http://sts.example.com/v1/token" }))
    local v, a, b = d:token()
    assert.is_nil(v)
    local err = errors.of(a, b)
    assert.equal("endpoint", err.step)
    assert.matches("refusing to send a token in clear text", tostring(err))
    assert.equal(0, #exchanges())
  end)

  describe("gauth.sts", function()
    it("exchanges with every field google-auth knows, Basic client auth when given", function()
      local src = source()
      local subject = assert(src:token())
      local data, msg, err = sts.exchange({
        url = fake.url .. "/v1/token", subject_token = subject,
        subject_token_type = sts.ACCESS_TOKEN_TYPE, requested_token_type = sts.ACCESS_TOKEN_TYPE,
        audience = "//iam.googleapis.com/x", scope = { "a", "b" }, resource = "r",
        client_id = "cid", client_secret = "sec", ca_file = ca, retry = false,
      })
      assert.is_nil(msg); assert.is_nil(err)
      assert.is_string(data.access_token)
      local r = exchanges()[1]
      assert.same({ grant_type = sts.GRANT_TYPE, audience = "//iam.googleapis.com/x", scope = "a b",
                    resource = "r", requested_token_type = sts.ACCESS_TOKEN_TYPE,
                    subject_token = subject, subject_token_type = sts.ACCESS_TOKEN_TYPE }, r.form)
      assert.equal("Basic " .. helpers.b64encode("cid:sec"), r.headers.authorization)
    end)

    it("answers nil, msg, err for a refusal", function()
      local v, msg, err = sts.exchange({ url = fake.url .. "/v1/token", subject_token = "unknown",
        subject_token_type = sts.ACCESS_TOKEN_TYPE, requested_token_type = sts.ACCESS_TOKEN_TYPE,
        ca_file = ca, retry = false })
      assert.is_nil(v)
      assert.equal("gauth.sts: token response: the STS endpoint refused the token exchange: "
        .. "invalid_grant: The subject token is invalid. (HTTP 400 invalid_grant) [" .. fake.url .. "/v1/token]",
        msg)
      assert.equal("sts", err.module)
      assert.equal(400, err.status)
      assert.has_error(function() sts.exchange({ url = fake.url }) end,
        "gauth.sts: exchange: opts.subject_token must be a non-empty string")
    end)
  end)
end)
