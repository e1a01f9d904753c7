rockspec_format = "3.0"
package = "gauth"
version = "scm-1"
source = {
  url = "git+https://github.com/gauth-lua/gauth.git",
}
description = {
  summary = "Google API authentication and API clients for Lua and OpenResty",
  detailed = [[
Server-to-server OAuth 2.0 for Google APIs: service-account JWTs (RS256,
domain-wide delegation), metadata-server credentials, Application Default
Credentials, a token cache shared by nginx workers, and service objects
built from Google's Discovery documents. A small C core (OpenSSL, libcurl)
under a pure-Lua layer; Lua 5.1/LuaJIT and 5.4.
]],
  license = "Apache-2.0",
  homepage = "https://github.com/gauth-lua/gauth",
}
dependencies = {
  "lua >= 5.1, <= 5.4",
  "lua-cjson",
}
external_dependencies = {
  OPENSSL = { header = "openssl/evp.h", library = "crypto" },
  -- Debian keeps curl.h under the multiarch include folder, which LuaRocks
  -- does not search; the library is enough to find libcurl.
  CURL = { library = "curl" },
}
-- The emulator (gauth.emulator*, the gauth-emulator command) is a rock of
-- its own: gauth-emulator-scm-1.rockspec, with its dependencies; its
-- modules sit in emulator/lua/, out of lua/, which LuaRocks' builtin type
-- copies whole.
build = {
  type = "builtin",
  modules = {
    ["gauth.core"] = {
      sources = { "csrc/core.c", "csrc/encoding.c", "csrc/digest.c", "csrc/random.c", "csrc/system.c",
                  "csrc/pkey.c", "csrc/aead.c", "csrc/json.c",
                  "csrc/http.c", "csrc/http_headers.c", "csrc/http_io.c", "csrc/http_setup.c" },
      libraries = { "crypto", "curl" },
      incdirs = { "$(OPENSSL_INCDIR)" },
      libdirs = { "$(OPENSSL_LIBDIR)", "$(CURL_LIBDIR)" },
      defines = { "_POSIX_C_SOURCE=200809L" },
    },
    ["gauth"] = "lua/gauth/init.lua",
    ["gauth.adc"] = "lua/gauth/adc.lua",
    ["gauth.api_key"] = "lua/gauth/api_key.lua",
    ["gauth.app_engine"] = "lua/gauth/app_engine.lua",
    ["gauth.authorized_user"] = "lua/gauth/authorized_user.lua",
    ["gauth.aws_sigv4"] = "lua/gauth/aws_sigv4.lua",
    ["gauth.external_account"] = "lua/gauth/external_account.lua",
    ["gauth.external_account_authorized_user"] = "lua/gauth/external_account_authorized_user.lua",
    ["gauth.batch"] = "lua/gauth/batch.lua",
    ["gauth.cli"] = "lua/gauth/cli.lua",
    ["gauth.compute_engine"] = "lua/gauth/compute_engine.lua",
    ["gauth.credentials"] = "lua/gauth/credentials.lua",
    ["gauth.credentials.base"] = "lua/gauth/credentials/base.lua",
    ["gauth.credentials.file"] = "lua/gauth/credentials/file.lua",
    ["gauth.credentials.options"] = "lua/gauth/credentials/options.lua",
    ["gauth.credentials.token"] = "lua/gauth/credentials/token.lua",
    ["gauth.discovery"] = "lua/gauth/discovery.lua",
    ["gauth.discovery.body"] = "lua/gauth/discovery/body.lua",
    ["gauth.discovery.common"] = "lua/gauth/discovery/common.lua",
    ["gauth.discovery.document"] = "lua/gauth/discovery/document.lua",
    ["gauth.discovery.method"] = "lua/gauth/discovery/method.lua",
    ["gauth.discovery.names"] = "lua/gauth/discovery/names.lua",
    ["gauth.discovery.regex"] = "lua/gauth/discovery/regex.lua",
    ["gauth.discovery.resource"] = "lua/gauth/discovery/resource.lua",
    ["gauth.discovery.service"] = "lua/gauth/discovery/service.lua",
    ["gauth.discovery.shdict_cache"] = "lua/gauth/discovery/shdict_cache.lua",
    ["gauth.discovery.uri"] = "lua/gauth/discovery/uri.lua",
    ["gauth.discovery.values"] = "lua/gauth/discovery/values.lua",
    ["gauth.downscoped"] = "lua/gauth/downscoped.lua",
    ["gauth.errors"] = "lua/gauth/errors.lua",
    ["gauth.http"] = "lua/gauth/http.lua",
    ["gauth.iam"] = "lua/gauth/iam.lua",
    ["gauth.id_token"] = "lua/gauth/id_token.lua",
    ["gauth.id_token.common"] = "lua/gauth/id_token/common.lua",
    ["gauth.id_token.credentials"] = "lua/gauth/id_token/credentials.lua",
    ["gauth.id_token.key_cache"] = "lua/gauth/id_token/key_cache.lua",
    ["gauth.id_token.key_set"] = "lua/gauth/id_token/key_set.lua",
    ["gauth.id_token.verify"] = "lua/gauth/id_token/verify.lua",
    ["gauth.impersonated"] = "lua/gauth/impersonated.lua",
    ["gauth.jwt"] = "lua/gauth/jwt.lua",
    ["gauth.lib.http_header"] = "lua/gauth/lib/http_header.lua",
    ["gauth.lib.json"] = "lua/gauth/lib/json.lua",
    ["gauth.lib.lru"] = "lua/gauth/lib/lru.lua",
    ["gauth.lib.ngx_phase"] = "lua/gauth/lib/ngx_phase.lua",
    ["gauth.lib.seam"] = "lua/gauth/lib/seam.lua",
    ["gauth.lib.sys"] = "lua/gauth/lib/sys.lua",
    ["gauth.lib.time"] = "lua/gauth/lib/time.lua",
    ["gauth.lib.url"] = "lua/gauth/lib/url.lua",
    ["gauth.media"] = "lua/gauth/media.lua",
    ["gauth.media.body"] = "lua/gauth/media/body.lua",
    ["gauth.media.common"] = "lua/gauth/media/common.lua",
    ["gauth.media.download"] = "lua/gauth/media/download.lua",
    ["gauth.media.exchange"] = "lua/gauth/media/exchange.lua",
    ["gauth.media.mime"] = "lua/gauth/media/mime.lua",
    ["gauth.media.multipart"] = "lua/gauth/media/multipart.lua",
    ["gauth.media.resumable"] = "lua/gauth/media/resumable.lua",
    ["gauth.media.simple"] = "lua/gauth/media/simple.lua",
    ["gauth.media.upload"] = "lua/gauth/media/upload.lua",
    ["gauth.metadata"] = "lua/gauth/metadata.lua",
    ["gauth.metrics"] = "lua/gauth/metrics.lua",
    ["gauth.mtls"] = "lua/gauth/mtls.lua",
    ["gauth.nginx"] = "lua/gauth/nginx.lua",
    ["gauth.oauth"] = "lua/gauth/oauth.lua",
    ["gauth.token_request"] = "lua/gauth/token_request.lua",
    ["gauth.request"] = "lua/gauth/request.lua",
    ["gauth.retry"] = "lua/gauth/retry.lua",
    ["gauth.service_account"] = "lua/gauth/service_account.lua",
    ["gauth.session"] = "lua/gauth/session.lua",
    ["gauth.storage"] = "lua/gauth/storage.lua",
    ["gauth.sts"] = "lua/gauth/sts.lua",
    ["gauth.testing"] = "lua/gauth/testing.lua",
    ["gauth.token_cache"] = "lua/gauth/token_cache.lua",
    ["gauth.token_cache.shdict"] = "lua/gauth/token_cache/shdict.lua",
    ["gauth.token_cache.redis"] = "lua/gauth/token_cache/redis.lua",
    ["gauth.transport.common"] = "lua/gauth/transport/common.lua",
    ["gauth.transport.curl"] = "lua/gauth/transport/curl.lua",
    ["gauth.transport.ngx"] = "lua/gauth/transport/ngx.lua",
    ["gauth.universe"] = "lua/gauth/universe.lua",
    ["gauth.util"] = "lua/gauth/util.lua",
  },
  install = {
    bin = {
      ["gauth"] = "bin/gauth",
    },
  },
}
