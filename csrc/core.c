/***
 * gauth.core: the parts of gauth that need C (keys, signatures, encodings,
 * the libcurl transport). Internal: applications use the Lua modules.
 * @module gauth.core
 */
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

#include "gauth.h"

int gauth_error(lua_State *L, const char *step, const char *detail)
{
    lua_pushnil(L);
    lua_pushfstring(L, "gauth.core: %s: %s", step, detail);
    return 2;
}

int gauth_ssl_error(lua_State *L, const char *step, const char *fallback)
{
    char buf[256];
    unsigned long code;
    luaL_Buffer b;
    int n = 0;

    lua_pushnil(L);
    luaL_buffinit(L, &b);
    lua_pushfstring(L, "gauth.core: %s: ", step);
    luaL_addvalue(&b);
    /* Drain the whole queue so a later call does not report this failure. */
    while ((code = ERR_get_error()) != 0) {
        ERR_error_string_n(code, buf, sizeof buf);
        if (n++ > 0)
            luaL_addstring(&b, "; ");
        luaL_addstring(&b, buf);
    }
    if (n == 0)
        luaL_addstring(&b, fallback ? fallback : "unknown error");
    luaL_pushresult(&b);
    return 2;
}

void gauth_newclass(lua_State *L, const char *name, const luaL_Reg *methods,
                    const luaL_Reg *meta)
{
    luaL_newmetatable(L, name);
    gauth_setfuncs(L, meta, 0);
    lua_newtable(L);
    gauth_setfuncs(L, methods, 0);
#if GAUTH_HAVE_CLOSE
    lua_getfield(L, -1, "close");
    if (!lua_isnil(L, -1))
        lua_setfield(L, -3, "__close");
    else
        lua_pop(L, 1);
#endif
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, "gauth object");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}

GAUTH_EXPORT int luaopen_gauth_core(lua_State *L)
{
    lua_newtable(L);
    lua_pushliteral(L, "0.1.0");
    lua_setfield(L, -2, "_VERSION");
    gauth_encoding_open(L);
    gauth_digest_open(L);
    gauth_random_open(L);
    gauth_system_open(L);
    gauth_json_open(L);
    gauth_pkey_open(L);
    gauth_http_open(L);
    gauth_aead_open(L);
    return 1;
}
