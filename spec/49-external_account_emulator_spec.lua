-- The emulator's STS and generateAccessToken (gauth-emulator --federation):
-- an external_account configuration pointed at it works, and what Google
-- would refuse (a subject token signed by another key, an AWS request signed
-- with another secret, a workforce pool without userProject) is refused.
local helpers = require "helpers"
local ea = require "gauth.external_account"
local emulator = require "gauth.emulator"
local token_cache = require "gauth.token_cache"

local AUD = "//iam.googleapis.com/projects/42/locations/global/workloadIdentityPools/p/providers/oidc"
local AWS_AUD = "//iam.googleapis.com/projects/42/locations/global/workloadIdentityPools/p/providers/aws"
local WF_AUD = "//iam.googleapis.com/locations/global/workforcePools/w/providers/x"
local JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
local AK, SK = "AKIAEMULATOR00001", "emulator/secret+key"
local SA = "runner@emu-project.iam.gserviceaccount.com"

describe("gauth.emulator federation", function()
  local emu, key, other

  lazy_setup(function()
    helpers.install_loopback_guard()
    key = helpers.make_rsa_key()
    other = helpers.make_rsa_key()
    emu = assert(emulator.start({ federation = { oidc_public_keys = { key.public_pem },
      aws_keys = { [AK] = SK }, service_accounts = { SA } } }))
  end)

  lazy_teardown(function()
    emu:stop()
    helpers.remove_loopback_guard()
  end)

  local function subject(k)
    local now = os.time()
    local p = helpers.tmpname("emu-subject", ".txt")
    helpers.write_file(p, helpers.pyjwt_encode({ iss = "https://i.example", sub = "s",
      iat = now, exp = now + 600 }, (k or key).private_pem))
    return p
  end

  local function creds(extra, opts)
    local c = { type = "external_account", audience = AUD, subject_token_type = JWT_TYPE,
                token_url = emu.url .. "/v1/token", credential_source = { file = subject() } }
    for k, v in pairs(extra or {}) do c[k] = v end
    opts = opts or {}
    opts.cache, opts.retry = token_cache.new(), false
    return assert(ea.from_info(c, opts))
  end

  it("exchanges a subject token signed by the given key, and impersonates an allowed account", function()
    local tok = (creds():token())
    assert.matches("^ya29%.emu%-", tok)
    local imp = creds({ service_account_impersonation_url = emu.url
      .. "/v1/projects/-/serviceAccounts/" .. SA .. ":generateAccessToken" })
    local t2 = imp:token()
    assert.matches("^ya29%.emu%-", t2)
    assert.are_not.equal(tok, t2)
  end)

  it("verifies AWS signatures with the secret it was given", function()
    local cs = { environment_id = "aws1", regional_cred_verification_url = ea.AWS_VERIFICATION_URL }
    local env = { AWS_REGION = "us-east-1", AWS_ACCESS_KEY_ID = AK, AWS_SECRET_ACCESS_KEY = SK }
    local c = creds({ audience = AWS_AUD, subject_token_type = "urn:ietf:params:aws:token-type:aws4_request",
                      credential_source = cs }, { env = env })
    assert.matches("^ya29%.emu%-", (c:token()))
    env.AWS_SECRET_ACCESS_KEY = "not-the-secret"
    local d = creds({ audience = AWS_AUD, subject_token_type = "urn:ietf:params:aws:token-type:aws4_request",
                      credential_source = cs }, { env = env })
    local tok, msg, err = d:token()
    assert.is_nil(tok)
    assert.matches("^gauth%.external_account: STS: invalid_grant: The AWS signature does not match%.", msg)
    assert.equal("STS", err.step)
  end)

  it("refuses what Google refuses", function()
    local tok, msg, err = creds({ credential_source = { file = subject(other) } }):token()
    assert.is_nil(tok)
    assert.matches("STS: invalid_grant: The given subject token is invalid", msg)
    assert.equal("invalid_grant", err.oauth_error)
    assert.equal(400, err.status)
    assert.equal(false, err.retryable)
    tok, msg = creds({ audience = WF_AUD }):token()
    assert.is_nil(tok)
    assert.matches("STS: invalid_request: userProject is required", msg)
    tok, msg, err = creds({ service_account_impersonation_url = emu.url
      .. "/v1/projects/-/serviceAccounts/other@x.iam.gserviceaccount.com:generateAccessToken" }):token()
    assert.is_nil(tok)
    assert.matches("^gauth%.external_account: impersonation: .*denied", msg)
    assert.equal("impersonation", err.step)
  end)
end)
