/* Internal to gauth.Http, the libcurl binding, split by concern:
 *   http.c          the binding: arguments, perform(), the result table
 *   http_headers.c  request headers (checked, kept) and response headers
 *                   (parsed: fuzzed by csrc/fuzz/fuzz_headers.c)
 *   http_io.c       curl's callbacks and the files a request streams
 *   http_setup.c    the curl options kept from one request to the next
 * Nothing here is exported from core.so (-fvisibility=hidden). */
#ifndef GAUTH_HTTP_H
#define GAUTH_HTTP_H

#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>

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

enum {
    MODE_NONE = 0,          /* no body: GET, HEAD, DELETE */
    MODE_MEM,               /* POST + POSTFIELDS (a body or "") */
    MODE_FILE               /* POST + READFUNCTION (upload_file) */
};

typedef struct {
    char *p;
    size_t len, cap;
} gbuf;

/* What the options libcurl holds were last set for. A request that
 * matches in everything but the URL, the header list, the body and the
 * numbers below skips curl_easy_reset and the full setup (http_setup.c). */
typedef struct {
    int valid;              /* 0: the next request resets and sets all */
    int midx;               /* index in the method list */
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

/* The userdata. Everything C-allocated during a request hangs off it. */
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

/* One request as perform() read it. The strings point into Lua values
 * kept on the stack for the whole call. */
typedef struct {
    int midx;               /* GET HEAD POST PUT PATCH DELETE: 0..5 */
    const char *method, *url, *body;
    size_t url_len, body_len;
    long timeout_ms, connect_ms;        /* 0: none */
    double max_body, up_off, up_len;    /* -1: absent */
    const char *ca_file, *accept_enc, *noproxy, *proxy;
    const char *ssl_cert, *ssl_key, *up_path, *down_path;
    int follow;
    int has_body;           /* a body string or upload_file */
    int sends_body;         /* ... or a method that always carries one */
    int has_ctype, has_expect;
    int mode, https;        /* MODE_*; an https:// URL */
    curl_off_t maxfs;       /* MAXFILESIZE_LARGE, 0: none */
} http_req;

/* ---- http_headers.c ---- */

/* What walking a request's header table found. */
typedef struct {
    int nlines;             /* lines it makes */
    int same;               /* all equal to h->hdrs' first nlines nodes */
    int has_ctype, has_expect;
    int bad;                /* HB_*: the first problem, its key pushed */
    const char *accept_enc; /* the accept-encoding value (in the table) */
    struct curl_slist *node;
} hwalk;

enum { HB_NONE = 0, HB_NAME, HB_TYPE, HB_VALUE };

/* Checks the header table at stack index `t` (nothing allocated but Lua
 * strings) and compares it with the kept list. On a problem w->bad says
 * which and the offending key is left on the stack. 0: out of memory. */
int gauth_http_check_headers(lua_State *L, gauth_http *h, int t, hwalk *w);
/* Makes h->hdrs the table's lines (t == 0: none) followed by `extra`
 * (NULL-terminated), unless the kept list already is exactly that.
 * 0: out of memory (h->hdrs is then partial and belongs to h). */
int gauth_http_set_headers(lua_State *L, gauth_http *h, int t, hwalk *w,
                           const char *const *extra);
/* The response's header block as a table {lower-case name = value}; the
 * reason phrase of its status line ("" when none); the status code of a
 * status line (0 when it has none). */
void gauth_http_push_headers(lua_State *L, const char *p, size_t len);
void gauth_http_push_reason(lua_State *L, const char *p, size_t len);
int gauth_http_status_code(const char *p, size_t len);

/* ---- http_io.c ---- */

/* Releases what one request allocated (files, big buffers); safe at any
 * time. The header list stays for the next request. */
void gauth_http_request_done(gauth_http *h);
/* Frees the buffers for good (close). */
void gauth_http_free_buffers(gauth_http *h);
/* Opens upload_file/download_file. 0, or -1 with *what ("upload_file" or
 * "download_file"), *path and *detail set; the files belong to h either
 * way. */
int gauth_http_open_files(gauth_http *h, const http_req *rq,
                          const char **what, const char **path,
                          const char **detail);
/* Points curl's header/body (and, for an upload, read/seek) callbacks at h. */
void gauth_http_set_callbacks(gauth_http *h, int upload);

/* ---- http_setup.c ---- */

/* Sets curl's options for `rq`: only what changed when the request is of
 * the kind the kept options were set for, else everything from libcurl's
 * defaults. Allocates only the kept copies (none: the next one resets). */
void gauth_http_setup(gauth_http *h, const http_req *rq);
/* After curl_easy_perform: drops curl's pointers into Lua strings and
 * h->hdrs; `ok` 0 makes the next request start from the defaults. */
void gauth_http_setup_done(gauth_http *h, const http_req *rq, int ok);
void gauth_http_setup_forget(gauth_setup *st);

#endif
