-- Application Default Credentials (gauth.adc, gauth.default) against the
-- loopback fake: token endpoint, metadata server (plain HTTP, reached
-- through GCE_METADATA_HOST / GCE_METADATA_IP) and IAM Credentials.
--
-- Most cases give ADC its whole environment as a table (opts.env), always
-- with HOME and CLOUDSDK_CONFIG in a temp dir and either NO_GCE_CHECK=true
-- or the metadata addresses on the fake: the user's gcloud folder is never
-- read and nothing goes to 169.254.169.254 or metadata.google.internal.
-- The last cases run gauth.default() in a child interpreter ($GAUTH_LUA)
-- with a real, minimal environment (env -i).
local helpers = require "helpers"
local adc = require "gauth.adc"
local gauth = require "gauth"
local metadata = require "gauth.metadata"
local token_cache = require "gauth.token_cache"
local socket = require "socket"
local cjson = require "cjson.safe"

local S1 = "https://www.googleapis.com/auth/sqlservice.admin"
local TARGET = "target@proj.iam.gserviceaccount.com"
local MD = "/computeMetadata/v1/"
local q = helpers.shell_quote

local closed_port = helpers.closed_port

local function mkdir(p)
  assert(os.execute("mkdir -p " .. q(p)))
  return p
end

local function is_error(err, step)
  helpers.assert_gauth_error(err, "adc", step)
end

local fast_retry = helpers.fast_retry()

describe("Application Default Credentials", function()
  local fake, sa_path, sa_info, user_path, dead

  lazy_setup(function()
    helpers.install_loopback_guard()  -- nothing leaves loopback
    fake = helpers.start_fake({ tls = false })
    sa_path, sa_info = helpers.make_service_account_file({ token_uri = fake.token_uri,
                                                           project_id = "sa-project" })
    user_path = helpers.make_authorized_user_file({ extra = { token_uri = fake.token_uri } })
    dead = "127.0.0.1:" .. closed_port()
  end)

  lazy_teardown(function()
    fake:stop()
    helpers.remove_loopback_guard()
  end)

  before_each(function()
    fake:reset()
    fake:config({ refresh_tokens = helpers.user_refresh_tokens(),
                  public_keys = { [sa_info.kid] = sa_info.public_pem } })
    metadata.reset()
  end)

  -- A fresh HOME with an empty gcloud folder, no metadata server.
  local function new_env(extra)
    local home = mkdir(helpers.tmpname("home"))
    local e = { HOME = home, CLOUDSDK_CONFIG = mkdir(home .. "/gcloud"), NO_GCE_CHECK = "true" }
    for k, v in pairs(extra or {}) do
      if v == false then e[k] = nil else e[k] = v end
    end
    return e
  end

  local function on_gce(e)
    e.NO_GCE_CHECK = nil
    e.GCE_METADATA_HOST = fake.host_port
    e.GCE_METADATA_IP = fake.host_port
    return e
  end

  local function default(e, opts)
    opts = opts or {}
    opts.env = e
    if opts.cache == nil then opts.cache = token_cache.new() end
    if opts.retry == nil then opts.retry = fast_retry end
    return adc.default(opts)
  end

  local function gcloud_file(e, path)
    local dst = e.CLOUDSDK_CONFIG .. "/application_default_credentials.json"
    helpers.write_file(dst, assert(helpers.read_file(path)))
    return dst
  end

  local function impersonation_file()
    local t = {
      type = "impersonated_service_account",
      service_account_impersonation_url = fake.url .. "/v1/projects/-/serviceAccounts/"
        .. TARGET .. ":generateAccessToken",
      delegates = { "d@proj.iam.gserviceaccount.com" },
      source_credentials = cjson.decode((helpers.read_file(user_path))),
    }
    return helpers.write_file(helpers.tmpname("imp", ".json"), cjson.encode(t))
  end

  -------------------------------------------------------------------------
  describe("1. GOOGLE_APPLICATION_CREDENTIALS", function()
    it("loads a service account file with the scopes and its project", function()
      local e = new_env({ GOOGLE_APPLICATION_CREDENTIALS = sa_path })
      -- A gcloud file too: the variable comes first.
      gcloud_file(e, user_path)
      local c, project, source = default(e, { scopes = { S1 } })
      assert.equal("service_account", c.kind)
      assert.equal("sa-project", project)
      assert.equal("GOOGLE_APPLICATION_CREDENTIALS", source)
      assert.same({ S1 }, c.scopes)
      local tok = assert(c:token())
      assert.equal(S1, fake:tokens()[tok].scope)
    end)

    it("GOOGLE_CLOUD_PROJECT, then GCLOUD_PROJECT, replace the file's project", function()
      local e = new_env({ GOOGLE_APPLICATION_CREDENTIALS = sa_path,
                          GOOGLE_CLOUD_PROJECT = "env-project", GCLOUD_PROJECT = "legacy" })
      local _, project = default(e)
      assert.equal("env-project", project)
      e.GOOGLE_CLOUD_PROJECT = nil
      _, project = default(e)
      assert.equal("legacy", project)
    end)

    it("the quota project: opts, then GOOGLE_CLOUD_QUOTA_PROJECT, then the file", function()
      local p = helpers.make_authorized_user_file({ quota_project_id = "from-file",
        extra = { token_uri = fake.token_uri } })
      local e = new_env({ GOOGLE_APPLICATION_CREDENTIALS = p })
      assert.equal("from-file", (default(e)).quota_project)
      e.GOOGLE_CLOUD_QUOTA_PROJECT = "from-env"
      local c = default(e)
      assert.equal("from-env", c.quota_project)
      assert.equal("from-env", assert(c:apply())["x-goog-user-project"])
      assert.equal("from-opts", (default(e, { quota_project = "from-opts" })).quota_project)
    end)

    it("loads an authorized_user file (no project, scopes not sent)", function()
      local e = new_env({ GOOGLE_APPLICATION_CREDENTIALS = user_path })
      local c, project = default(e, { scopes = { S1 } })
      assert.equal("authorized_user", c.kind)
      assert.is_nil(project)
      assert.is_nil(c.scopes)
      assert.equal("fake-token-1", (c:token()))
      assert.is_nil(fake:requests("/token")[1].form.scope)
    end)

    it("loads an impersonated_service_account file end to end", function()
      local e = new_env({ GOOGLE_APPLICATION_CREDENTIALS = impersonation_file() })
      local c, project = default(e, { scopes = { S1 }, lifetime = 1200 })
      assert.equal("impersonated", c.kind)
      assert.is_nil(project)
      local tok = assert(c:token())
      local issued = fake:tokens()[tok]
      assert.equal("iam", issued.kind)
      assert.equal(TARGET, issued.email)
      assert.equal(S1, issued.scope)
      assert.same({ "projects/-/serviceAccounts/d@proj.iam.gserviceaccount.com" }, issued.delegates)
      assert.equal("1200s", fake:requests({ pattern = "generateAccessToken" })[1].json.lifetime)
    end)

    it("is an error, not a skip, when its file is missing, unreadable or malformed", function()
      local dir = mkdir(helpers.tmpname("dir"))
      local cases = {
        { helpers.tmpname("missing", ".json"), "cannot read" },
        { dir, "cannot read" },
        { helpers.write_file(helpers.tmpname("bad", ".json"), "{ nope"), "not a JSON object" },
        { helpers.write_file(helpers.tmpname("notype", ".json"), "{}"), 'no "type" field' },
        { helpers.make_service_account_file({ key = sa_info.key, omit = { "private_key" } }),
          "field private_key: missing" },
      }
      for _, case in ipairs(cases) do
        local e = on_gce(new_env({ GOOGLE_APPLICATION_CREDENTIALS = case[1] }))
        -- A usable gcloud file and metadata server are there, and unused.
        gcloud_file(e, user_path)
        local c, msg, err = default(e)
        assert.is_nil(c)
        helpers.assert_failure(msg, err)
        is_error(err, "GOOGLE_APPLICATION_CREDENTIALS")
        assert.equal(case[1], err.file)
        assert.matches("GOOGLE_APPLICATION_CREDENTIALS is set to " .. case[1], err.message, 1, true)
        assert.matches(case[2], err.message, 1, true)
        assert.is_table(err.cause)
      end
      assert.equal(0, #fake:requests())
    end)

    it("names an unsupported type", function()
      for _, t in ipairs({ "gdch_service_account", "x509_nonsense" }) do
        local p = helpers.write_file(helpers.tmpname("ext", ".json"),
          cjson.encode({ type = t, audience = "//iam.googleapis.com/x" }))
        local c, msg, err = default(new_env({ GOOGLE_APPLICATION_CREDENTIALS = p }))
        assert.is_nil(c)
        helpers.assert_failure(msg, err)
        is_error(err, "GOOGLE_APPLICATION_CREDENTIALS")
        assert.equal(t, err.type)
        assert.is_true(err.unsupported)
        assert.matches('"' .. t .. '" are not supported yet', tostring(err), 1, true)
      end
    end)
  end)

  -------------------------------------------------------------------------
  describe("2. gcloud's file", function()
    it("is found in CLOUDSDK_CONFIG, with gcloud's configured project", function()
      local e = new_env()
      local wk = gcloud_file(e, user_path)
      helpers.write_file(e.CLOUDSDK_CONFIG .. "/active_config", "work\n")
      mkdir(e.CLOUDSDK_CONFIG .. "/configurations")
      helpers.write_file(e.CLOUDSDK_CONFIG .. "/configurations/config_work",
        "[core]\naccount = me@example.com\nproject = gcloud-project\n\n[compute]\nzone = x\n")
      local c, project, source = default(e)
      assert.equal("authorized_user", c.kind)
      assert.equal(wk, c.source)
      assert.equal("gcloud-project", project)
      assert.equal("gcloud credentials file", source)
      assert.equal("fake-token-1", (c:token()))
      e.CLOUDSDK_CORE_PROJECT = "core-env"
      assert.equal("core-env", select(2, default(e)))
      e.GOOGLE_CLOUD_PROJECT = "explicit"
      assert.equal("explicit", select(2, default(e)))
    end)

    it("is found in $HOME/.config/gcloud without CLOUDSDK_CONFIG", function()
      local e = new_env()
      e.CLOUDSDK_CONFIG = nil
      local dir = mkdir(e.HOME .. "/.config/gcloud")
      helpers.write_file(dir .. "/application_default_credentials.json",
                         assert(helpers.read_file(sa_path)))
      mkdir(dir .. "/configurations")
      helpers.write_file(dir .. "/configurations/config_default", "[core]\nproject = p\n")
      local c, project = default(e)
      assert.equal("service_account", c.kind)
      -- The file's own project first.
      assert.equal("sa-project", project)
    end)

    it("is skipped when broken, and the next step serves", function()
      local e = on_gce(new_env())
      helpers.write_file(e.CLOUDSDK_CONFIG .. "/application_default_credentials.json", "{ broken")
      local c, project, source = default(e)
      assert.equal("compute_engine", c.kind)
      assert.equal("fake-project", project)
      assert.equal("metadata server", source)
    end)
  end)

  -------------------------------------------------------------------------
  describe("3. App Engine", function()
    it("is chosen on App Engine: metadata tokens with the scopes", function()
      local e = new_env({ GAE_APPLICATION = "s~gae-app", GAE_ENV = "standard",
                          GCE_METADATA_HOST = fake.host_port })
      local c, project, source = default(e, { scopes = { S1 } })
      assert.equal("app_engine", c.kind)
      assert.equal("gae-app", project)
      assert.equal("App Engine", source)
      local tok = assert(c:token())
      assert.equal(S1, fake:tokens()[tok].scope)
      -- No ping: App Engine was known from its variables.
      assert.equal(0, #fake:requests("/"))
    end)

    it("is skipped, with its reason, when its metadata host is unusable", function()
      local e = new_env({ GAE_SERVICE = "default", GCE_METADATA_HOST = "bad/host",
                          NO_GCE_CHECK = false })
      local c, msg, err = default(e)
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      is_error(err, "default")
      assert.matches("GCE_METADATA_HOST is not a host[:port]", err.tried[3].reason, 1, true)
      assert.matches("GCE_METADATA_HOST is not a host[:port]", err.tried[4].reason, 1, true)
      assert.equal(0, #fake:requests())
    end)
  end)

  -------------------------------------------------------------------------
  describe("4. the metadata server", function()
    it("is chosen when detected: compute_engine credentials and its project", function()
      local e = on_gce(new_env())
      local c, project, source = default(e, { scopes = { S1 } })
      assert.equal("compute_engine", c.kind)
      assert.equal("fake-project", project)
      assert.equal("metadata server", source)
      assert.equal(1, #fake:requests("/"))
      assert.equal("fake-token-1", (c:token()))
      assert.equal(S1, fake:requests(MD .. "instance/service-accounts/default/token")[1]
                         .query_params.scopes)
    end)

    it("gives credentials and a nil project when the server has no project id", function()
      fake:config({ metadata = { ["project/project-id"] = cjson.null } })
      local c, project = default(on_gce(new_env()))
      assert.equal("compute_engine", c.kind)
      assert.is_nil(project)
    end)

    it("does not ask for the project id when the environment names one", function()
      local c, project = default(on_gce(new_env({ GOOGLE_CLOUD_PROJECT = "mine" })))
      assert.truthy(c)
      assert.equal("mine", project)
      assert.equal(0, #fake:requests(MD .. "project/project-id"))
    end)

    it("detection times out quickly on a server that never answers", function()
      fake:script("/", { hang = true })
      local e = new_env({ NO_GCE_CHECK = false, GCE_METADATA_IP = fake.host_port,
                          GCE_METADATA_TIMEOUT = "0.3" })
      local t0 = socket.gettime()
      local c, msg, err = default(e)
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      is_error(err, "default")
      assert.is_true(socket.gettime() - t0 < 3)  -- hang guard: ten times the 0.3 s timeout
      assert.matches("no metadata server at " .. fake.host_port, err.tried[4].reason, 1, true)
    end)
  end)

  -------------------------------------------------------------------------
  describe("nothing found", function()
    it("lists every step tried and why it did not serve", function()
      local e = new_env()
      local c, msg, err = default(e)
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      is_error(err, "default")
      local wk = e.CLOUDSDK_CONFIG .. "/application_default_credentials.json"
      assert.same({
        { step = "GOOGLE_APPLICATION_CREDENTIALS", reason = "not set" },
        { step = "gcloud credentials file", reason = "no file at " .. wk },
        { step = "App Engine", reason = "not on App Engine (GAE_APPLICATION, GAE_ENV, GAE_SERVICE unset)" },
        { step = "metadata server", reason = "NO_GCE_CHECK=true: the metadata server is not looked for" },
      }, err.tried)
      for i, t in ipairs(err.tried) do
        assert.matches("(" .. i .. ") " .. t.step .. ": " .. t.reason, msg, 1, true)
      end
      assert.matches("gcloud auth application-default login", msg, 1, true)
    end)

    it("gives the reasons of a broken gcloud file and an absent server", function()
      local e = new_env({ NO_GCE_CHECK = false, GCE_METADATA_IP = dead })
      local src = helpers.write_file(helpers.tmpname("ext", ".json"), '{"type": "external_account"}')
      gcloud_file(e, src)
      local c, msg, err = default(e)
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      assert.matches("field audience: missing", err.tried[2].reason, 1, true)
      assert.matches("no metadata server at " .. dead, err.tried[4].reason, 1, true)
      e.CLOUDSDK_CONFIG, e.HOME = nil, nil
      c, msg, err = default(e)
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      assert.equal("neither CLOUDSDK_CONFIG nor HOME is set", err.tried[2].reason)
    end)

    it("raises on bad options", function()
      assert.has_error(function() adc.default(5) end, "gauth.adc: default: opts must be a table")
      assert.has_error(function() adc.default({ env = 5 }) end, "gauth: opts.env must be a table or a function")
    end)
  end)

  -------------------------------------------------------------------------
  describe("helpers", function()
    it("gauth.default is adc.default", function()
      local e = new_env({ GOOGLE_APPLICATION_CREDENTIALS = sa_path })
      local c, project, source = gauth.default({ env = e })
      assert.equal("service_account", c.kind)
      assert.equal("sa-project", project)
      assert.equal("GOOGLE_APPLICATION_CREDENTIALS", source)
      local none, msg, err = gauth.default({ env = new_env() })
      assert.is_nil(none)
      helpers.assert_failure(msg, err)
      is_error(err, "default")
    end)

    it("from_file loads any supported type, or says why not", function()
      local c, project = adc.from_file(sa_path, { scopes = S1 })
      assert.equal("service_account", c.kind)
      assert.equal("sa-project", project)
      c, project = adc.from_file(user_path)
      assert.equal("authorized_user", c.kind)
      assert.is_nil(project)
      c = adc.from_file(impersonation_file(), { env = {} })
      assert.equal("impersonated", c.kind)
      local err
      local msg
      c, msg, err = adc.from_file(helpers.make_authorized_user_file({ omit = { "client_id" } }))
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      is_error(err, "key file")
      assert.equal("authorized_user", err.type)
      assert.equal("client_id", err.field)
      assert.equal("authorized_user", err.cause.module)
      c, msg, err = adc.from_file(helpers.write_file(helpers.tmpname("t", ".json"), '{"type": 5}'))
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      is_error(err, "key file")
      assert.has_error(function() adc.from_file(5) end, "gauth.adc: from_file: path must be a string")
    end)

    it("from_info takes a table or JSON text", function()
      local text = assert(helpers.read_file(sa_path))
      local c, project = adc.from_info(text)
      assert.equal("service_account", c.kind)
      assert.equal("sa-project", project)
      c = adc.from_info(cjson.decode(text))
      assert.equal("service_account", c.kind)
      local err
      local msg
      c, msg, err = adc.from_info("nope")
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      is_error(err, "key file")
      c, msg, err = adc.from_info({ type = "external_account" })
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      assert.equal("external_account", err.type)
      assert.has_error(function() adc.from_info(5) end, "gauth.adc: from_info: info must be a table or a JSON string")
    end)

    it("config_dir and well_known_file follow CLOUDSDK_CONFIG, then HOME", function()
      local d, err = adc.config_dir({ env = { CLOUDSDK_CONFIG = "/x/gc", HOME = "/h" } })
      assert.equal("/x/gc", d)
      assert.is_nil(err)
      assert.equal("/h/.config/gcloud", (adc.config_dir({ env = { HOME = "/h/" } })))
      assert.equal("/h/.config/gcloud/application_default_credentials.json",
                   (adc.well_known_file({ env = { HOME = "/h" } })))
      local msg
      d, msg, err = adc.config_dir({ env = {} })
      assert.is_nil(d)
      helpers.assert_failure(msg, err)
      is_error(err, "gcloud")
      local w, wmsg, werr = adc.well_known_file({ env = {} })
      assert.is_nil(w)
      helpers.assert_failure(wmsg, werr)
      is_error(werr, "gcloud")
    end)
  end)

  -------------------------------------------------------------------------
  describe("in a child process with a real environment", function()
    local lua = os.getenv("GAUTH_LUA") or "lua5.4"
    local script

    lazy_setup(function()
      script = helpers.write_file(helpers.tmpname("adc-child", ".lua"), ([[
package.path = %q
package.cpath = %q
local cjson = require "cjson.safe"
local gauth = require "gauth"
local creds, project, source = gauth.default({ scopes = { %q } })
if not creds then
  assert(type(project) == "string" and project == tostring(source))
  io.write(cjson.encode({ error = project, tried = source.tried }))
  os.exit(3)
end
local tok, exp_or_err = creds:token()
io.write(cjson.encode({ kind = creds.kind, project = project or cjson.null,
  source = source, token = tok or cjson.null,
  err = (not tok) and tostring(exp_or_err) or cjson.null }))
]]):format(package.path, package.cpath, S1))
    end)

    -- env -i: only what is listed reaches the child (and the sanitizer's
    -- preload when the specs run under it).
    local function run(vars)
      local home = mkdir(helpers.tmpname("child-home"))
      local list = { "env", "-i", "PATH=" .. (os.getenv("PATH") or "/usr/bin:/bin"),
                     "HOME=" .. home, "CLOUDSDK_CONFIG=" .. mkdir(home .. "/gcloud") }
      for _, k in ipairs({ "LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS" }) do
        if os.getenv(k) then list[#list + 1] = k .. "=" .. os.getenv(k) end
      end
      for k, v in pairs(vars) do list[#list + 1] = k .. "=" .. v end
      local quoted = {}
      for i, a in ipairs(list) do quoted[i] = q(a) end
      local ok, out, rc = helpers.sh(table.concat(quoted, " ") .. " " .. q(lua) .. " " .. q(script))
      local res = cjson.decode(out)
      assert.is_table(res, "child output: " .. out)
      return res, ok, rc
    end

    it("GOOGLE_APPLICATION_CREDENTIALS (authorized_user)", function()
      local res, ok = run({ GOOGLE_APPLICATION_CREDENTIALS = user_path, NO_GCE_CHECK = "true" })
      assert.is_true(ok)
      assert.same({ kind = "authorized_user", project = cjson.null,
                    source = "GOOGLE_APPLICATION_CREDENTIALS", token = "fake-token-1",
                    err = cjson.null }, res)
    end)

    it("the metadata server, found through GCE_METADATA_HOST", function()
      local res, ok = run({ GCE_METADATA_HOST = fake.host_port, GCE_METADATA_IP = fake.host_port,
                            GOOGLE_CLOUD_QUOTA_PROJECT = "qp" })
      assert.is_true(ok)
      assert.same({ kind = "compute_engine", project = "fake-project",
                    source = "metadata server", token = "fake-token-1", err = cjson.null }, res)
      local r = fake:requests(MD .. "instance/service-accounts/default/token")[1]
      assert.equal(S1, r.query_params.scopes)
      assert.equal("Google", r.headers["metadata-flavor"])
    end)

    it("nothing: the error lists every step", function()
      local res, ok, rc = run({ NO_GCE_CHECK = "true", GOOGLE_CLOUD_PROJECT = "p" })
      assert.is_false(ok)
      assert.equal(3, rc)
      assert.equal(4, #res.tried)
      assert.matches("gauth.adc: default: could not find default credentials", res.error, 1, true)
      assert.matches("(4) metadata server: NO_GCE_CHECK=true", res.error, 1, true)
      assert.equal(0, #fake:requests())
    end)
  end)
end)
