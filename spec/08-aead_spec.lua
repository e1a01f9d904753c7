-- gauth.core.aead_seal / aead_open (AES-256-GCM, issue 16: tokens at rest
-- in Redis), judged by python3-cryptography's AESGCM in both directions:
-- what gauth seals Python opens, what Python seals gauth opens, with the
-- layout nonce (12) .. ciphertext .. tag (16).
local helpers = require "helpers"
local core = require "gauth.core"
local cjson = require "cjson.safe"

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end
local function unhex(h)
  return (h:gsub("..", function(x) return string.char(tonumber(x, 16)) end))
end

-- Deterministic varied bytes (every byte value appears somewhere).
local function bytes(n, seed)
  local t = {}
  for i = 1, n do t[i] = string.char((i * 31 + seed * 7) % 256) end
  return table.concat(t)
end

describe("gauth.core AES-256-GCM", function()
  it("what gauth seals python3-cryptography opens, and the other way", function()
    local cases = {}
    for i, n in ipairs({ 0, 1, 15, 16, 17, 255, 1000, 4099 }) do
      local key = core.random_bytes(32)
      local pt = bytes(n, i)
      local aad = (i % 3 == 0) and "" or ("t|svc:" .. bytes(i * 5, i + 1))
      local sealed = assert(core.aead_seal(key, pt, aad))
      assert.equal(n + 28, #sealed)
      cases[#cases + 1] = { key = hex(key), pt = hex(pt), aad = hex(aad), sealed = hex(sealed) }
    end
    local input = helpers.write_file(helpers.tmpname("aead", ".json"), cjson.encode(cases))
    local ok, out = helpers.sh(helpers.python .. " -c " .. helpers.shell_quote([[
import json, os, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
res = []
for c in json.load(open(sys.argv[1])):
    key, pt, aad, sealed = (bytes.fromhex(c[k]) for k in ("key", "pt", "aad", "sealed"))
    g = AESGCM(key)
    opened = g.decrypt(sealed[:12], sealed[12:], aad)
    nonce = os.urandom(12)
    mine = nonce + g.encrypt(nonce, pt, aad)
    res.append({"opened": opened.hex(), "sealed": mine.hex()})
print(json.dumps(res))
]]) .. " " .. helpers.shell_quote(input))
    assert(ok, out)
    local res = assert(cjson.decode(out))
    assert.equal(#cases, #res)
    for i, c in ipairs(cases) do
      assert.equal(c.pt, res[i].opened, "python opened gauth's case " .. i)
      local pt, err = core.aead_open(unhex(c.key), unhex(res[i].sealed), unhex(c.aad))
      assert.is_nil(err)
      assert.equal(c.pt, hex(pt), "gauth opened python's case " .. i)
    end
  end)

  it("uses a fresh nonce per seal", function()
    local key = core.random_bytes(32)
    local seen = {}
    for _ = 1, 50 do
      local s = assert(core.aead_seal(key, "same token", "same key"))
      local nonce = s:sub(1, 12)
      assert.is_nil(seen[nonce])
      seen[nonce] = true
    end
  end)

  it("refuses tampering, another key, another aad and bad sizes", function()
    local key = core.random_bytes(32)
    local sealed = assert(core.aead_seal(key, "ya29.secret-token", "t|a"))
    local function refused(k, s, aad, msg)
      local pt, err = core.aead_open(k, s, aad)
      assert.is_nil(pt)
      assert.equal(msg, err)
    end
    local AUTH = "gauth.core: aead_open: authentication failed"
    -- Every byte flipped in turn: nonce, ciphertext and tag all count.
    for i = 1, #sealed do
      local b = sealed:byte(i)
      refused(key, sealed:sub(1, i - 1) .. string.char((b + 1) % 256) .. sealed:sub(i + 1),
              "t|a", AUTH)
    end
    refused(core.random_bytes(32), sealed, "t|a", AUTH)
    refused(key, sealed, "t|b", AUTH)          -- the value moved to another key
    refused(key, sealed, nil, AUTH)
    refused(key, sealed:sub(1, -2), "t|a", AUTH)
    refused(key, sealed .. "x", "t|a", AUTH)
    refused(key, sealed:sub(1, 27), "t|a", "gauth.core: aead_open: sealed value too short")
    refused(key:sub(2), sealed, "t|a", "gauth.core: aead_open: key must be 32 bytes")
    local s2, e2 = core.aead_seal(key .. "x", "pt")
    assert.is_nil(s2)
    assert.equal("gauth.core: aead_seal: key must be 32 bytes", e2)
    -- The right key and aad still open it.
    assert.equal("ya29.secret-token", core.aead_open(key, sealed, "t|a"))
  end)

  it("raises on arguments of the wrong type", function()
    assert.has_error(function() core.aead_seal(nil, "x") end,
      "bad argument #1 to 'aead_seal' (string expected, got nil)")
    assert.has_error(function() core.aead_open(string.rep("k", 32), {}) end,
      "bad argument #2 to 'aead_open' (string expected, got table)")
  end)
end)
