--- The Discovery service of gauth's emulator: the directory
-- (`/discovery/v1/apis`), each document's `.../rest`, and the per-host
-- `$discovery/rest?version=` form. Methods of the emulator's state
-- (`gauth.emulator.google`). Internal.
-- @module gauth.emulator.discovery

local httpd = require "gauth.emulator.httpd"
local common = require "gauth.emulator.common"

local pairs = pairs
local ipairs = ipairs
local sort = table.sort
local match = string.match

local JSON_TYPE = common.JSON_TYPE
local reply = common.reply
local reply_json = common.reply_json
local google_error = common.google_error
local method_not_allowed = common.method_not_allowed

local _M = { _VERSION = "0.1.0" }

-- ------------------------------------------------------------------------
-- Discovery

function _M.discovery(self, req, entry)
  entry.endpoint = "discovery"
  if req.method ~= "GET" then return method_not_allowed("GET") end
  local path = req.path
  local key
  if path == "/discovery/v1/apis" or path == "/discovery/v1/apis/" then
    local items, keys = {}, {}
    for k in pairs(self.documents) do keys[#keys + 1] = k end
    sort(keys)
    for _, k in ipairs(keys) do
      local d = self.documents[k]
      items[#items + 1] = {
        kind = "discovery#directoryItem", id = d.name .. ":" .. d.version,
        name = d.name, version = d.version, title = d.title,
        description = d.description,
        discoveryRestUrl = self.url .. "/discovery/v1/apis/" .. k .. "/rest",
        preferred = false,
      }
    end
    return reply_json(200, { kind = "discovery#directoryList",
                             discoveryVersion = "v1", items = items })
  end
  local api, version = match(path, "^/discovery/v1/apis/([^/]+)/([^/]+)/rest$")
  if api then
    key = httpd.unescape(api) .. "/" .. httpd.unescape(version)
  elseif path == "/$discovery/rest" and req.query.version then
    -- Google's per-API host form; on one host, the version must say which.
    local found
    for k, d in pairs(self.documents) do
      if d.version == req.query.version then
        if found then found = false break end
        found = k
      end
    end
    key = found or nil
  end
  entry.document = key
  local doc = key and self.doc_json[key]
  if not doc then
    return reply_json(404, google_error(404, "NOT_FOUND",
      "Requested entity was not found.", "notFound"))
  end
  return reply(200, doc, JSON_TYPE)
end

return _M
