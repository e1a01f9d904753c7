-- gauth.discovery: services, resources and request objects from a small
-- Discovery document made here; execute() and pages() over a transport
-- written in Lua in this file (a unit test of the retry, error and paging
-- logic: the HTTPS server tests come with the transport); build() with its
-- caches, over the same kind of transport (nothing leaves the process).

local cjson = require "cjson"
local discovery = require "gauth.discovery"
local regex = require "gauth.discovery.regex"
local errors = require "gauth.errors"
local helpers = require "helpers"

local function item_schema()
  return {
    id = "Item", type = "object",
    properties = {
      name = { type = "string" },
      tags = { type = "array", items = { type = "string" } },
      labels = { type = "object", additionalProperties = { type = "string" } },
      size = { type = "string", format = "int64" },
      ratio = { type = "number" },
      count = { type = "integer" },
      children = { type = "array", items = { ["$ref"] = "Item" } },
    },
  }
end

local function toy_doc()
  local project = { type = "string", location = "path", required = true,
                    pattern = "^[a-z][-a-z0-9]*$" }
  return {
    kind = "discovery#restDescription", name = "toy", version = "v1", id = "toy:v1",
    rootUrl = "https://toy.googleapis.com/", servicePath = "toy/v1/",
    parameters = {
      alt = { type = "string", location = "query", enum = { "json", "media" } },
      key = { type = "string", location = "query" },
      fields = { type = "string", location = "query" },
      prettyPrint = { type = "boolean", location = "query" },
      ["$.xgafv"] = { type = "string", location = "query", enum = { "1", "2" } },
    },
    auth = { oauth2 = { scopes = { ["https://www.googleapis.com/auth/cloud-platform"] = {} } } },
    schemas = {
      Item = item_schema(),
      ItemList = { type = "object", properties = {
        items = { type = "array", items = { ["$ref"] = "Item" } },
        nextPageToken = { type = "string" } } },
      SearchRequest = { type = "object", properties = {
        query = { type = "string" }, pageToken = { type = "string" } } },
      SearchResponse = { type = "object", properties = {
        results = { type = "array", items = { ["$ref"] = "Item" } },
        nextPageToken = { type = "string" } } },
    },
    resources = {
      items = {
        methods = {
          list = {
            id = "toy.items.list", path = "projects/{project}/items", httpMethod = "GET",
            parameterOrder = { "project" },
            parameters = {
              project = project,
              pageToken = { type = "string", location = "query" },
              maxResults = { type = "integer", location = "query", format = "int32" },
              filter = { type = "string", location = "query" },
              tag = { type = "string", location = "query", repeated = true },
              view = { type = "string", location = "query", repeated = true,
                       enum = { "BASIC", "FULL" } },
              deleted = { type = "boolean", location = "query" },
              ratio = { type = "number", location = "query" },
            },
            response = { ["$ref"] = "ItemList" },
          },
          get = {
            id = "toy.items.get", path = "v1/{+name}", httpMethod = "GET",
            parameterOrder = { "name" },
            parameters = { name = { type = "string", location = "path", required = true,
                                    pattern = "^projects/[^/]+/items/[^/]+$" } },
            response = { ["$ref"] = "Item" }, supportsMediaDownload = true,
          },
          insert = {
            id = "toy.items.insert", path = "projects/{project}/items", httpMethod = "POST",
            parameters = { project = project },
            request = { ["$ref"] = "Item" }, response = { ["$ref"] = "Item" },
          },
          delete = {
            id = "toy.items.delete", path = "projects/{project}/items/{item}",
            httpMethod = "DELETE",
            parameters = { project = project,
                           item = { type = "string", location = "path", required = true } },
          },
          search = {
            id = "toy.items.search", path = "items:search", httpMethod = "POST",
            request = { ["$ref"] = "SearchRequest" }, response = { ["$ref"] = "SearchResponse" },
          },
          ["import"] = { id = "toy.items.import", path = "items:import", httpMethod = "POST",
                         response = { ["$ref"] = "Item" } },
          ["end"] = { id = "toy.items.end", path = "items:end", httpMethod = "POST",
                      response = { ["$ref"] = "Item" } },
        },
        resources = {
          ["well-known"] = { methods = {
            get = { id = "toy.items.wellKnown.get", path = "well-known", httpMethod = "GET",
                    response = { ["$ref"] = "Item" } } } },
        },
      },
    },
  }
end

-- A transport that answers from a list and keeps what it was asked.
local function fake_http(answers)
  local t = { calls = {} }
  function t:request(req)
    local h = {}
    for k, v in pairs(req.headers or {}) do h[k] = v end
    self.calls[#self.calls + 1] = { method = req.method, url = req.url, body = req.body,
                                    headers = h, timeout = req.timeout }
    local a = table.remove(answers, 1)
    assert(a, "the fake transport has no answer left for " .. tostring(req.url))
    if a.err then return nil, a.err end
    return { status = a.status or 200, headers = a.headers or {}, body = a.body or "" }
  end
  return t
end

local function fake_creds()
  local c = { token = "tok-1", invalidated = 0 }
  function c:apply(h)
    h.authorization = "Bearer " .. self.token
    return h
  end
  function c:invalidate()
    self.invalidated = self.invalidated + 1
    self.token = "tok-" .. (self.invalidated + 1)
    return true
  end
  return c
end

local function query_of(uri)
  local t = {}
  for k, v in (uri:match("%?(.*)$") or ""):gmatch("([^&=]+)=([^&]*)") do
    t[#t + 1] = k .. "=" .. v
  end
  table.sort(t)
  return table.concat(t, "&")
end

local function raises(pattern, fn)
  local ok, err = pcall(fn)
  assert.is_false(ok, "expected an error matching " .. pattern)
  assert.matches(pattern, tostring(err))
  return err
end

describe("gauth.discovery", function()
  local svc, items

  before_each(function()
    svc = assert(discovery.build_from_document(toy_doc()))
    items = svc:items()
  end)

  describe("build_from_document", function()
    it("takes JSON text or its table", function()
      local s = assert(discovery.build_from_document(cjson.encode(toy_doc())))
      assert.equals("https://toy.googleapis.com/toy/v1/projects/p/items?alt=json",
                    s:items():list({ project = "p" }).uri)
    end)

    -- gauth.core maps libcurl, OpenSSL and some 30 libraries (about 8 MiB
    -- resident): issue 20's memory goal for compute v1 (make bench) holds
    -- only while building requests leaves it unloaded, until a send.
    it("builds services and requests without loading gauth.core (a child interpreter)", function()
      local script = helpers.tmpname("no-core", ".lua")
      helpers.write_file(script, ([[
        package.path = %q; package.cpath = %q
        local discovery = require "gauth.discovery"
        local s = assert(discovery.build_from_document(%q))
        local r = s:items():list({ project = "p" })
        io.write(r.uri, " ", tostring(package.loaded["gauth.core"]))
      ]]):format(package.path, package.cpath, cjson.encode(toy_doc())))
      local lua = os.getenv("GAUTH_LUA") or "lua5.4"
      local ok, out = helpers.sh(helpers.shell_quote(lua) .. " " .. helpers.shell_quote(script))
      assert.is_true(ok, out)
      assert.equals("https://toy.googleapis.com/toy/v1/projects/p/items?alt=json nil", out)
    end)

    it("returns nil and an error for malformed JSON or a document without rootUrl", function()
      local s, msg, err = discovery.build_from_document("{not json")
      assert.is_nil(s)
      helpers.assert_failure(msg, err, "discovery", "build")
      assert.is_true(errors.is(err))
      assert.equals("discovery", err.module)
      assert.matches("malformed JSON", tostring(err))
      s, msg, err = discovery.build_from_document({ name = "x" })
      assert.is_nil(s)
      helpers.assert_failure(msg, err)
      assert.matches("not a Discovery document", tostring(err))
    end)

    it("raises for arguments of the wrong type", function()
      raises("doc must be JSON text or a table", function() discovery.build_from_document(42) end)
      raises("opts must be a table", function() discovery.build_from_document({}, "x") end)
      raises("opts.credentials must have apply", function()
        discovery.build_from_document(toy_doc(), { credentials = {} })
      end)
      raises("opts.http must be a transport", function()
        discovery.build_from_document(toy_doc(), { http = {} })
      end)
    end)

    it("makes resources on first use and reuses them", function()
      local fresh = assert(discovery.build_from_document(toy_doc()))
      assert.is_nil(rawget(fresh, "items"))
      local r = fresh:items()
      assert.equals(r, fresh:items())
      assert.is_function(rawget(fresh, "items"))
      r = svc:items()
      assert.equals(r, svc:items())
      assert.is_function(rawget(svc, "items"))
      assert.equals(r:well_known(), r["well-known"](r))
      assert.matches("resource toy items", tostring(r))
    end)

    it("does not change the document it is given", function()
      local doc = toy_doc()
      local before = cjson.encode(doc)
      local s = assert(discovery.build_from_document(doc))
      s:items():list({ project = "p" })
      s:items():insert({ project = "p", body = { name = "n", tags = {} } })
      assert.equals(before, cjson.encode(doc))
    end)

    it("answers to googleapiclient's names and to Lua-safe ones", function()
      assert.equals(items.import, items.import_)          -- Python keyword
      assert.equals(items["end"], items.end_)             -- Lua keyword
      assert.equals("https://toy.googleapis.com/toy/v1/items:end?alt=json", items:end_().uri)
      assert.is_nil(items.nope)
    end)

    it("says so when a method is called with a dot", function()
      raises("call it with a colon", function() return items.list({ project = "p" }) end)
    end)
  end)

  describe("request objects", function()
    it("have method, uri, headers and body", function()
      local r = items:list({ project = "p", maxResults = 10, filter = "a = b" })
      assert.equals("GET", r.method)
      assert.equals("https://toy.googleapis.com/toy/v1/projects/p/items?filter=a+%3D+b&maxResults=10&alt=json",
                    r.uri)
      assert.is_nil(r.body)
      assert.same({
        accept = "application/json",
        ["accept-encoding"] = "gzip, deflate",
        ["user-agent"] = "gauth/" .. discovery._VERSION,
        ["x-goog-api-client"] = r.headers["x-goog-api-client"],
      }, r.headers)
      assert.matches("^gl%-lua/%S+ .*gauth/", r.headers["x-goog-api-client"])
    end)

    it("keep changes made to their headers", function()
      local r = items:list({ project = "p" })
      r.headers["x-extra"] = "1"
      assert.equals("1", r.headers["x-extra"])
    end)

    it("put the query in a fixed order whatever the table's order", function()
      local a = items:list({ project = "p", deleted = true, tag = "t", filter = "f", maxResults = 1 })
      local b = items:list({ maxResults = 1, filter = "f", tag = "t", deleted = true, project = "p" })
      assert.equals(a.uri, b.uri)
      assert.equals("https://toy.googleapis.com/toy/v1/projects/p/items"
                    .. "?deleted=true&filter=f&maxResults=1&tag=t&alt=json",
                    a.uri)
    end)

    it("encode like googleapiclient: {var}, {+var}, the query", function()
      local r = items:get({ name = "projects/a b/items/c?d#e%f+g@h:i" })
      assert.equals("https://toy.googleapis.com/toy/v1/v1/projects/a%20b/items/c?d#e%25f+g@h:i?alt=json",
                    r.uri)
      r = items:delete({ project = "p", item = "a/b c%+é" })
      assert.equals("https://toy.googleapis.com/toy/v1/projects/p/items/a%2Fb%20c%25%2B%C3%A9?", r.uri)
      r = items:list({ project = "p", filter = "x y/z?&=+é~" })
      assert.equals("filter=x+y%2Fz%3F%26%3D%2B%C3%A9~&alt=json", r.uri:match("%?(.*)$"))
    end)

    it("repeat the key of a repeated parameter, and check each element", function()
      local r = items:list({ project = "p", tag = { "a", "b c" }, view = { "BASIC", "FULL" } })
      assert.equals("alt=json&tag=a&tag=b+c&view=BASIC&view=FULL", query_of(r.uri))
      r = items:list({ project = "p", tag = {} })
      assert.equals("alt=json", query_of(r.uri))
      raises("view: value 'NOPE' is not one of: BASIC, FULL", function()
        items:list({ project = "p", view = { "BASIC", "NOPE" } })
      end)
    end)

    it("write values as googleapiclient does", function()
      local r = items:list({ project = "p", deleted = false, maxResults = " 007 ", ratio = 2 })
      assert.equals("alt=json&deleted=false&maxResults=7&ratio=2.0", query_of(r.uri))
      r = items:list({ project = "p", ratio = 1e-7, maxResults = -0 })
      assert.equals("alt=json&maxResults=0&ratio=1e-07", query_of(r.uri))
      assert.equals("alt=json&ratio=0.0", query_of(items:list({ project = "p", ratio = 0 }).uri))
      assert.equals("alt=json&ratio=-0.0", query_of(items:list({ project = "p", ratio = -0.0 }).uri))
    end)

    it("take the document's parameter names and googleapiclient's", function()
      local a = items:list({ project = "p", ["$.xgafv"] = "2" })
      local b = items:list({ project = "p", x__xgafv = "2" })
      assert.equals(a.uri, b.uri)
      assert.matches("%%24%.xgafv=2", a.uri)
      raises("given twice", function()
        items:list({ project = "p", ["$.xgafv"] = "2", x__xgafv = "1" })
      end)
    end)

    it("treat a JSON null as an absent parameter", function()
      local r = items:list({ project = "p", filter = cjson.null })
      assert.equals("https://toy.googleapis.com/toy/v1/projects/p/items?alt=json", r.uri)
      raises("project: missing required parameter", function()
        items:list({ project = cjson.null })
      end)
    end)

    it("send alt=json whatever alt the caller gives, after checking it", function()
      assert.equals("alt=json", query_of(items:list({ project = "p", alt = "media" }).uri))
      raises("alt: value 'xml'", function() items:list({ project = "p", alt = "xml" }) end)
    end)

    it("_media asks for alt=media and any type; no response schema: any type, no alt", function()
      local r = items:get_media({ name = "projects/p/items/i" })
      assert.equals("alt=media", query_of(r.uri))
      assert.equals("*/*", r.headers.accept)
      r = items:delete({ project = "p", item = "i" })
      assert.equals("*/*", r.headers.accept)
      assert.equals("DELETE", r.method)
    end)

    it("turn a GET longer than 2048 bytes into a POST with a form body", function()
      local long = string.rep("x", 2100)
      local r = items:list({ project = "p", filter = long })
      assert.equals("POST", r.method)
      assert.equals("https://toy.googleapis.com/toy/v1/projects/p/items", r.uri)
      assert.equals("filter=" .. long .. "&alt=json", r.body)
      assert.equals("GET", r.headers["x-http-method-override"])
      assert.equals("application/x-www-form-urlencoded", r.headers["content-type"])
      -- and keep paging it
      local n = items:list_next(r, { nextPageToken = "t2" })
      assert.equals("POST", n.method)
      assert.equals("filter=" .. long .. "&alt=json&pageToken=t2", n.body)
    end)

    it("raise, at the caller's line, naming the method and parameter", function()
      local err = raises("gauth%.discovery: toy%.items%.list: project: missing required parameter",
        function() local r = items:list({}) return r end)
      assert.matches("50%-discovery_build_spec%.lua:%d+:", err)
      raises("toy%.items%.list: bogus: unknown parameter", function()
        items:list({ project = "p", bogus = 1 })
      end)
      raises("project: value 'P' does not match the pattern", function()
        items:list({ project = "P" })
      end)
      raises("maxResults: expected an integer, got 1.5", function()
        items:list({ project = "p", maxResults = 1.5 })
      end)
      raises("deleted: expected a boolean, got string", function()
        items:list({ project = "p", deleted = "yes" })
      end)
      raises("filter: expected a string, got boolean", function()
        items:list({ project = "p", filter = true })
      end)
      raises("filter: expected a single value", function()
        items:list({ project = "p", filter = { "a" } })
      end)
      raises("parameters must be a table", function() items:list("p") end)
      raises("body: unknown parameter", function() items:list({ project = "p", body = {} }) end)
    end)

    it("check values again once the memo tables were emptied", function()
      for i = 1, 1200 do items:list({ project = "p" .. i, filter = "f" .. i }) end
      assert.equals("https://toy.googleapis.com/toy/v1/projects/p7/items?filter=f7&alt=json",
                    items:list({ project = "p7", filter = "f7" }).uri)
      raises("does not match", function() items:list({ project = "P7" }) end)
    end)
  end)

  describe("request bodies", function()
    it("are JSON with [] where the schema has an array and {} for objects", function()
      local body = { name = "n", tags = {}, labels = {}, children = { { tags = {} } } }
      local r = items:insert({ project = "p", body = body })
      assert.equals("application/json", r.headers["content-type"])
      assert.matches('"tags":%[%]', r.body)
      assert.matches('"labels":{}', r.body)
      assert.matches('"children":%[{"tags":%[%]}%]', r.body)
      assert.equals("{}", items:insert({ project = "p", body = {} }).body)
    end)

    it("keep numbers exact past cjson's 14 digits and leave the caller's tables as they were", function()
      local body = { count = 2^53, ratio = 1 / 3, size = "12345678901234567890", tags = {} }
      local r = items:insert({ project = "p", body = body })
      assert.matches('"count":9007199254740992[,}]', r.body)
      assert.equals(1 / 3, tonumber(r.body:match('"ratio":([^,}]+)')))
      assert.equals(2^53, body.count)
      assert.is_nil(getmetatable(body.tags))
      assert.same({}, body.tags)
    end)

    it("raise for a body that is not a table, or that cannot be JSON", function()
      raises("body: expected a table, got string", function()
        items:insert({ project = "p", body = "{}" })
      end)
      local b = { name = "x" }
      b.children = { b }
      raises("body: nested too deeply", function() items:insert({ project = "p", body = b }) end)
      raises("body: cannot be encoded", function()
        items:insert({ project = "p", body = { f = function() end } })
      end)
    end)

    it("are wrapped in {data: ...} for documents with the dataWrapper feature", function()
      local doc = toy_doc()
      doc.features = { "dataWrapper" }
      local s = assert(discovery.build_from_document(doc))
      local r = s:items():insert({ project = "p", body = { name = "n" } })
      assert.same({ data = { name = "n" } }, cjson.decode(r.body))
    end)
  end)

  describe("options", function()
    it("api_endpoint replaces rootUrl and servicePath", function()
      local s = assert(discovery.build_from_document(toy_doc(), { api_endpoint = "http://127.0.0.1:8080/x" }))
      assert.equals("http://127.0.0.1:8080/x/projects/p/items?alt=json", s:items():list({ project = "p" }).uri)
    end)

    it("universe_domain replaces googleapis.com", function()
      local s = assert(discovery.build_from_document(toy_doc(), { universe_domain = "example.goog" }))
      assert.equals("https://toy.example.goog/toy/v1/projects/p/items?alt=json",
                    s:items():list({ project = "p" }).uri)
    end)

    it("quota_project, user_agent and api_key go into every request", function()
      local s = assert(discovery.build_from_document(toy_doc(), {
        quota_project = "billed", user_agent = "app/1.0", api_key = "k y" }))
      local r = s:items():list({ project = "p", key = "ignored" })
      assert.equals("billed", r.headers["x-goog-user-project"])
      assert.equals("gauth/" .. discovery._VERSION .. " app/1.0", r.headers["user-agent"])
      assert.equals("alt=json&key=k+y", query_of(r.uri))
    end)

    it("scopes credentials that ask for scopes to the document's, as googleapiclient does", function()
      local scoped
      local creds = fake_creds()
      creds.requires_scopes = true
      function creds.with_scopes(_, list)
        scoped = list
        local c = fake_creds()
        c.token = "scoped"
        return c
      end
      local http = fake_http({ { body = "{}" } })
      local s = assert(discovery.build_from_document(toy_doc(), { credentials = creds, http = http }))
      s:items():list({ project = "p" }):execute()
      assert.same({ "https://www.googleapis.com/auth/cloud-platform" }, scoped)
      assert.equals("Bearer scoped", http.calls[1].headers.authorization)
      creds.requires_scopes, scoped = nil, nil
      assert(discovery.build_from_document(toy_doc(), { credentials = creds }))
      assert.is_nil(scoped)
    end)

    it("opts are checked", function()
      raises("opts.quota_project must be a non%-empty string", function()
        discovery.build_from_document(toy_doc(), { quota_project = "" })
      end)
      raises("opts.num_retries must be a number", function()
        discovery.build_from_document(toy_doc(), { num_retries = "3" })
      end)
      raises("execute: opts.timeout must be a number", function()
        items:list({ project = "p" }):execute({ timeout = -1 })
      end)
      raises("execute: opts.deadline must be a number", function()
        items:list({ project = "p" }):execute({ deadline = "1" })
      end)
      raises("execute: opts must be a table", function()
        items:list({ project = "p" }):execute(5)
      end)
    end)
  end)

  describe("paging", function()
    it("<method>_next puts the token in the query, or returns nil", function()
      local r = items:list({ project = "p", pageToken = "old", filter = "f" })
      local n = items:list_next(r, { nextPageToken = "n e/w" })
      assert.equals("alt=json&filter=f&pageToken=n+e%2Fw", query_of(n.uri))
      assert.is_nil(items:list_next(n, { items = {} }))
      assert.is_nil(items:list_next(n, { nextPageToken = "" }))
      raises("expects the previous request", function() items:list_next({}, { nextPageToken = "x" }) end)
    end)

    it("<method>_next finds the query after a path that holds '?' ({+var})", function()
      local doc = toy_doc()
      doc.resources.things = { methods = { list = {
        id = "toy.things.list", path = "v1/{+parent}/things", httpMethod = "GET",
        parameters = { parent = { type = "string", location = "path", required = true },
                       pageToken = { type = "string", location = "query" } },
        response = { ["$ref"] = "ItemList" } } } }
      local things = assert(discovery.build_from_document(doc)):things()
      local r = things:list({ parent = "a?pageToken=x", pageToken = "old" })
      assert.equals("https://toy.googleapis.com/toy/v1/v1/a?pageToken=x/things?pageToken=old&alt=json", r.uri)
      local n = things:list_next(r, { nextPageToken = "new" })
      assert.equals("https://toy.googleapis.com/toy/v1/v1/a?pageToken=x/things?alt=json&pageToken=new", n.uri)
      -- and with a plain path, where the first "?" starts the query
      r = items:list({ project = "p", pageToken = "old" })
      n = items:list_next(r, { nextPageToken = "new" })
      assert.equals("https://toy.googleapis.com/toy/v1/projects/p/items?alt=json&pageToken=new", n.uri)
    end)

    it("<method>_next puts the token in the body when the parameters have none", function()
      local r = items:search({ body = { query = "q", pageToken = "old" } })
      local n = items:search_next(r, { nextPageToken = "t2" })
      assert.same({ query = "q", pageToken = "t2" }, cjson.decode(n.body))
      assert.equals(r.uri, n.uri)
    end)

    it("is not offered by methods without a page token", function()
      assert.is_nil(items.get_next)
      raises("has no page token", function() items:get({ name = "projects/p/items/i" }):pages() end)
    end)
  end)

  describe("execute", function()
    local function svc_with(answers, opts)
      local http = fake_http(answers)
      opts = opts or {}
      opts.http = http
      local s = assert(discovery.build_from_document(toy_doc(), opts))
      return s:items(), http
    end
    local slept
    local function sleep(s) slept[#slept + 1] = s end
    local function half() return 0.5 end
    before_each(function() slept = {} end)

    it("sends the request with the credentials' headers and decodes the answer", function()
      local creds = fake_creds()
      local it_, http = svc_with({ { body = '{"items":[{"name":"a"}]}' } }, { credentials = creds })
      local req = it_:list({ project = "p" })
      local resp, err = req:execute({ timeout = 5 })
      assert.is_nil(err)
      assert.same({ items = { { name = "a" } } }, resp)
      local c = http.calls[1]
      assert.equals("GET", c.method)
      assert.equals(req.uri, c.url)
      assert.equals("Bearer tok-1", c.headers.authorization)
      assert.equals("application/json", c.headers.accept)
      assert.equals(5, c.timeout)
      assert.is_nil(rawget(req, "headers"), "the request's own headers were not needed")
    end)

    it("returns {} for an empty 2xx body and the text for methods without a response schema", function()
      local it_ = svc_with({ { status = 204 }, { status = 200, body = "raw bytes" }, { status = 200 } })
      assert.same({}, it_:list({ project = "p" }):execute())
      assert.equals("raw bytes", it_:delete({ project = "p", item = "i" }):execute())
      assert.same({}, it_:list({ project = "p" }):execute())
    end)

    it("sends the body and the headers as changed on the request", function()
      local it_, http = svc_with({ { body = '{"name":"n"}' } })
      local req = it_:insert({ project = "p", body = { name = "n" } })
      req.headers["x-extra"] = "1"
      assert.same({ name = "n" }, req:execute())
      assert.equals('{"name":"n"}', http.calls[1].body)
      assert.equals("1", http.calls[1].headers["x-extra"])
      assert.equals("application/json", http.calls[1].headers["content-type"])
    end)

    it("returns Google's error as a gauth error with its fields", function()
      local body = cjson.encode({ error = { code = 404, message = "Item x not found",
        status = "NOT_FOUND", errors = { { reason = "notFound", message = "m" } },
        details = { { ["@type"] = "t" } } } })
      local it_ = svc_with({ { status = 404, body = body } }, { api_key = "secret" })
      local resp, msg, err = it_:list({ project = "p" }):execute()
      assert.is_nil(resp)
      helpers.assert_failure(msg, err)
      assert.is_true(errors.is(err))
      assert.equals("discovery", err.module)
      assert.equals("toy.items.list", err.step)
      assert.equals(404, err.status)
      assert.equals("notFound", err.reason)
      assert.equals("Item x not found", err.message)
      assert.same({ { ["@type"] = "t" } }, err.details)
      assert.equals(body, err.body)
      assert.is_false(err.retryable)
      assert.not_matches("secret", err.uri)
      assert.equals("gauth.discovery: toy.items.list: Item x not found (HTTP 404 notFound) ["
                    .. err.uri .. "]", tostring(err))
    end)

    it("takes error.status as the reason when there is no errors list", function()
      local it_ = svc_with({ { status = 400, body = '{"error":{"message":"bad","status":"INVALID_ARGUMENT"}}' } })
      local _, msg, err = it_:list({ project = "p" }):execute()
      helpers.assert_failure(msg, err)
      assert.equals("INVALID_ARGUMENT", err.google_status)
      assert.equals("bad", err.message)
    end)

    it("retries 5xx for a GET by default, with backoff, and stops after 3 retries", function()
      local it_, http = svc_with({ { status = 503 }, { status = 500 }, { status = 200, body = "{}" } })
      assert.same({}, it_:list({ project = "p" }):execute({ sleep = sleep, random = half }))
      assert.equals(3, #http.calls)
      assert.same({ 0.75, 1.5 }, slept)
      slept = {}
      it_, http = svc_with({ { status = 503 }, { status = 503 }, { status = 503 }, { status = 503 } })
      local resp, msg, err = it_:list({ project = "p" }):execute({ sleep = sleep, random = half })
      assert.is_nil(resp)
      helpers.assert_failure(msg, err)
      assert.equals(503, err.status)
      assert.equals(4, #http.calls)
      assert.equals(3, #slept)
    end)

    it("does not retry a POST unless num_retries is given", function()
      local it_, http = svc_with({ { status = 503 } })
      local _, msg, err = it_:insert({ project = "p", body = {} }):execute({ sleep = sleep })
      helpers.assert_failure(msg, err)
      assert.equals(503, err.status)
      assert.equals(1, #http.calls)
      it_, http = svc_with({ { status = 503 }, { status = 200, body = '{"name":"x"}' } })
      assert.same({ name = "x" }, it_:insert({ project = "p", body = {} }):execute({
        sleep = sleep, num_retries = 1, random = half }))
      assert.equals(2, #http.calls)
    end)

    it("honours Retry-After on a 429", function()
      local it_ = svc_with({ { status = 429, headers = { ["retry-after"] = "7" } }, { body = "{}" } })
      assert.same({}, it_:list({ project = "p" }):execute({ sleep = sleep }))
      assert.same({ 7 }, slept)
    end)

    it("retries a 403 for rate limits only", function()
      local rate = '{"error":{"code":403,"message":"slow down","errors":[{"reason":"userRateLimitExceeded"}]}}'
      local denied = '{"error":{"code":403,"message":"no","errors":[{"reason":"forbidden"}]}}'
      local it_, http = svc_with({ { status = 403, body = rate }, { body = "{}" } })
      assert.same({}, it_:list({ project = "p" }):execute({ sleep = sleep, random = half }))
      assert.equals(2, #http.calls)
      it_, http = svc_with({ { status = 403, body = denied } })
      local _, msg, err = it_:list({ project = "p" }):execute({ sleep = sleep })
      helpers.assert_failure(msg, err)
      assert.equals("forbidden", err.reason)
      assert.equals(1, #http.calls)
    end)

    it("refreshes the credentials once after a 401", function()
      local creds = fake_creds()
      local it_, http = svc_with({ { status = 401 }, { body = '{"ok":true}' } }, { credentials = creds })
      assert.same({ ok = true }, it_:list({ project = "p" }):execute({ sleep = sleep }))
      assert.equals(1, creds.invalidated)
      assert.equals("Bearer tok-1", http.calls[1].headers.authorization)
      assert.equals("Bearer tok-2", http.calls[2].headers.authorization)
      assert.same({}, slept)
      creds = fake_creds()
      it_ = svc_with({ { status = 401 }, { status = 401 } }, { credentials = creds })
      local _, msg, err = it_:list({ project = "p" }):execute({ sleep = sleep })
      helpers.assert_failure(msg, err)
      assert.equals(401, err.status)
      assert.equals(1, creds.invalidated)
    end)

    it("retries transport errors marked retryable, and returns the others", function()
      local down = errors.new("http", "request", "connection refused", { retryable = true })
      local bad = errors.new("http", "request", "bad certificate", { retryable = false })
      local it_, http = svc_with({ { err = down }, { body = "{}" } })
      assert.same({}, it_:list({ project = "p" }):execute({ sleep = sleep, random = half }))
      assert.equals(2, #http.calls)
      it_ = svc_with({ { err = bad } })
      local _, msg, err = it_:list({ project = "p" }):execute({ sleep = sleep })
      helpers.assert_failure(msg, err)
      assert.equals("discovery", err.module)
      assert.matches("bad certificate", tostring(err))
    end)

    it("returns an error for a 2xx body that is not JSON, and for failing credentials", function()
      local it_ = svc_with({ { body = "<html>" } })
      local _, msg, err = it_:list({ project = "p" }):execute()
      helpers.assert_failure(msg, err)
      assert.matches("malformed JSON response", tostring(err))
      local creds = { apply = function() return nil, errors.new("service_account", "token", "no key") end }
      it_ = svc_with({}, { credentials = creds })
      _, msg, err = it_:list({ project = "p" }):execute()
      helpers.assert_failure(msg, err)
      assert.equals("discovery", err.module)
      assert.matches("no key", tostring(err))
    end)

    it("pages() walks every page, by query token or body token", function()
      local it_, http = svc_with({
        { body = '{"items":[1],"nextPageToken":"b"}' },
        { body = '{"items":[2],"nextPageToken":"c"}' },
        { body = '{"items":[3]}' },
      })
      local got = {}
      local req = it_:list({ project = "p" })
      for page, extra in req:pages() do
        assert.is_nil(extra)
        got[#got + 1] = page.items[1]
      end
      assert.same({ 1, 2, 3 }, got)
      assert.is_nil(req.last_error)
      assert.is_nil(req.last_message)
      assert.matches("pageToken=c", http.calls[3].url)
      it_, http = svc_with({
        { body = '{"results":[],"nextPageToken":"t2"}' }, { body = '{"results":[]}' } })
      local n = 0
      for page in it_:search({ body = { query = "q" } }):pages() do
        n = n + 1
        assert.is_table(page)
      end
      assert.equals(2, n)
      assert.same({ query = "q", pageToken = "t2" }, cjson.decode(http.calls[2].body))
    end)

    it("pages() never gives the body false: a failure ends it, left in req.last_error;"
       .. " it stops on a repeated token", function()
      local it_ = svc_with({ { body = '{"nextPageToken":"b"}' }, { status = 404, body = "" },
                             { body = '{"items":[9]}' } })
      local seen = {}
      local req = it_:list({ project = "p" })
      for page in req:pages({ sleep = sleep }) do
        assert.is_table(page)
        seen[#seen + 1] = "page"
      end
      assert.same({ "page" }, seen)
      helpers.assert_failure(req.last_message, req.last_error, "discovery", "toy.items.list")
      assert.equals(404, req.last_error.status)
      -- a new walk clears them
      for _ in req:pages() do seen[#seen + 1] = "again" end
      assert.same({ "page", "again" }, seen)
      assert.is_nil(req.last_error)
      assert.is_nil(req.last_message)
      local http
      it_, http = svc_with({ { body = '{"nextPageToken":"same"}' }, { body = '{"nextPageToken":"same"}' } })
      local pages = 0
      for _ in it_:list({ project = "p" }):pages() do pages = pages + 1 end
      assert.equals(2, pages)
      assert.equals(2, #http.calls)
    end)
  end)

  describe("build", function()
    local dir, doc_text
    before_each(function()
      discovery.clear_cache()
      dir = os.tmpname()
      os.remove(dir)
      doc_text = cjson.encode(toy_doc())
    end)
    after_each(function()
      os.execute("rm -rf '" .. dir .. "'")
    end)

    local URL = "https://discovery.test/{api}/{apiVersion}/rest"

    it("fetches the document, then takes it from the process's cache", function()
      local http = fake_http({ { body = doc_text } })
      local s = assert(discovery.build("toy", "v1", { http = http, discovery_url = URL, cache_dir = dir }))
      assert.equals("https://discovery.test/toy/v1/rest", http.calls[1].url)
      assert.equals("GET", http.calls[1].method)
      assert.matches("/items%?alt=json$", s:items():list({ project = "p" }).uri)
      assert(discovery.build("toy", "v1", { http = http, discovery_url = URL, cache_dir = dir }))
      assert.equals(1, #http.calls)
    end)

    it("reads the disk cache, refetches a stale or corrupt file, and writes it whole", function()
      local http = fake_http({ { body = doc_text }, { body = doc_text }, { body = doc_text } })
      local opts = { http = http, discovery_url = URL, cache_dir = dir }
      assert(discovery.build("toy", "v1", opts))
      discovery.clear_cache()
      assert(discovery.build("toy", "v1", opts))                 -- from disk
      assert.equals(1, #http.calls)
      local p = io.popen("ls '" .. dir .. "'")
      local files = p:read("*a")
      p:close()
      assert.not_matches("%.tmp%.", files)
      local file = dir .. "/" .. files:match("(%S+)")
      discovery.clear_cache()
      opts.cache_max_age = -1                                   -- everything is stale
      assert(discovery.build("toy", "v1", opts))
      assert.equals(2, #http.calls)
      opts.cache_max_age = nil
      local f = assert(io.open(file, "wb"))
      f:write("gauth-discovery-cache 1 " .. os.time() .. "\n{broken")
      f:close()
      discovery.clear_cache()
      assert(discovery.build("toy", "v1", opts))
      assert.equals(3, #http.calls)
      f = assert(io.open(file, "rb"))
      assert.matches('"rootUrl"', f:read("*a"))
      f:close()
    end)

    it("discovery_url: a placeholder other than {api} and {apiVersion} is an error, nothing fetched", function()
      local http = fake_http({ { body = doc_text } })
      local s, msg, err = discovery.build("toy", "v1", { http = http, cache = false,
        discovery_url = "https://discovery.test/{api}/{version}/rest" })
      assert.is_nil(s)
      assert.equals("gauth.discovery: discovery_url: unknown placeholder {version} in "
        .. "https://discovery.test/{api}/{version}/rest (known: {api}, {apiVersion})", msg)
      assert.equals("discovery", err.module)
      assert.equals("discovery_url", err.step)
      assert.equals(0, #http.calls)
      -- A template with no placeholder at all is one fixed document URL.
      http = fake_http({ { body = doc_text } })
      assert(discovery.build("toy", "v1", { http = http, cache = false,
        discovery_url = "https://discovery.test/toy.json" }))
      assert.equals("https://discovery.test/toy.json", http.calls[1].url)
    end)

    it("tries the next URL after a 404 and reports an unknown API when all say 404", function()
      local http = fake_http({ { status = 404 }, { body = doc_text } })
      assert(discovery.build("toy", "v1", { http = http, cache = false,
        discovery_url = { URL, "https://second.test/{api}?version={apiVersion}" } }))
      assert.equals("https://second.test/toy?version=v1", http.calls[2].url)
      http = fake_http({ { status = 404 } })
      local s, msg, err = discovery.build("nope", "v9", { http = http, cache = false, discovery_url = URL })
      assert.is_nil(s)
      helpers.assert_failure(msg, err)
      assert.equals(404, err.status)
      assert.matches("unknown API or version: nope v9", tostring(err))
    end)

    it("returns other failures as errors and caches nothing with cache = false", function()
      local http = fake_http({ { status = 500, body = "oops" } })
      local s, msg, err = discovery.build("toy", "v1", { http = http, cache_dir = dir, discovery_url = URL })
      assert.is_nil(s)
      helpers.assert_failure(msg, err)
      assert.equals(500, err.status)
      http = fake_http({ { body = "not json" } })
      s, msg, err = discovery.build("toy", "v1", { http = http, cache = false, discovery_url = URL })
      assert.is_nil(s)
      helpers.assert_failure(msg, err)
      assert.matches("not a Discovery document", tostring(err))
      http = fake_http({ { body = doc_text }, { body = doc_text } })
      assert(discovery.build("toy", "v1", { http = http, cache = false, discovery_url = URL }))
      assert(discovery.build("toy", "v1", { http = http, cache = false, discovery_url = URL }))
      assert.equals(2, #http.calls)
    end)

    it("raises for arguments of the wrong type", function()
      raises("api must be a non%-empty string", function() discovery.build(nil, "v1") end)
      raises("version must be a non%-empty string", function() discovery.build("x", 1) end)
    end)
  end)
end)

describe("gauth.discovery.regex", function()
  -- answers of Python's re.match, recorded from /usr/bin/python3
  local CASES = {
    { "^projects/[^/]+$", { ["projects/p"] = true, ["projects/p/x"] = false, ["projects/"] = false,
      ["projects/p\n"] = true, ["xprojects/p"] = false, ["projects/é日"] = true } },
    { "[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?", { a = true, Ab = false, ["a-b-"] = true, ["9a"] = false,
      [""] = false, ["é"] = false } },
    { "(?:(?:[-a-z0-9]{1,63}\\.)*(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?):)?"
      .. "(?:[0-9]{1,19}|(?:[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?))",
      { ["my-project"] = true, ["example.com:my-project"] = true, ["-foo.bar:1"] = true, P = false,
        ["123"] = true, [":x"] = false } },
    { "\\w[\\w.-]{0,254}", { ["é"] = true, ["€x"] = false, _ = true, ["-a"] = false, ["日本"] = true,
      ["😀"] = false } },
    { "^.*$", { ["a\nb"] = false, [""] = true, abc = true, ["a\n"] = true } },
    { "(a|ab)(c|bcd)(d*)$", { abcd = true, abcdd = true, ac = true, abd = false } },
    { "x{2,3}y", { xxy = true, xy = false, xxxxy = false } },
    { "(a?){3}b", { b = true, ab = true, aaab = true, aaaab = false } },
    { "[^/]{2}$", { ["é/"] = false, ["éé"] = true, ab = true, ["a/"] = false } },
  }

  it("matches as Python's re.match does", function()
    for _, c in ipairs(CASES) do
      local m = assert(regex.compile(c[1]))
      for value, want in pairs(c[2]) do
        assert.equals(want, m(value), c[1] .. " on " .. value)
      end
    end
  end)

  -- Every pattern of the shared documents, on values made from its own
  -- characters (so that many match and many just miss), judged by Python's
  -- re.match itself: gauth drops what a pattern's end may leave out and
  -- scans character runs with Lua patterns, and neither may change one
  -- answer.
  it("agrees with Python's re.match on every pattern of the shared documents", function()
    local dir = helpers.discovery_dir()
    local patterns, seen = {}, {}
    local function walk(t)
      for k, v in pairs(t) do
        if k == "pattern" and type(v) == "string" and not seen[v] then
          seen[v] = true
          patterns[#patterns + 1] = v
        elseif type(v) == "table" then
          walk(v)
        end
      end
    end
    local p = io.popen("ls " .. helpers.shell_quote(dir) .. "/*.json")
    for path in p:lines() do walk(cjson.decode(helpers.read_file(path))) end
    p:close()
    table.sort(patterns)
    assert.is_true(#patterns > 50, "patterns found: " .. #patterns)

    -- A fixed pseudo-random sequence: the same values on every run.
    local seed = 12345
    local function rnd(n)
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed % n + 1
    end
    local EXTRA = { "a", "Z", "0", "9", "-", "/", ".", ":", "_", " ", "\n", "é", "日" }
    local cases = {}
    for _, pat in ipairs(patterns) do
      -- the pattern's own literal runs ("projects/", "locations") and
      -- characters, and a few others
      local pieces = {}
      for lit in pat:gmatch("[%w/_:.-]+") do pieces[#pieces + 1] = lit end
      for ch in pat:gmatch("[%w/_:.-]") do pieces[#pieces + 1] = ch end
      for _, e in ipairs(EXTRA) do pieces[#pieces + 1] = e end
      local values = { "", "a", "abc-1", "projects/p", "x/y/z" }
      for _ = 1, 40 do
        local v, n = {}, rnd(8) - 1
        for j = 1, n do v[j] = pieces[rnd(#pieces)] end
        values[#values + 1] = table.concat(v)
      end
      -- near misses: the literal runs in their order, with fillers
      -- between them that fit, break or double the separators
      local runs = {}
      for lit in pat:gmatch("[%w_-][%w/_.-]*/?") do runs[#runs + 1] = lit end
      local FILL = { "", "p", "x1", "/", "//", "a/b", "-", ".", "p/", "/q", "é" }
      for _ = 1, 30 do
        local v = {}
        for _, r in ipairs(runs) do
          if rnd(8) > 1 then v[#v + 1] = r end
          v[#v + 1] = FILL[rnd(#FILL)]
        end
        values[#values + 1] = table.concat(v)
      end
      cases[#cases + 1] = { pattern = pat, values = values }
    end
    local input = helpers.tmpname("rx", ".json")
    helpers.write_file(input, cjson.encode(cases))
    local script = [==[
import json, re, sys
cases = json.load(open(sys.argv[1]))
out = []
for c in cases:
    try:
        r = re.compile(c["pattern"])
    except re.error:
        out.append(None)
        continue
    out.append([r.match(v) is not None for v in c["values"]])
print(json.dumps(out))
]==]
    local py = helpers.tmpname("rx", ".py")
    helpers.write_file(py, script)
    local f = io.popen(helpers.python .. " " .. helpers.shell_quote(py) .. " "
                       .. helpers.shell_quote(input))
    local answers = cjson.decode(f:read("*a"))
    f:close()
    local compared, mismatches = 0, {}
    for i, c in ipairs(cases) do
      local m = regex.compile(c.pattern)
      local want = answers[i]
      if m and want ~= cjson.null then
        for j, v in ipairs(c.values) do
          compared = compared + 1
          if m(v) ~= want[j] then
            mismatches[#mismatches + 1] = ("%q on %q: python %s"):format(c.pattern, v, tostring(want[j]))
          end
        end
      end
    end
    assert.same({}, mismatches)
    assert.is_true(compared > 40 * 50, "values compared: " .. compared)
  end)

  it("returns nil for syntax it does not have", function()
    for _, p in ipairs({ "(?=a)", "(a)\\1", "(?i)a", "a++", "[a", "(a", "*a" }) do
      local m, err = regex.compile(p)
      assert.is_nil(m, p)
      assert.is_string(err)
    end
  end)
end)

describe("discovery.document", function()
  it("gives the document a service or resource was built from", function()
    local doc = toy_doc()
    local svc = assert(discovery.build_from_document(doc))
    assert.are.equal(doc.name, discovery.document(svc).name)
    assert.are.equal(discovery.document(svc), discovery.document(svc:items()))
  end)

  it("raises for anything else", function()
    assert.has_error(function() discovery.document({}) end,
      "gauth.discovery: document: not a service or resource object")
    assert.has_error(function() discovery.document(nil) end,
      "gauth.discovery: document: not a service or resource object")
  end)
end)
