rockspec_format = "3.0"
package = "gauth-emulator"
version = "scm-1"
source = {
  url = "git+https://github.com/gauth-lua/gauth.git",
}
description = {
  summary = "A local stand-in for Google's token, metadata, Discovery and STS endpoints, for testing code that uses gauth",
  detailed = [[
A developer tool, apart from the gauth library: a plain-HTTP loopback
server that answers as Google's OAuth 2.0 token endpoint, a GCE metadata
server, Discovery, an in-memory Cloud SQL Admin API and workload identity
federation (STS, generateAccessToken) do, and the gauth-emulator command
that runs it. Not for production.
]],
  license = "Apache-2.0",
  homepage = "https://github.com/gauth-lua/gauth",
}
-- What the emulator's modules require: gauth (gauth.core, gauth.jwt,
-- gauth.aws_sigv4, gauth.lib.*, gauth.errors), luasocket (the server and its
-- child process) and lua-cjson (spec/04-package_spec.lua checks the list
-- against the requires).
dependencies = {
  "lua >= 5.1, <= 5.4",
  "gauth",
  "luasocket",
  "lua-cjson",
}
-- Type "none": LuaRocks' builtin type would also copy the tree's lua/ (the
-- library); the emulator's modules live in emulator/lua/ and are named here.
build = {
  type = "none",
  install = {
    lua = {
      ["gauth.emulator"] = "emulator/lua/gauth/emulator.lua",
      ["gauth.emulator.accounts"] = "emulator/lua/gauth/emulator/accounts.lua",
      ["gauth.emulator.common"] = "emulator/lua/gauth/emulator/common.lua",
      ["gauth.emulator.discovery"] = "emulator/lua/gauth/emulator/discovery.lua",
      ["gauth.emulator.federation"] = "emulator/lua/gauth/emulator/federation.lua",
      ["gauth.emulator.google"] = "emulator/lua/gauth/emulator/google.lua",
      ["gauth.emulator.httpd"] = "emulator/lua/gauth/emulator/httpd.lua",
      ["gauth.emulator.id_tokens"] = "emulator/lua/gauth/emulator/id_tokens.lua",
      ["gauth.emulator.metadata_server"] = "emulator/lua/gauth/emulator/metadata_server.lua",
      ["gauth.emulator.sqladmin"] = "emulator/lua/gauth/emulator/sqladmin.lua",
      ["gauth.emulator.sqladmin_api"] = "emulator/lua/gauth/emulator/sqladmin_api.lua",
      ["gauth.emulator.token_endpoint"] = "emulator/lua/gauth/emulator/token_endpoint.lua",
    },
    bin = {
      ["gauth-emulator"] = "bin/gauth-emulator",
    },
  },
}
