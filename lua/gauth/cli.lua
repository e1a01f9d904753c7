--- The `gauth` command: access tokens, API calls and the Discovery cache
-- from the shell.
--
--     gauth token [--key-file F] [--scopes a,b] [--subject S]
--     gauth token --id-token --audience A [--key-file F]
--     gauth call API VERSION resource.method [name=value ...] [--body JSON|@file]
--                [--dry-run] [--discovery-url URL] [--api-endpoint URL]
--                [--cache-dir D] [--key-file F] [--scopes a,b] [--subject S]
--     gauth sign-url gs://BUCKET/OBJECT [--method M] [--expires T] [--header K:V]
--     gauth discovery fetch API VERSION [--cache-dir D] [--discovery-url URL]
--     gauth verify [--audience A] [--iap] [--certs-url URL] [TOKEN|-]
--
-- `bin/gauth` is `os.exit(require("gauth.cli").main(arg))`; `main` returns
-- the exit code instead of exiting so that it can also run in-process
-- (specs). Exit codes: 0 success, 1 a failure at run time (network, token
-- endpoint, API error), 2 a usage error (unknown option or command, bad
-- parameter, unknown API method).
--
-- Output: stdout carries the result only (a token, a JSON response, a
-- request); every error is one line `gauth: <message>` on stderr. No token
-- is ever printed but the one `gauth token` is asked for.
-- @module gauth.cli

local errors = require "gauth.errors"
local json = require "gauth.lib.json"
local sys = require "gauth.lib.sys"

local type = type
local pairs = pairs
local next = next
local rawget = rawget
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local upper = string.upper
local lower = string.lower
local error = error
local pcall = pcall
local require = require
local setmetatable = setmetatable
local getmetatable = getmetatable
local find = string.find
local sub = string.sub
local gsub = string.gsub
local match = string.match
local format = string.format
local byte = string.byte
local rep = string.rep
local concat = table.concat
local sort = table.sort
local floor = math.floor
local huge = math.huge

local _M = { _VERSION = "0.1.0" }

--- The text of `gauth --help`.
_M.USAGE = [[
usage: gauth [--ca-file F] <command> [options]

  gauth token [--key-file F] [--scopes S1,S2] [--subject USER]
  gauth token --id-token --audience AUD [--key-file F]
      Print an access token (or with --id-token a Google-signed ID token for
      AUD) on stdout. --key-file: a service-account key (or any credentials
      file ADC reads); without it, Application Default Credentials.
      Scopes default to cloud-platform; a scope without "://" is short for
      https://www.googleapis.com/auth/<scope>.

  gauth call API VERSION RESOURCE.METHOD [NAME=VALUE ...] [options]
      Call an API method through its Discovery document and print the JSON
      response. Nested resources as projects.locations.get; a repeated
      parameter may be given more than once (NAME=a NAME=b).
        --body JSON|@FILE|@-  request body (JSON text, a file, or stdin)
        --dry-run             print the request (method, URI, headers,
                              body) instead of sending it; no token fetched
        --discovery-url URL   Discovery URL template ({api}, {apiVersion})
        --api-endpoint URL    send requests here instead of rootUrl
        --cache-dir D         Discovery cache directory
        --media FILE          upload FILE (methods with a media upload)
        --media-type TYPE     its MIME type (default: from its name)
        --output FILE         download the media into FILE (methods with
                              a media download); a progress bar on stderr
                              when it is a terminal, for uploads too
        --key-file F, --scopes S, --subject USER  as for `gauth token`

  gauth sign-url gs://BUCKET/OBJECT [--method M] [--expires T] [--header K:V]
      Print a Cloud Storage V4 signed URL for the object. --method GET (the
      default), PUT, POST (starts a resumable upload: x-goog-resumable:
      start is added to the signed headers), DELETE or HEAD; --expires
      seconds or 30s/10m/2h/7d (default 1h, at most 7d); --header (more
      than once) signs a header the request must then send. --key-file F
      (else ADC) signs; --api-endpoint URL replaces storage.googleapis.com.

  gauth discovery fetch API VERSION [--cache-dir D] [--discovery-url URL]
      Fetch a Discovery document into the cache (for machines that must not
      fetch at run time); prints where.

  gauth verify [--audience AUD] [--iap] [--certs-url URL] [TOKEN|-]
      Verify a Google-signed ID token (from stdin when TOKEN is - or
      missing) and print its claims; exit 1 and say which check failed when
      it is not valid. Without --audience the audience is not checked (said
      on stderr). --iap: an IAP assertion (IAP's keys and issuer, ES256);
      otherwise Google's OAuth 2.0 keys and issuers. --certs-url: another
      key set (PEM certificates by kid, or a JWK Set), e.g. the emulator's.

  --ca-file F     trust this PEM CA bundle instead of the system's
  -h, --help      this text
  --version       print the version

Exit status: 0 success, 1 failure, 2 usage error.
]]

local CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
local SCOPE_PREFIX = "https://www.googleapis.com/auth/"
-- OpenID Connect scopes are bare words, not URLs.
local BARE_SCOPES = { openid = true, email = true, profile = true }

-- -------------------------------------------------------------------------
-- Leaving early: die() raises an exit object that main() turns into the
-- message and the code; anything else raised is a bug, reported as such.

local exit_mt = {}

local function die(code, msg)
  error(setmetatable({ code = code, msg = msg }, exit_mt), 0)
end

local function usage(msg)
  die(2, tostring(msg) .. " (try gauth --help)")
end

local function failed(err)
  die(1, tostring(err))
end

-- "file.lua:12: message" -> "message": a raised error's position means
-- nothing to a shell user.
local function strip_position(msg)
  msg = tostring(msg)
  return (gsub(msg, "^[^:\n]*:%d+: ", ""))
end

-- -------------------------------------------------------------------------
-- Arguments

-- Every option: does it take a value, and the field it fills.
local OPTIONS = {
  ["--key-file"] = { value = true, field = "key_file" },
  ["--scopes"] = { value = true, field = "scopes", list = true },
  ["--subject"] = { value = true, field = "subject" },
  ["--id-token"] = { field = "id_token" },
  ["--audience"] = { value = true, field = "audience" },
  ["--body"] = { value = true, field = "body" },
  ["--dry-run"] = { field = "dry_run" },
  ["--discovery-url"] = { value = true, field = "discovery_url" },
  ["--api-endpoint"] = { value = true, field = "api_endpoint" },
  ["--cache-dir"] = { value = true, field = "cache_dir" },
  ["--output"] = { value = true, field = "output" },
  ["--media"] = { value = true, field = "media" },
  ["--media-type"] = { value = true, field = "media_type" },
  ["--ca-file"] = { value = true, field = "ca_file" },
  ["--method"] = { value = true, field = "method" },
  ["--expires"] = { value = true, field = "expires" },
  ["--header"] = { value = true, field = "header", list = true },
  ["--iap"] = { field = "iap" },
  ["--certs-url"] = { value = true, field = "certs_url" },
  ["--help"] = { field = "help" },
  ["-h"] = { field = "help" },
  ["--version"] = { field = "version" },
}

-- The options each command takes (global ones: all of them).
local GLOBAL = { ca_file = true, help = true, version = true }
local ALLOWED = {
  token = { key_file = true, scopes = true, subject = true, id_token = true,
            audience = true },
  call = { key_file = true, scopes = true, subject = true, body = true,
           dry_run = true, discovery_url = true, api_endpoint = true,
           cache_dir = true, output = true, media = true, media_type = true },
  discovery = { cache_dir = true, discovery_url = true },
  ["sign-url"] = { key_file = true, method = true, expires = true, header = true,
                   api_endpoint = true },
  verify = { audience = true, iap = true, certs_url = true },
}

-- argv -> options table, positional arguments. Options may come anywhere
-- (before or after the command); "--" ends them; "--name=value" works too.
local function parse(argv)
  local opts, pos, seen = {}, {}, {}
  local n = #argv
  local i = 1
  local only_positional = false
  while i <= n do
    local a = argv[i]
    if type(a) ~= "string" then
      error("gauth.cli: main: argv must be an array of strings", 0)
    end
    if only_positional or sub(a, 1, 1) ~= "-" or a == "-" then
      pos[#pos + 1] = a
    elseif a == "--" then
      only_positional = true
    else
      local name, inline = match(a, "^(%-%-[%w-]+)=(.*)$")
      name = name or a
      local o = OPTIONS[name]
      if not o then usage("unknown option " .. name) end
      local v = true
      if o.value then
        if inline ~= nil then
          v = inline
        else
          i = i + 1
          v = argv[i]
          if v == nil then usage(name .. " needs a value") end
        end
        if v == "" then usage(name .. " needs a non-empty value") end
      elseif inline ~= nil then
        usage(name .. " takes no value")
      end
      if o.list then
        local list = opts[o.field] or {}
        list[#list + 1] = v
        opts[o.field] = list
      else
        if seen[o.field] and o.value then usage(name .. " given twice") end
        opts[o.field] = v
      end
      seen[o.field] = name
    end
    i = i + 1
  end
  return opts, pos, seen
end

local function check_allowed(command, seen)
  local allowed = ALLOWED[command]
  for field, name in pairs(seen) do
    if not GLOBAL[field] and not allowed[field] then
      usage(name .. " does not apply to gauth " .. command)
    end
  end
end

-- "a,b c" (from one or more --scopes) -> array of full scope URLs.
local function scopes_of(list)
  if not list then return nil end
  local out = {}
  for _, item in ipairs(list) do
    for s in item:gmatch("[^,%s]+") do
      if not find(s, "://", 1, true) and not BARE_SCOPES[s] then
        s = SCOPE_PREFIX .. s
      end
      out[#out + 1] = s
    end
  end
  if #out == 0 then usage("--scopes needs at least one scope") end
  return out
end

-- -------------------------------------------------------------------------
-- JSON for people: indented, keys sorted (so that output can be diffed),
-- "/" not escaped.

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
                  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function json_string(s)
  return '"' .. gsub(s, '[%c"\\]', function(c)
    return ESCAPES[c] or format("\\u%04x", byte(c))
  end) .. '"'
end

local function json_number(v)
  if v ~= v or v == huge or v == -huge then return "null" end
  if floor(v) == v and v > -2^53 and v < 2^53 then return format("%d", v) end
  for p = 15, 17 do
    local s = format("%." .. p .. "g", v)
    if tonumber(s) == v then return s end
  end
  return format("%.17g", v)
end

local function is_array(t)
  local n = #t
  if n == 0 then return false end
  local c = 0
  for _ in pairs(t) do c = c + 1 end
  return c == n
end

local function encode(v, indent, out, depth)
  local tv = type(v)
  if v == json.null or v == nil then
    out[#out + 1] = "null"
  elseif tv == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif tv == "number" then
    out[#out + 1] = json_number(v)
  elseif tv == "string" then
    out[#out + 1] = json_string(v)
  elseif tv == "table" then
    if depth > 100 then error("gauth.cli: JSON nested too deeply", 0) end
    local inner = indent .. "  "
    if next(v) == nil then
      local arr = json.empty_array_mt
      out[#out + 1] = (arr ~= nil and getmetatable(v) == arr) and "[]" or "{}"
    elseif is_array(v) then
      out[#out + 1] = "[\n"
      for i = 1, #v do
        out[#out + 1] = inner
        encode(v[i], inner, out, depth + 1)
        out[#out + 1] = i < #v and ",\n" or "\n"
      end
      out[#out + 1] = indent .. "]"
    else
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = tostring(k) end
      sort(keys)
      out[#out + 1] = "{\n"
      for i, k in ipairs(keys) do
        local val = v[k]
        if val == nil then val = v[tonumber(k)] end
        out[#out + 1] = inner .. json_string(k) .. ": "
        encode(val, inner, out, depth + 1)
        out[#out + 1] = i < #keys and ",\n" or "\n"
      end
      out[#out + 1] = indent .. "}"
    end
  else
    out[#out + 1] = json_string(tostring(v))
  end
end

--- Indented JSON with sorted keys (the CLI's output format).
-- @param v a decoded JSON value
-- @treturn string
function _M.pretty_json(v)
  local out = {}
  encode(v, "", out, 0)
  return concat(out)
end

-- -------------------------------------------------------------------------
-- Progress on a terminal

--- Is `stream` the process's stderr, and a terminal? `GAUTH_PROGRESS=1`
-- or `0` decides instead (scripts, tests).
-- @param stream a file handle
-- @treturn boolean
function _M.is_terminal(stream)
  local env = sys.getenv("GAUTH_PROGRESS")
  if env then return env ~= "0" end
  if stream ~= io.stderr then return false end
  local r = os.execute("test -t 2")
  return r == true or r == 0
end

local function human(n)
  if n >= 1048576 then return format("%.1f MiB", n / 1048576) end
  if n >= 1024 then return format("%.1f KiB", n / 1024) end
  return format("%d B", n)
end

--- A progress bar drawn on `stream` (one line, redrawn with "\r"), for
-- long transfers.
-- @param stream where to draw (stderr)
-- @tparam[opt] string label shown before the bar
-- @return function(done, total) to call as bytes move (total may be nil
-- when unknown); the line ends when done reaches total
function _M.progress_bar(stream, label)
  local width = 30
  local finished = false
  return function(done, total)
    if finished then return end
    local line
    if total and total > 0 then
      local frac = done / total
      if frac > 1 then frac = 1 end
      local filled = floor(frac * width + 0.5)
      line = format("\r%s[%s%s] %3d%% %s/%s", label and (label .. " ") or "",
                    rep("=", filled), rep(" ", width - filled), floor(frac * 100),
                    human(done), human(total))
    else
      line = format("\r%s%s", label and (label .. " ") or "", human(done))
    end
    stream:write(line)
    if total and done >= total then
      stream:write("\n")
      finished = true
    end
  end
end

-- -------------------------------------------------------------------------
-- Credentials

-- Application Default Credentials (gauth.default), or a clear failure when
-- this installation has none.
local function adc(opts)
  local ok, creds, err = pcall(require("gauth").default, opts)
  if not ok then
    if find(tostring(creds), "module 'gauth.adc' not found", 1, true) then
      die(1, "Application Default Credentials are not available in this "
        .. "installation (no gauth.adc); give --key-file")
    end
    error(creds, 0)
  end
  if not creds then failed(err) end
  return creds
end

-- A credentials file of any type gauth reads (service account,
-- authorized user, impersonated), as ADC would read it.
local function load_key_file(path, opts)
  local ok, adc_mod = pcall(require, "gauth.adc")
  local loader = ok and adc_mod or require("gauth.service_account")
  local creds, err = loader.from_file(path, opts)
  if not creds then failed(err) end
  return creds
end

-- ID token credentials for `audience` (gauth.id_token.credentials), from
-- --key-file or what ADC finds: a service account key, impersonated
-- credentials, an external account with impersonation, the metadata server.
local function id_token_creds(opts)
  local base = opts.key_file and load_key_file(opts.key_file) or adc({})
  local creds, msg = require("gauth.id_token").credentials(base, { audience = opts.audience })
  if not creds then die(1, msg) end
  return creds
end

local function access_creds(opts, default_scopes)
  local scopes = scopes_of(opts.scopes) or default_scopes
  local creds
  if opts.key_file then
    creds = load_key_file(opts.key_file, { scopes = scopes })
  else
    creds = adc({ scopes = scopes })
  end
  if opts.subject then
    if type(creds.with_subject) ~= "function" then
      die(1, tostring(creds) .. " cannot act for a subject (only a service account can)")
    end
    local ok, c = pcall(creds.with_subject, creds, opts.subject)
    if not ok then die(1, strip_position(c)) end
    creds = c
  end
  return creds
end

-- -------------------------------------------------------------------------
-- gauth token

local function cmd_token(opts, pos, ios)
  local out = ios.out
  if #pos > 0 then usage("gauth token takes no arguments, got " .. pos[1]) end
  local creds
  if opts.id_token then
    if not opts.audience then usage("--id-token needs --audience") end
    if opts.scopes or opts.subject then
      usage("--id-token takes no --scopes or --subject")
    end
    creds = id_token_creds(opts)
  else
    if opts.audience then usage("--audience goes with --id-token") end
    creds = access_creds(opts, { CLOUD_PLATFORM })
  end
  local tok, err = creds:token()
  if not tok then failed(err) end
  out:write(tok, "\n")
  return 0
end

-- -------------------------------------------------------------------------
-- gauth call

local function read_stream_or_file(spec, stdin)
  if spec == "-" then
    local data = stdin:read("*a")
    if not data then usage("--body @-: cannot read stdin") end
    return data
  end
  local data, err = sys.read_file(spec)
  if not data then usage("--body @" .. spec .. ": " .. tostring(err)) end
  return data
end

local function body_of(text, stdin)
  if sub(text, 1, 1) == "@" then text = read_stream_or_file(sub(text, 2), stdin) end
  local v = json.decode(text)
  -- cjson gives a table for an array too: the first character tells.
  if type(v) ~= "table" or not find(text, "^%s*{") then
    usage("--body must be a JSON object" .. (v == nil and " (malformed JSON)" or ""))
  end
  return v
end

-- googleapiclient's names for a document's names (the discovery module
-- answers to both): key2param for parameters.
local function key2param(key)
  local s = gsub(key, "[^A-Za-z0-9]", "_")
  if not find(key, "^[A-Za-z]") then s = "x" .. s end
  return s
end

-- A name the user typed, looked up in a document's table of resources or
-- methods: by the document's name, or by the name Lua code would use
-- (`import_`, `well_known`).
local function lookup(tbl, name)
  if type(tbl) ~= "table" then return nil end
  if tbl[name] ~= nil then return name, tbl[name] end
  local bare = gsub(name, "_$", "")
  for k, v in pairs(tbl) do
    if type(k) == "string" and (gsub(k, "[^%w]", "_") == bare or k == bare) then
      return k, v
    end
  end
  return nil
end

local function names(tbl)
  local list = {}
  if type(tbl) == "table" then
    for k in pairs(tbl) do list[#list + 1] = tostring(k) end
  end
  sort(list)
  return #list > 0 and concat(list, ", ") or "none"
end

-- "a.b.c" -> the method's description, the path of document names.
local function find_method(doc, dotted, api)
  local parts = {}
  for p in dotted:gmatch("[^.]+") do parts[#parts + 1] = p end
  if #parts == 0 then usage("expected RESOURCE.METHOD, got '" .. dotted .. "'") end
  local node, path = doc, {}
  local function where()
    return #path > 0 and concat(path, ".") or api
  end
  for i = 1, #parts - 1 do
    local real, child = lookup(node.resources, parts[i])
    if not real then
      die(2, format("%s has no resource '%s' (resources: %s)",
        where(), parts[i], names(node.resources)))
    end
    path[#path + 1] = real
    node = child
  end
  local last = parts[#parts]
  local real, method = lookup(node.methods, last)
  if not real then
    local rname, res = lookup(node.resources, last)
    if rname then
      die(2, format("%s is a resource, not a method (its methods: %s)",
        (#path > 0 and (concat(path, ".") .. ".") or "") .. rname,
        names(type(res) == "table" and res.methods)))
    end
    die(2, format("%s has no method '%s' (methods: %s)", where(), last,
      names(node.methods)))
  end
  path[#path + 1] = real
  return method, path
end

-- NAME=VALUE arguments -> the parameter table, typed as the document says.
local function params_of(args, doc, method)
  local descs = {}
  local function add_all(tbl)
    if type(tbl) ~= "table" then return end
    for k, d in pairs(tbl) do
      if type(d) == "table" then
        descs[k] = descs[k] or d
        descs[key2param(k)] = descs[key2param(k)] or d
      end
    end
  end
  add_all(method.parameters)
  add_all(doc.parameters)
  local params, count = {}, {}
  for _, a in ipairs(args) do
    local k, v = match(a, "^([^=]+)=(.*)$")
    if not k then usage("expected NAME=VALUE, got '" .. a .. "'") end
    if k == "body" then usage("give the request body with --body") end
    local d = descs[k]
    if d and d.type == "boolean" then
      if v == "true" then v = true elseif v == "false" then v = false end
    end
    count[k] = (count[k] or 0) + 1
    if d and d.repeated then
      local list = params[k] or {}
      list[#list + 1] = v
      params[k] = list
    elseif count[k] > 1 then
      usage(k .. " given twice (it is not a repeated parameter)")
    else
      params[k] = v
    end
  end
  return params
end

-- The request as execute() would send it, but for the token: none is
-- fetched for a dry run, the header shows where it goes. An upload shows
-- its metadata body and what media would follow.
local function dry_run(req, creds, out)
  -- Credentials a caller put in the query are not shown either.
  local uri = gsub(tostring(req.uri), "([?&][%w_]*)=[^&#]*", function(k)
    if k:match("^[?&](.*)$") == "access_token" or k:match("^[?&](.*)$") == "oauth_token"
        or k:match("^[?&](.*)$") == "key" then
      return k .. "=<redacted>"
    end
  end)
  local lines = { tostring(req.method) .. " " .. uri }
  local h = {}
  local inner = rawget(req, "_req")  -- an upload (gauth.media) wraps the request
  for k, v in pairs(inner and inner.headers or req.headers) do h[k] = v end
  -- An upload's content type is set per request it sends (multipart
  -- boundary, chunks): the media line below says what goes.
  if inner then h["content-type"] = nil end
  h.authorization = "Bearer <redacted>"
  if creds and creds.quota_project then
    h["x-goog-user-project"] = creds.quota_project
  end
  local keys = {}
  for k in pairs(h) do keys[#keys + 1] = k end
  sort(keys)
  for _, k in ipairs(keys) do lines[#lines + 1] = k .. ": " .. tostring(h[k]) end
  out:write(concat(lines, "\n"), "\n")
  if req.body then out:write("\n", req.body, "\n") end
  local m = req.media
  if type(m) == "table" and m.size then
    out:write(format("\n[media: %s, %d bytes, %s, uploadType=%s]\n", tostring(m.path or "data"),
                     m.size, tostring(m.mime_type), tostring(req.upload_type)))
  end
  return 0
end

local function need_media()
  local ok, media = pcall(require, "gauth.media")
  if not ok then die(1, "media transfers need gauth.media, which this installation lacks") end
  return media
end

local function cmd_call(opts, pos, ios)
  local out, stdin = ios.out, ios.stdin
  if #pos < 3 then usage("gauth call needs API VERSION RESOURCE.METHOD") end
  local api, version, dotted = pos[1], pos[2], pos[3]
  local args = {}
  for i = 4, #pos do args[#args + 1] = pos[i] end
  if opts.media_type and not opts.media then usage("--media-type goes with --media") end
  if opts.media and opts.output then usage("--media and --output do not go together") end
  local body = opts.body and body_of(opts.body, stdin)

  -- Credentials first: a bad key file is reported before any fetch. A dry
  -- run with no key file does not look for ADC (it may ping the metadata
  -- server); it shows the header a real call sends all the same.
  local creds
  if opts.key_file or not opts.dry_run then
    -- No default scopes: the service applies the API's own, as
    -- googleapiclient does.
    creds = access_creds(opts, nil)
  end

  local discovery = require "gauth.discovery"
  local svc, err = discovery.build(api, version, {
    credentials = creds, discovery_url = opts.discovery_url,
    api_endpoint = opts.api_endpoint, cache_dir = opts.cache_dir,
  })
  if not svc then failed(err) end
  -- The document itself, for the names and types of parameters.
  local doc = discovery.document(svc)
  local method, path = find_method(doc, dotted, api)
  local params = params_of(args, doc, method)
  if body then params.body = body end

  local media, name = nil, path[#path]
  if opts.output then
    if not method.supportsMediaDownload then
      die(2, concat(path, ".") .. " has no media download (--output is for methods that have one)")
    end
    media = need_media()
    name = name .. "_media"  -- the method's variant that answers with the bytes
  elseif opts.media then
    if type(method.mediaUpload) ~= "table" then
      die(2, concat(path, ".") .. " takes no media upload (--media is for methods that do)")
    end
    media = need_media()
    local ok, m, mmsg, merr = pcall(media.media_file, opts.media, { mime_type = opts.media_type })
    if not ok then usage(strip_position(m)) end
    if not m then die(2, "--media: " .. tostring(merr and merr.message or mmsg)) end
    params.media_body = m
  end

  local ok, req, berr = pcall(function()
    local node = svc
    for i = 1, #path - 1 do node = node[path[i]](node) end
    return node[name](node, params)
  end)
  if not ok then
    -- discovery raises for what a caller got wrong (unknown or missing
    -- parameter, a value of the wrong type): a usage error here.
    if type(req) == "string" and (find(req, "gauth.discovery: ", 1, true)
                                  or find(req, "gauth.media: ", 1, true)) then
      die(2, strip_position(req))
    end
    error(req, 0)
  end
  -- An upload the method refuses (media type, size) fails here, sending nothing.
  if req == nil then die(2, tostring(berr)) end
  if opts.dry_run then
    return dry_run(req, creds, out)
  end

  local bar
  if media and _M.is_terminal(ios.err) then
    bar = _M.progress_bar(ios.err, (opts.output and "download " or "upload ")
      .. (match(opts.output or opts.media, "([^/]*)$")))
  end
  if opts.output then
    local n, derr = media.download(req, opts.output, { progress = bar })
    if not n then failed(derr) end
    if bar then bar(n, n) end  -- ends the line when the size was never told
    return 0
  end
  local resp
  resp, err = req:execute(bar and { progress = bar } or nil)
  if resp == nil then failed(err) end
  if type(resp) == "string" then
    out:write(resp)
  else
    out:write(_M.pretty_json(resp), "\n")
  end
  return 0
end

-- -------------------------------------------------------------------------
-- gauth discovery fetch

-- -------------------------------------------------------------------------
-- gauth sign-url

local UNITS = { s = 1, m = 60, h = 3600, d = 86400 }

-- "600", "30s", "10m", "2h", "7d" -> seconds
local function duration(v)
  local n, unit = match(v, "^(%d+)([smhd]?)$")
  if not n then usage("--expires must be seconds or a number with s, m, h or d, got " .. v) end
  return tonumber(n) * UNITS[unit ~= "" and unit or "s"]
end

local function cmd_sign_url(opts, pos, ios)
  if #pos ~= 1 then usage("gauth sign-url needs one gs://BUCKET/OBJECT") end
  local bucket, object = match(pos[1], "^gs://([^/]+)/(.+)$")
  if not bucket then usage("expected gs://BUCKET/OBJECT, got " .. pos[1]) end
  local method = upper(opts.method or "GET")
  local headers = {}
  for _, h in ipairs(opts.header or {}) do
    local k, v = match(h, "^([^:]+):%s*(.*)$")
    if not k then usage("--header must be NAME:VALUE, got " .. h) end
    if headers[lower(k)] then usage("--header " .. k .. " given twice") end
    headers[lower(k)] = v
  end
  -- Google requires it on the POST that starts a resumable upload.
  if method == "POST" and headers["x-goog-resumable"] == nil then
    headers["x-goog-resumable"] = "start"
  end
  local creds
  if opts.key_file then
    creds = load_key_file(opts.key_file, {})
  else
    creds = adc({})
  end
  local url, msg, err = require("gauth.storage").signed_url({
    credentials = creds, bucket = bucket, object = object, method = method,
    expires = opts.expires and duration(opts.expires) or 3600,
    headers = headers, api_endpoint = opts.api_endpoint,
  })
  if not url then
    if err and err.step == "options" then usage(msg) end
    failed(msg)
  end
  ios.out:write(url, "\n")
  return 0
end

local function default_cache_dir()
  local xdg = sys.getenv("XDG_CACHE_HOME")
  if xdg then return xdg .. "/gauth/discovery" end
  local home = sys.getenv("HOME")
  if home then return home .. "/.cache/gauth/discovery" end
  return nil
end

-- A transport that never answers: proves a document comes from the cache.
local offline = {
  request = function()
    return errors.fail("cli", "offline", "no network in this check")
  end,
}

local function cmd_discovery(opts, pos, ios)
  local out = ios.out
  if pos[1] ~= "fetch" then
    usage(pos[1] and ("unknown discovery command " .. pos[1])
          or "gauth discovery needs a command: fetch")
  end
  if #pos ~= 3 then usage("gauth discovery fetch needs API VERSION") end
  local api, version = pos[2], pos[3]
  local dir = opts.cache_dir or default_cache_dir()
  if not dir then usage("no cache directory (HOME unset): give --cache-dir") end
  local discovery = require "gauth.discovery"
  -- A negative age makes every cached copy stale: fetch anew.
  local svc, err = discovery.build(api, version, {
    discovery_url = opts.discovery_url, cache_dir = dir, cache_max_age = -1,
  })
  if not svc then failed(err) end
  -- discovery writes its cache quietly, even when it cannot: read it back
  -- with no network to be sure it is there.
  discovery.clear_cache()
  local again, cerr = discovery.build(api, version, {
    discovery_url = opts.discovery_url, cache_dir = dir, http = offline,
  })
  if not again then
    die(1, format("fetched %s %s but could not write it under %s (%s)",
                  api, version, dir, tostring(cerr)))
  end
  out:write(format("%s %s: cached in %s\n", api, version, dir))
  return 0
end

-- -------------------------------------------------------------------------
-- gauth verify

local function cmd_verify(opts, pos, ios)
  if #pos > 1 then usage("gauth verify takes one token, got " .. #pos .. " arguments") end
  local token = pos[1]
  if token == nil or token == "-" then
    token = ios.stdin:read("*a")
    if not token then usage("cannot read the token from stdin") end
  end
  -- a token pasted with its line break or a "Bearer " in front. The trim
  -- is linear: "^%s*(.-)%s*$" rescans each white-space run inside the
  -- text at every step of (.-), quadratic in the length of the runs.
  token = gsub(token, "^%s*[Bb]earer%s+", "")
  local first = find(token, "%S")
  if first then
    local last = #token
    while match(token, "^%s", last) do last = last - 1 end
    token = sub(token, first, last)
  else
    token = ""
  end
  local id_token = require "gauth.id_token"
  local audience = opts.audience or false
  if not audience then ios.err:write("gauth: note: the audience is not checked (no --audience)\n") end
  local vopts = { certs_url = opts.certs_url }
  local claims, msg
  if opts.iap then
    claims, msg = id_token.verify_iap(token, audience, vopts)
  else
    claims, msg = id_token.verify_oauth2_token(token, audience, vopts)
  end
  if not claims then failed(msg) end
  ios.out:write(_M.pretty_json(claims), "\n")
  return 0
end

-- -------------------------------------------------------------------------
-- main

local COMMANDS = { token = cmd_token, call = cmd_call, discovery = cmd_discovery,
                   ["sign-url"] = cmd_sign_url, verify = cmd_verify }

local function run(argv, ios)
  local out = ios.out
  local opts, pos, seen = parse(argv)
  if opts.help or pos[1] == "help" then
    out:write(_M.USAGE)
    return 0
  end
  if opts.version then
    out:write("gauth ", _M._VERSION, " (", type(jit) == "table" and jit.version or _VERSION, ")\n")  -- luacheck: ignore
    return 0
  end
  local command = pos[1]
  if not command then usage("no command") end
  local fn = COMMANDS[command]
  if not fn then usage("unknown command " .. command) end
  check_allowed(command, seen)
  local rest = {}
  for i = 2, #pos do rest[#rest + 1] = pos[i] end
  if opts.ca_file then
    local f, ferr = io.open(opts.ca_file, "rb")
    if not f then usage("--ca-file: " .. tostring(ferr)) end
    f:close()
  end
  return fn(opts, rest, ios)
end

--- Run the command line.
-- @tparam table argv the arguments (`arg` of a script: argv[1] is the
--   command)
-- @tparam[opt] table io_streams `stdout`, `stderr`, `stdin` (anything with
--   `write`, and `read` for stdin; default the process's)
-- @treturn integer the exit code (0, 1 for failures, 2 for usage errors)
function _M.main(argv, io_streams)
  if type(argv) ~= "table" then error("gauth.cli: main: argv must be a table", 2) end
  io_streams = io_streams or {}
  local out = io_streams.stdout or io.stdout
  local errout = io_streams.stderr or io.stderr
  local stdin = io_streams.stdin or io.stdin

  -- --ca-file applies to every request of the command (token endpoint,
  -- Discovery, the API): through the process-wide transport, restored
  -- afterwards for in-process callers.
  local http = require "gauth.http"
  local restore
  local ca
  for i = 1, #argv do
    local a = argv[i]
    if a == "--" then break end
    if a == "--ca-file" then ca = argv[i + 1] break end
    local v = type(a) == "string" and match(a, "^%-%-ca%-file=(.+)$")
    if v then ca = v break end
  end

  local ok, code = pcall(function()
    if ca then
      local f = io.open(ca, "rb")
      if f then
        f:close()
        local prev = http.default()
        local t, err = http.new({ ca_file = ca })
        if not t then failed(err) end
        http.set_default(t)
        restore = function() http.set_default(prev); t:close() end
      end
    end
    return run(argv, { out = out, err = errout, stdin = stdin })
  end)
  if restore then restore() end
  if ok then
    if out.flush then out:flush() end
    return code
  end
  if getmetatable(code) == exit_mt then
    errout:write("gauth: ", code.msg, "\n")
    return code.code
  end
  -- Not a failure the command foresaw: a bug, said as such in one line.
  errout:write("gauth: internal error: ", strip_position(code), "\n")
  return 1
end

return _M
