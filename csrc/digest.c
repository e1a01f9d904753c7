/***
 * Digests of gauth.core: SHA-256 (raw and hex) and HMAC-SHA256, through
 * OpenSSL's EVP and HMAC interfaces.
 * @module gauth.core
 */
#include <openssl/evp.h>
#include <openssl/err.h>
#include <openssl/hmac.h>

#include "gauth.h"

/***
 * SHA-256 digest.
 * @function sha256
 * @tparam string data
 * @treturn string 32 raw bytes
 */
static int l_sha256(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;

    if (!EVP_Digest(s, n, md, &len, EVP_sha256(), NULL))
        return gauth_ssl_error(L, "sha256", "digest failed");
    lua_pushlstring(L, (const char *)md, len);
    return 1;
}

/***
 * SHA-256 digest as lower-case hex.
 * @function sha256_hex
 * @tparam string data
 * @treturn string 64 hex characters
 */
static int l_sha256_hex(lua_State *L)
{
    static const char digits[] = "0123456789abcdef";
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    unsigned char md[EVP_MAX_MD_SIZE];
    char out[2 * EVP_MAX_MD_SIZE];
    unsigned int len = 0, i;

    if (!EVP_Digest(s, n, md, &len, EVP_sha256(), NULL))
        return gauth_ssl_error(L, "sha256", "digest failed");
    for (i = 0; i < len; i++) {
        out[2 * i] = digits[md[i] >> 4];
        out[2 * i + 1] = digits[md[i] & 15];
    }
    lua_pushlstring(L, out, 2 * (size_t)len);
    return 1;
}

/***
 * HMAC-SHA256 (Cloud Storage's GOOG4-HMAC-SHA256 signing-key chain).
 * @function hmac_sha256
 * @tparam string key any length
 * @tparam string data
 * @treturn string 32 raw bytes
 */
static int l_hmac_sha256(lua_State *L)
{
    size_t klen, n;
    const char *key = luaL_checklstring(L, 1, &klen);
    const char *s = luaL_checklstring(L, 2, &n);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;

    if (klen > 0x7fffffff)
        return gauth_error(L, "hmac_sha256", "key too long");
    ERR_clear_error();
    if (HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)s, n, md,
             &len) == NULL)
        return gauth_ssl_error(L, "hmac_sha256", "HMAC failed");
    lua_pushlstring(L, (const char *)md, len);
    return 1;
}

static const luaL_Reg digest_funcs[] = {
    {"sha256", l_sha256},
    {"sha256_hex", l_sha256_hex},
    {"hmac_sha256", l_hmac_sha256},
    {NULL, NULL}
};

void gauth_digest_open(lua_State *L)
{
    gauth_setfuncs(L, digest_funcs, 0);
}
