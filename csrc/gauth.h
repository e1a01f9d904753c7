/* Shared declarations of the gauth.core C module. */
#ifndef GAUTH_H
#define GAUTH_H

#include "compat.h"

#if defined(__GNUC__)
#define GAUTH_EXPORT __attribute__((visibility("default")))
#else
#define GAUTH_EXPORT
#endif

GAUTH_EXPORT int luaopen_gauth_core(lua_State *L);

#define GAUTH_KEY_MT "gauth.Key"
#define GAUTH_HTTP_MT "gauth.Http"

/* Each file registers its functions into the module table on top of the
 * stack and its metatables into the registry. */
void gauth_pkey_open(lua_State *L);
void gauth_encoding_open(lua_State *L);
void gauth_digest_open(lua_State *L);
void gauth_random_open(lua_State *L);
void gauth_system_open(lua_State *L);
void gauth_json_open(lua_State *L);
void gauth_http_open(lua_State *L);
void gauth_aead_open(lua_State *L);

/* Pushes nil and "gauth.core: <step>: <detail>", the detail taken from the
 * OpenSSL error queue (which is left empty) or from `fallback` when the queue
 * holds nothing. Returns 2 for `return gauth_ssl_error(...)`. */
int gauth_ssl_error(lua_State *L, const char *step, const char *fallback);

/* Strict base64url (no padding, zero trailing bits). gauth_b64url_push
 * pushes the decoded bytes and returns NULL, or pushes nothing and returns
 * why not (a static string or `msg`). gauth_b64url_to decodes into `out`
 * and returns the length, or (size_t)-1 when the text is not base64url or
 * does not fit in `cap`. */
const char *gauth_b64url_push(lua_State *L, const char *s, size_t n,
                              char *msg, size_t cap);
size_t gauth_b64url_to(const char *s, size_t n, unsigned char *out,
                       size_t cap);

/* Longest signature segment of a compact JWS (base64url of 1024 bytes, an
 * 8192-bit RSA signature, with room to spare) and the most bytes it
 * decodes to. */
#define GAUTH_JWS_MAX_SIG 1400
#define GAUTH_JWS_SIG_BYTES (GAUTH_JWS_MAX_SIG / 4 * 3 + 2)

/* Checks a compact JWS exactly as jws_split does (same bounds, same order,
 * same "malformed: ..." messages) and decodes it for verification: pushes
 * the payload, decodes the signature into `sig` (GAUTH_JWS_SIG_BYTES) and
 * sets its length and the signed part's (`header.payload`). Returns NULL,
 * or `msg` saying why not with nothing pushed. With `claims`, what is
 * pushed is the payload's table when gauth_json_object decodes it (the
 * text otherwise). */
const char *gauth_jws_decode(lua_State *L, const char *t, size_t n,
                             unsigned char *sig, size_t *siglen,
                             size_t *signed_len, int claims, char *msg,
                             size_t cap);

/* Decodes the JSON object in text[0..n) onto the stack as cjson.decode
 * would and returns 1, or declines (returns 0, the stack as it was) for
 * anything it does not decode exactly as cjson does (csrc/json.c). The
 * text is modified (escapes are undone in place). */
int gauth_json_object(lua_State *L, char *text, size_t n);

/* SHA-256 of data into md (32 bytes) with OpenSSL's own SHA-256, not
 * through EVP (digest.c says why); 0 when this OpenSSL has no such call
 * (built without its deprecated API): use EVP then. */
int gauth_sha256_direct(const void *data, size_t n, unsigned char *md);

/* Pushes nil and "gauth.core: <step>: <detail>". Returns 2. */
int gauth_error(lua_State *L, const char *step, const char *detail);

/* Registers a metatable named `name` whose __index is a table of `methods`;
 * `meta` holds __gc, __tostring and the rest (__close is added on 5.4 from
 * the "close" entry of `methods`). Leaves the stack as it found it. */
void gauth_newclass(lua_State *L, const char *name, const luaL_Reg *methods,
                    const luaL_Reg *meta);

#endif
