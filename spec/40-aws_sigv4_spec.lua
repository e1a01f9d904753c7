-- AWS SigV4 (gauth.aws_sigv4 over gauth.core's HMAC-SHA256): AWS's published
-- test suite (vendored from botocore with its license, every case run) and
-- botocore itself as an independent signer of gauth's own requests.
local helpers = require "spec.helpers"
local core = require "gauth.core"
local sigv4 = require "gauth.aws_sigv4"
local cjson = require "cjson"

local SUITE = helpers.support_dir .. "/aws4_testsuite"
local SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"

-- Every case folder of the suite (those holding a .req file).
local function cases()
  local list = {}
  local p = io.popen("cd " .. helpers.shell_quote(SUITE) .. " && find . -name '*.req' | sort")
  for line in p:lines() do
    list[#list + 1] = line:gsub("^%./", ""):gsub("/[^/]+%.req$", "")
  end
  p:close()
  return list
end

-- The raw request of a case: request line, headers (a line starting with
-- white space continues the value before it), blank line, body.
local function parse_req(text)
  text = text:gsub("\r\n", "\n")
  local head, body = text:match("^(.-)\n\n(.*)$")
  if not head then head, body = text, "" end
  local lines = {}
  for l in (head .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = l end
  local method, target = lines[1]:match("^(%u+) (.*) HTTP/1%.1$")
  local headers = {}
  for i = 2, #lines do
    local l = lines[i]
    if l == "" then -- luacheck: ignore 542
      -- the file's final newline
    elseif l:match("^%s") then
      headers[#headers][2] = headers[#headers][2] .. "\n" .. l
    else
      local k, v = l:match("^([^:]+):(.*)$")
      assert(k, "not a header line: [" .. l .. "]")
      headers[#headers + 1] = { k, v }
    end
  end
  local host
  for _, h in ipairs(headers) do if h[1]:lower() == "host" then host = h[2] end end
  return { method = method, url = "https://" .. host .. target, headers = headers, body = body }
end

local function trim_nl(s) return (s:gsub("\r", ""):gsub("\n$", "")) end

describe("gauth.aws_sigv4", function()
  it("core.hmac_sha256 gives RFC 4231's vectors", function()
    assert.are.equal("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
      sigv4.hex(core.hmac_sha256(string.rep("\11", 20), "Hi There")))
    assert.are.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
      sigv4.hex(core.hmac_sha256("Jefe", "what do ya want for nothing?")))
    assert.are.equal("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
      sigv4.hex(core.hmac_sha256(string.rep("\170", 131),
        "Test Using Larger Than Block-Size Key - Hash Key First")))
    assert.has_error(function() core.hmac_sha256("k") end,
      "bad argument #2 to 'hmac_sha256' (string expected, got no value)")
  end)

  it("reproduces every case of AWS's SigV4 test suite", function()
    local list = cases()
    assert.is_true(#list >= 30)
    for _, name in ipairs(list) do
      local base = SUITE .. "/" .. name .. "/" .. name:match("[^/]+$")
      local req = parse_req(helpers.read_file(base .. ".req"))
      local creq_want = trim_nl(helpers.read_file(base .. ".creq"))
      local token = creq_want:match("\nx%-amz%-security%-token:([^\n]*)")
      local sreq = helpers.read_file(base .. ".sreq")
      local after = not token and sreq:match("X%-Amz%-Security%-Token:([^\r\n]*)")
      local signed = assert(sigv4.sign(req,
        { access_key_id = "AKIDEXAMPLE", secret_access_key = SECRET,
          session_token = token or after or nil },
        { region = "us-east-1", service = "service", amz_date = "20150830T123600Z",
          sign_token = not after }))
      assert.are.equal(creq_want, signed.canonical_request, name .. ": canonical request")
      assert.are.equal(trim_nl(helpers.read_file(base .. ".sts")), signed.string_to_sign,
                       name .. ": string to sign")
      assert.are.equal(trim_nl(helpers.read_file(base .. ".authz")), signed.authorization,
                       name .. ": authorization")
    end
  end)

  it("signs as botocore does (an independent implementation)", function()
    local reqs = {
      { method = "POST", url = "https://sts.us-east-1.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
        headers = { { "x-goog-cloud-target-resource",
          "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/providers/aws" } },
        session_token = "FwoGZXIvYXdzE//token+with/odd=chars", region = "us-east-1", service = "sts" },
      { method = "POST", url = "https://sts.eu-west-3.amazonaws.com/?Version=2011-06-15&Action=GetCallerIdentity",
        headers = { { "Content-Type", "application/x-www-form-urlencoded" } },
        body = "a=b&c=d", region = "eu-west-3", service = "sts" },
      { method = "GET", url = "https://ec2.ap-south-1.amazonaws.com/some path/x?b=2&a=1&c=%20x",
        headers = { { "X-Custom", "  spaced   value " } }, region = "ap-south-1", service = "ec2" },
    }
    local input, ours = {}, {}
    for i, r in ipairs(reqs) do
      local ak = "AKIA" .. sigv4.hex(core.random_bytes(8)):upper()
      local sk = core.b64_encode(core.random_bytes(30))
      local amz = sigv4.amz_date(1700000000 + i * 86399)
      local s = assert(sigv4.sign(r, { access_key_id = ak, secret_access_key = sk,
                                       session_token = r.session_token },
                                  { region = r.region, service = r.service, amz_date = amz }))
      ours[i] = s
      input[i] = { method = r.method, url = r.url, headers = r.headers, body = r.body or "",
                   access_key_id = ak, secret_access_key = sk, session_token = r.session_token,
                   region = r.region, service = r.service, amz_date = amz }
    end
    local tmp = helpers.tmpname("sigv4", ".json")
    helpers.write_file(tmp, cjson.encode(input))
    local p = io.popen(helpers.python .. " " .. helpers.support_dir .. "/botocore_sigv4.py < " .. tmp .. " 2>&1")
    local out = p:read("*a"); p:close()
    local theirs = cjson.decode(out)
    for i = 1, #reqs do
      assert.are.equal(theirs[i].canonical_request, ours[i].canonical_request)
      assert.are.equal(theirs[i].string_to_sign, ours[i].string_to_sign)
      assert.are.equal(theirs[i].authorization, ours[i].authorization)
    end
  end)

  it("fails without credentials, region or a date, naming what is missing and no secret", function()
    local req = { method = "GET", url = "https://sts.amazonaws.com/" }
    local v, msg, err = sigv4.sign(req, { access_key_id = "AK" , secret_access_key = "" },
                                   { region = "r", service = "s", now = 0 })
    assert.is_nil(v)
    assert.are.equal("gauth.aws_sigv4: credentials: access_key_id and secret_access_key are required", msg)
    assert.are.same({ "aws_sigv4", "credentials" }, { err.module, err.step })
    v, msg, err = sigv4.sign(req, { access_key_id = "AK", secret_access_key = "SECRETKEY" },
                             { service = "s", now = 0 })
    assert.is_nil(v)
    assert.are.equal("gauth.aws_sigv4: options: region is required", msg)
    assert.are.equal("options", err.step)
    v, msg = sigv4.sign(req, { access_key_id = "AK", secret_access_key = "SECRETKEY" },
                        { region = "r", service = "s" })
    assert.is_nil(v)
    assert.matches("now or amz_date", msg)
    assert.is_nil(msg:find("SECRETKEY", 1, true))
    assert.has_error(function() sigv4.sign(nil, {}, {}) end, "gauth.aws_sigv4: sign: req needs method and url")
  end)
end)
