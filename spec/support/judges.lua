-- Runs the signing judges of the storage, signing and downscoping specs:
-- Google's Node libraries (one process per batch) and the Python
-- stand-ins in spec/support (storage_ref.py), and starts the loopback
-- storage server. Loaded with require "support.judges".
local helpers = require "helpers"
local cjson = require "cjson.safe"
local socket = require "socket"

local J = {}

local q = helpers.shell_quote
J.support_dir = helpers.support_dir or (debug.getinfo(1, "S").source:match("^@(.*)/[^/]+$"))

-- Run `cmd` with `input` (a Lua value, sent as JSON) on stdin; the decoded
-- JSON of its stdout. Raises with stderr on failure.
function J.run_json(cmd, input)
  local inp = helpers.tmpname("judge-in", ".json")
  local err = helpers.tmpname("judge-err", ".txt")
  helpers.write_file(inp, assert(cjson.encode(input)))
  local p = assert(io.popen(cmd .. " <" .. q(inp) .. " 2>" .. q(err)))
  local out = p:read("*a")
  local ok = p:close()
  local v = cjson.decode(out)
  if not ok or v == nil then
    error("judge failed: " .. cmd .. "\n" .. tostring(helpers.read_file(err)) .. "\n" .. out, 2)
  end
  return v
end

-- Environment of a Node judge: no metadata server probe, and any
-- connection attempt through a proxy lands on a closed loopback port (the
-- judges sign locally; nothing may leave the machine). With `proxy` (a
-- loopback CONNECT proxy's URL, see start_connect_proxy) the fixed Google
-- hosts a library calls reach the fake Google behind it, and the test CA
-- is trusted (NODE_EXTRA_CA_CERTS). spec/support/node_judge.js checks
-- that every proxy named is on loopback.
function J.node_env(proxy)
  local ca = ""
  if proxy then
    ca = "NODE_EXTRA_CA_CERTS=" .. q(helpers.certs().ca_file) .. " "
  else
    proxy = "http://127.0.0.1:" .. helpers.closed_port()
  end
  return "env METADATA_SERVER_DETECTION=none HTTPS_PROXY=" .. q(proxy)
    .. " HTTP_PROXY=" .. q(proxy) .. " https_proxy=" .. q(proxy)
    .. " NO_PROXY= no_proxy= " .. ca
end

--- Google's Node storage client on a batch of cases (see storage_judge.js).
function J.node_storage(key, cases)
  return J.run_json(J.node_env() .. "node " .. q(J.support_dir .. "/storage_judge.js"),
                    { key = key, cases = cases })
end

--- The Python stand-in's checks of signed URLs and policies.
function J.py_storage_check(cases)
  return J.run_json("python3 " .. q(J.support_dir .. "/storage_ref.py") .. " check", cases)
end

--- Start the loopback storage server: `keys` maps a credential id (email
-- or HMAC access id) to { public_pem = } or { secret = }. Returns
-- { url, port, pid, stop }.
function J.start_storage_server(keys)
  local ready = helpers.tmpname("storage-ready", ".json")
  os.remove(ready)
  local log = helpers.tmpname("storage-log", ".txt")
  local cmd = "python3 " .. q(J.support_dir .. "/storage_ref.py") .. " serve --ready-file "
    .. q(ready) .. " --config " .. q(assert(cjson.encode({ keys = keys })))
    .. " >" .. q(log) .. " 2>&1 </dev/null & echo $!"
  local p = assert(io.popen(cmd))
  local pid = tonumber(p:read("*a"):match("(%d+)"))
  p:close()
  local deadline = socket.gettime() + 10
  local info
  while true do
    local s = helpers.read_file(ready)
    info = s and cjson.decode(s)
    if info then break end
    if socket.gettime() > deadline then
      os.execute("kill " .. pid)
      error("storage_ref.py serve not ready: " .. tostring(helpers.read_file(log)))
    end
    socket.sleep(0.02)
  end
  local port = math.floor(info.port)
  local srv = { pid = pid, port = port, url = "http://127.0.0.1:" .. port }
  function srv.stop()
    if srv.stopped then return end
    srv.stopped = true
    os.execute("kill " .. pid .. " 2>/dev/null")
    local d = socket.gettime() + 5
    while helpers.process_alive(pid) and socket.gettime() < d do socket.sleep(0.02) end
  end
  return srv
end

--- A server certificate from the test CA for `names` (DNS names; the
-- loopback addresses are added), for a fake that stands in for Google
-- hosts behind the CONNECT proxy. Returns cert_file, key_file.
function J.google_cert(names)
  local certs = helpers.certs()
  local base = helpers.tmpname("google-leaf")
  local san = {}
  for i, n in ipairs(names) do san[i] = "DNS:" .. n end
  san[#san + 1] = "IP:127.0.0.1"
  helpers.write_file(base .. ".ext", "basicConstraints=critical,CA:FALSE\n"
    .. "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    .. "subjectAltName=" .. table.concat(san, ",") .. "\n")
  local ok, out = helpers.sh("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    .. " -keyout " .. q(base .. ".key") .. " -out " .. q(base .. ".csr") .. " -subj " .. q("/CN=" .. names[1])
    .. " && openssl x509 -req -in " .. q(base .. ".csr") .. " -CA " .. q(certs.ca_file)
    .. " -CAkey " .. q(certs.ca_key) .. " -set_serial " .. math.random(1000000, 9999999)
    .. " -days 2 -sha256 -extfile " .. q(base .. ".ext") .. " -out " .. q(base .. ".pem"))
  if not ok then error("google_cert: " .. out) end
  return base .. ".pem", base .. ".key"
end

local function spawn_ready(cmd, ready, log, what)
  local p = assert(io.popen(cmd .. " >" .. q(log) .. " 2>&1 </dev/null & echo $!"))
  local pid = tonumber(p:read("*a"):match("(%d+)"))
  p:close()
  local deadline = socket.gettime() + 10
  local info
  while true do
    local s = helpers.read_file(ready)
    info = s and cjson.decode(s)
    if info then break end
    if socket.gettime() > deadline then
      os.execute("kill " .. pid)
      error(what .. " not ready: " .. tostring(helpers.read_file(log)))
    end
    socket.sleep(0.02)
  end
  local srv = { pid = pid, port = math.floor(info.port) }
  function srv.stop()
    if srv.stopped then return end
    srv.stopped = true
    os.execute("kill " .. pid .. " 2>/dev/null")
    local d = socket.gettime() + 5
    while helpers.process_alive(pid) and socket.gettime() < d do socket.sleep(0.02) end
  end
  return srv
end

--- Start the CONNECT proxy: `routes` maps "host:port" to "127.0.0.1:port";
-- `opts.require_auth`: the Proxy-Authorization value it insists on (407
-- otherwise). Returns { url, port, stop, connects() } where connects()
-- lists the requests seen ({ target, refused, auth }).
function J.start_connect_proxy(routes, opts)
  local ready = helpers.tmpname("proxy-ready", ".json")
  os.remove(ready)
  local plog = helpers.tmpname("proxy-connects", ".jsonl")
  local args = { "python3", q(J.support_dir .. "/connect_proxy.py"), "--ready-file", q(ready),
                 "--log", q(plog) }
  if opts and opts.require_auth then args[#args + 1] = "--require-auth " .. q(opts.require_auth) end
  for from, to in pairs(routes) do args[#args + 1] = "--route " .. q(from .. "=" .. to) end
  local srv = spawn_ready(table.concat(args, " "), ready, helpers.tmpname("proxy-log", ".txt"),
                          "connect_proxy.py")
  srv.url = "http://127.0.0.1:" .. srv.port
  function srv.connects()
    local out = {}
    for line in (helpers.read_file(plog) or ""):gmatch("[^\n]+") do out[#out + 1] = cjson.decode(line) end
    return out
  end
  return srv
end

--- google-auth-library's DownscopedClient on a batch of cases, through
-- the CONNECT proxy `proxy` with the test CA trusted.
function J.node_downscoped(proxy, cases)
  return J.run_json(J.node_env(proxy.url) .. "node " .. q(J.support_dir .. "/downscoped_judge.js"),
                    { cases = cases })
end

return J
