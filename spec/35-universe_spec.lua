-- gauth.universe: the one universe-domain rule (issue 20). Discovery's
-- execute, media and batch refuse credentials of another universe through
-- `check`; key files, storage, downscoped, API keys and the metadata-based
-- types read `DEFAULT` and `is_domain`. End-to-end refusals are in specs
-- 34 (execute), 60 (media) and 61 (batch); these are the rule's own cases.

local helpers = require "helpers"
local errors = require "gauth.errors"
local universe = require "gauth.universe"

-- A stand-in for metadata-based credentials: universe learned on demand.
local function learning(answer, fail)
  local c = { reads = 0 }
  function c.get_universe_domain(self)
    self.reads = self.reads + 1
    if fail then return errors.fail("compute_engine", "metadata request", fail) end
    self.universe_domain = answer
    return answer
  end
  return c
end

describe("gauth.universe", function()
  it("DEFAULT is Google's universe and the modules share it", function()
    assert.equal("googleapis.com", universe.DEFAULT)
    assert.equal("GOOGLE_CLOUD_UNIVERSE_DOMAIN", universe.ENV)
    assert.equal(universe.DEFAULT, require("gauth.storage").DEFAULT_UNIVERSE)
    assert.equal(universe.DEFAULT, require("gauth.external_account").DEFAULT_UNIVERSE_DOMAIN)
    assert.equal(universe.DEFAULT, require("gauth.discovery.common").DEFAULT_UNIVERSE)
    assert.equal(universe.DEFAULT, require("gauth.service_account").DEFAULT_UNIVERSE)
    assert.equal(universe.DEFAULT, require("gauth.authorized_user").DEFAULT_UNIVERSE)
    assert.equal(universe.DEFAULT, require("gauth.iam").DEFAULT_UNIVERSE)
    assert.equal(universe.DEFAULT,
                 require("gauth.external_account_authorized_user").DEFAULT_UNIVERSE_DOMAIN)
    assert.equal("https://sts." .. universe.DEFAULT .. "/v1/token", require("gauth.sts").token_url())
  end)

  describe("is_domain", function()
    it("accepts domain names", function()
      assert.is_true(universe.is_domain("googleapis.com"))
      assert.is_true(universe.is_domain("example.goog"))
      assert.is_true(universe.is_domain("s3nsapis.fr"))
      assert.is_true(universe.is_domain("localhost"))
    end)

    it("refuses what is not one", function()
      assert.is_false(universe.is_domain(""))
      assert.is_false(universe.is_domain(".example.goog"))
      assert.is_false(universe.is_domain("-example.goog"))
      assert.is_false(universe.is_domain("example.goog/evil"))
      assert.is_false(universe.is_domain("example goog"))
      assert.is_false(universe.is_domain(("a"):rep(254)))
      assert.is_false(universe.is_domain(nil))
      assert.is_false(universe.is_domain(42))
    end)
  end)

  describe("is_dotted_domain", function()
    it("accepts dotted domain names", function()
      assert.is_true(universe.is_dotted_domain("googleapis.com"))
      assert.is_true(universe.is_dotted_domain("s3nsapis.fr"))
      assert.is_true(universe.is_dotted_domain("a-b.example.goog"))
    end)

    it("refuses single labels, a trailing dot or hyphen, and what is_domain refuses", function()
      assert.is_false(universe.is_dotted_domain("localhost"))
      assert.is_false(universe.is_dotted_domain("example.goog."))
      assert.is_false(universe.is_dotted_domain("example.goog-"))
      assert.is_false(universe.is_dotted_domain(".example.goog"))
      assert.is_false(universe.is_dotted_domain("example.goog/evil"))
      assert.is_false(universe.is_dotted_domain(("a."):rep(127) .. "a"))
      assert.is_false(universe.is_dotted_domain(nil))
    end)
  end)

  describe("configured", function()
    local function env_of(t) return function(name) return t[name] end end

    it("takes the option, else the environment, else the default", function()
      local env = env_of({ GOOGLE_CLOUD_UNIVERSE_DOMAIN = "env.goog" })
      assert.equal("opt.goog", universe.configured("opt.goog", env))
      assert.equal("env.goog", universe.configured(nil, env))
      assert.equal("googleapis.com", universe.configured(nil, env_of({})))
    end)

    it("counts an empty variable as unset", function()
      assert.equal("googleapis.com",
                   universe.configured(nil, env_of({ GOOGLE_CLOUD_UNIVERSE_DOMAIN = "" })))
    end)
  end)

  describe("known", function()
    it("is the credentials' field when they have one", function()
      assert.equal("example.goog", universe.known({ universe_domain = "example.goog" }))
    end)

    it("is nil when it would take the network to learn", function()
      assert.is_nil(universe.known({}))
      assert.is_nil(universe.known({ universe_domain = "" }))
      assert.is_nil(universe.known(learning("example.goog")))
    end)
  end)

  describe("of", function()
    it("reads the field, else asks the credentials, else the default", function()
      local v, msg, err = universe.of({ universe_domain = "example.goog" })
      assert.equal("example.goog", v)
      assert.is_nil(msg)
      assert.is_nil(err)
      local c = learning("metadata.goog")
      assert.equal("metadata.goog", universe.of(c))
      assert.equal("metadata.goog", universe.of(c))
      assert.equal(1, c.reads)
      assert.equal("googleapis.com", universe.of({}))
    end)

    it("fails with the credentials' error when they cannot learn it", function()
      local v, msg, err = universe.of(learning(nil, "connection refused"))
      assert.is_nil(v)
      helpers.assert_failure(msg, err, "compute_engine", "metadata request")
      assert.equal("gauth.compute_engine: metadata request: connection refused", msg)
    end)
  end)

  describe("check", function()
    it("passes credentials of the service's universe and remembers it", function()
      local c = learning("example.goog")
      local svc = { credentials = c, universe = "example.goog" }
      local ok, msg, err = universe.check(svc, "discovery", "toy.items.get")
      assert.is_true(ok)
      assert.is_nil(msg)
      assert.is_nil(err)
      assert.equal(c, svc.universe_ok)
      assert.is_true(universe.check(svc, "discovery", "toy.items.get"))
      assert.equal(1, c.reads)
      assert.is_true(universe.check({ universe = "example.goog" }, "batch", "execute"))
    end)

    it("refuses credentials of another universe", function()
      local svc = { credentials = { universe_domain = "googleapis.com" }, universe = "example.goog" }
      local ok, msg, err = universe.check(svc, "media", "upload")
      assert.is_nil(ok)
      helpers.assert_failure(msg, err, "media", "upload")
      assert.equal("universe_mismatch", err.kind)
      assert.equal("example.goog", err.service_universe)
      assert.equal("googleapis.com", err.credentials_universe)
      assert.is_false(err.retryable)
      assert.matches("does not match the universe domain of its credentials", msg, 1, true)
      assert.is_nil(svc.universe_ok)
    end)

    it("fails, not retryable, when the credentials cannot learn their universe", function()
      local svc = { credentials = learning(nil, "timed out"), universe = "googleapis.com" }
      local ok, msg, err = universe.check(svc, "batch", "execute")
      assert.is_nil(ok)
      helpers.assert_failure(msg, err, "batch", "execute")
      assert.matches("cannot learn the credentials' universe domain: timed out", msg, 1, true)
      assert.is_false(err.retryable)
    end)
  end)
end)
