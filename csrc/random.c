/***
 * Randomness of gauth.core: OpenSSL's CSPRNG, for what must not be
 * guessed (multipart boundaries, lock tokens, ID-token cache nonces).
 * @module gauth.core
 */
#include <openssl/rand.h>

#include "gauth.h"

/***
 * Cryptographically strong random bytes.
 * @function random_bytes
 * @tparam integer n at most 4096
 */
static int l_random_bytes(lua_State *L)
{
    unsigned char buf[4096];
    lua_Integer n = luaL_checkinteger(L, 1);

    luaL_argcheck(L, n >= 0 && n <= (lua_Integer)sizeof buf, 1,
                  "must be between 0 and 4096");
    if (RAND_bytes(buf, (int)n) != 1)
        return gauth_ssl_error(L, "random", "RAND_bytes failed");
    lua_pushlstring(L, (const char *)buf, (size_t)n);
    return 1;
}

static const luaL_Reg random_funcs[] = {
    {"random_bytes", l_random_bytes},
    {NULL, NULL}
};

void gauth_random_open(lua_State *L)
{
    gauth_setfuncs(L, random_funcs, 0);
}
