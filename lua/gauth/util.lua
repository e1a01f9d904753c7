--- Deprecated: the old home of gauth's small helpers, kept so that code
-- outside gauth that required it keeps working until 1.0. Each helper now
-- lives in a module named for what it is, under `gauth.lib` (leaves that
-- require nothing of gauth's Lua):
--
-- * `gauth.lib.ngx_phase`: `is_ngx`, `can_yield`, `nonblocking` (was
--   `nonblocking_phase`), `refusal` (was `phase_refusal`)
-- * `gauth.lib.time`: `now`, `sleep`
-- * `gauth.lib.seam`: `get` (was `seam`)
-- * `gauth.lib.lru`: `new` (was `lru`)
-- * `gauth.lib.sys`: `getenv`, `read_file`
-- * `gauth.lib.json`: `decode`, `encode`, `null`, `empty_array_mt` (were
--   `json_decode`, `json_encode`, `json_null`, `empty_array_mt`)
-- * `gauth.lib.url`: `encode`, `form_encode`, `parse`, `is_loopback_host`
--   (were `url_encode`, `form_encode`, `parse_url`, `is_loopback_host`)
-- * `gauth.lib.http_header`: `value_ok` (was `header_value_ok`)
--
-- `check_credentials_url` is `gauth.request`'s, loaded when first called.
-- Nothing in gauth requires this module.
-- @module gauth.util

local ngx_phase = require "gauth.lib.ngx_phase"
local time = require "gauth.lib.time"
local seam = require "gauth.lib.seam"
local lru = require "gauth.lib.lru"
local sys = require "gauth.lib.sys"
local json = require "gauth.lib.json"
local url = require "gauth.lib.url"
local http_header = require "gauth.lib.http_header"

return {
  _VERSION = "0.1.0",
  is_ngx = ngx_phase.is_ngx,
  can_yield = ngx_phase.can_yield,
  nonblocking_phase = ngx_phase.nonblocking,
  phase_refusal = ngx_phase.refusal,
  now = time.now,
  sleep = time.sleep,
  seam = seam.get,
  lru = lru.new,
  getenv = sys.getenv,
  read_file = sys.read_file,
  json_decode = json.decode,
  json_encode = json.encode,
  json_null = json.null,
  empty_array_mt = json.empty_array_mt,
  url_encode = url.encode,
  form_encode = url.form_encode,
  parse_url = url.parse,
  is_loopback_host = url.is_loopback_host,
  header_value_ok = http_header.value_ok,
  -- gauth.request requires gauth.errors and gauth.metrics: not at load.
  check_credentials_url = function(...)
    return require("gauth.request").check_credentials_url(...)
  end,
}
