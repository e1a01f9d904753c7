-- `gauth sign-url` (gauth.cli in-process): URLs that the Python stand-in
-- (storage_ref.py: cryptography, not gauth) accepts with the key's public
-- half, --method POST signing x-goog-resumable: start, --expires units,
-- --header, and usage errors (exit 2) naming what is wrong.
local helpers = require "helpers"
local judges = require "support.judges"
local cli = require "gauth.cli"

local function buffer()
  local b = { parts = {} }
  function b:write(...) for _, s in ipairs({ ... }) do self.parts[#self.parts + 1] = tostring(s) end end
  function b:text() return table.concat(self.parts) end
  return b
end

local function run(argv)
  local out, err = buffer(), buffer()
  local code = cli.main(argv, { stdout = out, stderr = err })
  return code, out:text(), err:text()
end

local function params(url)
  local p = {}
  for k, v in url:gmatch("[?&]([^=&]+)=([^&]*)") do p[k] = v end
  return p
end

describe("gauth sign-url", function()
  local key_file, info

  lazy_setup(function()
    key_file, info = helpers.make_service_account_file()
  end)

  it("prints signed URLs the stand-in accepts: GET by default, POST with x-goog-resumable, headers", function()
    local cases = {
      { argv = { "sign-url", "gs://my-bucket/dir/a file+1.txt", "--key-file", key_file },
        method = "GET", expires = "3600", signed = "host" },
      { argv = { "sign-url", "gs://my-bucket/up.bin", "--method", "post", "--expires", "10m",
                 "--key-file", key_file },
        method = "POST", expires = "600", signed = "host%3Bx-goog-resumable",
        headers = { ["x-goog-resumable"] = "start" } },
      { argv = { "sign-url", "gs://my-bucket/put.txt", "--method", "PUT", "--expires", "7d",
                 "--header", "Content-Type: text/plain", "--header", "x-goog-meta-a:b",
                 "--key-file", key_file },
        method = "PUT", expires = "604800", signed = "content-type%3Bhost%3Bx-goog-meta-a",
        headers = { ["content-type"] = "text/plain", ["x-goog-meta-a"] = "b" } },
      { argv = { "sign-url", "gs://b/o", "--expires", "90s", "--key-file", key_file,
                 "--api-endpoint", "http://127.0.0.1:9000" },
        method = "GET", expires = "90", signed = "host", prefix = "http://127.0.0.1:9000/b/o?" },
    }
    local checks = {}
    for i, c in ipairs(cases) do
      local code, out, err = run(c.argv)
      assert.equal(0, code, err)
      assert.equal("", err)
      local url = out:gsub("\n$", "")
      local p = params(url)
      assert.equal(c.expires, p["X-Goog-Expires"])
      assert.equal(c.signed, p["X-Goog-SignedHeaders"])
      if c.prefix then assert.equal(c.prefix, url:sub(1, #c.prefix)) end
      checks[i] = { method = c.method, url = url, headers = c.headers, public_pem = info.public_pem,
                    now = os.time() }
    end
    for i, r in ipairs(judges.py_storage_check(checks)) do
      assert.is_true(r.ok, i .. ": " .. tostring(r.reason))
    end
  end)

  it("fails with exit 2 and a message for bad arguments", function()
    local cases = {
      { { "sign-url" }, "gauth sign-url needs one gs://BUCKET/OBJECT" },
      { { "sign-url", "s3://b/o" }, "expected gs://BUCKET/OBJECT, got s3://b/o" },
      { { "sign-url", "gs://b/o", "--expires", "10y" }, "--expires must be seconds" },
      { { "sign-url", "gs://b/o", "--expires", "8d" }, "expires must be at most 604800 seconds" },
      { { "sign-url", "gs://b/o", "--method", "PATCH" }, "method must be GET, PUT, POST, DELETE or HEAD" },
      { { "sign-url", "gs://b/o", "--header", "novalue" }, "--header must be NAME:VALUE" },
      { { "sign-url", "gs://b/o", "--scopes", "x" }, "--scopes does not apply to gauth sign-url" },
    }
    for _, c in ipairs(cases) do
      local argv = c[1]
      argv[#argv + 1] = "--key-file"
      argv[#argv + 1] = key_file
      local code, out, err = run(argv)
      assert.equal(2, code, err)
      assert.equal("", out)
      assert.truthy(err:find(c[2], 1, true), err)
      assert.matches("^gauth: ", err)
    end
  end)

  it("fails with exit 1 when the credentials cannot sign", function()
    local user = helpers.make_authorized_user_file()
    local code, out, err = run({ "sign-url", "gs://b/o", "--key-file", user })
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("^gauth: gauth%.storage: signing: the credentials cannot sign", err)
    assert.is_nil(err:find(helpers.USER.refresh_token, 1, true))
  end)
end)
