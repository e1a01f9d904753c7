-- The package: the rockspec lists every module, and both LuaRocks commands
-- of the README build and install a working gauth offline.
local helpers = require "helpers"

local root = helpers.root

local function rockspec()
  local env = {}
  local chunk = assert(loadfile and (function()
    local f = assert(io.open(root .. "/gauth-scm-1.rockspec"))
    local src = f:read("*a")
    f:close()
    return src
  end)())
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

local function lua_files()
  local ok, out = helpers.sh("cd " .. helpers.shell_quote(root) .. " && find lua -name '*.lua' | sort")
  assert(ok, out)
  local files = {}
  for path in out:gmatch("[^\n]+") do files[#files + 1] = path end
  return files
end

describe("package", function()
  it("lists every Lua module in the rockspec, and nothing that is missing", function()
    local spec = rockspec()
    local modules = spec.build.modules
    local listed = {}
    for name, src in pairs(modules) do
      if type(src) == "string" then
        listed[src] = name
        assert.is_not_nil(io.open(root .. "/" .. src), "rockspec lists missing " .. src)
      end
    end
    for _, path in ipairs(lua_files()) do
      local name = path:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/", "."):gsub("%.init$", "")
      assert.are.equal(name, listed[path], path .. " is not in the rockspec")
    end
    for _, src in ipairs(modules["gauth.core"].sources) do
      assert.is_not_nil(io.open(root .. "/" .. src), src)
    end
    for _, bin in pairs(spec.build.install.bin) do
      assert.is_not_nil(io.open(root .. "/" .. bin), bin)
    end
  end)

  it("refuses to load a rockspec that is not there (the check above can fail)", function()
    assert.is_nil(io.open(root .. "/no-such.rockspec"))
  end)

  -- Slow (two C builds): run once, in the Lua 5.4 pass.
  local run = (os.getenv("GAUTH_LUA_VERSION") or "5.4") == "5.4" and it or pending
  run("installs with luarocks make for Lua 5.4 and for LuaJIT, offline", function()
    local tree = helpers.tmpdir() .. "/rocks"
    local work = helpers.tmpdir() .. "/rockbuild"
    -- a clean copy, so the build leaves nothing in the checkout
    assert(helpers.sh("rm -rf " .. work .. " && mkdir -p " .. work .. " && cd " ..
      helpers.shell_quote(root) .. " && git ls-files -z | xargs -0 -I{} cp --parents {} " .. work))
    for _, c in ipairs({
      { "5.4", "", "lua5.4" },
      { "5.1", " LUA_INCDIR=/usr/include/luajit-2.1", "luajit" },
    }) do
      local ok, out = helpers.sh("cd " .. work .. " && luarocks --lua-version " .. c[1] ..
        " --tree " .. tree .. " make --deps-mode=none gauth-scm-1.rockspec" .. c[2])
      assert(ok, out)
      -- the installed copy signs a JWT and finds its bin scripts
      local script = "package.path='" .. tree .. "/share/lua/" .. c[1] .. "/?.lua;" ..
        tree .. "/share/lua/" .. c[1] .. "/?/init.lua;'..package.path;" ..
        "package.cpath='" .. tree .. "/lib/lua/" .. c[1] .. "/?.so;'..package.cpath;" ..
        "local g=require'gauth'; local core=require'gauth.core';" ..
        "assert(package.searchpath and true or true);" ..
        "io.write(core.b64url_encode(core.sha256('abc')), ' ', g._VERSION)"
      ok, out = helpers.sh(c[3] .. " -e " .. helpers.shell_quote(script))
      assert(ok, out)
      assert.are.equal("ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0 0.1.0", out)
      local f = io.open(tree .. "/bin/gauth-emulator")
      assert.is_not_nil(f, "bin script installed")
      f:close()
    end
  end)
end)
