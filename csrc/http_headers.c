/* gauth.Http's header handling: the request's header table, checked and
 * turned into (or matched against) the kept curl_slist; the response's
 * header block parsed into a table. Only Lua objects and h->hdrs' nodes
 * are allocated here, so a Lua memory error at any point leaks nothing.
 * The response parser is fuzzed by csrc/fuzz/fuzz_headers.c against the
 * Lua rule it implements. */
#include <string.h>
#include <strings.h>

#include "http.h"

/* ------------------------------------------------------------------ */
/* request headers given as a table {name = value}                       */

/* RFC 9110 tchar: what a header name is made of. */
static int is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int name_is(const char *name, size_t nlen, const char *lower)
{
    return strlen(lower) == nlen && strncasecmp(name, lower, nlen) == 0;
}

/* Whether the kept line `data` is exactly lower(name) ": " value. */
static int line_is(const char *data, const char *name, size_t nlen,
                   const char *v, size_t vlen)
{
    size_t k;
    if (strlen(data) != nlen + 2 + vlen)
        return 0;
    for (k = 0; k < nlen; k++) {
        unsigned char c = (unsigned char)name[k];
        if (data[k] != (char)(c >= 'A' && c <= 'Z' ? c + 32 : c))
            return 0;
    }
    return data[nlen] == ':' && data[nlen + 1] == ' ' &&
           memcmp(data + nlen + 2, v, vlen) == 0;
}

/* Whether the kept list from node `n` on is exactly `extra`
 * (NULL-terminated): the lines gauth adds after the caller's. */
static int rest_is(const struct curl_slist *n, const char *const *extra)
{
    for (; *extra != NULL; extra++, n = n->next)
        if (n == NULL || strcmp(n->data, *extra) != 0)
            return 0;
    return n == NULL;
}

/* Can `v` be sent as a header value? RFC 9110 (5.5): a field value is
 * visible characters, obs-text, spaces and tabs; CR, LF and NUL would let
 * it inject headers or cut it short, the other controls are invalid too.
 * The same rule as gauth.lib.http_header.value_ok in Lua. */
static int bad_value(const char *v, size_t len)
{
    size_t i;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return 1;
    }
    return 0;
}

/* One "name: value" line of the walk: compared with the kept list, or (when
 * `build`) appended to h->hdrs. The value's string is at the top of the
 * stack. Returns 1, -1 for a bad value, 0 when out of memory. */
static int walk_line(lua_State *L, gauth_http *h, hwalk *w, int build,
                     const char *name, size_t nlen)
{
    size_t vlen;
    const char *v = lua_tolstring(L, -1, &vlen);

    w->nlines++;
    if (bad_value(v, vlen))
        return -1;
    if (build) {
        /* The line is made as a Lua string (a memory error raises and
         * leaks nothing); libcurl copies it into a node h owns. */
        luaL_Buffer b;
        struct curl_slist *n;
        size_t k;
        luaL_buffinit(L, &b);
        for (k = 0; k < nlen; k++) {
            unsigned char c = (unsigned char)name[k];
            luaL_addchar(&b, (char)(c >= 'A' && c <= 'Z' ? c + 32 : c));
        }
        luaL_addlstring(&b, ": ", 2);
        luaL_addlstring(&b, v, vlen);
        luaL_pushresult(&b);
        n = curl_slist_append(h->hdrs, lua_tostring(L, -1));
        lua_pop(L, 1);
        if (n == NULL)
            return 0;
        h->hdrs = n;
    } else if (w->same) {
        if (w->node == NULL || !line_is(w->node->data, name, nlen, v, vlen))
            w->same = 0;
        else
            w->node = w->node->next;
    }
    return 1;
}

/* Walks the header table at `t` (what gauth.transport.curl documents:
 * lower- or mixed-case names; a string or number value, an array of them
 * for a repeated header, false to leave it out). accept-encoding becomes
 * libcurl's option, content-length is left to libcurl. Without `build` it
 * checks and compares with the kept list; with it, appends the lines to
 * h->hdrs (emptied by the caller). On a problem, w->bad says which and the
 * offending key is left on the stack. Never raises but for memory; returns
 * 0 when out of memory. */
static int walk_headers(lua_State *L, gauth_http *h, int t, hwalk *w, int build)
{
    w->nlines = 0;
    w->same = 1;
    w->node = h->hdrs;
    w->bad = HB_NONE;
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        size_t nlen, k;
        const char *name;
        int vt = lua_type(L, -1), r = 1;
        if (lua_type(L, -2) != LUA_TSTRING) {
            lua_pop(L, 1);
            w->bad = HB_NAME;
            return 1;
        }
        name = lua_tolstring(L, -2, &nlen);
        for (k = 0; k < nlen && is_tchar((unsigned char)name[k]); k++)
            ;
        if (nlen == 0 || k < nlen) {
            lua_pop(L, 1);
            w->bad = HB_NAME;
            return 1;
        }
        if (name_is(name, nlen, "accept-encoding")) {
            /* libcurl sends it, and decodes what comes back. */
            if (vt == LUA_TSTRING) {
                size_t alen;
                const char *a = lua_tolstring(L, -1, &alen);
                if (bad_value(a, alen)) {
                    lua_pop(L, 1);
                    w->bad = HB_VALUE;
                    return 1;
                }
                w->accept_enc = a;  /* the table holds it */
            } else if (vt != LUA_TBOOLEAN || lua_toboolean(L, -1)) {
                lua_pop(L, 1);
                w->bad = HB_TYPE;
                return 1;
            }
            lua_pop(L, 1);
            continue;
        }
        if (name_is(name, nlen, "content-length")) {
            /* Always computed from the body: a stale value would make the
             * request unparseable. */
            lua_pop(L, 1);
            continue;
        }
        if (vt == LUA_TSTRING) {
            r = walk_line(L, h, w, build, name, nlen);
        } else if (vt == LUA_TNUMBER) {
            lua_pushvalue(L, -1);       /* converted apart from the table */
            lua_tostring(L, -1);
            r = walk_line(L, h, w, build, name, nlen);
            lua_pop(L, 1);
        } else if (vt == LUA_TTABLE) {
            int i, n = (int)gauth_rawlen(L, -1);
            for (i = 1; i <= n && r == 1; i++) {
                lua_rawgeti(L, -1, i);
                if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER) {
                    lua_pop(L, 2);
                    w->bad = HB_TYPE;
                    return 1;
                }
                lua_pushvalue(L, -1);
                lua_tostring(L, -1);
                r = walk_line(L, h, w, build, name, nlen);
                lua_pop(L, 2);
            }
        } else if (vt != LUA_TBOOLEAN || lua_toboolean(L, -1)) {
            /* false leaves the header out */
            lua_pop(L, 1);
            w->bad = HB_TYPE;
            return 1;
        }
        if (r == 0) {
            lua_pop(L, 2);
            return 0;
        }
        if (r < 0) {
            lua_pop(L, 1);
            w->bad = HB_VALUE;
            return 1;
        }
        if (name_is(name, nlen, "content-type"))
            w->has_ctype = 1;
        else if (name_is(name, nlen, "expect"))
            w->has_expect = 1;
        lua_pop(L, 1);
    }
    return 1;
}

int gauth_http_check_headers(lua_State *L, gauth_http *h, int t, hwalk *w)
{
    luaL_checkstack(L, 16, "gauth.core: http: headers");
    return walk_headers(L, h, t, w, 0);
}

int gauth_http_set_headers(lua_State *L, gauth_http *h, int t, hwalk *w,
                           const char *const *extra)
{
    /* A client sends the same headers request after request, so the list
     * is kept from one to the next (the check above compared it) instead
     * of being remade: two allocations per line. */
    if (w->same && rest_is(w->node, extra))
        return 1;
    if (h->hdrs != NULL) {
        curl_slist_free_all(h->hdrs);
        h->hdrs = NULL;
    }
    if (t != 0 && !walk_headers(L, h, t, w, 1))
        return 0;
    for (; *extra != NULL; extra++) {
        struct curl_slist *n = curl_slist_append(h->hdrs, *extra);
        if (n == NULL)
            return 0;
        h->hdrs = n;
    }
    return 1;
}

/* ------------------------------------------------------------------ */
/* the response's header block                                         */

int gauth_http_status_code(const char *p, size_t len)
{
    /* What Lua's "^HTTP/[^ ]* *(%d?%d?%d?)" captures, as a number (0 when
     * there are no digits). */
    size_t i = 5, k;
    int st = 0;

    if (len < 5 || memcmp(p, "HTTP/", 5) != 0)
        return 0;
    while (i < len && p[i] != ' ')
        i++;
    while (i < len && p[i] == ' ')
        i++;
    for (k = 0; k < 3 && i < len && p[i] >= '0' && p[i] <= '9'; k++)
        st = st * 10 + (p[i++] - '0');
    return st;
}

void gauth_http_push_reason(lua_State *L, const char *p, size_t len)
{
    /* What Lua's "^HTTP/[%d.]+ %d+ ?([^\r\n]*)" captures; "" when it does
     * not match. */
    size_t i = 5, j;

    if (len < 5 || memcmp(p, "HTTP/", 5) != 0)
        goto none;
    j = i;
    while (i < len && ((p[i] >= '0' && p[i] <= '9') || p[i] == '.'))
        i++;
    if (i == j || i >= len || p[i] != ' ')
        goto none;
    j = ++i;
    while (i < len && p[i] >= '0' && p[i] <= '9')
        i++;
    if (i == j)
        goto none;
    if (i < len && p[i] == ' ')
        i++;
    j = i;
    while (i < len && p[i] != '\r' && p[i] != '\n')
        i++;
    lua_pushlstring(L, p + j, i - j);
    return;
none:
    lua_pushliteral(L, "");
}

void gauth_http_push_headers(lua_State *L, const char *p, size_t len)
{
    /* What Lua's gmatch("\n([^:\r\n]+):[ \t]*([^\r\n]*)") finds, names in
     * lower case (ASCII), values without trailing blanks, a repeated name's
     * values joined with ", " in order. `p` belongs to the caller (h's
     * buffer), so a memory error here leaks nothing. */
    const char *end = p + len, *q = p;
    char low[256];

    luaL_checkstack(L, 8, "gauth.core: http: headers");
    lua_createtable(L, 0, 8);
    while ((q = memchr(q, '\n', (size_t)(end - q))) != NULL) {
        const char *name = ++q, *v, *ve;
        size_t nlen;
        while (q < end && *q != ':' && *q != '\r' && *q != '\n')
            q++;
        if (q == name || q == end || *q != ':')
            continue;
        nlen = (size_t)(q - name);
        v = ++q;
        while (v < end && (*v == ' ' || *v == '\t'))
            v++;
        ve = v;
        while (ve < end && *ve != '\r' && *ve != '\n')
            ve++;
        q = ve;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        if (nlen <= sizeof low) {
            size_t k;
            for (k = 0; k < nlen; k++) {
                unsigned char c = (unsigned char)name[k];
                low[k] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
            }
            lua_pushlstring(L, low, nlen);
        } else {
            luaL_Buffer b;
            size_t k;
            luaL_buffinit(L, &b);
            for (k = 0; k < nlen; k++) {
                unsigned char c = (unsigned char)name[k];
                luaL_addchar(&b, (char)(c >= 'A' && c <= 'Z' ? c + 32 : c));
            }
            luaL_pushresult(&b);
        }
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushlstring(L, v, (size_t)(ve - v));
        } else {
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, v, (size_t)(ve - v));
            lua_concat(L, 3);
        }
        lua_rawset(L, -3);
    }
}
