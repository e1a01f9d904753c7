/***
 * Encodings of gauth.core: strict base64url and base64, lower-case hex, and
 * the split of a compact JWS into its decoded segments (bounded work, the
 * same checks as verification's gauth_jws_decode).
 * @module gauth.core
 */
#include <stdio.h>
#include <string.h>

#include "gauth.h"

static const char B64URL[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
static const char B64STD[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Encodes into a luaL_Buffer so no C memory is held if Lua raises. */
static void b64_encode(lua_State *L, const unsigned char *s, size_t n,
                       const char *alpha, int pad)
{
    luaL_Buffer b;
    char out[4];
    size_t i;

    luaL_buffinit(L, &b);
    for (i = 0; i + 2 < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8 | s[i + 2];
        out[0] = alpha[v >> 18 & 63];
        out[1] = alpha[v >> 12 & 63];
        out[2] = alpha[v >> 6 & 63];
        out[3] = alpha[v & 63];
        luaL_addlstring(&b, out, 4);
    }
    if (n - i == 1) {
        unsigned v = (unsigned)s[i] << 16;
        out[0] = alpha[v >> 18 & 63];
        out[1] = alpha[v >> 12 & 63];
        luaL_addlstring(&b, out, 2);
        if (pad)
            luaL_addlstring(&b, "==", 2);
    } else if (n - i == 2) {
        unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8;
        out[0] = alpha[v >> 18 & 63];
        out[1] = alpha[v >> 12 & 63];
        out[2] = alpha[v >> 6 & 63];
        luaL_addlstring(&b, out, 3);
        if (pad)
            luaL_addlstring(&b, "=", 1);
    }
    luaL_pushresult(&b);
}

/* Decoding tables (-1: not in the alphabet), filled when the module opens:
 * a lookup per character instead of a chain of range tests. */
static signed char DEC_URL[256], DEC_STD[256];

static void dec_init(void)
{
    int i;
    memset(DEC_URL, -1, sizeof DEC_URL);
    memset(DEC_STD, -1, sizeof DEC_STD);
    for (i = 0; i < 64; i++) {
        DEC_URL[(unsigned char)B64URL[i]] = (signed char)i;
        DEC_STD[(unsigned char)B64STD[i]] = (signed char)i;
    }
}

static inline int decode_char(unsigned char c, int url)
{
    return url ? DEC_URL[c] : DEC_STD[c];
}

/* Strict decoding: only the alphabet, no white space, and for base64url no
 * padding; the unused low bits of the last character must be zero so that
 * every byte string has exactly one encoding. Checks everything before it
 * pushes, so a refusal leaves the stack untouched. */
static const char *b64_check(const unsigned char *s, size_t n, int url,
                             char *msg, size_t cap)
{
    const signed char *dec = url ? DEC_URL : DEC_STD;
    size_t i;
    int any = 0;
    /* One pass without a branch per character (a token's segments are
     * checked on every request); the offending offset only on failure. */
    for (i = 0; i < n; i++)
        any |= dec[s[i]];
    if (any < 0) {
        for (i = 0; i < n && dec[s[i]] >= 0; i++)
            ;
        snprintf(msg, cap, "invalid character at offset %u", (unsigned)i);
        return msg;
    }
    if (n % 4 == 1)
        return "truncated input";
    if (n % 4 == 2 && (decode_char(s[n - 1], url) & 15) != 0)
        return "non-zero trailing bits";
    if (n % 4 == 3 && (decode_char(s[n - 1], url) & 3) != 0)
        return "non-zero trailing bits";
    return NULL;
}

/* Decodes checked text into a luaL_Buffer (no C memory held if Lua raises
 * for want of memory), a stack chunk at a time: adding three bytes per
 * call costs more than the decoding. */
static void b64_push(lua_State *L, const unsigned char *s, size_t n, int url)
{
    luaL_Buffer b;
    unsigned char out[768];
    size_t i, o = 0, full = n - n % 4;

    luaL_buffinit(L, &b);
    for (i = 0; i < full; i += 4) {
        unsigned v = (unsigned)decode_char(s[i], url) << 18 |
                     (unsigned)decode_char(s[i + 1], url) << 12 |
                     (unsigned)decode_char(s[i + 2], url) << 6 |
                     (unsigned)decode_char(s[i + 3], url);
        out[o++] = (unsigned char)(v >> 16);
        out[o++] = (unsigned char)(v >> 8 & 255);
        out[o++] = (unsigned char)(v & 255);
        if (o == sizeof out) {
            luaL_addlstring(&b, (const char *)out, o);
            o = 0;
        }
    }
    if (n % 4 >= 2) {
        unsigned v = (unsigned)decode_char(s[i], url) << 18 |
                     (unsigned)decode_char(s[i + 1], url) << 12;
        if (n % 4 == 3)
            v |= (unsigned)decode_char(s[i + 2], url) << 6;
        out[o++] = (unsigned char)(v >> 16);
        if (n % 4 == 3)
            out[o++] = (unsigned char)(v >> 8 & 255);
    }
    if (o > 0)
        luaL_addlstring(&b, (const char *)out, o);
    luaL_pushresult(&b);
}

const char *gauth_b64url_push(lua_State *L, const char *s, size_t n,
                              char *msg, size_t cap)
{
    const char *why = b64_check((const unsigned char *)s, n, 1, msg, cap);
    if (why == NULL)
        b64_push(L, (const unsigned char *)s, n, 1);
    return why;
}

/* b64_check and the decoding in one pass (a token's payload and
 * signature are read once per request, not twice): decodes base64url into
 * `out` (n / 4 * 3 + 2 bytes) and returns the length, or (size_t)-1 where
 * b64_check refuses the text (ask it why). */
static size_t b64_decode_strict(const unsigned char *u, size_t n,
                                unsigned char *out)
{
    size_t i, o = 0, full = n - n % 4;
    int any = 0;

    if (n % 4 == 1)
        return (size_t)-1;
    for (i = 0; i < full; i += 4) {
        int a = DEC_URL[u[i]], b = DEC_URL[u[i + 1]],
            c = DEC_URL[u[i + 2]], d = DEC_URL[u[i + 3]];
        unsigned v = (unsigned)a << 18 | (unsigned)b << 12 |
                     (unsigned)c << 6 | (unsigned)d;
        any |= a | b | c | d;
        out[o++] = (unsigned char)(v >> 16);
        out[o++] = (unsigned char)(v >> 8 & 255);
        out[o++] = (unsigned char)(v & 255);
    }
    if (n % 4 >= 2) {
        int a = DEC_URL[u[i]], b = DEC_URL[u[i + 1]],
            c = n % 4 == 3 ? DEC_URL[u[i + 2]] : 0;
        unsigned v = (unsigned)a << 18 | (unsigned)b << 12 | (unsigned)c << 6;
        any |= a | b | c;
        /* the unused low bits of the last character must be zero */
        if (any < 0 || (n % 4 == 2 && (b & 15) != 0) ||
            (n % 4 == 3 && (c & 3) != 0))
            return (size_t)-1;
        out[o++] = (unsigned char)(v >> 16);
        if (n % 4 == 3)
            out[o++] = (unsigned char)(v >> 8 & 255);
    }
    return any < 0 ? (size_t)-1 : o;
}

size_t gauth_b64url_to(const char *s, size_t n, unsigned char *out,
                       size_t cap)
{
    if ((n / 4) * 3 + (n % 4 ? n % 4 - 1 : 0) > cap)
        return (size_t)-1;
    return b64_decode_strict((const unsigned char *)s, n, out);
}

static int b64_decode(lua_State *L, int url)
{
    size_t n;
    const unsigned char *s =
        (const unsigned char *)luaL_checklstring(L, 1, &n);
    const char *what = url ? "base64url decode" : "base64 decode";
    const char *why;
    char msg[64];

    if (!url) {
        if (n % 4 != 0)
            return gauth_error(L, what, "length is not a multiple of 4");
        if (n > 0 && s[n - 1] == '=') n--;
        if (n > 0 && s[n - 1] == '=') n--;
    }
    why = b64_check(s, n, url, msg, sizeof msg);
    if (why != NULL)
        return gauth_error(L, what, why);
    b64_push(L, s, n, url);
    return 1;
}

/***
 * base64url without padding (RFC 4648 section 5).
 * @function b64url_encode
 * @tparam string data
 * @treturn string
 */
static int l_b64url_encode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    b64_encode(L, (const unsigned char *)s, n, B64URL, 0);
    return 1;
}

/***
 * Strict base64url decode: no padding, nothing outside the alphabet.
 * @function b64url_decode
 * @tparam string text
 * @return bytes, or nil and an error message
 */
static int l_b64url_decode(lua_State *L)
{
    return b64_decode(L, 1);
}

/***
 * Standard base64 with padding.
 * @function b64_encode
 */
static int l_b64_encode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    b64_encode(L, (const unsigned char *)s, n, B64STD, 1);
    return 1;
}

/***
 * Strict standard base64 decode (padding required).
 * @function b64_decode
 */
static int l_b64_decode(lua_State *L)
{
    return b64_decode(L, 0);
}

/***
 * Lower-case hexadecimal of a byte string (signatures and digests as
 * Cloud Storage's V4 signing writes them).
 * @function hex_encode
 * @tparam string data
 * @treturn string twice as long
 */
static int l_hex_encode(lua_State *L)
{
    static const char digits[] = "0123456789abcdef";
    size_t n, i;
    const unsigned char *s =
        (const unsigned char *)luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    char pair[2];

    luaL_buffinit(L, &b);
    for (i = 0; i < n; i++) {
        pair[0] = digits[s[i] >> 4];
        pair[1] = digits[s[i] & 15];
        luaL_addlstring(&b, pair, 2);
    }
    luaL_pushresult(&b);
    return 1;
}


/* Bounds of jws_split: Google's ID tokens are 1-2 KiB; anything far
 * larger is refused before any decoding, so garbage costs one length
 * check. */
#define JWS_MAX_TOKEN 65536
#define JWS_MAX_HEADER 4096
#define JWS_MAX_SIG GAUTH_JWS_MAX_SIG

static int jws_malformed(lua_State *L, char *msg)
{
    return gauth_error(L, "jws", msg);
}

/* The bounds and the segment count of a compact JWS, before any decoding:
 * sets the two dots' offsets, or writes why not into `msg`. */
static const char *jws_shape(const char *t, size_t n, size_t *d1, size_t *d2,
                             char *msg, size_t cap)
{
    size_t i, dots = 0;

    if (n > JWS_MAX_TOKEN) {
        snprintf(msg, cap, "malformed: token of %lu bytes (limit %d)",
                 (unsigned long)n, JWS_MAX_TOKEN);
        return msg;
    }
    /* memchr: the token is scanned on every request. */
    for (i = 0; i < n; i++) {
        const char *dot = memchr(t + i, '.', n - i);
        if (dot == NULL)
            break;
        i = (size_t)(dot - t);
        if (dots == 0) *d1 = i;
        else if (dots == 1) *d2 = i;
        dots++;
    }
    if (dots != 2) {
        snprintf(msg, cap, "malformed: %lu segment%s (a JWS has 3)",
                 (unsigned long)(dots + 1), dots == 0 ? "" : "s");
        return msg;
    }
    if (*d1 > JWS_MAX_HEADER) {
        snprintf(msg, cap, "malformed: header of %lu bytes (limit %d)",
                 (unsigned long)*d1, JWS_MAX_HEADER);
        return msg;
    }
    if (n - *d2 - 1 > JWS_MAX_SIG) {
        snprintf(msg, cap, "malformed: signature of %lu bytes (limit %d)",
                 (unsigned long)(n - *d2 - 1), JWS_MAX_SIG);
        return msg;
    }
    return NULL;
}

static const char *jws_bad_segment(const char *what, const char *why,
                                   char *msg, size_t cap)
{
    snprintf(msg, cap, "malformed: bad base64url in %s (%s)", what, why);
    return msg;
}

/* The message for a segment that b64_decode_strict refused: b64_check
 * says why (the two refuse the same texts). */
static const char *jws_refused(const char *what, const unsigned char *s,
                               size_t n, char *msg, size_t cap)
{
    char why[64];
    const char *w = b64_check(s, n, 1, why, sizeof why);
    return jws_bad_segment(what, w != NULL ? w : "invalid", msg, cap);
}

static int jws_segment(lua_State *L, const char *s, size_t n,
                       const char *what, char *msg, size_t cap)
{
    char why[64];
    const char *w = gauth_b64url_push(L, s, n, why, sizeof why);
    if (w != NULL) {
        jws_bad_segment(what, w, msg, cap);
        return 0;
    }
    return 1;
}

/* The most payload (decoded) that gauth_jws_decode turns into claims from
 * a buffer on the C stack; a longer one is pushed as text (Google's
 * claims are a few hundred bytes). */
#define JWS_CLAIMS_BYTES 4096

const char *gauth_jws_decode(lua_State *L, const char *t, size_t n,
                             unsigned char *sig, size_t *siglen,
                             size_t *signed_len, int claims, char *msg,
                             size_t cap)
{
    size_t d1 = 0, d2 = 0, plen, slen;
    const unsigned char *pt, *st;
    char why[64];
    const char *w;

    if (jws_shape(t, n, &d1, &d2, msg, cap) != NULL)
        return msg;
    /* The same checks in the same order as jws_split, so a token gets the
     * same message from both. The header is checked, not pushed: the
     * caller knows it already. */
    w = b64_check((const unsigned char *)t, d1, 1, why, sizeof why);
    if (w != NULL)
        return jws_bad_segment("header", w, msg, cap);
    pt = (const unsigned char *)t + d1 + 1;
    plen = d2 - d1 - 1;
    st = (const unsigned char *)t + d2 + 1;
    slen = n - d2 - 1;
    *signed_len = d2;
    if (claims && plen / 4 * 3 + 2 <= JWS_CLAIMS_BYTES) {
        /* Every check before anything is pushed, then the claims straight
         * from the decoded bytes: no Lua string of the payload. */
        char buf[JWS_CLAIMS_BYTES];
        size_t blen = b64_decode_strict(pt, plen, (unsigned char *)buf);
        if (blen == (size_t)-1)
            return jws_refused("payload", pt, plen, msg, cap);
        *siglen = b64_decode_strict(st, slen, sig);
        if (*siglen == (size_t)-1)
            return jws_refused("signature", st, slen, msg, cap);
        if (!gauth_json_object(L, buf, blen)) {
            /* declined: the text, for cjson (escapes may have been undone
             * in place, so decode it again) */
            blen = b64_decode_strict(pt, plen, (unsigned char *)buf);
            lua_pushlstring(L, buf, blen);
        }
        return NULL;
    }
    if (!jws_segment(L, (const char *)pt, plen, "payload", msg, cap))
        return msg;
    *siglen = b64_decode_strict(st, slen, sig);
    if (*siglen == (size_t)-1) {
        lua_pop(L, 1);
        return jws_refused("signature", st, slen, msg, cap);
    }
    return NULL;
}

/***
 * Split a compact JWS (`header.payload.signature`) and decode its segments,
 * with bounded work: at most 64 KiB of token, 4 KiB of header, and a
 * signature no longer than an 8192-bit RSA one.
 * @function jws_split
 * @tparam string token
 * @return header JSON text, payload JSON text, signature bytes, and the
 * length of the signed part (`header.payload`); or nil and a message that
 * starts with "malformed: " and never quotes the token
 */
static int l_jws_split(lua_State *L)
{
    size_t n, d1 = 0, d2 = 0;
    const char *t = luaL_checklstring(L, 1, &n);
    char msg[160];

    if (jws_shape(t, n, &d1, &d2, msg, sizeof msg) != NULL)
        return jws_malformed(L, msg);
    if (!jws_segment(L, t, d1, "header", msg, sizeof msg))
        return jws_malformed(L, msg);
    if (!jws_segment(L, t + d1 + 1, d2 - d1 - 1, "payload", msg, sizeof msg)) {
        lua_pop(L, 1);
        return jws_malformed(L, msg);
    }
    if (!jws_segment(L, t + d2 + 1, n - d2 - 1, "signature", msg,
                     sizeof msg)) {
        lua_pop(L, 2);
        return jws_malformed(L, msg);
    }
    lua_pushinteger(L, (lua_Integer)d2);
    return 4;
}

static const luaL_Reg encoding_funcs[] = {
    {"b64url_encode", l_b64url_encode},
    {"b64url_decode", l_b64url_decode},
    {"b64_encode", l_b64_encode},
    {"b64_decode", l_b64_decode},
    {"hex_encode", l_hex_encode},
    {"jws_split", l_jws_split},
    {NULL, NULL}
};

void gauth_encoding_open(lua_State *L)
{
    dec_init();
    gauth_setfuncs(L, encoding_funcs, 0);
}
