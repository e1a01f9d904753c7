/***
 * A JSON object decoder for the claims of a token being verified, so that
 * a payload decoded on the C stack becomes its Lua table without a Lua
 * string of it first (and cjson's own buffer) on every request.
 *
 * It decodes what cjson.decode decodes to the same table, or it declines
 * and leaves the stack as it was: the caller then hands the text to
 * cjson, whose verdict (and message) stands. Declined: anything but an
 * object at the top, numbers outside JSON's strict grammar (cjson takes
 * hex, inf and nan too), control characters in strings, \u0000, broken
 * surrogates, nesting deeper than JSON_MAX_DEPTH, and every syntax error.
 * Numbers are Lua floats, null is cjson.null (a NULL light userdata), as
 * cjson makes them.
 * @module gauth.core
 */
#include <stdlib.h>
#include <string.h>

#include "gauth.h"

#define JSON_MAX_DEPTH 32

typedef struct {
    lua_State *L;
    char *p;   /* next character */
    char *end;
    int depth;
} json_parser;

static int json_value(json_parser *j);

static void json_ws(json_parser *j)
{
    while (j->p < j->end &&
           (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t'))
        j->p++;
}

static int hex4(const char *s)
{
    int v = 0, i;
    for (i = 0; i < 4; i++) {
        int c = (unsigned char)s[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        v = v << 4 | d;
    }
    return v;
}

/* At the opening quote. Escapes are undone in place: what they decode to
 * is never longer than the escape (6 characters to at most 3 bytes, 12 to
 * 4), so the writer stays behind the reader. */
static int json_string(json_parser *j)
{
    char *s = ++j->p, *r = s, *w;

    /* The usual string has no escape: find its end and push it. */
    while (r < j->end) {
        unsigned char c = (unsigned char)*r;
        if (c == '"') {
            lua_pushlstring(j->L, s, (size_t)(r - s));
            j->p = r + 1;
            return 1;
        }
        if (c == '\\')
            break;
        if (c < 0x20)
            return 0;
        r++;
    }
    w = r;
    while (r < j->end) {
        unsigned char c = (unsigned char)*r;
        long cp;
        if (c == '"') {
            lua_pushlstring(j->L, s, (size_t)(w - s));
            j->p = r + 1;
            return 1;
        }
        if (c < 0x20)
            return 0;
        if (c != '\\') {
            *w++ = (char)c;
            r++;
            continue;
        }
        if (j->end - r < 2)
            return 0;
        switch (r[1]) {
        case '"': case '\\': case '/': *w++ = r[1]; r += 2; continue;
        case 'b': *w++ = '\b'; r += 2; continue;
        case 'f': *w++ = '\f'; r += 2; continue;
        case 'n': *w++ = '\n'; r += 2; continue;
        case 'r': *w++ = '\r'; r += 2; continue;
        case 't': *w++ = '\t'; r += 2; continue;
        case 'u': break;
        default: return 0;
        }
        if (j->end - r < 6 || (cp = hex4(r + 2)) < 0 || cp == 0)
            return 0;
        r += 6;
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return 0; /* a low surrogate first */
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            long lo;
            if (j->end - r < 6 || r[0] != '\\' || r[1] != 'u' ||
                (lo = hex4(r + 2)) < 0xDC00 || lo > 0xDFFF)
                return 0;
            r += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        if (cp < 0x80) {
            *w++ = (char)cp;
        } else if (cp < 0x800) {
            *w++ = (char)(0xC0 | cp >> 6);
            *w++ = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            *w++ = (char)(0xE0 | cp >> 12);
            *w++ = (char)(0x80 | (cp >> 6 & 0x3F));
            *w++ = (char)(0x80 | (cp & 0x3F));
        } else {
            *w++ = (char)(0xF0 | cp >> 18);
            *w++ = (char)(0x80 | (cp >> 12 & 0x3F));
            *w++ = (char)(0x80 | (cp >> 6 & 0x3F));
            *w++ = (char)(0x80 | (cp & 0x3F));
        }
    }
    return 0;
}

/* JSON's number grammar only. An integer of up to 15 digits is exact as a
 * double (what strtod gives too); the rest goes through strtod, as cjson's
 * numbers do, and is declined if strtod (a locale with another decimal
 * point) does not read all of it. */
static int json_number(json_parser *j)
{
    char *s = j->p, *q = s, buf[64], *stop;
    int neg = 0, digits = 0, plain = 1;
    double v = 0;

    if (q < j->end && *q == '-') {
        neg = 1;
        q++;
    }
    if (q >= j->end)
        return 0;
    if (*q == '0') {
        q++;
        digits = 1;
    } else if (*q >= '1' && *q <= '9') {
        while (q < j->end && *q >= '0' && *q <= '9') {
            v = v * 10 + (*q - '0');
            q++;
            digits++;
        }
    } else {
        return 0;
    }
    if (q < j->end && *q == '.') {
        plain = 0;
        q++;
        if (q >= j->end || *q < '0' || *q > '9')
            return 0;
        while (q < j->end && *q >= '0' && *q <= '9')
            q++;
    }
    if (q < j->end && (*q == 'e' || *q == 'E')) {
        plain = 0;
        q++;
        if (q < j->end && (*q == '+' || *q == '-'))
            q++;
        if (q >= j->end || *q < '0' || *q > '9')
            return 0;
        while (q < j->end && *q >= '0' && *q <= '9')
            q++;
    }
    if (!plain || digits > 15) {
        size_t n = (size_t)(q - s);
        if (n >= sizeof buf)
            return 0;
        memcpy(buf, s, n);
        buf[n] = '\0';
        v = strtod(buf, &stop);
        if (stop != buf + n)
            return 0;
        lua_pushnumber(j->L, (lua_Number)v);
    } else {
        lua_pushnumber(j->L, (lua_Number)(neg ? -v : v));
    }
    j->p = q;
    return 1;
}

static int json_literal(json_parser *j, const char *word, size_t n)
{
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0)
        return 0;
    j->p += n;
    return 1;
}

/* Into an object or array, at its opening character: one level deeper
 * (bounded, with room on the Lua stack), the character and the white
 * space after it skipped. */
static int json_enter(json_parser *j)
{
    if (++j->depth > JSON_MAX_DEPTH || !lua_checkstack(j->L, 4))
        return 0;
    j->p++;
    json_ws(j);
    return 1;
}

/* At the closing character `close`: the container ends (1). */
static int json_leave(json_parser *j, char close)
{
    if (j->p < j->end && *j->p == close) {
        j->p++;
        j->depth--;
        return 1;
    }
    return 0;
}

/* After a member or an element: 2 when the container ends, 1 after a ','
 * (and the white space after it), 0 for anything else. */
static int json_next(json_parser *j, char close)
{
    json_ws(j);
    if (json_leave(j, close))
        return 2;
    if (j->p >= j->end || *j->p != ',')
        return 0;
    j->p++;
    json_ws(j);
    return 1;
}

static int json_object(json_parser *j)
{
    lua_State *L = j->L;
    int more;

    if (!json_enter(j))
        return 0;
    /* Room for a token's claims (a dozen or so) at the top; nested
     * objects start small. */
    lua_createtable(L, 0, j->depth == 1 ? 16 : 4);
    if (json_leave(j, '}'))
        return 1;
    do {
        if (j->p >= j->end || *j->p != '"' || !json_string(j))
            return 0;
        json_ws(j);
        if (j->p >= j->end || *j->p != ':')
            return 0;
        j->p++;
        json_ws(j);
        if (!json_value(j))
            return 0;
        lua_rawset(L, -3);
    } while ((more = json_next(j, '}')) == 1);
    return more == 2;
}

static int json_array(json_parser *j)
{
    lua_State *L = j->L;
    int i = 0, more;

    if (!json_enter(j))
        return 0;
    lua_createtable(L, 4, 0);
    if (json_leave(j, ']'))
        return 1;
    do {
        if (!json_value(j))
            return 0;
        lua_rawseti(L, -2, ++i);
    } while ((more = json_next(j, ']')) == 1);
    return more == 2;
}

static int json_value(json_parser *j)
{
    if (j->p >= j->end)
        return 0;
    switch (*j->p) {
    case '"': return json_string(j);
    case '{': return json_object(j);
    case '[': return json_array(j);
    case 't':
        if (!json_literal(j, "true", 4)) return 0;
        lua_pushboolean(j->L, 1);
        return 1;
    case 'f':
        if (!json_literal(j, "false", 5)) return 0;
        lua_pushboolean(j->L, 0);
        return 1;
    case 'n':
        if (!json_literal(j, "null", 4)) return 0;
        lua_pushlightuserdata(j->L, NULL);
        return 1;
    default:
        return json_number(j);
    }
}

int gauth_json_object(lua_State *L, char *text, size_t n)
{
    json_parser j;
    int top = lua_gettop(L);

    j.L = L;
    j.p = text;
    j.end = text + n;
    j.depth = 0;
    json_ws(&j);
    if (j.p < j.end && *j.p == '{' && json_object(&j)) {
        json_ws(&j);
        if (j.p == j.end)
            return 1;
    }
    lua_settop(L, top);
    return 0;
}

/***
 * Decode a JSON object as `cjson.decode` would, or decline: the decoder
 * that `Key:verify_jws(alg, token, true)` gives the claims with (see the
 * top of csrc/json.c for what it declines).
 * @function json_object
 * @tparam string text
 * @return the table, or nil when declined (then cjson.decode decides)
 */
static int l_json_object(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    /* A writable copy owned by Lua (escapes are undone in place). */
    char *copy = (char *)lua_newuserdata(L, n > 0 ? n : 1);

    memcpy(copy, s, n);
    if (!gauth_json_object(L, copy, n))
        lua_pushnil(L);
    return 1;
}

static const luaL_Reg json_funcs[] = {
    {"json_object", l_json_object},
    {NULL, NULL}
};

void gauth_json_open(lua_State *L)
{
    gauth_setfuncs(L, json_funcs, 0);
}
