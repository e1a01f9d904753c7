/* Every difference between the Lua 5.1 (LuaJIT) and 5.4 C APIs that gauth
 * meets lives here, so the logic in the other files is written once. */
#ifndef GAUTH_COMPAT_H
#define GAUTH_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM == 501

#define GAUTH_HAVE_CLOSE 0

static inline void gauth_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
    luaL_checkstack(L, nup + 1, "too many upvalues");
    for (; l->name != NULL; l++) {
        int i;
        for (i = 0; i < nup; i++)
            lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}

static inline void gauth_setmetatable(lua_State *L, const char *tname)
{
    luaL_getmetatable(L, tname);
    lua_setmetatable(L, -2);
}

static inline void *gauth_testudata(lua_State *L, int ud, const char *tname)
{
    void *p = lua_touserdata(L, ud);
    if (p != NULL && lua_getmetatable(L, ud)) {
        luaL_getmetatable(L, tname);
        if (!lua_rawequal(L, -1, -2))
            p = NULL;
        lua_pop(L, 2);
        return p;
    }
    return NULL;
}

#define gauth_newlib(L, l) (lua_newtable(L), gauth_setfuncs(L, l, 0))
#define gauth_rawlen(L, i) lua_objlen(L, i)

#else

#define GAUTH_HAVE_CLOSE 1
#define gauth_setfuncs(L, l, n) luaL_setfuncs(L, l, n)
#define gauth_setmetatable(L, t) luaL_setmetatable(L, t)
#define gauth_testudata(L, i, t) luaL_testudata(L, i, t)
#define gauth_newlib(L, l) luaL_newlib(L, l)
#define gauth_rawlen(L, i) lua_rawlen(L, i)

#endif

#endif
