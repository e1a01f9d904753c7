/* gauth.Http's curl options, kept from one request to the next: a client
 * sends the same kind of request again and again, and curl_easy_reset plus
 * twenty setopt calls per request is time the caller waits for nothing.
 * A request of the same kind (method, body mode, CA, proxies, redirects,
 * encodings, client certificate) sets only the numbers that differ;
 * another kind starts from libcurl's defaults. */
#include <stdlib.h>
#include <string.h>

#include "http.h"

void gauth_http_setup_forget(gauth_setup *st)
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

static int same_kind(const gauth_setup *ks, const gauth_http *h,
                     const http_req *rq)
{
    return ks->valid && ks->midx == rq->midx && ks->mode == rq->mode &&
           ks->down == (h->out != NULL) && ks->https == rq->https &&
           ks->follow == rq->follow && str_same(ks->ca_file, rq->ca_file) &&
           str_same(ks->noproxy, rq->noproxy) && str_same(ks->proxy, rq->proxy) &&
           str_same(ks->accept_enc, rq->accept_enc) &&
           str_same(ks->ssl_cert, rq->ssl_cert) && str_same(ks->ssl_key, rq->ssl_key);
}

/* Everything from libcurl's defaults, so nothing of the previous request
 * (its body, NOBODY, method, CA, redirects) leaks into this one. The reset
 * keeps live connections, TLS sessions and the DNS cache. */
static void set_all(gauth_http *h, const http_req *rq)
{
    CURL *c = h->curl;
    gauth_setup *ks = &h->set;

    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, h->errbuf);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    /* A redirect never downgrades https to http. */
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, rq->https ? "https" : "http,https");
#else
    curl_easy_setopt(c, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS,
                     rq->https ? (long)CURLPROTO_HTTPS : (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    /* The path goes on the wire as the caller built it: libcurl would
     * otherwise remove dot segments, and an object named ".." would turn
     * an object request into one on its bucket. */
    curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
    if (rq->ca_file != NULL) {
        /* An explicit bundle is the whole trust: no system directory. */
        curl_easy_setopt(c, CURLOPT_CAINFO, rq->ca_file);
        curl_easy_setopt(c, CURLOPT_CAPATH, (char *)NULL);
    }
    if (rq->noproxy != NULL)
        curl_easy_setopt(c, CURLOPT_NOPROXY, rq->noproxy);
    if (rq->proxy != NULL)
        curl_easy_setopt(c, CURLOPT_PROXY, rq->proxy);
    if (rq->ssl_cert != NULL) {
        /* Mutual TLS. libcurl keeps the client certificate in the
         * connection's TLS configuration, so a kept-alive connection made
         * without it (or with another) is never reused for this request,
         * nor this one for theirs. */
        curl_easy_setopt(c, CURLOPT_SSLCERT, rq->ssl_cert);
        curl_easy_setopt(c, CURLOPT_SSLCERTTYPE, "PEM");
        curl_easy_setopt(c, CURLOPT_SSLKEY, rq->ssl_key);
        curl_easy_setopt(c, CURLOPT_SSLKEYTYPE, "PEM");
    }
    gauth_http_set_callbacks(h, rq->mode == MODE_FILE);
    curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
    if (rq->timeout_ms != 0)
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, rq->timeout_ms);
    if (rq->connect_ms != 0)
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, rq->connect_ms);
    if (rq->follow) {
        curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
    }
    if (rq->accept_enc != NULL)
        curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, rq->accept_enc);
    if (rq->maxfs != 0)
        /* Refuses early on a Content-Length past the cap; the body
         * callback catches the rest (chunked, or larger once decoded). */
        curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, rq->maxfs);
    if (h->out != NULL)
        curl_easy_setopt(c, CURLOPT_BUFFERSIZE, (long)STREAM_BUF);
    if (rq->midx == 1) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else if (rq->sends_body) {
        /* POST carries the body for every method (CUSTOMREQUEST renames
         * it); an absent body on POST/PUT/PATCH is sent as
         * Content-Length: 0, which Google's front ends require. */
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        if (rq->midx != 2)
            curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, rq->method);
    } else if (rq->midx == 5) {
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, rq->method);
    }
    /* Remembered only when all of it could be kept. */
    ks->valid = str_keep(&ks->ca_file, rq->ca_file) &&
                str_keep(&ks->noproxy, rq->noproxy) &&
                str_keep(&ks->proxy, rq->proxy) &&
                str_keep(&ks->accept_enc, rq->accept_enc) &&
                str_keep(&ks->ssl_cert, rq->ssl_cert) &&
                str_keep(&ks->ssl_key, rq->ssl_key);
    ks->midx = rq->midx;
    ks->mode = rq->mode;
    ks->down = h->out != NULL;
    ks->https = rq->https;
    ks->follow = rq->follow;
}

void gauth_http_setup(gauth_http *h, const http_req *rq)
{
    CURL *c = h->curl;
    gauth_setup *ks = &h->set;

    if (same_kind(ks, h, rq)) {
        /* Its options stand; only what differs is set again (all of these
         * take 0 for libcurl's default). */
        if (ks->timeout_ms != rq->timeout_ms)
            curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, rq->timeout_ms);
        if (ks->connect_ms != rq->connect_ms)
            curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, rq->connect_ms);
        if (ks->maxfs != rq->maxfs)
            curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, rq->maxfs);
    } else {
        set_all(h, rq);
    }
    ks->timeout_ms = rq->timeout_ms;
    ks->connect_ms = rq->connect_ms;
    ks->maxfs = rq->maxfs;

    /* Set for every request. */
    curl_easy_setopt(c, CURLOPT_URL, rq->url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h->hdrs);
    if (rq->mode == MODE_FILE) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, h->in_len);
    } else if (rq->mode == MODE_MEM) {
        /* The Lua string stays on the stack, so libcurl may point into it
         * without a copy. */
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->body_len);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, rq->body ? rq->body : "");
    }
}

void gauth_http_setup_done(gauth_http *h, const http_req *rq, int ok)
{
    /* Drop pointers into Lua strings and into h->hdrs right away. (Only on
     * a POSTFIELDS request: setting it, even to NULL, makes a POST.) */
    curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
    if (rq->mode == MODE_MEM)
        curl_easy_setopt(h->curl, CURLOPT_POSTFIELDS, (char *)NULL);
    if (!ok)
        /* After a failure the next request starts from the defaults. */
        h->set.valid = 0;
}
