--- Resources: the objects a service hands out, made on first use, with
-- their methods answering to the document's names and googleapiclient's.
-- Internal.
-- @module gauth.discovery.resource

local common = require "gauth.discovery.common"
local names_mod = require "gauth.discovery.names"
local body_mod = require "gauth.discovery.body"
local method = require "gauth.discovery.method"

local type = type
local pairs = pairs
local tostring = tostring
local setmetatable = setmetatable
local getmetatable = getmetatable
local rawget = rawget
local rawset = rawset
local require = require
local sub = string.sub

local EMPTY = common.EMPTY
local resource_mt, colon_error = common.resource_mt, common.colon_error
local py_name, lua_name = names_mod.py_name, names_mod.lua_name
local properties_of = body_mod.properties_of
local find_page_token = method.find_page_token
local prepare, compile_builder, next_request = method.prepare, method.compile_builder, method.next_request

local _M = {}

local function new_resource(svc, desc, path)
  return setmetatable({ _svc = svc, _desc = desc, _path = path }, resource_mt)
end

-- Every name a resource answers to -> { kind, name }.
local function names_of(desc, svc)
  local names = {}
  local function add(alias, e)
    names[alias] = e
  end
  local function add_all(name, e)
    add(name, e); add(py_name(name), e); add(lua_name(name), e)
    local ln = lua_name(py_name(name))
    add(ln, e)
  end
  -- googleapiclient sets methods, then resources (which win), then _next
  for mname, mdesc in pairs(type(desc.methods) == "table" and desc.methods or EMPTY) do
    add_all(mname, { kind = "method", name = mname })
    if type(mdesc) == "table" and mdesc.supportsMediaDownload then
      add_all(mname .. "_media", { kind = "media", name = mname })
    end
  end
  for rname in pairs(type(desc.resources) == "table" and desc.resources or EMPTY) do
    add_all(rname, { kind = "resource", name = rname })
  end
  for mname, mdesc in pairs(type(desc.methods) == "table" and desc.methods or EMPTY) do
    if type(mdesc) == "table" then
      local rt = find_page_token(properties_of(svc, mdesc, "response"))
      if rt and (find_page_token(mdesc.parameters)
                 or find_page_token(properties_of(svc, mdesc, "request"))) then
        add_all(mname .. "_next", { kind = "next", name = mname })
      end
    end
  end
  return names
end

resource_mt.__index = function(self, key)
  if type(key) ~= "string" then return nil end
  local names = rawget(self, "_names")
  if not names then
    names = names_of(rawget(self, "_desc"), rawget(self, "_svc"))
    rawset(self, "_names", names)
  end
  local e = names[key]
  if not e then
    -- googleapiclient gives the root resource new_batch_http_request(); a
    -- method or resource of that name in the document would win
    if key == "new_batch_http_request" and rawget(self, "_path") == "" then
      local svc = rawget(self, "_svc")
      local fn = function(s, opts)
        if getmetatable(s) ~= resource_mt then colon_error(key) end
        return require("gauth.batch").new(svc, opts)
      end
      rawset(self, key, fn)
      return fn
    end
    return nil
  end
  local fn = e.fn
  if not fn then
    local svc, desc = rawget(self, "_svc"), rawget(self, "_desc")
    local kind, name = e.kind, e.name
    if kind == "resource" then
      local child
      fn = function(s)
        if getmetatable(s) ~= resource_mt then colon_error(name) end
        if not child then
          child = new_resource(svc, desc.resources[name], rawget(self, "_path") .. name .. ".")
        end
        return child
      end
    elseif kind == "method" or kind == "media" or kind == "next" then
      -- a method and its _next share one prepared spec
      local specs = rawget(self, "_specs")
      if not specs then specs = {}; rawset(self, "_specs", specs) end
      local skey = (kind == "media" and "media " or "") .. name
      local spec = specs[skey]
      if not spec then
        spec = prepare(svc, desc.methods[name], name, kind == "media" and "media" or nil)
        specs[skey] = spec
      end
      if kind == "next" then
        fn = function(s, prev_req, prev_resp)
          if getmetatable(s) ~= resource_mt then colon_error(spec.id) end
          return next_request(spec, prev_req, prev_resp)
        end
      else
        fn = compile_builder(spec)
        if kind == "method" and desc.methods[name].mediaUpload ~= nil then
          -- media_body / media_mime_type: the upload is gauth.media's
          fn = require("gauth.media").wrap_builder(fn, desc.methods[name])
        end
      end
    end
    e.fn = fn
  end
  rawset(self, key, fn)
  return fn
end

resource_mt.__tostring = function(self)
  local svc = rawget(self, "_svc")
  local path = rawget(self, "_path")
  return "gauth.discovery resource " .. tostring(svc.name) ..
         (path ~= "" and (" " .. sub(path, 1, -2)) or "")
end

_M.new_resource = new_resource

return _M
