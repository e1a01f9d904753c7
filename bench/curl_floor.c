/* The floor for gauth's execute() benchmark: N GETs with curl_easy_perform
 * on one reused easy handle (keep-alive), nothing else: its options are set
 * once, before the loop.
 *
 *   curl_floor URL [CA_FILE [N [HEADER...]]]
 *
 * Prints "curl_floor <rate> req/s" on stdout; exits 1 when a request fails
 * or answers other than 2xx.
 *
 * Build: cc -O2 -o build/curl_floor bench/curl_floor.c -lcurl
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

/* The body is counted and dropped, as a client that parses it in place
 * would; gauth copies it once into a Lua string, which this does not
 * charge, so the floor stays a floor. */
static size_t sink(char *ptr, size_t size, size_t n, void *ud)
{
    (void)ptr;
    *(size_t *)ud += size * n;
    return size * n;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    const char *url, *ca;
    long n = 2000, i, status = 0, warm = 20;
    struct curl_slist *hdrs = NULL;
    char err[CURL_ERROR_SIZE];
    size_t bytes = 0;
    CURL *c;
    double t0 = 0, dt;
    int k;

    if (argc < 2) {
        fprintf(stderr, "usage: %s URL [CA_FILE [N [HEADER...]]]\n", argv[0]);
        return 2;
    }
    url = argv[1];
    ca = argc > 2 && argv[2][0] != '\0' ? argv[2] : NULL;
    if (argc > 3)
        n = strtol(argv[3], NULL, 10);
    if (n <= 0) {
        fprintf(stderr, "curl_floor: N must be positive\n");
        return 2;
    }
    for (k = 4; k < argc; k++)
        hdrs = curl_slist_append(hdrs, argv[k]);

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return 1;
    c = curl_easy_init();
    if (c == NULL)
        return 1;

    /* Options set once: the loop below is curl_easy_perform and nothing
     * else, the least any client on libcurl can do per request. */
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    if (ca != NULL)
        curl_easy_setopt(c, CURLOPT_CAINFO, ca);
    if (hdrs != NULL)
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &bytes);

    for (i = -warm; i < n; i++) {
        CURLcode rc;
        if (i == 0)
            t0 = now();
        err[0] = '\0';
        rc = curl_easy_perform(c);
        if (rc != CURLE_OK) {
            fprintf(stderr, "curl_floor: %s (%d): %s\n", curl_easy_strerror(rc),
                    (int)rc, err);
            return 1;
        }
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        if (status < 200 || status > 299) {
            fprintf(stderr, "curl_floor: HTTP %ld from %s\n", status, url);
            return 1;
        }
    }
    dt = now() - t0;
    printf("curl_floor %.0f req/s\n", (double)n / dt);

    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    curl_global_cleanup();
    return 0;
}
