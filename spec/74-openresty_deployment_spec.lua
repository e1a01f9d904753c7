-- What the README tells a deployment, run (issue 18 item 8): gauth
-- installed with `luarocks --tree` and with `make install PREFIX=...`,
-- loaded by a 4-worker nginx through the lua_package_path/cpath lines the
-- README gives for each, getting a token from the emulator; tokens warmed
-- in init_worker_by_lua with a timer.
--
-- nginx runs LuaJIT whatever runs busted: these specs run in the LuaJIT
-- pass of spec/run.sh only.
local helpers = require "helpers"
local nginx = require "support.nginx"
local cjson = require "cjson.safe"

local LUAJIT_PASS = (os.getenv("GAUTH_LUA_VERSION") or (jit and "5.1" or "5.4")) == "5.1"

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("*a")
  local ok = p:close()
  return ok == true or ok == 0, out
end

describe("OpenResty deployment (README, run)", function()
  if not LUAJIT_PASS then
    it("runs in the LuaJIT pass (nginx runs LuaJIT)", function()
      assert.is_false(LUAJIT_PASS)
    end)
    return
  end

  local emu, dir

  lazy_setup(function()
    dir = helpers.tmpname("deploy", "")
    assert(os.execute("mkdir -p " .. helpers.shell_quote(dir)))
    emu = assert(require("gauth.emulator").start({
      new_key_file = dir .. "/sa.json" }))
  end)

  lazy_teardown(function()
    if emu then emu:stop() end
    if dir then os.execute("rm -rf " .. helpers.shell_quote(dir)) end
  end)

  -- nginx with the README's two lines for an install under `share` and
  -- `lib` (the Lua 5.1 trees), a location that says where gauth came from
  -- and gets a token, and tokens warmed by a timer in init_worker.
  local function check_install(share, lib)
    local srv = assert(nginx.start({
      workers = 4,
      -- The README's lines (nginx.lua adds the repo's after them: what is
      -- found first here is what the install provides).
      package_path = share .. "/?.lua;" .. share .. "/?/init.lua",
      package_cpath = lib .. "/?.so",
      http = ([[
        lua_shared_dict gauth 1m;
        lua_shared_dict results 1m;
        init_by_lua_block {
          creds = assert(require("gauth.service_account").from_file(%q,
            { scopes = { "https://www.googleapis.com/auth/sqlservice.admin" } }))
        }
        init_worker_by_lua_block {
          -- README: warm the token in a timer (no cosockets here).
          assert(ngx.timer.at(0, function()
            local tok = creds:token()
            if tok then ngx.shared.results:incr("warmed", 1, 0) end
          end))
        }
      ]]):format(emu.key_file),
      server = [[
        location = /where {
          content_by_lua_block {
            local tok, msg = creds:token()
            ngx.say(require("cjson").encode({
              lua = debug.getinfo(require("gauth.service_account").id_token_credentials, "S").source,
              core = package.searchpath("gauth.core", package.cpath),
              token = tok and true or false, msg = msg and tostring(msg),
              warmed = ngx.shared.results:get("warmed") }))
          }
        }
      ]],
    }))
    local status, body
    -- The warming timers have run once every worker answered: poll (hang guard 20 s).
    local r
    for _ = 1, 200 do
      status, body = srv:get("/where")
      r = cjson.decode(body or "")
      if r and r.warmed == 4 then break end
      require("socket").sleep(0.1)
    end
    local log = srv:log()
    srv:stop()
    assert.equal(200, status, body)
    assert.equal("@" .. share .. "/gauth/service_account.lua", r.lua)
    assert.equal(lib .. "/gauth/core.so", r.core)
    assert.is_true(r.token, r.msg)
    assert.equal(4, r.warmed)
    assert.is_nil(log:match("[^\n]*runtime error[^\n]*"))
    return r
  end

  it("luarocks --tree: lua_package_path/cpath from the README find gauth and gauth.core", function()
    local tree = dir .. "/tree"
    local ok, out = sh("cd " .. helpers.shell_quote(nginx.root) .. " && luarocks --lua-version 5.1 --tree "
      .. helpers.shell_quote(tree) .. " make --deps-mode=none gauth-scm-1.rockspec"
      .. " LUA_INCDIR=/usr/include/luajit-2.1")
    assert.is_true(ok, out)
    check_install(tree .. "/share/lua/5.1", tree .. "/lib/lua/5.1")
  end)

  it("the tree's gauth and gauth-emulator commands run after `eval \"$(luarocks --tree T path)\"`", function()
    local tree = dir .. "/tree54"
    local root = helpers.shell_quote(nginx.root)
    local ok, out = sh("cd " .. root .. " && luarocks --lua-version 5.4 --tree "
      .. helpers.shell_quote(tree) .. " make --deps-mode=none gauth-scm-1.rockspec"
      .. " && luarocks --lua-version 5.4 --tree " .. helpers.shell_quote(tree)
      .. " make --deps-mode=none gauth-emulator-scm-1.rockspec")
    assert.is_true(ok, out)
    local env = "unset LUA_PATH LUA_CPATH LUA_PATH_5_4 LUA_CPATH_5_4; eval \"$(luarocks --lua-version 5.4 --tree "
      .. helpers.shell_quote(tree) .. " path)\"; "
    ok, out = sh(env .. "gauth-emulator --help")
    assert.is_true(ok, out)
    assert.matches("^usage: gauth%-emulator", out)
    -- A token from the emulator, with the tree's gauth command.
    ok, out = sh(env .. "gauth token --key-file " .. helpers.shell_quote(emu.key_file))
    assert.is_true(ok, out)
    assert.matches("^%S+\n$", out)
    -- Without the eval the wrapper cannot find the modules: say so in the README.
    out = select(2, sh("unset LUA_PATH LUA_CPATH LUA_PATH_5_4 LUA_CPATH_5_4; "
      .. helpers.shell_quote(tree .. "/bin/gauth") .. " --help 2>&1; echo \"exit $?\""))
    assert.matches("exit 1\n$", out)
    assert.matches("module 'gauth.cli' not found", out, 1, true)
  end)

  it("make install PREFIX=...: the same two lines with that prefix", function()
    local prefix = dir .. "/prefix"
    local ok, out = sh("make -C " .. helpers.shell_quote(nginx.root) .. " install LUA=luajit PREFIX="
      .. helpers.shell_quote(prefix))
    assert.is_true(ok, out)
    check_install(prefix .. "/share/lua/5.1", prefix .. "/lib/lua/5.1")
    -- The commands went to $PREFIX/bin.
    assert.is_true((sh("test -x " .. helpers.shell_quote(prefix .. "/bin/gauth"))))
    assert.is_true((sh("test -x " .. helpers.shell_quote(prefix .. "/bin/gauth-emulator"))))
  end)

  it("examples/openresty/nginx.conf as shipped runs against the emulator (GAUTH_EXAMPLE_* from env)", function()
    local prefix = dir .. "/example"
    assert(os.execute("mkdir -p " .. helpers.shell_quote(prefix .. "/logs")))
    -- What its header tells a user: the clone's path for /opt/gauth, and
    -- another port in the listen line; nothing else.
    local port = nginx.free_port()
    local text = assert(helpers.read_file(nginx.root .. "/examples/openresty/nginx.conf"))
    local n_path, n_port
    text, n_path = text:gsub("/opt/gauth", nginx.root)
    text, n_port = text:gsub("listen 127%.0%.0%.1:8080;", "listen 127.0.0.1:" .. port .. ";")
    assert.is_true(n_path >= 3)
    assert.equal(1, n_port)
    helpers.write_file(prefix .. "/nginx.conf", text)
    local key_json = assert(helpers.read_file(emu.key_file))
    local key = assert(cjson.decode(key_json))
    assert(emu:clear_requests())
    local srv = assert(nginx.start_file({
      prefix = prefix, conf = prefix .. "/nginx.conf", port = port,
      pid_file = prefix .. "/logs/nginx.pid",
      setenv = { GOOGLE_APPLICATION_CREDENTIALS = emu.key_file,
                 GAUTH_EXAMPLE_DISCOVERY_URL = emu.discovery_url,
                 GAUTH_EXAMPLE_UPSTREAM = emu.url .. "/sql/v1beta4/" } }))
    local ok, e = pcall(function()
      -- The Discovery page: instances.list through the emulator's document.
      local status, body = srv:get("/sql/instances")
      assert.equal(200, status, body)
      local listed = assert(cjson.decode(body))
      assert.equal(emu.project, listed.project)
      assert.is_true(#listed.instances > 0)
      -- The proxy: the emulator's API answers the proxied request, which
      -- carried the service account's token (it answers 401 without one).
      status, body = srv:get("/google/projects/" .. emu.project .. "/instances?maxResults=100")
      assert.equal(200, status, body)
      local proxied = assert(cjson.decode(body))
      assert.equal("sql#instancesList", proxied.kind)
      local names = {}
      for i, inst in ipairs(proxied.items) do names[i] = inst.name end
      local expected = {}
      for i, inst in ipairs(listed.instances) do expected[i] = inst.name end
      assert.same(expected, names)
      -- The query string goes through too: the emulator checks maxResults.
      status, body = srv:get("/google/projects/" .. emu.project .. "/instances?maxResults=x")
      assert.equal(400, status, body)
      assert.matches("Invalid value at 'max_results'", body, 1, true)
      -- What the emulator served: one token (the dict gauth), a document,
      -- and both API calls authenticated as the key's account.
      local seen = {}
      for _, r in ipairs(assert(emu:requests())) do
        seen[r.endpoint] = (seen[r.endpoint] or 0) + 1
        if r.endpoint == "sqladmin" then
          assert.equal("ok", r.auth)
          assert.equal(key.client_email, r.principal)
        end
      end
      assert.equal(1, seen.token)
      assert.equal(1, seen.discovery)
      assert.equal(3, seen.sqladmin)
      -- The proxied path: the upstream's, then the rest of the client's.
      local last
      for _, r in ipairs(assert(emu:requests())) do
        if r.endpoint == "sqladmin" then last = r end
      end
      assert.equal("/sql/v1beta4/projects/" .. emu.project .. "/instances", last.path)
    end)
    local log = srv:log()
    srv:stop()
    assert(ok, e)
    assert.is_nil(log:match("[^\n]*%[error%][^\n]*"))
  end)
end)
