/***
 * What gauth.core asks of the operating system: the wall and monotonic
 * clocks, a blocking sleep (plain Lua only), and the stat/mkdir/chmod that
 * the disk caches need to trust their files.
 * @module gauth.core
 */
#include <errno.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "gauth.h"

/***
 * Wall-clock time in seconds since the epoch, with sub-second precision.
 * @function now
 */
static int l_now(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

/***
 * Monotonic clock in seconds, for measuring intervals.
 * @function monotonic
 */
static int l_monotonic(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

/***
 * Block the calling thread for `s` seconds (plain Lua only; under nginx
 * gauth uses ngx.sleep).
 * @function sleep
 */
static int l_sleep(lua_State *L)
{
    lua_Number s = luaL_checknumber(L, 1);
    struct timespec ts, rem;

    if (!(s > 0))
        return 0;
    if (s > 86400)
        s = 86400;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (lua_Number)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &rem) != 0 && errno == EINTR)
        ts = rem;
    return 0;
}

/***
 * What gauth needs to know of a path before it trusts a cache file or
 * directory: its kind, permission bits and owner (stat(2), following
 * symbolic links: what counts is what would be read), and the effective
 * user of this process.
 * @function file_stat
 * @tparam string path
 * @return kind ("file", "dir" or "other"), mode (permission bits), owner
 *   uid, this process's effective uid | nil, "gauth.core: stat: <reason>"
 */
static int l_file_stat(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct stat st;

    if (stat(path, &st) != 0)
        return gauth_error(L, "stat", strerror(errno));
    lua_pushstring(L, S_ISREG(st.st_mode) ? "file" : S_ISDIR(st.st_mode) ? "dir" : "other");
    lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
    lua_pushinteger(L, (lua_Integer)st.st_uid);
    lua_pushinteger(L, (lua_Integer)geteuid());
    return 4;
}

/***
 * Make a directory with these permission bits (the umask may only remove
 * bits: 0700 stays 0700).
 * @function mkdir
 * @tparam string path
 * @tparam integer mode e.g. 448 (0700)
 * @return true | nil, "gauth.core: mkdir: <reason>", "exists" when it did
 */
static int l_mkdir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_Integer mode = luaL_checkinteger(L, 2);

    luaL_argcheck(L, mode >= 0 && mode <= 07777, 2, "must be permission bits");
    if (mkdir(path, (mode_t)mode) != 0) {
        int e = errno;
        gauth_error(L, "mkdir", strerror(e));
        lua_pushstring(L, e == EEXIST ? "exists" : "failed");
        return 3;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/***
 * Set a path's permission bits.
 * @function chmod
 * @tparam string path
 * @tparam integer mode e.g. 384 (0600)
 * @return true | nil, "gauth.core: chmod: <reason>"
 */
static int l_chmod(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_Integer mode = luaL_checkinteger(L, 2);

    luaL_argcheck(L, mode >= 0 && mode <= 07777, 2, "must be permission bits");
    if (chmod(path, (mode_t)mode) != 0)
        return gauth_error(L, "chmod", strerror(errno));
    lua_pushboolean(L, 1);
    return 1;
}

static const luaL_Reg system_funcs[] = {
    {"now", l_now},
    {"monotonic", l_monotonic},
    {"sleep", l_sleep},
    {"file_stat", l_file_stat},
    {"mkdir", l_mkdir},
    {"chmod", l_chmod},
    {NULL, NULL}
};

void gauth_system_open(lua_State *L)
{
    gauth_setfuncs(L, system_funcs, 0);
}
