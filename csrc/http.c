/***
 * gauth.Http: one reusable libcurl easy handle. Internal: the Lua transport
 * (gauth.transport.curl) is the API; this is the part that needs C.
 *
 * Memory discipline. Everything C-allocated during a request (the header
 * list, the response buffers, open files) hangs off the userdata, never off
 * the C stack. A Lua error raised at any point (argument checks, or a memory
 * error while pushing results) therefore leaks nothing: the next perform()
 * or __gc releases it. Arguments are all checked before anything is
 * allocated, and no Lua function is called from inside a curl callback.
 * @module gauth.core
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>

#include "gauth.h"

/* One response's header block may not grow past this (libcurl 7.88 has no
 * overall cap of its own, only one per line). */
#define HEAD_MAX (256 * 1024)
/* Response buffers bigger than this are freed after a request instead of
 * being kept for the next one, so one large download does not pin memory. */
#define KEEP_MAX (256 * 1024)
/* Transfer buffer for file streaming: bigger than libcurl's 16/64 KiB
 * defaults, for throughput; memory stays flat at this size. */
#define STREAM_BUF (256 * 1024)
/* Largest integer a double carries exactly: offsets and sizes above it are
 * refused rather than rounded. */
#define MAX_EXACT 9007199254740992.0

/* Why gauth (not libcurl) aborted a transfer. */
enum {
    WHY_NONE = 0,
    WHY_MAX_BODY,
    WHY_HEAD_MAX,
    WHY_NOMEM,
    WHY_READ,
    WHY_WRITE
};

static const char *const why_tag[] = {
    NULL, "max_body", "header_size", "nomem", "read", "write"
};

typedef struct {
    char *p;
    size_t len, cap;
} gbuf;

/* What the options libcurl holds were last set for. A request that
 * matches in everything but the URL, the header list, the body and the
 * numbers below skips curl_easy_reset and the full setup (see l_perform). */
typedef struct {
    int valid;              /* 0: the next request resets and sets all */
    int midx;               /* index in methods[] */
    int mode;               /* MODE_* */
    int down;               /* download_file: BUFFERSIZE set */
    int https;              /* REDIR_PROTOCOLS */
    int follow;             /* FOLLOWLOCATION + MAXREDIRS */
    long timeout_ms;        /* 0: none (libcurl's default) */
    long connect_ms;        /* 0: none (libcurl's default) */
    curl_off_t maxfs;       /* MAXFILESIZE_LARGE; 0: none (the default) */
    char *ca_file;          /* copies; NULL: not set */
    char *noproxy;
    char *proxy;            /* may hold proxy credentials: freed with the rest */
    char *accept_enc;
    char *ssl_cert;         /* client certificate (PEM file), mTLS */
    char *ssl_key;          /* its private key (PEM file) */
} gauth_setup;

enum {
    MODE_NONE = 0,          /* no body: GET, HEAD, DELETE */
    MODE_MEM,               /* POST + POSTFIELDS (a body or "") */
    MODE_FILE               /* POST + READFUNCTION (upload_file) */
};

typedef struct {
    CURL *curl;
    struct curl_slist *hdrs;
    gauth_setup set;        /* what curl's options were set for */
    gbuf body;              /* body of the response being received */
    gbuf head;              /* its header block */
    FILE *in;               /* opts.upload_file */
    FILE *out;              /* opts.download_file */
    /* per request */
    size_t max_body;        /* 0: no cap */
    curl_off_t in_start;    /* upload window: file offset ... */
    curl_off_t in_len;      /* ... and length */
    curl_off_t in_pos;      /* bytes of the window handed to libcurl */
    off_t out_start;        /* size of download_file before the request */
    curl_off_t out_written; /* bytes appended to it by this response */
    int status;             /* status of the response being received */
    int why;                /* WHY_* */
    int saved_errno;
    char errbuf[CURL_ERROR_SIZE];
} gauth_http;

static int global_init_rc = -1;

/* ------------------------------------------------------------------ */
/* buffers                                                              */

static int gbuf_add(gbuf *b, const char *s, size_t n)
{
    if (n > b->cap - b->len) {
        size_t cap = b->cap ? b->cap : 16384;
        char *p;
        while (cap - b->len < n) {
            if (cap > ((size_t)-1) / 2)
                return -1;
            cap *= 2;
        }
        p = realloc(b->p, cap);
        if (p == NULL)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

static void gbuf_trim(gbuf *b)
{
    b->len = 0;
    if (b->cap > KEEP_MAX) {
        free(b->p);
        b->p = NULL;
        b->cap = 0;
    }
}

/* Releases what one request allocated; safe to call at any time. The
 * header list stays for the next request (see hdrs_same). */
static void request_done(gauth_http *h)
{
    if (h->in != NULL) {
        fclose(h->in);
        h->in = NULL;
    }
    if (h->out != NULL) {
        fclose(h->out);
        h->out = NULL;
    }
    gbuf_trim(&h->body);
    gbuf_trim(&h->head);
}

/* ------------------------------------------------------------------ */
/* the options kept from one request to the next                        */

static void setup_forget(gauth_setup *st)
{
    free(st->ca_file);
    free(st->noproxy);
    free(st->proxy);
    free(st->accept_enc);
    free(st->ssl_cert);
    free(st->ssl_key);
    memset(st, 0, sizeof *st);
}

static int str_same(const char *kept, const char *s)
{
    return kept == NULL ? s == NULL : s != NULL && strcmp(kept, s) == 0;
}

/* Keeps a copy of `s` in *slot; 0 when out of memory. */
static int str_keep(char **slot, const char *s)
{
    free(*slot);
    *slot = NULL;
    if (s == NULL)
        return 1;
    *slot = strdup(s);
    return *slot != NULL;
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

/* Whether h->hdrs already holds headers[1..nh] (the table at index `t`)
 * followed by `extra` (NULL-terminated): a client sends the same headers
 * request after request, so the list is kept from one to the next instead
 * of being remade (two allocations per line). Allocates nothing. */
static int hdrs_same(lua_State *L, gauth_http *h, int t, int nh,
                     const char *const *extra)
{
    struct curl_slist *n = h->hdrs;
    int i;

    for (i = 1; i <= nh; i++, n = n->next) {
        size_t len;
        const char *s;
        int same;
        if (n == NULL)
            return 0;
        lua_rawgeti(L, t, i);
        s = lua_tolstring(L, -1, &len);
        same = strlen(n->data) == len && memcmp(n->data, s, len) == 0;
        lua_pop(L, 1);
        if (!same)
            return 0;
    }
    return rest_is(n, extra);
}

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

/* What walking a header table found. */
typedef struct {
    int nlines;             /* lines it makes */
    int same;               /* all equal to h->hdrs' first nlines nodes */
    int has_ctype, has_expect;
    int bad;                /* HB_*: the first problem, its key pushed */
    const char *accept_enc; /* the accept-encoding value (in the table) */
    struct curl_slist *node;
} hwalk;

enum { HB_NONE = 0, HB_NAME, HB_TYPE, HB_VALUE };

/* Can `v` be sent as a header value? RFC 9110 (5.5): a field value is
 * visible characters, obs-text, spaces and tabs; CR, LF and NUL would let
 * it inject headers or cut it short, the other controls are invalid too.
 * The same rule as gauth.util.header_value_ok in Lua. */
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
 * stack. Returns 0 when out of memory. */
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

/* The same for a header table walked into `w`: its lines matched the kept
 * list's first nodes; the rest must be `extra`. */
static int map_same(const hwalk *w, const char *const *extra)
{
    return w->same && rest_is(w->node, extra);
}

/* ------------------------------------------------------------------ */
/* curl callbacks: C only, no Lua                                        */

/* Rolls download_file back to its size before the request: a redirect or
 * retried response body must not stay in front of the real one. */
static int out_rewind(gauth_http *h)
{
    if (h->out == NULL || h->out_written == 0)
        return 0;
    h->out_written = 0;
    if (fflush(h->out) != 0 || ftruncate(fileno(h->out), h->out_start) != 0) {
        h->saved_errno = errno;
        return -1;
    }
    return 0;
}

static size_t on_header(char *ptr, size_t size, size_t n, void *ud)
{
    gauth_http *h = ud;
    size_t len = size * n;

    if (len >= 5 && memcmp(ptr, "HTTP/", 5) == 0) {
        /* A new response starts (after a 1xx, a redirect or a proxy's
         * CONNECT answer): only the last one is returned. */
        size_t i = 5;
        int st = 0;
        h->head.len = 0;
        h->body.len = 0;
        if (out_rewind(h) != 0) {
            h->why = WHY_WRITE;
            return 0;
        }
        while (i < len && ptr[i] != ' ')
            i++;
        while (i < len && ptr[i] == ' ')
            i++;
        while (i < len && ptr[i] >= '0' && ptr[i] <= '9' && st < 1000)
            st = st * 10 + (ptr[i++] - '0');
        h->status = st;
    }
    if (len > HEAD_MAX - h->head.len) {
        h->why = WHY_HEAD_MAX;
        return 0;
    }
    if (gbuf_add(&h->head, ptr, len) != 0) {
        h->why = WHY_NOMEM;
        return 0;
    }
    return len;
}

static size_t on_body(char *ptr, size_t size, size_t n, void *ud)
{
    gauth_http *h = ud;
    size_t len = size * n;

    /* Only a 2xx body goes to download_file; an error body (JSON from
     * Google) stays in memory for the caller to read. */
    if (h->out != NULL && h->status >= 200 && h->status < 300) {
        if (fwrite(ptr, 1, len, h->out) != len) {
            h->saved_errno = errno;
            h->why = WHY_WRITE;
            return 0;
        }
        h->out_written += (curl_off_t)len;
        return len;
    }
    if (h->max_body != 0 && len > h->max_body - h->body.len) {
        h->why = WHY_MAX_BODY;
        return 0;
    }
    if (gbuf_add(&h->body, ptr, len) != 0) {
        h->why = WHY_NOMEM;
        return 0;
    }
    return len;
}

static size_t on_read(char *buf, size_t size, size_t n, void *ud)
{
    gauth_http *h = ud;
    size_t want = size * n, got;
    curl_off_t left = h->in_len - h->in_pos;

    if (left <= 0)
        return 0;
    if ((curl_off_t)want > left)
        want = (size_t)left;
    got = fread(buf, 1, want, h->in);
    if (got == 0) {
        /* The file is shorter than the length announced in
         * Content-Length: abort rather than hang the server. */
        h->saved_errno = ferror(h->in) ? errno : 0;
        h->why = WHY_READ;
        return CURL_READFUNC_ABORT;
    }
    h->in_pos += (curl_off_t)got;
    return got;
}

/* libcurl rewinds the body when it must send it again (a 307/308, an
 * HTTP/2 stream refused, auth negotiation). */
static int on_seek(void *ud, curl_off_t off, int origin)
{
    gauth_http *h = ud;

    if (origin != SEEK_SET)
        return CURL_SEEKFUNC_CANTSEEK;
    if (off < 0 || off > h->in_len)
        return CURL_SEEKFUNC_FAIL;
    if (fseeko(h->in, (off_t)(h->in_start + off), SEEK_SET) != 0)
        return CURL_SEEKFUNC_FAIL;
    h->in_pos = off;
    return CURL_SEEKFUNC_OK;
}

/* ------------------------------------------------------------------ */
/* argument reading (may raise; allocates nothing)                      */

static gauth_http *check_http(lua_State *L)
{
    gauth_http *h = luaL_checkudata(L, 1, GAUTH_HTTP_MT);
    if (h->curl == NULL)
        luaL_error(L, "gauth.core: http: the handle is closed");
    return h;
}

/* Pushes opts[name] and returns its type; the value stays on the stack so
 * a string taken from it stays alive for the whole request. */
static int opt_field(lua_State *L, int opts, const char *name)
{
    if (opts == 0) {
        lua_pushnil(L);
        return LUA_TNIL;
    }
    lua_getfield(L, opts, name);
    return lua_type(L, -1);
}

static const char *opt_string(lua_State *L, int opts, const char *name)
{
    int t = opt_field(L, opts, name);
    const char *s;
    size_t len;
    if (t == LUA_TNIL)
        return NULL;
    if (t != LUA_TSTRING)
        luaL_error(L, "gauth.core: http: opts.%s must be a string", name);
    s = lua_tolstring(L, -1, &len);
    if (strlen(s) != len)
        luaL_error(L, "gauth.core: http: opts.%s contains a NUL byte", name);
    return s;
}

/* A non-negative number of seconds as milliseconds; -1 when absent. */
static long opt_ms(lua_State *L, int opts, const char *name)
{
    lua_Number s;
    long ms;
    int t = opt_field(L, opts, name);
    if (t == LUA_TNIL)
        return -1;
    if (t != LUA_TNUMBER)
        luaL_error(L, "gauth.core: http: opts.%s must be a number", name);
    s = lua_tonumber(L, -1);
    if (!(s >= 0) || s > 1e9)
        luaL_error(L, "gauth.core: http: opts.%s must be between 0 and 1e9 seconds", name);
    ms = (long)(s * 1000.0 + 0.5);
    /* libcurl reads 0 as "no limit"; a caller with no time left means the
     * opposite, so the smallest limit stands in for it. */
    if (ms == 0)
        ms = 1;
    return ms;
}

/* A non-negative integer (bytes, offsets); -1 when absent. */
static double opt_size(lua_State *L, int opts, const char *name)
{
    lua_Number v;
    int t = opt_field(L, opts, name);
    if (t == LUA_TNIL)
        return -1;
    if (t != LUA_TNUMBER)
        luaL_error(L, "gauth.core: http: opts.%s must be a number", name);
    v = lua_tonumber(L, -1);
    if (!(v >= 0) || v > MAX_EXACT || v != (lua_Number)(long long)v)
        luaL_error(L, "gauth.core: http: opts.%s must be a non-negative integer", name);
    return (double)v;
}

static int has_prefix_ci(const char *s, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && strncasecmp(s, prefix, n) == 0;
}

/* ------------------------------------------------------------------ */
/* response header block -> table                                       */

/* Pushes the reason phrase of the status line at the start of `p` (what
 * Lua's "^HTTP/[%d.]+ %d+ ?([^\r\n]*)" captures; "" when it does not
 * match). */
static void push_reason(lua_State *L, const char *p, size_t len)
{
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

/* Pushes a table of the header lines of the block `p`: what Lua's
 * gmatch("\n([^:\r\n]+):[ \t]*([^\r\n]*)") finds, names in lower case
 * (ASCII), values without trailing blanks, a repeated name's values joined
 * with ", " in order; then the reason phrase. Allocates only Lua objects
 * (a memory error raises and leaks nothing: `p` belongs to the caller). */
static void push_headers(lua_State *L, const char *p, size_t len)
{
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
    push_reason(L, p, len);
}

/***
 * Parse a raw response header block ("HTTP/1.1 200 OK\r\nName: value\r\n
 * ...") into {lower-case name = value} (repeated names joined with ", ").
 * @function http_parse_headers
 * @tparam string block
 * @return headers, reason phrase ("" when none)
 */
static int l_http_parse_headers(lua_State *L)
{
    size_t len;
    const char *p = luaL_checklstring(L, 1, &len);
    push_headers(L, p, len);
    return 2;
}

/* ------------------------------------------------------------------ */
/* results                                                              */

/* Formats "gauth.core: http: <curl text> (<code>): <detail>", releases the
 * request's memory and pushes nil, message, curl code, reason tag. */
static int push_failure(lua_State *L, gauth_http *h, CURLcode rc)
{
    char detail[CURL_ERROR_SIZE + 160];
    char msg[sizeof detail + 200];
    const char *tag = why_tag[h->why];

    detail[0] = '\0';
    switch (h->why) {
    case WHY_MAX_BODY:
        snprintf(detail, sizeof detail,
                 "response body larger than max_body (%zu bytes)", h->max_body);
        break;
    case WHY_HEAD_MAX:
        snprintf(detail, sizeof detail,
                 "response headers larger than %d bytes", HEAD_MAX);
        break;
    case WHY_NOMEM:
        snprintf(detail, sizeof detail, "out of memory for the response");
        break;
    case WHY_READ:
        if (h->saved_errno != 0)
            snprintf(detail, sizeof detail, "upload_file: read failed: %s",
                     strerror(h->saved_errno));
        else
            snprintf(detail, sizeof detail,
                     "upload_file: file shorter than upload_length");
        break;
    case WHY_WRITE:
        snprintf(detail, sizeof detail, "download_file: write failed: %s",
                 strerror(h->saved_errno));
        break;
    default:
        if (rc == CURLE_FILESIZE_EXCEEDED) {
            snprintf(detail, sizeof detail,
                     "response body larger than max_body (%zu bytes)",
                     h->max_body);
            tag = "max_body";
        } else {
            snprintf(detail, sizeof detail, "%s", h->errbuf);
        }
        break;
    }
    if (detail[0] != '\0')
        snprintf(msg, sizeof msg, "gauth.core: http: %s (%d): %s",
                 curl_easy_strerror(rc), (int)rc, detail);
    else
        snprintf(msg, sizeof msg, "gauth.core: http: %s (%d)",
                 curl_easy_strerror(rc), (int)rc);
    request_done(h);
    lua_pushnil(L);
    lua_pushstring(L, msg);
    lua_pushinteger(L, (lua_Integer)rc);
    if (tag != NULL)
        lua_pushstring(L, tag);
    else
        lua_pushnil(L);
    return 4;
}

/* A failure before libcurl ran (a file that cannot be opened). */
static int push_file_failure(lua_State *L, gauth_http *h, const char *what,
                             const char *path, const char *detail)
{
    char msg[1024];
    snprintf(msg, sizeof msg, "gauth.core: http: %s: %s: %s", what, path,
             detail);
    request_done(h);
    lua_pushnil(L);
    lua_pushstring(L, msg);
    lua_pushnil(L);
    lua_pushliteral(L, "file");
    return 4;
}

/* ------------------------------------------------------------------ */
/* methods                                                              */

/***
 * Make an Http object owning one libcurl easy handle (kept alive across
 * requests).
 * @function http_new
 * @return Http | nil, message
 */
static int l_http_new(lua_State *L)
{
    /* The userdata exists, zeroed and with its __gc, before the handle:
     * whatever happens next, the handle has an owner. */
    gauth_http *h = lua_newuserdata(L, sizeof *h);
    memset(h, 0, sizeof *h);
    gauth_setmetatable(L, GAUTH_HTTP_MT);
    if (global_init_rc != 0)
        return gauth_error(L, "http", "curl_global_init failed");
    h->curl = curl_easy_init();
    if (h->curl == NULL)
        return gauth_error(L, "http", "curl_easy_init failed");
    return 1;
}

/***
 * libcurl's version and its TLS, zlib and HTTP/2 libraries
 * ("libcurl/7.88.1 OpenSSL/3.0.x zlib/1.2.13 nghttp2/1.52.0").
 * @function http_version
 */
static int l_http_version(lua_State *L)
{
    /* Built from curl_version_info(), not curl_version(): the latter also
     * asks libldap for its version, which initialises (and never frees)
     * libldap and libsasl2 just to print a user agent. */
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    luaL_Buffer b;

    luaL_buffinit(L, &b);
    luaL_addstring(&b, "libcurl/");
    luaL_addstring(&b, v->version);
    if (v->ssl_version != NULL) {
        luaL_addchar(&b, ' ');
        luaL_addstring(&b, v->ssl_version);
    }
    if (v->libz_version != NULL) {
        luaL_addstring(&b, " zlib/");
        luaL_addstring(&b, v->libz_version);
    }
    if (v->age >= CURLVERSION_FIFTH && v->nghttp2_version != NULL) {
        luaL_addstring(&b, " nghttp2/");
        luaL_addstring(&b, v->nghttp2_version);
    }
    luaL_pushresult(&b);
    return 1;
}

/***
 * Release the handle and its connections. Idempotent; also the __gc.
 * @function Http:close
 */
static int l_close(lua_State *L)
{
    gauth_http *h = luaL_checkudata(L, 1, GAUTH_HTTP_MT);
    request_done(h);
    if (h->hdrs != NULL) {
        curl_slist_free_all(h->hdrs);
        h->hdrs = NULL;
    }
    setup_forget(&h->set);
    free(h->body.p);
    free(h->head.p);
    memset(&h->body, 0, sizeof h->body);
    memset(&h->head, 0, sizeof h->head);
    if (h->curl != NULL) {
        curl_easy_cleanup(h->curl);
        h->curl = NULL;
    }
    return 0;
}

static int l_tostring(lua_State *L)
{
    gauth_http *h = luaL_checkudata(L, 1, GAUTH_HTTP_MT);
    lua_pushfstring(L, "gauth.Http (%p)", (void *)h);
    return 1;
}

static const char *const methods[] = {
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", NULL
};

/***
 * Perform one request.
 * @function Http:perform
 * @tparam string method GET, HEAD, POST, PUT, PATCH or DELETE
 * @tparam string url http:// or https://
 * @tparam[opt] table headers array of "name: value" strings; with
 *   `opts.header_map`, a table {name = value} instead (a string, or an array
 *   of strings and numbers for a repeated header, false to leave one out;
 *   accept-encoding is taken as `opts.accept_encoding`, content-length is
 *   libcurl's): checked here, and a problem is returned, not raised, as
 *   nil, the key, nil, "header_name" | "header_type" | "header_value" (a
 *   value with CR, LF, NUL or another control character; accept-encoding's too)
 * @tparam[opt] string body request body (binary safe)
 * @tparam[opt] table opts `timeout`, `connect_timeout` (seconds),
 *   `max_body` (bytes), `ca_file`, `ssl_cert` + `ssl_key` (client
 *   certificate and key, PEM files, for mutual TLS), `noproxy` (hosts never proxied,
 *   replacing NO_PROXY), `proxy` (the proxy URL, "" for none: replaces
 *   the environment's), `follow` (boolean), `accept_encoding`
 *   (the Accept-Encoding to send; the body is then decoded),
 *   `upload_file` + `upload_offset` + `upload_length` (stream the body
 *   from a file), `download_file` (append a 2xx body to a file),
 *   `parse_headers` (the headers as a table, then the reason phrase)
 * @return status, header block (or table), body, new connections made,
 *   bytes appended to download_file[, reason phrase[, the content coding
 *   libcurl removed, with header_map and an accept-encoding]]
 * @return nil, message, curl code (nil when libcurl did not run), reason
 *   ("max_body", "header_size", "nomem", "read", "write", "file" or nil)
 */
static int l_perform(lua_State *L)
{
    gauth_http *h = check_http(L);
    CURL *c = h->curl;
    int midx = luaL_checkoption(L, 2, NULL, methods);
    const char *method = methods[midx];
    size_t url_len, body_len = 0;
    const char *url = luaL_checklstring(L, 3, &url_len);
    const char *body = luaL_optlstring(L, 5, NULL, &body_len);
    int opts = 0, nh = 0, i, has_ctype = 0, has_expect = 0, has_body, sends_body;
    long timeout_ms, connect_ms;
    double max_body, up_off, up_len;
    const char *ca_file, *accept_enc, *up_path, *down_path, *noproxy, *proxy;
    const char *ssl_cert, *ssl_key;
    int follow, parse_head, map;
    hwalk w;
    curl_off_t in_len = 0;
    CURLcode rc;
    long status = 0, nconn = 0;
    int mode, https;
    curl_off_t maxfs;
    gauth_setup *ks;

    if (strlen(url) != url_len)
        luaL_argerror(L, 3, "URL contains a NUL byte");
    if (!lua_isnoneornil(L, 6)) {
        luaL_checktype(L, 6, LUA_TTABLE);
        opts = 6;
    }
    map = opt_field(L, opts, "header_map") != LUA_TNIL && lua_toboolean(L, -1);
    memset(&w, 0, sizeof w);
    w.same = 1;             /* no table: no lines, as the kept list may be */
    w.node = h->hdrs;
    if (map && !lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        lua_settop(L, 6);
        luaL_checkstack(L, 16, "gauth.core: http: headers");
        if (!walk_headers(L, h, 4, &w, 0))
            luaL_error(L, "gauth.core: http: out of memory");
        if (w.bad != HB_NONE) {
            /* The caller raises (a bad name or value type) or fails (a
             * value with CR/LF/NUL, which may have come from a server):
             * nil, key, nil, reason. */
            static const char *const tag[] = { NULL, "header_name", "header_type", "header_value" };
            lua_pushnil(L);
            lua_insert(L, -2);
            lua_pushnil(L);
            lua_pushstring(L, tag[w.bad]);
            return 4;
        }
        has_ctype = w.has_ctype;
        has_expect = w.has_expect;
    } else if (!lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        nh = (int)gauth_rawlen(L, 4);
        for (i = 1; i <= nh; i++) {
            size_t len;
            const char *s;
            lua_rawgeti(L, 4, i);
            if (lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "gauth.core: http: headers[%d] must be a string", i);
            s = lua_tolstring(L, -1, &len);
            /* CR/LF would let a value inject headers; NUL would cut it. */
            if (bad_value(s, len))
                luaL_error(L, "gauth.core: http: headers[%d] contains CR, LF, NUL or another control character", i);
            if (memchr(s, ':', len) == NULL)
                luaL_error(L, "gauth.core: http: headers[%d] is not \"name: value\"", i);
            if (has_prefix_ci(s, len, "content-type:"))
                has_ctype = 1;
            else if (has_prefix_ci(s, len, "expect:"))
                has_expect = 1;
            lua_pop(L, 1);
        }
    }
    luaL_checkstack(L, 16, "gauth.core: http: options");
    timeout_ms = opt_ms(L, opts, "timeout");
    connect_ms = opt_ms(L, opts, "connect_timeout");
    max_body = opt_size(L, opts, "max_body");
    ca_file = opt_string(L, opts, "ca_file");
    ssl_cert = opt_string(L, opts, "ssl_cert");
    ssl_key = opt_string(L, opts, "ssl_key");
    accept_enc = map ? w.accept_enc : opt_string(L, opts, "accept_encoding");
    noproxy = opt_string(L, opts, "noproxy");
    proxy = opt_string(L, opts, "proxy");
    up_path = opt_string(L, opts, "upload_file");
    up_off = opt_size(L, opts, "upload_offset");
    up_len = opt_size(L, opts, "upload_length");
    down_path = opt_string(L, opts, "download_file");
    follow = opt_field(L, opts, "follow") != LUA_TNIL && lua_toboolean(L, -1);
    parse_head = opt_field(L, opts, "parse_headers") != LUA_TNIL && lua_toboolean(L, -1);

    if ((ssl_cert == NULL) != (ssl_key == NULL))
        luaL_error(L, "gauth.core: http: opts.ssl_cert and opts.ssl_key go together");
    if (up_path != NULL && body != NULL)
        luaL_error(L, "gauth.core: http: body and opts.upload_file are exclusive");
    if ((up_off >= 0 || up_len >= 0) && up_path == NULL)
        luaL_error(L, "gauth.core: http: opts.upload_offset/upload_length need opts.upload_file");
    has_body = body != NULL || up_path != NULL;
    sends_body = has_body || midx == 2 || midx == 3 || midx == 4;
    if (has_body && (midx == 0 || midx == 1))
        luaL_error(L, "gauth.core: http: a %s request cannot have a body", method);
    if (ca_file == NULL) {
        /* Same order as documented: SSL_CERT_FILE, then CURL_CA_BUNDLE
         * (which the curl tool reads but libcurl itself does not). */
        ca_file = getenv("SSL_CERT_FILE");
        if (ca_file == NULL || ca_file[0] == '\0')
            ca_file = getenv("CURL_CA_BUNDLE");
        if (ca_file != NULL && ca_file[0] == '\0')
            ca_file = NULL;
    }

    /* ---- from here on nothing raises until results are pushed ---- */
    request_done(h);
    h->why = WHY_NONE;
    h->saved_errno = 0;
    h->status = 0;
    h->max_body = max_body > 0 ? (size_t)max_body : 0;
    h->out_written = 0;
    h->errbuf[0] = '\0';

    if (up_path != NULL) {
        struct stat st;
        h->in = fopen(up_path, "rb");
        if (h->in == NULL)
            return push_file_failure(L, h, "upload_file", up_path, strerror(errno));
        if (fstat(fileno(h->in), &st) != 0)
            return push_file_failure(L, h, "upload_file", up_path, strerror(errno));
        h->in_start = up_off > 0 ? (curl_off_t)up_off : 0;
        if (h->in_start > (curl_off_t)st.st_size)
            return push_file_failure(L, h, "upload_file", up_path,
                                     "upload_offset/upload_length past the end of the file");
        in_len = up_len >= 0 ? (curl_off_t)up_len
                             : (curl_off_t)st.st_size - h->in_start;
        if (h->in_start + in_len > (curl_off_t)st.st_size)
            return push_file_failure(L, h, "upload_file", up_path,
                                     "upload_offset/upload_length past the end of the file");
        if (fseeko(h->in, (off_t)h->in_start, SEEK_SET) != 0)
            return push_file_failure(L, h, "upload_file", up_path, strerror(errno));
        h->in_len = in_len;
        h->in_pos = 0;
    }
    if (down_path != NULL) {
        off_t end;
        h->out = fopen(down_path, "ab");
        if (h->out == NULL)
            return push_file_failure(L, h, "download_file", down_path, strerror(errno));
        /* In append mode the position is unspecified until the first
         * write: ask for the end explicitly. */
        if (fseeko(h->out, 0, SEEK_END) != 0 || (end = ftello(h->out)) < 0)
            return push_file_failure(L, h, "download_file", down_path, strerror(errno));
        h->out_start = end;
    }

    {
        /* After the caller's lines: a 1 s stall waiting for "100 Continue"
         * buys nothing here ("Expect:"); libcurl would label a POST body
         * form-urlencoded ("Content-Type:"). */
        const char *extra[3];
        int k = 0;
        if (sends_body && has_body && !has_expect)
            extra[k++] = "Expect:";
        if (sends_body && !has_ctype)
            extra[k++] = "Content-Type:";
        extra[k] = NULL;
        if (map ? !map_same(&w, extra) : !hdrs_same(L, h, 4, nh, extra)) {
            if (h->hdrs != NULL) {
                curl_slist_free_all(h->hdrs);
                h->hdrs = NULL;
            }
            if (map) {
                if (!lua_isnoneornil(L, 4) && !walk_headers(L, h, 4, &w, 1))
                    goto nomem;
                nh = 0;
            }
            for (i = 1; i <= nh + k; i++) {
                struct curl_slist *n;
                if (i <= nh) {
                    lua_rawgeti(L, 4, i);
                    n = curl_slist_append(h->hdrs, lua_tostring(L, -1));
                    lua_pop(L, 1);
                } else {
                    n = curl_slist_append(h->hdrs, extra[i - nh - 1]);
                }
                if (n == NULL)
                    goto nomem;
                h->hdrs = n;
            }
        }
    }

    mode = h->in != NULL ? MODE_FILE : sends_body ? MODE_MEM : MODE_NONE;
    https = url_len >= 8 && strncasecmp(url, "https://", 8) == 0;
    maxfs = h->max_body != 0 && h->out == NULL ? (curl_off_t)h->max_body : 0;
    if (timeout_ms < 0)
        timeout_ms = 0;
    if (connect_ms < 0)
        connect_ms = 0;
    ks = &h->set;
    if (ks->valid && ks->midx == midx && ks->mode == mode &&
        ks->down == (h->out != NULL) && ks->https == https &&
        ks->follow == follow && str_same(ks->ca_file, ca_file) &&
        str_same(ks->noproxy, noproxy) && str_same(ks->proxy, proxy) &&
        str_same(ks->accept_enc, accept_enc) &&
        str_same(ks->ssl_cert, ssl_cert) && str_same(ks->ssl_key, ssl_key)) {
        /* The same kind of request as the last one: its options stand,
         * only what differs is set again (all of these take 0 for
         * libcurl's default). */
        if (ks->timeout_ms != timeout_ms)
            curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
        if (ks->connect_ms != connect_ms)
            curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
        if (ks->maxfs != maxfs)
            curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, maxfs);
    } else {
        /* Another kind: start from libcurl's defaults, so nothing of the
         * previous request (its body, NOBODY, method, CA, redirects)
         * leaks into this one. The reset keeps live connections, TLS
         * sessions and the DNS cache. */
        curl_easy_reset(c);
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, h->errbuf);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
        /* A redirect never downgrades https to http. */
        curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, https ? "https" : "http,https");
#else
        curl_easy_setopt(c, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
        curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS,
                         https ? (long)CURLPROTO_HTTPS : (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
        /* The path goes on the wire as the caller built it: libcurl would
         * otherwise remove dot segments, and an object named ".." would
         * turn an object request into one on its bucket. */
        curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
        if (ca_file != NULL) {
            /* An explicit bundle is the whole trust: no system directory. */
            curl_easy_setopt(c, CURLOPT_CAINFO, ca_file);
            curl_easy_setopt(c, CURLOPT_CAPATH, (char *)NULL);
        }
        if (noproxy != NULL)
            curl_easy_setopt(c, CURLOPT_NOPROXY, noproxy);
        if (proxy != NULL)
            curl_easy_setopt(c, CURLOPT_PROXY, proxy);
        if (ssl_cert != NULL) {
            /* Mutual TLS. libcurl keeps the client certificate in the
             * connection's TLS configuration, so a kept-alive connection
             * made without it (or with another) is never reused for this
             * request, nor this one for theirs. */
            curl_easy_setopt(c, CURLOPT_SSLCERT, ssl_cert);
            curl_easy_setopt(c, CURLOPT_SSLCERTTYPE, "PEM");
            curl_easy_setopt(c, CURLOPT_SSLKEY, ssl_key);
            curl_easy_setopt(c, CURLOPT_SSLKEYTYPE, "PEM");
        }
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, h);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, h);
        curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
        if (timeout_ms != 0)
            curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
        if (connect_ms != 0)
            curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
        if (follow) {
            curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
            curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
        }
        if (accept_enc != NULL)
            curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, accept_enc);
        if (maxfs != 0)
            /* Refuses early on a Content-Length past the cap; on_body
             * catches the rest (chunked, or larger once decoded). */
            curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, maxfs);
        if (h->out != NULL)
            curl_easy_setopt(c, CURLOPT_BUFFERSIZE, (long)STREAM_BUF);
        if (midx == 1) {
            curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
        } else if (sends_body) {
            /* POST carries the body for every method (CUSTOMREQUEST
             * renames it); an absent body on POST/PUT/PATCH is sent as
             * Content-Length: 0, which Google's front ends require. */
            curl_easy_setopt(c, CURLOPT_POST, 1L);
            if (mode == MODE_FILE) {
                curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
                curl_easy_setopt(c, CURLOPT_READDATA, h);
                curl_easy_setopt(c, CURLOPT_SEEKFUNCTION, on_seek);
                curl_easy_setopt(c, CURLOPT_SEEKDATA, h);
                curl_easy_setopt(c, CURLOPT_UPLOAD_BUFFERSIZE, (long)STREAM_BUF);
            }
            if (midx != 2)
                curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        } else if (midx == 5) {
            curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
        }
        /* Remembered only when all of it could be kept. */
        ks->valid = str_keep(&ks->ca_file, ca_file) &&
                    str_keep(&ks->noproxy, noproxy) &&
                    str_keep(&ks->proxy, proxy) &&
                    str_keep(&ks->accept_enc, accept_enc) &&
                    str_keep(&ks->ssl_cert, ssl_cert) &&
                    str_keep(&ks->ssl_key, ssl_key);
        ks->midx = midx;
        ks->mode = mode;
        ks->down = h->out != NULL;
        ks->https = https;
        ks->follow = follow;
    }
    ks->timeout_ms = timeout_ms;
    ks->connect_ms = connect_ms;
    ks->maxfs = maxfs;

    /* Set for every request. */
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h->hdrs);
    if (mode == MODE_FILE) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, in_len);
    } else if (mode == MODE_MEM) {
        /* The Lua string stays on the stack, so libcurl may point into it
         * without a copy. */
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
    }

    rc = curl_easy_perform(c);
    /* Drop pointers into Lua strings and into h->hdrs right away. (Only
     * on a POSTFIELDS request: setting it, even to NULL, makes a POST.) */
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
    if (mode == MODE_MEM)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, (char *)NULL);
    curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &nconn);
    if (rc != CURLE_OK) {
        /* After a failure the next request starts from the defaults. */
        ks->valid = 0;
        return push_failure(L, h, rc);
    }
    if (h->out != NULL && fflush(h->out) != 0) {
        h->saved_errno = errno;
        h->why = WHY_WRITE;
        return push_failure(L, h, CURLE_WRITE_ERROR);
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);

    /* The buffers belong to h, so a memory error while pushing them leaks
     * nothing. */
    lua_pushinteger(L, (lua_Integer)status);
    if (parse_head)
        push_headers(L, h->head.p ? h->head.p : "", h->head.len);
    else
        lua_pushlstring(L, h->head.p ? h->head.p : "", h->head.len);
    lua_pushlstring(L, h->body.p ? h->body.p : "", h->body.len);
    lua_pushinteger(L, (lua_Integer)nconn);
    lua_pushinteger(L, (lua_Integer)h->out_written);
    request_done(h);
    if (parse_head) {
        /* status, headers, body, conns, written, reason */
        lua_pushvalue(L, -4);
        lua_remove(L, -5);
        if (map && accept_enc != NULL) {
            /* libcurl decoded the body: what the headers said of the
             * bytes on the wire no longer holds. The coding removed comes
             * seventh. */
            lua_getfield(L, -5, "content-encoding");
            if (!lua_isnil(L, -1)) {
                lua_pushnil(L);
                lua_setfield(L, -7, "content-encoding");
                lua_pushnil(L);
                lua_setfield(L, -7, "content-length");
            }
            return 7;
        }
        return 6;
    }
    return 5;

nomem:
    h->why = WHY_NOMEM;
    return push_failure(L, h, CURLE_OUT_OF_MEMORY);
}

void gauth_http_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"http_new", l_http_new},
        {"http_version", l_http_version},
        {"http_parse_headers", l_http_parse_headers},
        {NULL, NULL}
    };
    static const luaL_Reg meths[] = {
        {"perform", l_perform},
        {"close", l_close},
        {NULL, NULL}
    };
    static const luaL_Reg meta[] = {
        {"__gc", l_close},
        {"__tostring", l_tostring},
        {NULL, NULL}
    };

    /* luaopen runs once per Lua state; libcurl's global state once per
     * process. */
    if (global_init_rc < 0)
        global_init_rc = (int)curl_global_init(CURL_GLOBAL_DEFAULT);
    gauth_newclass(L, GAUTH_HTTP_MT, meths, meta);
    gauth_setfuncs(L, funcs, 0);
}
