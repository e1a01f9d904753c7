/***
 * Authenticated encryption of gauth.core: AES-256-GCM for secrets kept
 * outside the process (tokens in a shared Redis).
 *
 * A sealed value is `nonce (12 bytes) .. ciphertext .. tag (16 bytes)`: the
 * nonce is random per call (RAND_bytes), the tag covers the ciphertext and
 * the additional data `aad`, which is not stored (the caller binds the value
 * to its place, e.g. the Redis key, by passing the same `aad` to open).
 * This is the layout of Python cryptography's `nonce + AESGCM.encrypt()`.
 * @module gauth.core
 */
#include <limits.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "gauth.h"

#define AEAD_KEY 32
#define AEAD_NONCE 12
#define AEAD_TAG 16
/* Lengths go to OpenSSL as int. */
#define AEAD_MAX ((size_t)INT_MAX - AEAD_NONCE - AEAD_TAG)

/* Runs the whole GCM operation on `in` into `out` (which has room for
 * `n` bytes) with EVP memory that is freed before returning, so nothing
 * here can raise while C memory is held. On sealing, `tag` receives the
 * tag; on opening it is the expected tag. Returns 1 on success, 0 on an
 * OpenSSL failure (the error queue says why), -1 when the tag does not
 * match. */
static int gcm_run(int enc, const unsigned char *key,
                   const unsigned char *nonce, const unsigned char *aad,
                   size_t aad_len, const unsigned char *in, size_t n,
                   unsigned char *out, unsigned char *tag)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int len = 0, ok = 0;

    if (ctx == NULL)
        return 0;
    if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) != 1)
        goto done;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, AEAD_NONCE, NULL) != 1)
        goto done;
    if (EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, enc) != 1)
        goto done;
    if (aad_len > 0 &&
        EVP_CipherUpdate(ctx, NULL, &len, aad, (int)aad_len) != 1)
        goto done;
    if (n > 0 && EVP_CipherUpdate(ctx, out, &len, in, (int)n) != 1)
        goto done;
    if (!enc &&
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, AEAD_TAG, tag) != 1)
        goto done;
    /* GCM is a stream mode: Final writes nothing. A wrong tag fails here,
     * without an entry in the error queue on every OpenSSL version. */
    if (EVP_CipherFinal_ex(ctx, out + (n > 0 ? len : 0), &len) != 1) {
        ok = enc ? 0 : -1;
        goto done;
    }
    if (enc &&
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, AEAD_TAG, tag) != 1)
        goto done;
    ok = 1;
done:
    EVP_CIPHER_CTX_free(ctx);
    return ok;
}

/* The key argument: 32 bytes, else NULL (and the caller reports it). */
static const unsigned char *aead_key(lua_State *L)
{
    size_t klen;
    const char *key = luaL_checklstring(L, 1, &klen);
    return klen == AEAD_KEY ? (const unsigned char *)key : NULL;
}

/***
 * Encrypt and authenticate with AES-256-GCM under a fresh random nonce.
 * @function aead_seal
 * @tparam string key 32 raw bytes
 * @tparam string plaintext
 * @tparam[opt] string aad additional data, authenticated, not stored
 * @return nonce .. ciphertext .. tag (28 bytes longer than plaintext), or
 *   nil and an error message
 */
static int l_aead_seal(lua_State *L)
{
    size_t n, aad_len = 0;
    const unsigned char *key = aead_key(L);
    const char *pt = luaL_checklstring(L, 2, &n);
    const char *aad = luaL_optlstring(L, 3, "", &aad_len);
    unsigned char *out;
    int r;

    if (key == NULL)
        return gauth_error(L, "aead_seal", "key must be 32 bytes");
    if (n > AEAD_MAX || aad_len > (size_t)INT_MAX)
        return gauth_error(L, "aead_seal", "input too long");
    /* Scratch space owned by Lua: a raise later leaks nothing. */
    out = (unsigned char *)lua_newuserdata(L, AEAD_NONCE + n + AEAD_TAG);
    ERR_clear_error();
    if (RAND_bytes(out, AEAD_NONCE) != 1)
        return gauth_ssl_error(L, "aead_seal", "RAND_bytes failed");
    r = gcm_run(1, key, out, (const unsigned char *)aad, aad_len,
                (const unsigned char *)pt, n, out + AEAD_NONCE,
                out + AEAD_NONCE + n);
    if (r != 1)
        return gauth_ssl_error(L, "aead_seal", "AES-256-GCM encryption failed");
    lua_pushlstring(L, (const char *)out, AEAD_NONCE + n + AEAD_TAG);
    return 1;
}

/***
 * Check and decrypt a value made by `aead_seal` with the same key and aad.
 * A value that was changed, cut, made under another key or bound to other
 * additional data is refused ("authentication failed").
 * @function aead_open
 * @tparam string key 32 raw bytes
 * @tparam string sealed
 * @tparam[opt] string aad
 * @return plaintext, or nil and an error message
 */
static int l_aead_open(lua_State *L)
{
    size_t n, aad_len = 0, m;
    const unsigned char *key = aead_key(L);
    const unsigned char *s =
        (const unsigned char *)luaL_checklstring(L, 2, &n);
    const char *aad = luaL_optlstring(L, 3, "", &aad_len);
    unsigned char tag[AEAD_TAG];
    unsigned char *out;
    int r;

    if (key == NULL)
        return gauth_error(L, "aead_open", "key must be 32 bytes");
    if (n < AEAD_NONCE + AEAD_TAG)
        return gauth_error(L, "aead_open", "sealed value too short");
    if (n - AEAD_NONCE - AEAD_TAG > AEAD_MAX || aad_len > (size_t)INT_MAX)
        return gauth_error(L, "aead_open", "input too long");
    m = n - AEAD_NONCE - AEAD_TAG;
    /* GCM may not write past m; one spare byte keeps a zero-size
     * userdata out of the picture. */
    out = (unsigned char *)lua_newuserdata(L, m + 1);
    memcpy(tag, s + n - AEAD_TAG, AEAD_TAG);
    ERR_clear_error();
    r = gcm_run(0, key, s, (const unsigned char *)aad, aad_len,
                s + AEAD_NONCE, m, out, tag);
    if (r == -1) {
        ERR_clear_error();
        return gauth_error(L, "aead_open", "authentication failed");
    }
    if (r != 1)
        return gauth_ssl_error(L, "aead_open", "AES-256-GCM decryption failed");
    lua_pushlstring(L, (const char *)out, m);
    return 1;
}

static const luaL_Reg aead_funcs[] = {
    {"aead_seal", l_aead_seal},
    {"aead_open", l_aead_open},
    {NULL, NULL}
};

void gauth_aead_open(lua_State *L)
{
    gauth_setfuncs(L, aead_funcs, 0);
}
