-- base64url, base64, sha256, random bytes and the clock of gauth.core.
local core = require "gauth.core"

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

describe("gauth.core codec", function()
  -- RFC 4648 section 10 test vectors, without padding for base64url.
  local vectors = {
    { "", "" }, { "f", "Zg" }, { "fo", "Zm8" }, { "foo", "Zm9v" },
    { "foob", "Zm9vYg" }, { "fooba", "Zm9vYmE" }, { "foobar", "Zm9vYmFy" },
  }

  it("encodes the RFC 4648 vectors in base64url without padding", function()
    for _, v in ipairs(vectors) do
      assert.are.equal(v[2], core.b64url_encode(v[1]))
      assert.are.equal(v[1], core.b64url_decode(v[2]))
    end
  end)

  it("uses - and _ where base64 has + and /", function()
    assert.are.equal("-_8", core.b64url_encode("\251\255"))
    assert.are.equal("+/8=", core.b64_encode("\251\255"))
    assert.are.equal("\251\255", core.b64url_decode("-_8"))
    assert.are.equal("\251\255", core.b64_decode("+/8="))
  end)

  it("round-trips every byte value", function()
    local t = {}
    for i = 0, 255 do t[#t + 1] = string.char(i) end
    local all = table.concat(t)
    for n = 0, 5 do
      local s = all:sub(1, #all - n)
      assert.are.equal(s, core.b64url_decode(core.b64url_encode(s)))
      assert.are.equal(s, core.b64_decode(core.b64_encode(s)))
    end
  end)

  it("refuses padding, foreign characters and truncation in base64url", function()
    local cases = {
      { "Zm8=", "invalid character" }, { "Zm+v", "invalid character" },
      { "Zm9v\n", "invalid character" }, { "Z", "truncated" },
      { "Zh", "trailing bits" }, { "Zm9", "trailing bits" },
    }
    for _, c in ipairs(cases) do
      local v, err = core.b64url_decode(c[1])
      assert.is_nil(v)
      assert.matches("^gauth.core: base64url decode: .*" .. c[2], err)
    end
  end)

  it("refuses malformed standard base64", function()
    local v, err = core.b64_decode("Zm9")
    assert.is_nil(v)
    assert.matches("^gauth.core: base64 decode: length", err)
    v, err = core.b64_decode("Zm-v")
    assert.is_nil(v)
    assert.matches("invalid character", err)
  end)

  it("raises on wrong argument types", function()
    assert.has_error(function() core.b64url_encode({}) end)
    assert.has_error(function() core.b64url_decode(nil) end)
    assert.has_error(function() core.sha256() end)
  end)

  it("computes SHA-256 (FIPS 180-2 vectors)", function()
    assert.are.equal(
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
      hex(core.sha256("abc")))
    assert.are.equal(
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
      hex(core.sha256("")))
  end)

  it("gives random bytes of the asked length, and refuses silly lengths", function()
    local a, b = core.random_bytes(32), core.random_bytes(32)
    assert.are.equal(32, #a)
    assert.are_not.equal(a, b)
    assert.are.equal("", core.random_bytes(0))
    assert.has_error(function() core.random_bytes(-1) end)
    assert.has_error(function() core.random_bytes(1e6) end)
  end)

  it("tells the time and sleeps", function()
    local now = core.now()
    assert.is_true(math.abs(now - os.time()) < 2)
    local t0 = core.monotonic()
    core.sleep(0.02)
    assert.is_true(core.monotonic() - t0 >= 0.019)
    core.sleep(0)    -- no-op
    core.sleep(-1)   -- no-op
    assert.has_error(function() core.sleep("x") end)
  end)
end)
