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
    local name = path:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/", "."):gsub("%.init$", "")
    if listed[path] ~= name then out[#out + 1] = path .. " is not in the rockspec" end
  end
  table.sort(out)
  return out
end

describe("package", function()
  it("lists every Lua module in the rockspec, and nothing that is missing", function()
    local spec = rockspec()
    assert.are.same({}, problems(spec.build.modules, lua_files()))
    for _, src in ipairs(spec.build.modules["gauth.core"].sources) do
      assert.is_not_nil(io.open(root .. "/" .. src), src)
    end
    for _, bin in pairs(spec.build.install.bin) do
      assert.is_not_nil(io.open(root .. "/" .. bin), bin)
    end
  end)

  it("the check names a module left out of the rockspec and a listed file that is not there", function()
    local modules = {}
    for k, v in pairs(rockspec().build.modules) do modules[k] = v end
    modules["gauth.jwt"] = nil
    modules["gauth.gone"] = "lua/gauth/gone.lua"
    assert.are.same({ "lua/gauth/jwt.lua is not in the rockspec", "rockspec lists missing lua/gauth/gone.lua" },
      problems(modules, lua_files()))
  end)

  -- Slow (two C builds, one per ABI, both checked): defined once, in the
  -- Lua 5.4 pass.
  local run = (os.getenv("GAUTH_LUA_VERSION") or "5.4") == "5.4" and it or function() end
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
