/* Response header parsing (csrc/http_headers.c): the block libcurl hands
 * over, whatever a server sent, parsed into the header table, the reason
 * phrase and the status code. Each must equal what the Lua patterns it
 * replaced give for the same bytes (the rule gauth.transport.curl
 * documents), and nothing may raise. */
#include "harness.h"
#include "../http.h"

static const char CHUNK[] =
    "local s = ...\n"
    "local h, r = parse(s)\n"
    "local rh = {}\n"
    "for name, value in s:gmatch('\\n([^:\\r\\n]+):[ \\t]*([^\\r\\n]*)') do\n"
    "  name = name:lower()\n"
    "  value = value:match('^(.-)[ \\t]*$')\n"
    "  rh[name] = rh[name] and rh[name] .. ', ' .. value or value\n"
    "end\n"
    "for k, v in pairs(rh) do assert(h[k] == v, 'header ' .. k) end\n"
    "for k in pairs(h) do assert(rh[k] ~= nil, 'extra header ' .. k) end\n"
    "assert(r == (s:match('^HTTP/[%d.]+ %d+ ?([^\\r\\n]*)') or ''), 'reason')\n"
    "local line = s:match('^[^\\n]*\\n?')\n"
    "assert(status(line) == (tonumber(line:match('^HTTP/[^ ]* *(%d?%d?%d?)')) or 0), 'status')\n";

static int l_parse(lua_State *L)
{
    size_t len;
    const char *p = luaL_checklstring(L, 1, &len);
    gauth_http_push_headers(L, p, len);
    gauth_http_push_reason(L, p, len);
    return 2;
}

static int l_status(lua_State *L)
{
    size_t len;
    const char *p = luaL_checklstring(L, 1, &len);
    lua_pushinteger(L, gauth_http_status_code(p, len));
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        lua_State *L = fuzz_state(CHUNK);
        lua_register(L, "parse", l_parse);
        lua_register(L, "status", l_status);
        ready = 1;
    }
    return fuzz_call(CHUNK, data, size);
}
