/* One Lua state per fuzzer process with gauth.core loaded as global `core`;
 * each target calls a small Lua chunk with the fuzz input as a string, so the
 * C entry points are exercised exactly as Lua code reaches them. */
#ifndef GAUTH_FUZZ_HARNESS_H
#define GAUTH_FUZZ_HARNESS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

int luaopen_gauth_core(lua_State *L);

/* Shared by the targets: `fuzz_keys()` gives the fixed public keys that
 * run.sh makes, by algorithm, loaded once. */
static const char PRELUDE[] =
    "local keys\n"
    "function fuzz_keys()\n"
    "  if keys then return keys end\n"
    "  keys = {}\n"
    "  for _, alg in ipairs({ 'RS256', 'ES256' }) do\n"
    "    local f = assert(io.open(os.getenv('GAUTH_FUZZ_KEYS') .. '/' .. alg .. '.pem'))\n"
    "    keys[alg] = assert(core.load_public_key(f:read('*a')))\n"
    "    f:close()\n"
    "  end\n"
    "  return keys\n"
    "end\n"
    /* Deep equality that tells 0 from -0 (fuzz_json, fuzz_verify_jws). */
    "function fuzz_same(a, b)\n"
    "  if type(a) ~= type(b) then return false end\n"
    "  if type(a) == 'number' then\n"
    "    if math.type(a) ~= math.type(b) then return false end\n"
    "    if a ~= b then return a ~= a and b ~= b end\n"
    "    return a ~= 0 or 1 / a == 1 / b\n"
    "  end\n"
    "  if type(a) ~= 'table' then return a == b end\n"
    "  for k, v in pairs(a) do if not fuzz_same(v, b[k]) then return false end end\n"
    "  for k in pairs(b) do if a[k] == nil then return false end end\n"
    "  return true\n"
    "end\n";

static lua_State *fuzz_state(const char *chunk)
{
    static lua_State *L;
    if (L == NULL) {
        L = luaL_newstate();
        luaL_openlibs(L);
        luaopen_gauth_core(L);
        lua_setglobal(L, "core");
        if (luaL_dostring(L, PRELUDE) != 0) {
            fprintf(stderr, "%s\n", lua_tostring(L, -1));
            abort();
        }
        if (luaL_loadstring(L, chunk) != 0) {
            fprintf(stderr, "%s\n", lua_tostring(L, -1));
            abort();
        }
        lua_setglobal(L, "target");
    }
    return L;
}

static int fuzz_call(const char *chunk, const uint8_t *data, size_t size)
{
    lua_State *L = fuzz_state(chunk);
    lua_getglobal(L, "target");
    lua_pushlstring(L, (const char *)data, size);
    /* A raised Lua error is a finding: the entry points must return nil, err
     * for any string they are given. */
    if (lua_pcall(L, 1, 0, 0) != 0) {
        fprintf(stderr, "raised: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}

#endif
