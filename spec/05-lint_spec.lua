-- luacheck over the Lua and cppcheck over the C core are clean.
local helpers = require "helpers"

local root = helpers.shell_quote(helpers.root)

-- Once is enough (nothing here depends on the interpreter): defined in the
-- Lua 5.4 pass only.
local run = (os.getenv("GAUTH_LUA_VERSION") or "5.4") == "5.4" and it or function() end

describe("lint", function()
  run("luacheck finds nothing in lua/, emulator/, bin/, spec/, bench/, examples/", function()
    local ok, out = helpers.sh("cd " .. root .. " && luacheck --formatter plain lua emulator bin spec bench examples")
    assert.is_true(ok, out)
    assert.are.equal("", out)
  end)

  run("cppcheck finds nothing in csrc/", function()
    local ok, out = helpers.sh("cd " .. root .. " && cppcheck --quiet --std=c99 --error-exitcode=1"
      .. " --enable=warning,performance,portability --suppress=missingIncludeSystem"
      .. " --suppress=toomanyconfigs -I csrc -I /usr/include/lua5.4 csrc/*.c")
    assert.is_true(ok, out)
    assert.are.equal("", out)
  end)

  run("the C core compiles, warnings as errors, against an OpenSSL without its deprecated API", function()
    local ok, out = helpers.sh("cd " .. root .. " && make -s nodeprecated 2>&1")
    assert.is_true(ok, out)
    assert.are.equal("", out)
    -- and the check can fail: the same with a deprecated call in the way
    local bad = helpers.tmpdir() .. "/bad.c"
    helpers.write_file(bad, "#include <openssl/sha.h>\nint f(void) { SHA256_CTX c; return SHA256_Init(&c); }\n")
    ok, out = helpers.sh("cd " .. root .. " && make -s nodeprecated SRCS=" .. helpers.shell_quote(bad) .. " 2>&1")
    assert.is_false(ok)
    assert.matches("SHA256", out, 1, true)
  end)

  run("make docs builds the reference without a warning", function()
    local out_dir = helpers.tmpdir() .. "/doc"
    local ok, out = helpers.sh("cd " .. root .. " && ldoc -c config.ld -d "
      .. helpers.shell_quote(out_dir) .. " .")
    assert.is_true(ok, out)
    local noise = out:gsub("reading configuration from config.ld\n", "")
                     :gsub("found master module[^\n]*\n", "")
                     :gsub("output written to [^\n]*\n?", "")
    assert.are.equal("", noise)
    assert.is_not_nil(io.open(out_dir .. "/modules/gauth.service_account.html"))
  end)

  run("no spec asserts a bare has_error (every raised error is named)", function()
    local bare = require "support.bare_has_error"
    local found = {}
    for f in io.popen("ls " .. root .. "/spec/*_spec.lua"):lines() do
      local fh = assert(io.open(f))
      local text = fh:read("*a")
      fh:close()
      for _, line in ipairs(bare.scan(text)) do
        found[#found + 1] = f:match("spec/.*$") .. ":" .. line
      end
    end
    assert.same({}, found)
  end)

  run("the bare has_error check finds one (the check can fail)", function()
    local bare = require "support.bare_has_error"
    local text = table.concat({
      'assert.has_error(function() f(1, 2) end)',
      'assert.has_error(function() g("a)") end, "gauth.x: y")',
      'assert.has_error(function()',
      '  local a, b = h({ 1, 2 })',
      'end,',
      '  [[long message]])',
      'assert.has_error(function() -- a comment, with ) in it',
      '  k()',
      'end)',
      'local s = "assert.has_error(function() x() end)" -- assert.has_error(function() end)',
    }, "\n")
    assert.same({ 1, 7 }, bare.scan(text))
  end)

  run("luacheck does report a real problem (the check can fail)", function()
    local path = helpers.tmpname("lint", ".lua")
    helpers.write_file(path, "local unused = 1\nx_global = 2\n")
    local ok, out = helpers.sh("luacheck --formatter plain " .. helpers.shell_quote(path))
    assert.is_false(ok)
    assert.matches("unused variable 'unused'", out)
  end)
end)

-- A clean clone has no folder beside it: every spec, helper and bench script
-- reads only what is in the repository (spec/fixtures for the Discovery
-- documents). The needle is built here so that this file does not hold it.
describe("the suite reads nothing outside the repository", function()
  local NEEDLE = ".." .. "/" .. "shared"

  local function references(dirs)
    local ok, out, rc = helpers.sh("cd " .. root .. " && grep -rnIF --exclude-dir=node_modules"
      .. " --exclude-dir=fixtures -e " .. helpers.shell_quote(NEEDLE) .. " " .. dirs)
    -- grep: 0 found, 1 nothing found, 2 trouble
    assert(ok or rc == 1, out)
    return out
  end

  it("no spec, helper, support file or bench script names the folder beside the clone", function()
    assert.are.equal("", references("spec bench Makefile"))
  end)

  it("the search finds such a reference when there is one (the check can fail)", function()
    local dir = helpers.tmpname("lint-shared")
    assert(helpers.sh("mkdir -p " .. helpers.shell_quote(dir)))
    helpers.write_file(dir .. "/x_spec.lua", 'local p = "' .. NEEDLE .. '/discovery/a.json"\n')
    assert.matches("x_spec.lua:1:", references(helpers.shell_quote(dir)))
  end)
end)

-- Nothing skips (DECISIONS, Tests): no spec marks itself pending, and no
-- module is loaded through a guard that would turn a load failure into a
-- quiet absence. A missing tool is installed by `make deps`, not skipped.
describe("the suite cannot skip", function()
  local NEEDLES = { "pend" .. "ing(", "pend" .. 'ing "', "pcall(" .. "require", "pcall, " .. "require" }

  local function hits(dirs)
    local args = {}
    for _, n in ipairs(NEEDLES) do args[#args + 1] = "-e " .. helpers.shell_quote(n) end
    local ok, out, rc = helpers.sh("cd " .. root .. " && grep -rnIF --include='*.lua' "
      .. table.concat(args, " ") .. " " .. dirs)
    assert(ok or rc == 1, out)
    return out
  end

  it("no spec or helper marks a test pending or guards a require with pcall", function()
    assert.are.equal("", hits("spec"))
  end)

  it("the search finds both when they are there (the check can fail)", function()
    local dir = helpers.tmpname("lint-skip")
    assert(helpers.sh("mkdir -p " .. helpers.shell_quote(dir)))
    helpers.write_file(dir .. "/a_spec.lua", NEEDLES[1] .. '"later")\n')
    helpers.write_file(dir .. "/b_spec.lua", "local ok = " .. NEEDLES[3] .. ', "x")\n')
    local out = hits(helpers.shell_quote(dir))
    assert.matches("a_spec.lua:1:", out)
    assert.matches("b_spec.lua:1:", out)
  end)
end)
