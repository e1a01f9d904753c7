/***
 * gauth.Http: one reusable libcurl easy handle. Internal: the Lua transport
 * (gauth.transport.curl) is the API; this is the part that needs C.
 *
 * This file is the binding (arguments, perform(), the result table); the
 * header handling, libcurl's callbacks and the kept options are beside it
 * (see csrc/http.h).
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

#include "http.h"

static int global_init_rc = -1;

static const char *const methods[] = {
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", NULL
};

/* perform()'s upvalues: the names of the result's fields and of the
 * options, made Lua strings once. A table read or filled through
 * lua_getfield/lua_setfield hashes and interns each name again on every
 * request; these are pushed and used as they are. */
static const char *const upnames[] = {
    "status", "reason", "headers", "body", "new_connections", "written",
    "decoded", "content-encoding", "content-length",
    "timeout", "connect_timeout", "max_body", "ca_file", "ssl_cert",
    "ssl_key", "noproxy", "proxy", "upload_file", "upload_offset",
    "upload_length", "download_file", "follow", NULL
};
enum {
    K_STATUS = 1, K_REASON, K_HEADERS, K_BODY, K_CONNS, K_WRITTEN,
    K_DECODED, K_CENC, K_CLEN,
    O_TIMEOUT, O_CONNECT, O_MAX_BODY, O_CA_FILE, O_SSL_CERT, O_SSL_KEY,
    O_NOPROXY, O_PROXY, O_UP_FILE, O_UP_OFF, O_UP_LEN, O_DOWN_FILE,
    O_FOLLOW, UP_COUNT = O_FOLLOW
};

/* ------------------------------------------------------------------ */
/* argument reading (may raise; allocates nothing)                      */

static gauth_http *check_http(lua_State *L)
{
    gauth_http *h = luaL_checkudata(L, 1, GAUTH_HTTP_MT);
    if (h->curl == NULL)
        luaL_error(L, "gauth.core: http: the handle is closed");
    return h;
}

/* Pushes opts[name] (upvalue k; read raw) and returns its type, LUA_TNIL
 * for nil and false alike (the transport keeps every key in its reused
 * table: false is "absent"); the value stays on the stack so a string
 * taken from it stays alive for the whole request. */
static int opt_field(lua_State *L, int opts, int k)
{
    int t;
    if (opts == 0) {
        lua_pushnil(L);
        return LUA_TNIL;
    }
    lua_pushvalue(L, lua_upvalueindex(k));
    lua_rawget(L, opts);
    t = lua_type(L, -1);
    return t == LUA_TBOOLEAN && !lua_toboolean(L, -1) ? LUA_TNIL : t;
}

static const char *opt_string(lua_State *L, int opts, int k)
{
    int t = opt_field(L, opts, k);
    const char *s;
    size_t len;
    if (t == LUA_TNIL)
        return NULL;
    if (t != LUA_TSTRING)
        luaL_error(L, "gauth.core: http: opts.%s must be a string", upnames[k - 1]);
    s = lua_tolstring(L, -1, &len);
    if (strlen(s) != len)
        luaL_error(L, "gauth.core: http: opts.%s contains a NUL byte", upnames[k - 1]);
    return s;
}

/* A non-negative number of seconds as milliseconds; 0 when absent. */
static long opt_ms(lua_State *L, int opts, int k)
{
    lua_Number s;
    long ms;
    int t = opt_field(L, opts, k);
    if (t == LUA_TNIL)
        return 0;
    if (t != LUA_TNUMBER)
        luaL_error(L, "gauth.core: http: opts.%s must be a number", upnames[k - 1]);
    s = lua_tonumber(L, -1);
    if (!(s >= 0) || s > 1e9)
        luaL_error(L, "gauth.core: http: opts.%s must be between 0 and 1e9 seconds", upnames[k - 1]);
    ms = (long)(s * 1000.0 + 0.5);
    /* libcurl reads 0 as "no limit"; a caller with no time left means the
     * opposite, so the smallest limit stands in for it. */
    if (ms == 0)
        ms = 1;
    return ms;
}

/* A non-negative integer (bytes, offsets); -1 when absent. */
static double opt_size(lua_State *L, int opts, int k)
{
    lua_Number v;
    int t = opt_field(L, opts, k);
    if (t == LUA_TNIL)
        return -1;
    if (t != LUA_TNUMBER)
        luaL_error(L, "gauth.core: http: opts.%s must be a number", upnames[k - 1]);
    v = lua_tonumber(L, -1);
    if (!(v >= 0) || v > MAX_EXACT || v != (lua_Number)(long long)v)
        luaL_error(L, "gauth.core: http: opts.%s must be a non-negative integer", upnames[k - 1]);
    return (double)v;
}

/* Reads opts (stack index 6, or 0 for none) into rq. The strings stay on
 * the stack. May raise; allocates nothing. */
static void read_opts(lua_State *L, int opts, http_req *rq)
{
    luaL_checkstack(L, 16, "gauth.core: http: options");
    rq->timeout_ms = opt_ms(L, opts, O_TIMEOUT);
    rq->connect_ms = opt_ms(L, opts, O_CONNECT);
    rq->max_body = opt_size(L, opts, O_MAX_BODY);
    rq->ca_file = opt_string(L, opts, O_CA_FILE);
    rq->ssl_cert = opt_string(L, opts, O_SSL_CERT);
    rq->ssl_key = opt_string(L, opts, O_SSL_KEY);
    rq->noproxy = opt_string(L, opts, O_NOPROXY);
    rq->proxy = opt_string(L, opts, O_PROXY);
    rq->up_path = opt_string(L, opts, O_UP_FILE);
    rq->up_off = opt_size(L, opts, O_UP_OFF);
    rq->up_len = opt_size(L, opts, O_UP_LEN);
    rq->down_path = opt_string(L, opts, O_DOWN_FILE);
    rq->follow = opt_field(L, opts, O_FOLLOW) != LUA_TNIL && lua_toboolean(L, -1);

    if ((rq->ssl_cert == NULL) != (rq->ssl_key == NULL))
        luaL_error(L, "gauth.core: http: opts.ssl_cert and opts.ssl_key go together");
    if (rq->up_path != NULL && rq->body != NULL)
        luaL_error(L, "gauth.core: http: body and opts.upload_file are exclusive");
    if ((rq->up_off >= 0 || rq->up_len >= 0) && rq->up_path == NULL)
        luaL_error(L, "gauth.core: http: opts.upload_offset/upload_length need opts.upload_file");
    rq->has_body = rq->body != NULL || rq->up_path != NULL;
    rq->sends_body = rq->has_body || rq->midx == 2 || rq->midx == 3 || rq->midx == 4;
    if (rq->has_body && (rq->midx == 0 || rq->midx == 1))
        luaL_error(L, "gauth.core: http: a %s request cannot have a body", rq->method);
    if (rq->ca_file == NULL) {
        /* Same order as documented: SSL_CERT_FILE, then CURL_CA_BUNDLE
         * (which the curl tool reads but libcurl itself does not). */
        rq->ca_file = getenv("SSL_CERT_FILE");
        if (rq->ca_file == NULL || rq->ca_file[0] == '\0')
            rq->ca_file = getenv("CURL_CA_BUNDLE");
        if (rq->ca_file != NULL && rq->ca_file[0] == '\0')
            rq->ca_file = NULL;
    }
    rq->https = rq->url_len >= 8 && strncasecmp(rq->url, "https://", 8) == 0;
}

/* ------------------------------------------------------------------ */
/* failures: nil, message, { curl_code =, kind =, header = }            */

static const char *const why_kind[] = {
    NULL, "max_body", "header_size", "nomem", "read", "write"
};

/* Pushes nil, `msg` and the table of what failed: `curl_code` unless
 * `rc` is negative (libcurl did not run), `kind` when not NULL. The
 * request's memory is released first, so a memory error here leaks
 * nothing. */
static int push_fail(lua_State *L, gauth_http *h, const char *msg, int rc,
                     const char *kind)
{
    gauth_http_request_done(h);
    lua_pushnil(L);
    lua_pushstring(L, msg);
    lua_createtable(L, 0, 2);
    if (rc >= 0) {
        lua_pushinteger(L, (lua_Integer)rc);
        lua_setfield(L, -2, "curl_code");
    }
    if (kind != NULL) {
        lua_pushstring(L, kind);
        lua_setfield(L, -2, "kind");
    }
    return 3;
}

/* Formats "gauth.core: http: <curl text> (<code>): <detail>". */
static int push_curl_failure(lua_State *L, gauth_http *h, CURLcode rc)
{
    char detail[CURL_ERROR_SIZE + 160];
    char msg[sizeof detail + 200];
    const char *kind = why_kind[h->why];

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
            kind = "max_body";
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
    return push_fail(L, h, msg, (int)rc, kind);
}

/* A header table's problem: the caller raises (a bad name or value type)
 * or fails (a value with CR/LF/NUL, which may have come from a server).
 * The offending key is on top of the stack; it becomes `header`. */
static int push_header_failure(lua_State *L, gauth_http *h, int bad)
{
    static const char *const kind[] = {
        NULL, "header_name", "header_type", "header_value"
    };
    static const char *const msg[] = {
        NULL,
        "gauth.core: http: a header name is not a token",
        "gauth.core: http: a header value is not a string, a number, an array of them or false",
        "gauth.core: http: a header value contains CR, LF, NUL or another control character"
    };
    push_fail(L, h, msg[bad], -1, kind[bad]);
    lua_pushvalue(L, -4);
    lua_setfield(L, -2, "header");
    return 3;
}

/* ------------------------------------------------------------------ */
/* the result                                                           */

/* Pushes the name of field k (an upvalue), for lua_rawset. */
#define push_key(L, k) lua_pushvalue((L), lua_upvalueindex(k))

/* Pushes { status, reason, headers, body, new_connections, written,
 * decoded }: the transport's response as it is. The buffers belong to h,
 * so a memory error while pushing leaks nothing. */
static int push_result(lua_State *L, gauth_http *h, const http_req *rq,
                       long status, long nconn)
{
    const char *head = h->head.p ? h->head.p : "";
    int t, hd;

    luaL_checkstack(L, 8, "gauth.core: http: result");
    lua_createtable(L, 0, 8);
    t = lua_gettop(L);
    push_key(L, K_STATUS);
    lua_pushinteger(L, (lua_Integer)status);
    lua_rawset(L, t);
    push_key(L, K_REASON);
    gauth_http_push_reason(L, head, h->head.len);
    lua_rawset(L, t);
    push_key(L, K_HEADERS);
    gauth_http_push_headers(L, head, h->head.len);
    hd = lua_gettop(L);
    if (rq->accept_enc != NULL) {
        /* libcurl decoded the body: what the headers said of the bytes on
         * the wire no longer holds. The coding removed is `decoded`. */
        push_key(L, K_DECODED);
        push_key(L, K_CENC);
        lua_rawget(L, hd);
        if (!lua_isnil(L, -1)) {
            lua_rawset(L, t);
            push_key(L, K_CENC);
            lua_pushnil(L);
            lua_rawset(L, hd);
            push_key(L, K_CLEN);
            lua_pushnil(L);
            lua_rawset(L, hd);
        } else {
            lua_pop(L, 2);
        }
    }
    lua_rawset(L, t);
    push_key(L, K_BODY);
    lua_pushlstring(L, h->body.p ? h->body.p : "", h->body.len);
    lua_rawset(L, t);
    push_key(L, K_CONNS);
    lua_pushinteger(L, (lua_Integer)nconn);
    lua_rawset(L, t);
    push_key(L, K_WRITTEN);
    lua_pushinteger(L, (lua_Integer)h->out_written);
    lua_rawset(L, t);
    gauth_http_request_done(h);
    return 1;
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
    gauth_http_request_done(h);
    if (h->hdrs != NULL) {
        curl_slist_free_all(h->hdrs);
        h->hdrs = NULL;
    }
    gauth_http_setup_forget(&h->set);
    gauth_http_free_buffers(h);
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

/***
 * Perform one request.
 * @function Http:perform
 * @tparam string method GET, HEAD, POST, PUT, PATCH or DELETE
 * @tparam string url http:// or https://
 * @tparam[opt] table headers {name = value}: a string or a number, an
 *   array of them for a repeated header, false to leave one out;
 *   accept-encoding becomes libcurl's (the body is then decoded),
 *   content-length is libcurl's
 * @tparam[opt] string body request body (binary safe)
 * @tparam[opt] table opts (nil and false mean absent) `timeout`,
 *   `connect_timeout` (seconds),
 *   `max_body` (bytes), `ca_file`, `ssl_cert` + `ssl_key` (client
 *   certificate and key, PEM files, for mutual TLS), `noproxy` (hosts never
 *   proxied, replacing NO_PROXY), `proxy` (the proxy URL, "" for none:
 *   replaces the environment's), `follow` (boolean), `upload_file` +
 *   `upload_offset` + `upload_length` (stream the body from a file),
 *   `download_file` (append a 2xx body to a file)
 * @return `{ status, reason, headers, body, new_connections, written,
 *   decoded }`: `headers` {lower-case name = value, repeated names joined
 *   with ", "}, `reason` the status line's phrase ("" when none),
 *   `written` the bytes appended to download_file, `decoded` the content
 *   coding libcurl removed (then content-encoding and content-length are
 *   not in `headers`)
 * @return nil, message, `{ curl_code, kind, header }`: `curl_code` absent
 *   when libcurl did not run; `kind` "max_body", "header_size", "nomem",
 *   "read", "write", "file", "header_name", "header_type" or
 *   "header_value" (a value with CR, LF, NUL or another control character;
 *   `header` is then the key), absent for libcurl's own failures
 */
static int l_perform(lua_State *L)
{
    gauth_http *h = check_http(L);
    http_req rq;
    hwalk w;
    int opts = 0, heads = 0;
    const char *extra[3], *what = NULL, *path = NULL, *detail = NULL;
    CURLcode rc;
    long status = 0, nconn = 0;
    int k = 0;

    memset(&rq, 0, sizeof rq);
    rq.midx = luaL_checkoption(L, 2, NULL, methods);
    rq.method = methods[rq.midx];
    rq.url = luaL_checklstring(L, 3, &rq.url_len);
    rq.body = luaL_optlstring(L, 5, NULL, &rq.body_len);
    if (strlen(rq.url) != rq.url_len)
        luaL_argerror(L, 3, "URL contains a NUL byte");
    if (!lua_isnoneornil(L, 6)) {
        luaL_checktype(L, 6, LUA_TTABLE);
        opts = 6;
    }
    memset(&w, 0, sizeof w);
    w.same = 1;             /* no table: no lines, as the kept list may be */
    w.node = h->hdrs;
    lua_settop(L, 6);
    if (!lua_isnil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        heads = 4;
        if (!gauth_http_check_headers(L, h, heads, &w))
            luaL_error(L, "gauth.core: http: out of memory");
        if (w.bad != HB_NONE)
            return push_header_failure(L, h, w.bad);
    }
    rq.has_ctype = w.has_ctype;
    rq.has_expect = w.has_expect;
    rq.accept_enc = w.accept_enc;
    read_opts(L, opts, &rq);

    /* ---- from here on nothing raises until results are pushed ---- */
    gauth_http_request_done(h);
    h->why = WHY_NONE;
    h->saved_errno = 0;
    h->status = 0;
    h->max_body = rq.max_body > 0 ? (size_t)rq.max_body : 0;
    h->out_written = 0;
    h->errbuf[0] = '\0';
    if (gauth_http_open_files(h, &rq, &what, &path, &detail) != 0) {
        char msg[1024];
        snprintf(msg, sizeof msg, "gauth.core: http: %s: %s: %s", what, path, detail);
        return push_fail(L, h, msg, -1, "file");
    }
    /* After the caller's lines: a 1 s stall waiting for "100 Continue"
     * buys nothing here ("Expect:"); libcurl would label a POST body
     * form-urlencoded ("Content-Type:"). */
    if (rq.sends_body && rq.has_body && !rq.has_expect)
        extra[k++] = "Expect:";
    if (rq.sends_body && !rq.has_ctype)
        extra[k++] = "Content-Type:";
    extra[k] = NULL;
    if (!gauth_http_set_headers(L, h, heads, &w, extra)) {
        h->why = WHY_NOMEM;
        return push_curl_failure(L, h, CURLE_OUT_OF_MEMORY);
    }
    rq.mode = h->in != NULL ? MODE_FILE : rq.sends_body ? MODE_MEM : MODE_NONE;
    rq.maxfs = h->max_body != 0 && h->out == NULL ? (curl_off_t)h->max_body : 0;

    gauth_http_setup(h, &rq);
    rc = curl_easy_perform(h->curl);
    gauth_http_setup_done(h, &rq, rc == CURLE_OK);
    curl_easy_getinfo(h->curl, CURLINFO_NUM_CONNECTS, &nconn);
    if (rc != CURLE_OK)
        return push_curl_failure(L, h, rc);
    if (h->out != NULL && fflush(h->out) != 0) {
        h->saved_errno = errno;
        h->why = WHY_WRITE;
        return push_curl_failure(L, h, CURLE_WRITE_ERROR);
    }
    curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &status);
    return push_result(L, h, &rq, status, nconn);
}

void gauth_http_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"http_new", l_http_new},
        {"http_version", l_http_version},
        {NULL, NULL}
    };
    static const luaL_Reg meths[] = {
        {"close", l_close},
        {NULL, NULL}
    };
    static const luaL_Reg meta[] = {
        {"__gc", l_close},
        {"__tostring", l_tostring},
        {NULL, NULL}
    };
    int i;

    /* luaopen runs once per Lua state; libcurl's global state once per
     * process. */
    if (global_init_rc < 0)
        global_init_rc = (int)curl_global_init(CURL_GLOBAL_DEFAULT);
    gauth_newclass(L, GAUTH_HTTP_MT, meths, meta);
    /* perform() with its field names as upvalues (see upnames). A C
     * function is only promised LUA_MINSTACK (20) free slots, and these
     * are 22 on top of the metatable and its __index: without the check
     * the last pushes rely on slack inside Lua that the API does not
     * promise. */
    luaL_checkstack(L, UP_COUNT + 2, "gauth.core: http: perform's upvalues");
    luaL_getmetatable(L, GAUTH_HTTP_MT);
    lua_getfield(L, -1, "__index");
    for (i = 0; upnames[i] != NULL; i++)
        lua_pushstring(L, upnames[i]);
    lua_pushcclosure(L, l_perform, UP_COUNT);
    lua_setfield(L, -2, "perform");
    lua_pop(L, 2);
    gauth_setfuncs(L, funcs, 0);
}
