-- The packages: the library rock (gauth-scm-1.rockspec) and the
-- emulator's (gauth-emulator-scm-1.rockspec) list every module between
-- them, each in one only; the emulator declares what its modules require;
-- and both rocks, built by `luarocks make` from a clean copy of the tree
-- (git archive), install and run from a tree: the modules load, the
-- library rock alone has no emulator, and the tree's `gauth-emulator`
-- serves a token to the tree's `gauth`.
local helpers = require "helpers"

local root = helpers.root
local LIB, EMU = "gauth-scm-1.rockspec", "gauth-emulator-scm-1.rockspec"

local function rockspec(name)
  local env = {}
  local f = assert(io.open(root .. "/" .. (name or LIB)))
  local chunk = f:read("*a")
  f:close()
  local fn
  if setfenv then
    fn = assert(loadstring(chunk))
    setfenv(fn, env)
  else
    fn = assert(load(chunk, "rockspec", "t", env))
  end
  fn()
  return env
end

-- A rockspec's Lua modules: build.modules (builtin) or build.install.lua
-- (the emulator's type "none").
local function modules_of(spec)
  return spec.build.modules or spec.build.install.lua
end

-- Both rockspecs' modules in one table; raises if one is in both.
local function all_modules()
  local out = {}
  for _, name in ipairs({ LIB, EMU }) do
    for k, v in pairs(modules_of(rockspec(name))) do
      assert(out[k] == nil, k .. " is in both rockspecs")
      out[k] = v
    end
  end
  return out
end

local function lua_files()
  local ok, out = helpers.sh("cd " .. helpers.shell_quote(root) .. " && find lua emulator/lua -name '*.lua' | sort")
  assert(ok, out)
  local files = {}
  for path in out:gmatch("[^\n]+") do files[#files + 1] = path end
  return files
end

-- What is wrong between the rockspec's module table and the files: each
-- problem one string (empty when they agree).
local function problems(modules, files)
  local out, listed = {}, {}
  for name, src in pairs(modules) do
    if type(src) == "string" then
      listed[src] = name
      local f = io.open(root .. "/" .. src)
      if f then f:close() else out[#out + 1] = "rockspec lists missing " .. src end
    end
  end
  for _, path in ipairs(files) do
    local name = path:gsub("^emulator/", ""):gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/", "."):gsub("%.init$", "")
    if listed[path] ~= name then out[#out + 1] = path .. " is not in the rockspec" end
  end
  table.sort(out)
  return out
end

describe("package", function()
  it("lists every Lua module in one of the rockspecs, and nothing that is missing", function()
    local spec = rockspec()
    assert.are.same({}, problems(all_modules(), lua_files()))
    for _, src in ipairs(spec.build.modules["gauth.core"].sources) do
      assert.is_not_nil(io.open(root .. "/" .. src), src)
    end
    for _, bin in pairs(spec.build.install.bin) do
      assert.is_not_nil(io.open(root .. "/" .. bin), bin)
    end
  end)

  it("the check names a module left out of the rockspec and a listed file that is not there", function()
    local modules = all_modules()
    modules["gauth.jwt"] = nil
    modules["gauth.gone"] = "lua/gauth/gone.lua"
    assert.are.same({ "lua/gauth/jwt.lua is not in the rockspec", "rockspec lists missing lua/gauth/gone.lua" },
      problems(modules, lua_files()))
  end)

  it("the emulator is a rock of its own; the library rock ships none of it", function()
    local lib, emu = rockspec(LIB), rockspec(EMU)
    for name in pairs(lib.build.modules) do
      assert.is_nil(name:match("^gauth%.emulator"), name .. " is in the library rock")
    end
    for name in pairs(modules_of(emu)) do
      assert.truthy(name:match("^gauth%.emulator"), name .. " is in the emulator rock")
    end
    assert.is_nil(lib.build.install.bin["gauth-emulator"])
    assert.equal("bin/gauth-emulator", emu.build.install.bin["gauth-emulator"])
    -- LuaRocks' builtin type copies a lua/ folder whole: none of the
    -- emulator may sit there (the install below checks the result too).
    for _, src in pairs(modules_of(emu)) do
      assert.is_nil(src:match("^lua/"), src)
    end
    assert.equal("bin/gauth", lib.build.install.bin.gauth)
  end)

  -- Issue 20: the leaf helpers live together under gauth.lib and require
  -- nothing of gauth's Lua but each other (gauth.core, the C module, only
  -- when first needed: see gauth.lib.time).
  it("gauth.lib's modules require nothing of gauth but gauth.lib and, lazily, gauth.core", function()
    local n = 0
    for _, path in ipairs(lua_files()) do
      if path:match("^lua/gauth/lib/") then
        n = n + 1
        local text = assert(helpers.read_file(root .. "/" .. path))
        for name in text:gmatch("require%s*%(?%s*[\"']([%w_.]+)[\"']") do
          assert(not name:match("^gauth%.") or name:match("^gauth%.lib%.") or name == "gauth.core",
            path .. " requires " .. name)
        end
      end
    end
    assert.is_true(n >= 8)
  end)

  it("the emulator rock declares what its modules and command require", function()
    local emu = rockspec(EMU)
    local declared = {}
    for _, d in ipairs(emu.dependencies) do declared[d:match("^[%w-]+")] = true end
    -- A module's top-level name -> the rock that provides it.
    local ROCK = { gauth = "gauth", socket = "luasocket", cjson = "lua-cjson" }
    local files = { "bin/gauth-emulator" }
    for _, src in pairs(modules_of(emu)) do files[#files + 1] = src end
    local needed = {}
    for _, path in ipairs(files) do
      local text = assert(helpers.read_file(root .. "/" .. path))
      for name in text:gmatch("require%s*%(?%s*[\"']([%w_.]+)[\"']") do
        local top = name:match("^[%w_]+")
        local rock = ROCK[top]
        assert(rock, path .. " requires " .. name .. ", which no known rock provides")
        needed[rock] = true
      end
    end
    assert.same({ gauth = true, luasocket = true, ["lua-cjson"] = true }, needed)
    for rock in pairs(needed) do
      assert.is_true(declared[rock], EMU .. " does not declare " .. rock)
    end
    assert.is_true(declared.lua)
  end)

  -- Slow (two C builds, one per ABI, both checked): defined once, in the
  -- Lua 5.4 pass.
  local run = (os.getenv("GAUTH_LUA_VERSION") or "5.4") == "5.4" and it or function() end
  run("both rocks install from a clean tree with luarocks make, for Lua 5.4 and LuaJIT, offline,"
      .. " and their commands run from the tree", function()
    local tmp = helpers.tmpdir()
    local trees = tmp .. "/rocks"
    local work = tmp .. "/rockbuild"
    -- A clean copy (git archive) of what is committed, with the changes to
    -- tracked files not yet committed (git stash create makes a commit of
    -- them without touching the checkout): the build leaves nothing here.
    local ok, out = helpers.sh("rm -rf " .. work .. " " .. trees .. " && mkdir -p " .. work .. " && cd "
      .. helpers.shell_quote(root) .. " && rev=$(git stash create) && git archive ${rev:-HEAD}"
      .. " | tar -x -C " .. work)
    assert(ok, out)
    for _, c in ipairs({
      { "5.4", "", "lua5.4" },
      { "5.1", " LUA_INCDIR=/usr/include/luajit-2.1", "luajit" },
    }) do
      -- A tree per ABI: the bin folder of one would hide the other's.
      local tree = trees .. "/" .. c[1]
      local paths = "package.path='" .. tree .. "/share/lua/" .. c[1] .. "/?.lua;" ..
        tree .. "/share/lua/" .. c[1] .. "/?/init.lua;'..package.path;" ..
        "package.cpath='" .. tree .. "/lib/lua/" .. c[1] .. "/?.so;'..package.cpath;"
      local function lua(script)
        return helpers.sh(c[3] .. " -e " .. helpers.shell_quote(paths .. script))
      end
      ok, out = helpers.sh("cd " .. work .. " && luarocks --lua-version " .. c[1] ..
        " --tree " .. tree .. " make --deps-mode=none " .. LIB .. c[2])
      assert(ok, out)
      -- The library alone: it signs, and has no emulator.
      ok, out = lua("local g=require'gauth'; local core=require'gauth.core';" ..
        "io.write(core.b64url_encode(core.sha256('abc')), ' ', g._VERSION, ' ',"
        .. " tostring(package.searchpath('gauth.emulator', package.path)))")
      assert(ok, out)
      assert.are.equal("ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0 0.1.0 nil", out)
      assert.is_nil(io.open(tree .. "/bin/gauth-emulator"), "the library rock installs no gauth-emulator")
      -- Then the emulator's rock, over it.
      ok, out = helpers.sh("cd " .. work .. " && luarocks --lua-version " .. c[1] ..
        " --tree " .. tree .. " make --deps-mode=none " .. EMU)
      assert(ok, out)
      local emu_mods = {}
      for name in pairs(modules_of(rockspec(EMU))) do emu_mods[#emu_mods + 1] = "'" .. name .. "'" end
      table.sort(emu_mods)
      assert.is_true(#emu_mods >= 11)
      ok, out = lua("for _, m in ipairs({ " .. table.concat(emu_mods, ", ") .. " }) do"
        .. " assert(package.searchpath(m, package.path):find('" .. tree .. "', 1, true)); require(m) end"
        .. " io.write(require('gauth.emulator')._VERSION)")
      assert(ok, out)
      assert.are.equal("0.1.0", out)
    end
    -- The tree's commands (LuaRocks' wrappers find the modules through
    -- LUA_PATH/LUA_CPATH, as the README says): the emulator serves, the
    -- gauth command gets a token from it with the key file it wrote.
    local tree = trees .. "/5.4"
    local env = "unset LUA_PATH LUA_CPATH LUA_PATH_5_4 LUA_CPATH_5_4; eval \"$(luarocks --lua-version 5.4 --tree "
      .. helpers.shell_quote(tree) .. " path)\"; "
    local key, ready, log = tmp .. "/emu-key.json", tmp .. "/emu.ready", tmp .. "/emu.log"
    ok, out = helpers.sh(env .. tree .. "/bin/gauth-emulator --new-key-file " .. key .. " --ready-file " .. ready
      .. " >" .. log .. " 2>&1 </dev/null & echo \"PID=$!\"")
    assert(ok, out)
    local pid = assert(tonumber(out:match("PID=(%d+)")), out)
    local ready_text
    for _ = 1, 500 do  -- a hang guard (10 s), not a timing window
      ready_text = helpers.read_file(ready)
      if ready_text and ready_text:find("}", 1, true) then break end
      assert(helpers.process_alive(pid), "gauth-emulator exited: " .. tostring(helpers.read_file(log)))
      helpers.sh("sleep 0.02")
    end
    local got_ok, got = helpers.sh(env .. tree .. "/bin/gauth token --key-file " .. key)
    helpers.sh("kill " .. pid)
    assert(got_ok, got)
    assert.matches("^%S+\n$", got)
    for _ = 1, 500 do
      if not helpers.process_alive(pid) then break end
      helpers.sh("sleep 0.02")
    end
    assert.is_false(helpers.process_alive(pid))
  end)
end)
