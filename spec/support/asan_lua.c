/* A minimal `lua` command linked with AddressSanitizer, for `make asan`.
 * The sanitizer runtime lives in this executable, so the instrumented
 * gauth/core.so loads without LD_PRELOAD, and the programs the specs start
 * (curl, openssl, python) run without the sanitizer.
 * Usage as lua: asan_lua [-e chunk] script [args...] */
#include <stdio.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)",
                              luaL_typename(L, 1));
    }
    lua_getglobal(L, "debug");
    lua_getfield(L, -1, "traceback");
    lua_pushstring(L, msg);
    lua_pushinteger(L, 2);
    lua_call(L, 2, 1);
    return 1;
}

static int run(lua_State *L, int status, int nargs)
{
    int base;
    if (status != 0) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        return 1;
    }
    base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, traceback);
    lua_insert(L, base);
    status = lua_pcall(L, nargs, 0, base);
    lua_remove(L, base);
    if (status != 0) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    lua_State *L = luaL_newstate();
    int i = 1, rc = 0, j;

    luaL_openlibs(L);
    while (i < argc && strcmp(argv[i], "-e") == 0 && i + 1 < argc) {
        if (run(L, luaL_loadstring(L, argv[i + 1]), 0) != 0) {
            lua_close(L);
            return 1;
        }
        i += 2;
    }
    if (i >= argc) {
        lua_close(L);
        return 0;
    }
    /* arg table as lua.c makes it: script at 0, interpreter at -1 */
    lua_createtable(L, argc - i, i + 1);
    for (j = 0; j < argc; j++) {
        lua_pushstring(L, argv[j]);
        lua_rawseti(L, -2, j - i);
    }
    lua_setglobal(L, "arg");
    rc = luaL_loadfile(L, argv[i]);
    /* The script's arguments go on the stack too. main() is promised only
     * LUA_MINSTACK (20) free slots and Lua 5.4's lua_push* never grows the
     * stack (LuaJIT's does): busted with every spec file is about 60
     * arguments, and without this the pushes ran past the 45-slot initial
     * stack into the next heap block, which ASan reported much later as a
     * CHECK failure in its allocator. lua.c checks the same way. */
    if (rc == 0 && !lua_checkstack(L, argc - i + 2)) {
        fprintf(stderr, "%s: too many arguments to script\n", argv[0]);
        lua_close(L);
        return 1;
    }
    for (j = i + 1; j < argc; j++)
        lua_pushstring(L, argv[j]);
    rc = run(L, rc, rc == 0 ? argc - i - 1 : 0);
    lua_close(L);
    return rc;
}
