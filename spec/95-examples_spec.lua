-- Every example runs against the emulator with the one command its header
-- documents, in a child process with a clean environment (loopback only:
-- NO_GCE_CHECK or GCE_METADATA_HOST always point away from real Google).
-- SMOKE TESTS of gauth against its own emulator: they show the examples
-- run, not that Google would accept what they send (judged elsewhere).
local helpers = require "helpers"
local emulator = require "gauth.emulator"
local cjson = require "cjson"

local q = helpers.shell_quote
local root = helpers.root
local lua = os.getenv("GAUTH_LUA") or (jit and "luajit" or "lua5.4")

-- Runs `lua examples/<name> args` with `env` (a table) and nothing else
-- from this process's environment but PATH; returns ok, stdout, stderr.
local function run(name, args, env)
  local home = helpers.tmpdir() .. "/home"
  assert(helpers.sh("mkdir -p " .. q(home)))
  local parts = { "env -i", "PATH=" .. q(os.getenv("PATH")), "HOME=" .. q(home),
    "CLOUDSDK_CONFIG=" .. q(home .. "/gcloud"),
    "LUA_PATH=" .. q(package.path), "LUA_CPATH=" .. q(package.cpath) }
  -- make asan's settings must reach the sanitizer-linked interpreter
  for _, k in ipairs({ "ASAN_OPTIONS", "UBSAN_OPTIONS" }) do
    if os.getenv(k) then parts[#parts + 1] = k .. "=" .. q(os.getenv(k)) end
  end
  for k, v in pairs(env or {}) do parts[#parts + 1] = k .. "=" .. q(v) end
  local err = helpers.tmpname("example", ".err")
  parts[#parts + 1] = lua .. " " .. q(root .. "/examples/" .. name) .. " "
    .. (args or "") .. " 2>" .. q(err)
  local ok, out = helpers.sh(table.concat(parts, " "))
  return ok, out, helpers.read_file(err) or ""
end

local function instance_names(out)
  local resp = cjson.decode(out:match("(%b{})"))
  local names = {}
  for _, inst in ipairs(resp.items or {}) do names[#names + 1] = inst.name end
  table.sort(names)
  return table.concat(names, ",")
end

describe("examples", function()
  local emu, key_file
  lazy_setup(function()
    key_file = helpers.tmpname("sa", ".json")
    emu = assert(emulator.start{ new_key_file = key_file })
  end)
  lazy_teardown(function() if emu then emu:stop() end end)

  local SEED = "exemplary-mysql,exemplary-postgres"

  it("list_instances.lua: the guide's complete example", function()
    local ok, out, err = run("list_instances.lua", q(key_file),
      { GAUTH_DISCOVERY_URL = emu.discovery_url, NO_GCE_CHECK = "true" })
    assert.is_true(ok, err)
    assert.are.equal(SEED, instance_names(out))
  end)

  it("list_instances.lua fails with one readable line for a missing key file", function()
    local ok, out, err = run("list_instances.lua", q(key_file .. ".missing"),
      { GAUTH_DISCOVERY_URL = emu.discovery_url, NO_GCE_CHECK = "true" })
    assert.is_false(ok)
    assert.matches("gauth.service_account: key file: ", out .. err)
  end)

  it("service_account.lua: a token from a key file with scopes", function()
    local ok, out, err = run("service_account.lua", q(key_file), { NO_GCE_CHECK = "true" })
    assert.is_true(ok, err)
    assert.matches("service account: gauth%-emulator@", out)
    assert.matches("authorization: Bearer <%d+ bytes>", out)
  end)

  it("domain_wide_delegation.lua: the assertion carries the user as sub", function()
    emu:clear_requests()
    local ok, out, err = run("domain_wide_delegation.lua", q(key_file) .. " alice@example.org",
      { GAUTH_DISCOVERY_URL = emu.discovery_url, NO_GCE_CHECK = "true" })
    assert.is_true(ok, err)
    assert.are.equal(SEED, instance_names(out))
    local subs = {}
    for _, r in ipairs(assert(emu:requests())) do
      if r.claims then subs[#subs + 1] = r.claims.sub end
    end
    assert.are.same({ "alice@example.org" }, subs)
  end)

  it("compute_engine.lua: tokens from the metadata server", function()
    local ok, out, err = run("compute_engine.lua", "",
      { GCE_METADATA_HOST = emu.metadata_host, GAUTH_DISCOVERY_URL = emu.discovery_url })
    assert.is_true(ok, err)
    assert.are.equal(SEED, instance_names(out))
  end)

  it("compute_engine.lua says so when there is no metadata server", function()
    local ok, _, err = run("compute_engine.lua", "", { NO_GCE_CHECK = "true" })
    assert.is_false(ok)
    assert.matches("not on Compute Engine", err)
  end)

  it("app_engine.lua: on App Engine, and the fallback elsewhere", function()
    local ok, out, err = run("app_engine.lua", "",
      { GAE_APPLICATION = "s~exemplary-example-123", GAE_ENV = "standard",
        GCE_METADATA_HOST = emu.metadata_host, GAUTH_DISCOVERY_URL = emu.discovery_url })
    assert.is_true(ok, err)
    assert.are.equal(SEED, instance_names(out))
    ok, out, err = run("app_engine.lua", "",
      { GOOGLE_APPLICATION_CREDENTIALS = key_file, NO_GCE_CHECK = "true",
        GAUTH_DISCOVERY_URL = emu.discovery_url })
    assert.is_true(ok, err)
    assert.matches("gauth.default", err)
    assert.are.equal(SEED, instance_names(out))
  end)

  it("default_credentials.lua: ADC with a key file, and the error with nothing", function()
    local ok, out, err = run("default_credentials.lua", "",
      { GOOGLE_APPLICATION_CREDENTIALS = key_file, NO_GCE_CHECK = "true",
        GAUTH_DISCOVERY_URL = emu.discovery_url })
    assert.is_true(ok, err)
    assert.are.equal(SEED, instance_names(out))
    ok, out, err = run("default_credentials.lua", "", { NO_GCE_CHECK = "true" })
    assert.is_false(ok)
    assert.are.equal("", out)
    assert.matches("GOOGLE_APPLICATION_CREDENTIALS", err)
    assert.matches("metadata", err)
  end)

  it("demo.lua (make demo): the example, then the emulator's trace", function()
    local ok, out, err = run("demo.lua", "", {})
    assert.is_true(ok, err)
    assert.matches('"name":"exemplary%-mysql"', out)
    assert.matches("POST +/token +%-> 200", out)
    assert.matches("grant_type: jwt%-bearer", out)
    assert.matches("assertion scope: +\"https://www.googleapis.com/auth/sqlservice.admin\"", out)
    assert.matches("GET +/sql/v1beta4/projects/exemplary%-example%-123/instances +%-> 200", out)
  end)
end)
