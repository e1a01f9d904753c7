/* gauth.Http's I/O: libcurl's callbacks, which only append to C buffers
 * and files that hang off the handle (no Lua is called from them, so
 * nothing can raise while libcurl runs), and the files a request streams
 * from and to. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "http.h"

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

void gauth_http_request_done(gauth_http *h)
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

void gauth_http_free_buffers(gauth_http *h)
{
    free(h->body.p);
    free(h->head.p);
    memset(&h->body, 0, sizeof h->body);
    memset(&h->head, 0, sizeof h->head);
}

/* ------------------------------------------------------------------ */
/* the files of a request                                              */

int gauth_http_open_files(gauth_http *h, const http_req *rq,
                          const char **what, const char **path,
                          const char **detail)
{
    static const char *const past_end =
        "upload_offset/upload_length past the end of the file";

    if (rq->up_path != NULL) {
        struct stat st;
        curl_off_t len;
        *what = "upload_file";
        *path = rq->up_path;
        h->in = fopen(rq->up_path, "rb");
        if (h->in == NULL || fstat(fileno(h->in), &st) != 0)
            goto sys;
        h->in_start = rq->up_off > 0 ? (curl_off_t)rq->up_off : 0;
        if (h->in_start > (curl_off_t)st.st_size) {
            *detail = past_end;
            return -1;
        }
        len = rq->up_len >= 0 ? (curl_off_t)rq->up_len
                              : (curl_off_t)st.st_size - h->in_start;
        if (h->in_start + len > (curl_off_t)st.st_size) {
            *detail = past_end;
            return -1;
        }
        if (fseeko(h->in, (off_t)h->in_start, SEEK_SET) != 0)
            goto sys;
        h->in_len = len;
        h->in_pos = 0;
    }
    if (rq->down_path != NULL) {
        off_t end;
        *what = "download_file";
        *path = rq->down_path;
        h->out = fopen(rq->down_path, "ab");
        /* In append mode the position is unspecified until the first
         * write: ask for the end explicitly. */
        if (h->out == NULL || fseeko(h->out, 0, SEEK_END) != 0 ||
            (end = ftello(h->out)) < 0)
            goto sys;
        h->out_start = end;
    }
    return 0;
sys:
    *detail = strerror(errno);
    return -1;
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
        h->head.len = 0;
        h->body.len = 0;
        if (out_rewind(h) != 0) {
            h->why = WHY_WRITE;
            return 0;
        }
        h->status = gauth_http_status_code(ptr, len);
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

void gauth_http_set_callbacks(gauth_http *h, int upload)
{
    CURL *c = h->curl;

    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, h);
    if (upload) {
        curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(c, CURLOPT_READDATA, h);
        curl_easy_setopt(c, CURLOPT_SEEKFUNCTION, on_seek);
        curl_easy_setopt(c, CURLOPT_SEEKDATA, h);
        curl_easy_setopt(c, CURLOPT_UPLOAD_BUFFERSIZE, (long)STREAM_BUF);
    }
}
