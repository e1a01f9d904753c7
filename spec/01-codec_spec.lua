-- base64url, base64, sha256, random bytes and the clock of gauth.core.
-- base64 and base64url are judged by Python's base64 module on every
-- length 0..300 and every byte value.
local core = require "gauth.core"
local helpers = require "helpers"
local cjson = require "cjson"

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

  -- Inputs of every length 0..300 whose bytes run through all 256 values
  -- (each input starts at another offset, so every byte sits at every
  -- position mod 3), sent as hex; Python answers each with its standard
  -- base64 and its URL-safe base64 without padding, in one process.
  it("agrees with Python's base64 on every length 0..300 and every byte value", function()
    local inputs, hexes = {}, {}
    for n = 0, 300 do
      local t = {}
      for i = 1, n do t[i] = string.char((i * 7 + n) % 256) end
      inputs[#inputs + 1] = table.concat(t)
      hexes[#hexes + 1] = hex(inputs[#inputs])
    end
    local seen = {}
    for _, s in ipairs(inputs) do for i = 1, #s do seen[s:byte(i)] = true end end
    for b = 0, 255 do assert.is_true(seen[b], "byte " .. b .. " is in some input") end
    local input = helpers.write_file(helpers.tmpname("b64", ".json"), cjson.encode(hexes))
    local ok, out = helpers.sh(helpers.python .. " -c " .. helpers.shell_quote([[
import base64, json, sys
for h in json.load(open(sys.argv[1])):
    b = bytes.fromhex(h)
    print(base64.b64encode(b).decode(), base64.urlsafe_b64encode(b).decode().rstrip("="))
]]) .. " " .. helpers.shell_quote(input))
    assert(ok, out)
    local i = 0
    for std, url in out:gmatch("([^ \n]*) ([^\n]*)\n") do
      i = i + 1
      local s = inputs[i]
      assert.are.equal(std, core.b64_encode(s), "base64 of length " .. #s)
      assert.are.equal(url, core.b64url_encode(s), "base64url of length " .. #s)
      assert.are.equal(s, core.b64_decode(std), "base64 decode of length " .. #s)
      assert.are.equal(s, core.b64url_decode(url), "base64url decode of length " .. #s)
    end
    assert.are.equal(#inputs, i)
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
    assert.has_error(function() core.b64url_encode({}) end,
      "bad argument #1 to 'b64url_encode' (string expected, got table)")
    assert.has_error(function() core.b64url_decode(nil) end,
      "bad argument #1 to 'b64url_decode' (string expected, got nil)")
    assert.has_error(function() core.sha256() end, "bad argument #1 to 'sha256' (string expected, got no value)")
  end)

  it("computes SHA-256 (FIPS 180-2 vectors)", function()
    assert.are.equal(
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
      hex(core.sha256("abc")))
    assert.are.equal(
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
      hex(core.sha256("")))
  end)

  it("computes SHA-256 call after call with its kept context, as Python's hashlib judges", function()
    -- sha256 and sha256_hex share one context per Lua state: each call
    -- must start from nothing, whatever length came before.
    local inputs = { string.rep("a", 1000), "", "abc", core.random_bytes(64), core.random_bytes(1),
                     core.random_bytes(4096) .. core.random_bytes(904), string.rep("\0", 55), string.rep("\0", 56) }
    local list = {}
    for i, s in ipairs(inputs) do list[i] = hex(s) end
    local f = io.popen("/usr/bin/python3 -c 'import hashlib,sys,binascii;"
      .. "[print(hashlib.sha256(binascii.unhexlify(x[:-1])).hexdigest()) for x in sys.argv[1:]]' "
      .. table.concat(list, "x ") .. "x 2>&1")
    local want = {}
    for line in f:lines() do want[#want + 1] = line end
    f:close()
    assert.equal(#inputs, #want)
    for i, s in ipairs(inputs) do
      assert.equal(want[i], hex(core.sha256(s)), "input " .. i)
      assert.equal(want[i], core.sha256_hex(s), "input " .. i)
    end
  end)

  it("keys a compact token by SHA-256 of its signature segment and the length before it, as hashlib judges", function()
    local values = { "Bearer aa.bb.cc", "x.y.", "a.b.c.d", "." .. string.rep("s", 342),
                     "Bearer " .. string.rep("h", 36) .. "." .. string.rep("p", 600) .. "."
                       .. core.b64url_encode(core.random_bytes(256)) }
    local list = {}
    for i, s in ipairs(values) do list[i] = hex(s) end
    local f = io.popen("/usr/bin/python3 -c 'import hashlib,sys,binascii\n"
      .. "for x in sys.argv[1:]:\n v = binascii.unhexlify(x[:-1]); d = v.rindex(b\".\") + 1\n"
      .. " print(hashlib.sha256(v[d:]).hexdigest(), d)' " .. table.concat(list, "x ") .. "x 2>&1")
    local want = {}
    for line in f:lines() do want[#want + 1] = line end
    f:close()
    assert.equal(#values, #want)
    for i, s in ipairs(values) do
      local key, len = core.jws_key(s)
      assert.equal(want[i], hex(key) .. " " .. len, "value " .. i)
    end
  end)

  it("refuses to key a value with no '.', and raises on a non-string", function()
    local key, msg = core.jws_key("Basic dXNlcjpwYXNz")
    assert.is_nil(key)
    assert.equal("gauth.core: jws_key: not a compact token (no '.')", msg)
    key, msg = core.jws_key("")
    assert.is_nil(key)
    assert.equal("gauth.core: jws_key: not a compact token (no '.')", msg)
    assert.has_error(function() core.jws_key({}) end,
      "bad argument #1 to 'jws_key' (string expected, got table)")
  end)

  it("computes HMAC-SHA256 (RFC 4231 vectors) and hex, as Python's hmac judges", function()
    -- RFC 4231 test cases 1, 2 and 6 (a key longer than the block).
    assert.are.equal("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
      core.hex_encode(core.hmac_sha256(string.rep("\11", 20), "Hi There")))
    assert.are.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
      core.hex_encode(core.hmac_sha256("Jefe", "what do ya want for nothing?")))
    assert.are.equal("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
      core.hex_encode(core.hmac_sha256(string.rep("\170", 131),
        "Test Using Larger Than Block-Size Key - Hash Key First")))
    -- Binary keys and data, empty ones, against Python's hmac module.
    local cases = { { "", "" }, { "GOOG4secret", "20200101" },
                    { core.random_bytes(37), core.random_bytes(300) } }
    for _, c in ipairs(cases) do
      local f = io.popen("python3 -c 'import hmac,hashlib,sys,binascii;"
        .. "k,d=(binascii.unhexlify(x[:-1]) for x in sys.argv[1:3]);"
        .. "print(hmac.new(k,d,hashlib.sha256).hexdigest())' "
        .. hex(c[1]) .. "x " .. hex(c[2]) .. "x 2>&1")
      local want = f:read("*a"); f:close()
      assert.are.equal(want:gsub("%s+$", ""),
        core.hex_encode(core.hmac_sha256(c[1], c[2])))
    end
    assert.are.equal("", core.hex_encode(""))
    assert.are.equal("00ff10", core.hex_encode("\0\255\16"))
    assert.are.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
      core.sha256_hex("abc"))
    assert.are.equal(hex(core.sha256(string.rep("x", 1000))),
      core.sha256_hex(string.rep("x", 1000)))
    assert.has_error(function() core.hmac_sha256("k") end,
      "bad argument #2 to 'hmac_sha256' (string expected, got no value)")
    assert.has_error(function() core.hex_encode({}) end, "bad argument #1 to 'hex_encode' (string expected, got table)")
    assert.has_error(function() core.sha256_hex() end,
      "bad argument #1 to 'sha256_hex' (string expected, got no value)")
  end)

  it("gives random bytes of the asked length, and refuses silly lengths", function()
    local a, b = core.random_bytes(32), core.random_bytes(32)
    assert.are.equal(32, #a)
    assert.are_not.equal(a, b)
    assert.are.equal("", core.random_bytes(0))
    assert.has_error(function() core.random_bytes(-1) end,
      "bad argument #1 to 'random_bytes' (must be between 0 and 4096)")
    assert.has_error(function() core.random_bytes(1e6) end,
      "bad argument #1 to 'random_bytes' (must be between 0 and 4096)")
  end)

  it("tells the time and sleeps", function()
    local now = core.now()
    assert.is_true(math.abs(now - os.time()) < 2)
    local t0 = core.monotonic()
    core.sleep(0.02)
    assert.is_true(core.monotonic() - t0 >= 0.019)
    core.sleep(0)    -- no-op
    core.sleep(-1)   -- no-op
    assert.has_error(function() core.sleep("x") end, "bad argument #1 to 'sleep' (number expected, got string)")
  end)
  it("file_stat, mkdir and chmod: a path's kind, mode and owner; a private folder", function()
    local dir = helpers.tmpname("core-fs")
    local ok, msg = core.mkdir(dir, tonumber("700", 8))
    assert.is_true(ok)
    assert.is_nil(msg)
    local kind, mode, uid, me = core.file_stat(dir)
    assert.are.equal("dir", kind)
    assert.are.equal(tonumber("700", 8), mode)
    assert.are.equal(me, uid)
    local why
    ok, msg, why = core.mkdir(dir, tonumber("700", 8))
    assert.is_nil(ok)
    assert.are.equal("gauth.core: mkdir: File exists", msg)
    assert.are.equal("exists", why)
    local file = helpers.write_file(dir .. "/f", "x")
    assert.is_true(core.chmod(file, tonumber("640", 8)))
    kind, mode = core.file_stat(file)
    assert.are.equal("file", kind)
    assert.are.equal(tonumber("640", 8), mode)
    assert.are.equal("other", (core.file_stat("/dev/null")))
    local k2, m2 = core.file_stat(dir .. "/missing")
    assert.is_nil(k2)
    assert.are.equal("gauth.core: stat: No such file or directory", m2)
    ok, msg = core.chmod(dir .. "/missing", 0)
    assert.is_nil(ok)
    assert.are.equal("gauth.core: chmod: No such file or directory", msg)
    assert.has_error(function() core.mkdir(dir, -1) end, "bad argument #2 to 'mkdir' (must be permission bits)")
    assert.has_error(function() core.chmod(file, 1e6) end, "bad argument #2 to 'chmod' (must be permission bits)")
    assert.has_error(function() core.file_stat() end,
      "bad argument #1 to 'file_stat' (string expected, got no value)")
  end)
end)

describe("gauth.core.jws_split", function()
  local enc = core.b64url_encode

  it("splits a compact JWS into decoded segments and the signed length", function()
    local t = enc('{"alg":"RS256"}') .. "." .. enc('{"a":1}') .. "." .. enc("\0sig\255")
    local h, p, s, n = core.jws_split(t)
    assert.are.equal('{"alg":"RS256"}', h)
    assert.are.equal('{"a":1}', p)
    assert.are.equal("\0sig\255", s)
    assert.are.equal(#enc('{"alg":"RS256"}') + 1 + #enc('{"a":1}'), n)
    local _, _, s2 = core.jws_split(enc("{}") .. "." .. enc("{}") .. ".")
    assert.are.equal("", s2)
  end)

  it("names what is malformed and never quotes the token", function()
    local secret = "c2VjcmV0c2VjcmV0"
    local cases = {
      { secret, "malformed: 1 segment %(a JWS has 3%)" },
      { secret .. "." .. secret, "malformed: 2 segments" },
      { "a.b.c.d", "malformed: 4 segments" },
      { secret .. "!.e30.e30", "malformed: bad base64url in header %(invalid character at offset 16%)" },
      { "e30.e3\0.e30", "malformed: bad base64url in payload" },
      { "e30.e30.A", "malformed: bad base64url in signature %(truncated input%)" },
      { ("A"):rep(5000) .. ".e30.e30", "malformed: header of 5000 bytes %(limit 4096%)" },
      { "e30.e30." .. ("A"):rep(2000), "malformed: signature of 2000 bytes" },
      { "e30." .. ("A"):rep(1024 * 1024) .. ".e30", "malformed: token of 1048584 bytes %(limit 65536%)" },
    }
    for _, c in ipairs(cases) do
      local h, err = core.jws_split(c[1])
      assert.is_nil(h)
      assert.matches("^gauth.core: jws: " .. c[2], err)
      assert.is_nil(err:find(secret, 1, true))
    end
    assert.has_error(function() core.jws_split(nil) end,
      "bad argument #1 to 'jws_split' (string expected, got nil)")
  end)
end)

-- core.json_object: the claims decoder behind Key:verify_jws(alg, token,
-- true). cjson is the judge: whatever it decodes must be cjson.decode's
-- table exactly (types, signs of zero, nesting), and what it declines it
-- leaves to cjson.
describe("gauth.core.json_object", function()
  local null = cjson.null

  -- Deep equality that also tells 0 from -0 and integers from floats.
  local function same(a, b, path)
    path = path or "$"
    if type(a) ~= type(b) then return false, path .. ": " .. type(a) .. " vs " .. type(b) end
    if type(a) == "number" then
      if math.type and math.type(a) ~= math.type(b) then return false, path .. ": number kinds" end
      if a ~= b and not (a ~= a and b ~= b) then return false, path .. ": " .. a .. " vs " .. b end
      if a == 0 and 1 / a ~= 1 / b then return false, path .. ": signed zero" end
      return true
    end
    if type(a) ~= "table" then
      if a ~= b then return false, path .. ": " .. tostring(a) .. " vs " .. tostring(b) end
      return true
    end
    for k, v in pairs(a) do
      local ok, why = same(v, b[k], path .. "." .. tostring(k))
      if not ok then return false, why end
    end
    for k in pairs(b) do
      if a[k] == nil then return false, path .. "." .. tostring(k) .. ": missing" end
    end
    return true
  end

  local function agrees(text)
    local mine = core.json_object(text)
    local ok, theirs = pcall(cjson.decode, text)
    if mine == nil then return true, "declined" end
    if not ok then return false, "cjson refused what json_object decoded: " .. text end
    local eq, why = same(mine, theirs)
    if not eq then return false, why .. " in " .. text end
    return true, "decoded"
  end

  it("decodes objects to cjson.decode's tables: claims, nesting, escapes, numbers", function()
    local nest = '{"a":' .. ("["):rep(31) .. "1" .. ("]"):rep(31) .. "}"
    local cases = {
      "{}", " { } ", '{"a":1}', '{"":1}', '{"a":1,"a":2}',
      '{"iss":"https://accounts.google.com","aud":"x.apps.googleusercontent.com",'
        .. '"sub":"1","email":"a@b.c","email_verified":true,"iat":1796578892,"exp":1796582492}',
      '{"a":{"b":[1,2,{"c":null}],"e":{}},"d":[],"f":[[],[{}]]}',
      '{"s":"a\\"b\\\\c\\/d\\b\\f\\n\\r\\t"}',
      '{"u":"\\u00e9\\u20AC\\ud83d\\ude00\\u0041\\u007f\\u0080\\u07ff\\u0800\\uffff"}',
      '{"n":"Jos\195\169 \226\130\172","k\\u00e9y":"v"}',
      '{"a":0,"b":-0,"c":123456789012345,"d":1234567890123456789,"e":1.5,"f":-2.5e-3,'
        .. '"g":1E+2,"h":1e400,"i":-1e400,"j":0.1,"k":9007199254740993,"l":-123,"m":1e-400}',
      '{"t":true,"f":false,"n":null,"l":[true,false,null]}',
      '\n\t{ "a" : [ 1 , 2 ] ,\r\n "b" : { } }\r\n',
      nest,
    }
    for _, text in ipairs(cases) do
      local mine = core.json_object(text)
      assert.is_table(mine, text)
      local ok, why = same(mine, cjson.decode(text))
      assert(ok, why)
    end
    local t = core.json_object('{"n":null,"l":[null]}')
    assert.are.equal(null, t.n)
    assert.are.equal(null, t.l[1])
  end)

  it("declines what it does not decode exactly as cjson, and raises on a non-string", function()
    local deep = '{"a":' .. ("["):rep(32) .. "1" .. ("]"):rep(32) .. "}"
    local cases = {
      "", "   ", "[]", "1", '"s"', "null", '{"a":0x10}', '{"a":01}', '{"a":inf}',
      '{"a":nan}', '{"a":+1}', '{"a":.5}', '{"a":1.}', '{"a":1e}', '{"a":-}',
      '{"s":"a\1b"}', '{"s":"\\u0000"}', '{"s":"\\ud800"}', '{"s":"\\udc00"}',
      '{"s":"\\ud800\\u0041"}', '{"s":"\\x"}', '{"s":"\\u12"}', '{"s":"\\u12G4"}',
      '{"a":1,}', '{"a":1}x', '{"a" 1}', "{a:1}", '{"a":tru}', '{"a":[1,]}',
      '{"a":"unterminated}', '{"a":1}{"b":2}', "{", '{"a":', '{"a":1', deep,
      '{"a":' .. ("1"):rep(70) .. ".5}",
    }
    for _, text in ipairs(cases) do
      assert.is_nil(core.json_object(text), text)
    end
    assert.has_error(function() core.json_object(nil) end,
      "bad argument #1 to 'json_object' (string expected, got nil)")
  end)

  it("agrees with cjson on thousands of generated objects and their mutations", function()
    local seed = 20261206
    local function rnd(n) -- a small LCG: the same cases on every run
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed % n + 1
    end
    local pieces = { "a", "\\n", "\\\"", "\\u00e9", "\\ud83d\\ude00", "\195\169", " ", "\\/", "xyz" }
    local numbers = { "0", "-0", "7", "-12", "1.25", "3e2", "-4.5E-1", "123456789012345678",
      "1796578892", "0.000001", "1e308" }
    local gen
    local function str()
      local out = {}
      for i = 1, rnd(4) - 1 do out[i] = pieces[rnd(#pieces)] end
      return '"' .. table.concat(out) .. '"'
    end
    function gen(depth)
      local k = rnd(depth > 3 and 5 or 7)
      if k == 1 then return str()
      elseif k == 2 then return numbers[rnd(#numbers)]
      elseif k == 3 then return ({ "true", "false", "null" })[rnd(3)]
      elseif k == 4 then return str()
      elseif k == 5 then return numbers[rnd(#numbers)]
      elseif k == 6 then
        local out = {}
        for i = 1, rnd(4) - 1 do out[i] = gen(depth + 1) end
        return "[" .. table.concat(out, ",") .. "]"
      end
      local out = {}
      for i = 1, rnd(5) - 1 do out[i] = str() .. ":" .. gen(depth + 1) end
      return "{" .. table.concat(out, ",") .. "}"
    end
    local decoded, declined = 0, 0
    local junk = { "", "\0", "\1", ",", "}", "]", "{", "[", '"', "\\", ":", "0", "x", "e", ".", "-" }
    for _ = 1, 3000 do
      local parts = {}
      for i = 1, rnd(6) - 1 do parts[i] = str() .. ":" .. gen(1) end
      local doc = "{" .. table.concat(parts, ",") .. "}"
      -- every generated document is decoded (nothing in it is declined)
      assert.is_table(core.json_object(doc), doc)
      local ok, why = agrees(doc)
      assert(ok, why)
      for _ = 1, 3 do
        local at = rnd(#doc)
        local cut = rnd(3) - 1
        local m = doc:sub(1, at - 1) .. junk[rnd(#junk)] .. doc:sub(at + cut)
        local good, what = agrees(m)
        assert(good, what)
        if what == "decoded" then decoded = decoded + 1 else declined = declined + 1 end
      end
    end
    -- both kinds of mutation outcome were met
    assert.is_true(decoded > 100 and declined > 100, decoded .. " / " .. declined)
  end)
end)
