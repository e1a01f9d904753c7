/***
 * Keys and signatures (gauth.Key): PEM/DER loading, RS256 and ES256.
 * @module gauth.core
 */
#include <stdio.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "gauth.h"

/* Largest RSA key gauth accepts; bounds the signature buffer on the stack. */
#define MAX_RSA_BITS 8192
#define MAX_SIG_BYTES (MAX_RSA_BITS / 8)
#define ES256_SIG_BYTES 64

/* DER prefix of a SubjectPublicKeyInfo for an uncompressed P-256 point:
 * SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING }. Comparing
 * it identifies the curve with calls that exist unchanged in OpenSSL 1.1.1
 * and 3.x. */
static const unsigned char P256_SPKI_PREFIX[] = {
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02,
    0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03,
    0x42, 0x00
};

typedef struct {
    EVP_PKEY *pkey;
    /* Signing context made on first use and reused: initialising one per
     * signature (provider fetches, key checks) costs a few percent of an
     * RSA-2048 signature; this is how `openssl speed` signs too. */
    EVP_PKEY_CTX *sign_ctx;
    /* The same for verification: a verifier checks every request's token
     * against a handful of keys, so the context is made once per key. */
    EVP_PKEY_CTX *verify_ctx;
    /* SHA-256 context for verification where OpenSSL has no direct
     * SHA-256 (gauth_sha256_direct), reused: EVP_Digest with EVP_sha256()
     * looks the implementation up on every call (OpenSSL 3). */
    EVP_MD_CTX *md_ctx;
    int is_private;
    int kind; /* KIND_RSA or KIND_EC */
} gauth_key;

enum { KIND_RSA = 1, KIND_EC = 2 };

static gauth_key *key_new(lua_State *L)
{
    gauth_key *k = (gauth_key *)lua_newuserdata(L, sizeof *k);
    memset(k, 0, sizeof *k);
    gauth_setmetatable(L, GAUTH_KEY_MT);
    return k;
}

static gauth_key *key_check(lua_State *L, int idx)
{
    gauth_key *k = (gauth_key *)luaL_checkudata(L, idx, GAUTH_KEY_MT);
    if (k->pkey == NULL)
        luaL_argerror(L, idx, "key is closed");
    return k;
}

/* Refuses the passphrase prompt OpenSSL would otherwise show on a terminal
 * for an encrypted key. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf; (void)size; (void)rwflag; (void)u;
    return -1;
}

static int is_p256(EVP_PKEY *pkey)
{
    unsigned char der[128];
    unsigned char *p = der;
    int len = i2d_PUBKEY(pkey, NULL);

    if (len != 91)
        return 0;
    len = i2d_PUBKEY(pkey, &p);
    return len == 91 &&
           memcmp(der, P256_SPKI_PREFIX, sizeof P256_SPKI_PREFIX) == 0;
}

/* Accepts RSA of 2048..8192 bits and EC P-256; names anything else. Returns
 * NULL when acceptable or a static message. */
static const char *classify(EVP_PKEY *pkey, int *kind)
{
    int id = EVP_PKEY_base_id(pkey);
    if (id == EVP_PKEY_RSA) {
        int bits = EVP_PKEY_bits(pkey);
        if (bits < 2048)
            return "RSA key shorter than 2048 bits (RFC 7518 requires 2048)";
        if (bits > MAX_RSA_BITS)
            return "RSA key longer than 8192 bits";
        *kind = KIND_RSA;
        return NULL;
    }
    if (id == EVP_PKEY_EC) {
        if (!is_p256(pkey))
            return "EC key is not on curve P-256 (ES256 needs P-256)";
        *kind = KIND_EC;
        return NULL;
    }
    switch (id) {
    case EVP_PKEY_DSA: return "unsupported key type DSA (use RSA or EC P-256)";
    case EVP_PKEY_ED25519:
        return "unsupported key type Ed25519 (use RSA or EC P-256)";
    case EVP_PKEY_ED448:
        return "unsupported key type Ed448 (use RSA or EC P-256)";
    case EVP_PKEY_RSA_PSS:
        return "unsupported key type RSA-PSS (use a plain RSA key)";
    default: return "unsupported key type (use RSA or EC P-256)";
    }
}

/* Diagnoses the mistakes people make when they paste keys, before OpenSSL's
 * terse "no start line". Returns NULL when the text looks like a PEM. */
static const char *pem_precheck(const char *pem, size_t n, int want_private)
{
    if (n == 0)
        return "empty input";
    if (memchr(pem, '\0', n) != NULL)
        return "input contains a NUL byte (not PEM text)";
    if (strstr(pem, "-----BEGIN") == NULL)
        return "no PEM header (expected -----BEGIN ...-----)";
    if (strstr(pem, "\\n") != NULL && memchr(pem, '\n', n) == NULL)
        return "the PEM contains literal \\n sequences instead of line "
               "breaks (a key copied out of a JSON file without decoding it)";
    if (strstr(pem, "-----END") == NULL)
        return "truncated PEM (no -----END line)";
    if (strstr(pem, "BEGIN ENCRYPTED PRIVATE KEY") != NULL ||
        strstr(pem, "Proc-Type: 4,ENCRYPTED") != NULL)
        return "the private key is encrypted (gauth needs an unencrypted key)";
    if (want_private &&
        (strstr(pem, "BEGIN PUBLIC KEY") != NULL ||
         strstr(pem, "BEGIN RSA PUBLIC KEY") != NULL ||
         strstr(pem, "BEGIN CERTIFICATE") != NULL) &&
        strstr(pem, "PRIVATE KEY-----") == NULL)
        return "a public key or certificate was given where a private key "
               "is expected";
    return NULL;
}

static int push_key(lua_State *L, gauth_key *k, EVP_PKEY *pkey,
                    int is_private, const char *step)
{
    int kind = 0;
    const char *why = classify(pkey, &kind);
    if (why != NULL) {
        EVP_PKEY_free(pkey);
        return gauth_error(L, step, why);
    }
    k->pkey = pkey;
    k->kind = kind;
    k->is_private = is_private;
    return 1;
}

/***
 * Load a private key from PEM: RSA (PKCS#8 or PKCS#1) or EC P-256 (PKCS#8
 * or SEC1).
 * @function load_private_key
 * @tparam string pem
 * @return a `gauth.Key`, or nil and an error message
 */
static int l_load_private_key(lua_State *L)
{
    size_t n;
    const char *pem = luaL_checklstring(L, 1, &n);
    const char *why = pem_precheck(pem, n, 1);
    gauth_key *k;
    BIO *bio;
    EVP_PKEY *pkey;

    if (why != NULL)
        return gauth_error(L, "load private key", why);
    if (n > 1 << 20)
        return gauth_error(L, "load private key", "PEM larger than 1 MiB");
    k = key_new(L);
    ERR_clear_error();
    bio = BIO_new_mem_buf(pem, (int)n);
    if (bio == NULL)
        return gauth_ssl_error(L, "load private key", "out of memory");
    pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    BIO_free(bio);
    if (pkey == NULL)
        return gauth_ssl_error(L, "load private key", "not a private key");
    ERR_clear_error();
    return push_key(L, k, pkey, 1, "load private key");
}

/***
 * Load a public key for verification from PEM: `PUBLIC KEY`, `RSA PUBLIC
 * KEY`, `CERTIFICATE`, or a private key (its public half is used).
 * @function load_public_key
 * @tparam string pem
 * @return a `gauth.Key`, or nil and an error message
 */
static int l_load_public_key(lua_State *L)
{
    size_t n;
    const char *pem = luaL_checklstring(L, 1, &n);
    const char *why = pem_precheck(pem, n, 0);
    const char *step = "load public key";
    gauth_key *k;
    BIO *bio;
    EVP_PKEY *pkey = NULL;
    int is_private = 0;

    if (why != NULL)
        return gauth_error(L, step, why);
    if (n > 1 << 20)
        return gauth_error(L, step, "PEM larger than 1 MiB");
    k = key_new(L);
    ERR_clear_error();
    bio = BIO_new_mem_buf(pem, (int)n);
    if (bio == NULL)
        return gauth_ssl_error(L, step, "out of memory");
    if (strstr(pem, "BEGIN CERTIFICATE") != NULL) {
        X509 *x = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL);
        if (x != NULL) {
            pkey = X509_get_pubkey(x);
            X509_free(x);
        }
    } else if (strstr(pem, "BEGIN RSA PUBLIC KEY") != NULL) {
        char *name = NULL, *header = NULL;
        unsigned char *data = NULL;
        long len = 0;
        if (PEM_read_bio(bio, &name, &header, &data, &len) == 1) {
            const unsigned char *p = data;
            pkey = d2i_PublicKey(EVP_PKEY_RSA, NULL, &p, len);
        }
        OPENSSL_free(name);
        OPENSSL_free(header);
        OPENSSL_free(data);
    } else if (strstr(pem, "PRIVATE KEY-----") != NULL) {
        pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
        is_private = 1;
    } else {
        pkey = PEM_read_bio_PUBKEY(bio, NULL, no_passphrase, NULL);
    }
    BIO_free(bio);
    if (pkey == NULL)
        return gauth_ssl_error(L, step, "not a public key or certificate");
    ERR_clear_error();
    return push_key(L, k, pkey, is_private, step);
}

/***
 * Load a public key from a DER SubjectPublicKeyInfo (what JWKS entries are
 * turned into).
 * @function load_public_der
 * @tparam string der
 * @return a `gauth.Key`, or nil and an error message
 */
static int l_load_public_der(lua_State *L)
{
    size_t n;
    const unsigned char *der =
        (const unsigned char *)luaL_checklstring(L, 1, &n);
    const unsigned char *p = der;
    gauth_key *k;
    EVP_PKEY *pkey;

    if (n == 0 || n > 1 << 16)
        return gauth_error(L, "load public key", "bad DER length");
    k = key_new(L);
    ERR_clear_error();
    pkey = d2i_PUBKEY(NULL, &p, (long)n);
    if (pkey == NULL)
        return gauth_ssl_error(L, "load public key", "not a DER public key");
    if (p != der + n) {
        EVP_PKEY_free(pkey);
        return gauth_error(L, "load public key", "trailing bytes after DER");
    }
    return push_key(L, k, pkey, 0, "load public key");
}

/* DER, just enough to wrap JWK numbers into a SubjectPublicKeyInfo. Each
 * put_* writes at `p` and returns the bytes written; callers size the
 * buffer for the largest input they accept. */
static size_t der_len_size(size_t n)
{
    return n < 128 ? 1 : n < 256 ? 2 : 3;
}

static size_t put_header(unsigned char *p, int tag, size_t n)
{
    p[0] = (unsigned char)tag;
    if (n < 128) {
        p[1] = (unsigned char)n;
        return 2;
    }
    if (n < 256) {
        p[1] = 0x81;
        p[2] = (unsigned char)n;
        return 3;
    }
    p[1] = 0x82;
    p[2] = (unsigned char)(n >> 8);
    p[3] = (unsigned char)(n & 255);
    return 4;
}

/* An unsigned big-endian number as a DER INTEGER (leading zeros dropped, a
 * zero byte added when the top bit is set). `n` > 0. */
static size_t put_uint(unsigned char *p, const unsigned char *v, size_t n)
{
    size_t body, h;
    while (n > 1 && v[0] == 0) {
        v++;
        n--;
    }
    body = n + (v[0] & 0x80 ? 1 : 0);
    h = put_header(p, 0x02, body);
    if (v[0] & 0x80)
        p[h++] = 0;
    memcpy(p + h, v, n);
    return h + n;
}

static size_t uint_size(const unsigned char *v, size_t n)
{
    size_t body;
    while (n > 1 && v[0] == 0) {
        v++;
        n--;
    }
    body = n + (v[0] & 0x80 ? 1 : 0);
    return 1 + der_len_size(body) + body;
}

static const unsigned char RSA_ALG_ID[] = {
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01,
    0x01, 0x05, 0x00
};

#define JWK_MAX_N (MAX_RSA_BITS / 8)
#define JWK_MAX_E 16

/* SubjectPublicKeyInfo of an RSA key from its modulus and exponent. */
static size_t rsa_spki(unsigned char *out, const unsigned char *n, size_t nn,
                       const unsigned char *e, size_t ne)
{
    size_t seq = uint_size(n, nn) + uint_size(e, ne);
    size_t bits = 1 + 1 + der_len_size(seq) + seq;
    size_t body = sizeof RSA_ALG_ID + 1 + der_len_size(bits) + bits;
    size_t o = put_header(out, 0x30, body);
    memcpy(out + o, RSA_ALG_ID, sizeof RSA_ALG_ID);
    o += sizeof RSA_ALG_ID;
    o += put_header(out + o, 0x03, bits);
    out[o++] = 0; /* no unused bits */
    o += put_header(out + o, 0x30, seq);
    o += put_uint(out + o, n, nn);
    o += put_uint(out + o, e, ne);
    return o;
}

/***
 * Load a public key from JWK parameters (RFC 7518 section 6), each given
 * as its base64url text: `("RSA", n, e)` or `("EC", x, y, crv)` with `crv`
 * "P-256". The key must pass the same checks as a PEM one.
 * @function load_jwk
 * @tparam string kty "RSA" or "EC"
 * @tparam string a `n` or `x`
 * @tparam string b `e` or `y`
 * @tparam[opt] string crv for EC: "P-256"
 * @return a `gauth.Key`, or nil and an error message
 */
static int l_load_jwk(lua_State *L)
{
    const char *kty = luaL_checkstring(L, 1);
    size_t na, nb, la, lb, len;
    const char *a = luaL_checklstring(L, 2, &na);
    const char *b = luaL_checklstring(L, 3, &nb);
    const char *crv = luaL_optstring(L, 4, NULL);
    const char *step = "load jwk";
    unsigned char pa[JWK_MAX_N], pb[JWK_MAX_N];
    unsigned char spki[JWK_MAX_N + JWK_MAX_E + 64];
    const unsigned char *p = spki;
    gauth_key *k;
    EVP_PKEY *pkey;

    if (strcmp(kty, "RSA") == 0) {
        la = gauth_b64url_to(a, na, pa, JWK_MAX_N);
        if (la == (size_t)-1 || la == 0)
            return gauth_error(L, step, "n is not base64url of at most "
                                        "1024 bytes");
        lb = gauth_b64url_to(b, nb, pb, JWK_MAX_E);
        if (lb == (size_t)-1 || lb == 0)
            return gauth_error(L, step, "e is not base64url of at most "
                                        "16 bytes");
        len = rsa_spki(spki, pa, la, pb, lb);
    } else if (strcmp(kty, "EC") == 0) {
        if (crv == NULL || strcmp(crv, "P-256") != 0)
            return gauth_error(L, step, "EC key is not on curve P-256 "
                                        "(ES256 needs P-256)");
        la = gauth_b64url_to(a, na, pa, 32);
        lb = gauth_b64url_to(b, nb, pb, 32);
        if (la == (size_t)-1 || lb == (size_t)-1 || la == 0 || lb == 0)
            return gauth_error(L, step, "x and y must be base64url of at "
                                        "most 32 bytes each");
        memcpy(spki, P256_SPKI_PREFIX, sizeof P256_SPKI_PREFIX);
        len = sizeof P256_SPKI_PREFIX;
        spki[len++] = 4; /* uncompressed point */
        /* RFC 7518 wants full 32-byte coordinates, but producers that
         * write the integer (PyJWT 2.6's to_jwk among them) drop leading
         * zero bytes, about one key in 64: the value is the same, so
         * left-pad it; the point is still checked by d2i_PUBKEY below. */
        memset(spki + len, 0, 64);
        memcpy(spki + len + (32 - la), pa, la);
        memcpy(spki + len + 32 + (32 - lb), pb, lb);
        len += 64;
    } else {
        return gauth_error(L, step, "unsupported kty (RSA or EC)");
    }
    k = key_new(L);
    ERR_clear_error();
    pkey = d2i_PUBKEY(NULL, &p, (long)len);
    if (pkey == NULL) {
        /* OpenSSL only says "decode error" here; say what it means. */
        ERR_clear_error();
        return gauth_error(L, step, kty[0] == 'E'
            ? "not a valid public key (the point is not on P-256)"
            : "not a valid public key");
    }
    ERR_clear_error();
    return push_key(L, k, pkey, 0, step);
}

static int alg_kind(const char *alg)
{
    if (strcmp(alg, "RS256") == 0) return KIND_RSA;
    if (strcmp(alg, "ES256") == 0) return KIND_EC;
    return 0;
}

/* DER of DigestInfo { AlgorithmIdentifier { id-sha256, NULL }, OCTET
 * STRING (32 bytes) } up to the digest (RFC 8017 section 9.2, note 1). */
static const unsigned char SHA256_DIGEST_INFO[] = {
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03,
    0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20
};

/* Converts a DER ECDSA-Sig-Value into JOSE's fixed-width r||s. */
static int ecdsa_der_to_raw(const unsigned char *der, size_t len,
                            unsigned char raw[ES256_SIG_BYTES])
{
    const unsigned char *p = der;
    const BIGNUM *r, *s;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)len);
    int ok = 0;

    if (sig == NULL)
        return 0;
    ECDSA_SIG_get0(sig, &r, &s);
    if (BN_num_bytes(r) <= 32 && BN_num_bytes(s) <= 32 &&
        BN_bn2binpad(r, raw, 32) == 32 && BN_bn2binpad(s, raw + 32, 32) == 32)
        ok = 1;
    ECDSA_SIG_free(sig);
    return ok;
}

/* Converts JOSE r||s into DER; returns the DER length or 0. */
static int ecdsa_raw_to_der(const unsigned char raw[ES256_SIG_BYTES],
                            unsigned char *der, int cap)
{
    ECDSA_SIG *sig = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(raw, 32, NULL);
    BIGNUM *s = BN_bin2bn(raw + 32, 32, NULL);
    unsigned char *p = der;
    int len = 0;

    if (sig == NULL || r == NULL || s == NULL ||
        ECDSA_SIG_set0(sig, r, s) != 1) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(sig);
        return 0;
    }
    /* sig owns r and s now */
    len = i2d_ECDSA_SIG(sig, NULL);
    if (len > 0 && len <= cap)
        len = i2d_ECDSA_SIG(sig, &p);
    else
        len = 0;
    ECDSA_SIG_free(sig);
    return len;
}

/***
 * Sign `data` with SHA-256: RS256 (PKCS#1 v1.5) or ES256 (raw r||s).
 * @function Key:sign
 * @tparam string alg "RS256" or "ES256", matching the key
 * @tparam string data
 * @return the signature, or nil and an error message
 */
static int l_key_sign(lua_State *L)
{
    gauth_key *k = key_check(L, 1);
    const char *alg = luaL_checkstring(L, 2);
    size_t n;
    const char *data = luaL_checklstring(L, 3, &n);
    unsigned char sig[MAX_SIG_BYTES + 16];
    unsigned char raw[ES256_SIG_BYTES];
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    size_t siglen = sizeof sig;
    int kind = alg_kind(alg);

    if (kind == 0)
        return gauth_error(L, "sign", "unsupported algorithm (RS256, ES256)");
    if (kind != k->kind)
        return gauth_error(L, "sign", "algorithm does not match the key type");
    if (!k->is_private)
        return gauth_error(L, "sign", "a public key cannot sign");
    ERR_clear_error();
    if (k->sign_ctx == NULL) {
        EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new(k->pkey, NULL);
        if (pctx == NULL || EVP_PKEY_sign_init(pctx) != 1 ||
            (kind == KIND_RSA &&
             EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1) ||
            EVP_PKEY_CTX_set_signature_md(pctx, EVP_sha256()) != 1) {
            EVP_PKEY_CTX_free(pctx);
            return gauth_ssl_error(L, "sign", "cannot make a signing context");
        }
        k->sign_ctx = pctx;
    }
    if (EVP_Digest(data, n, md, &mdlen, EVP_sha256(), NULL) != 1 ||
        EVP_PKEY_sign(k->sign_ctx, sig, &siglen, md, mdlen) != 1)
        return gauth_ssl_error(L, "sign", "signature failed");
    if (kind == KIND_EC) {
        if (!ecdsa_der_to_raw(sig, siglen, raw))
            return gauth_error(L, "sign", "malformed ECDSA signature");
        lua_pushlstring(L, (const char *)raw, sizeof raw);
    } else {
        lua_pushlstring(L, (const char *)sig, siglen);
    }
    return 1;
}

/* Verifies `sig` over SHA-256 of `data` (`alg` already checked to fit the
 * key): 1 good, 0 bad, -1 for an OpenSSL failure (its queue says why,
 * `*fallback` otherwise). A bad signature leaves the error queue empty. */
static int verify_sha256(gauth_key *k, const unsigned char *sig, size_t slen,
                         const void *data, size_t len, const char **fallback)
{
    unsigned char der[ES256_SIG_BYTES + 16];
    /* RSA: the DigestInfo the signature must hold, prefix then digest */
    unsigned char tbs[sizeof SHA256_DIGEST_INFO + EVP_MAX_MD_SIZE];
    unsigned char *md = tbs + sizeof SHA256_DIGEST_INFO;
    unsigned int mdlen = 0;
    int rc;

    /* Stale notes from elsewhere would be reported as this call's. */
    if (ERR_peek_error() != 0)
        ERR_clear_error();
    if (k->kind == KIND_EC) {
        int dlen;
        if (slen != ES256_SIG_BYTES)
            return 0;
        dlen = ecdsa_raw_to_der(sig, der, (int)sizeof der);
        if (dlen == 0) {
            *fallback = "cannot encode signature";
            return -1;
        }
        sig = der;
        slen = (size_t)dlen;
    } else if (slen != (size_t)EVP_PKEY_size(k->pkey)) {
        /* PKCS#1 v1.5 signatures are exactly the modulus' length. */
        return 0;
    }
    if (k->verify_ctx == NULL) {
        EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new(k->pkey, NULL);
        /* RSA without a digest set: OpenSSL then checks the PKCS#1 v1.5
         * padding and compares the whole DigestInfo with the one passed,
         * as `openssl speed` verifies (RSA_verify would encode the same
         * DigestInfo and compare, with two allocations per call). */
        if (pctx == NULL || EVP_PKEY_verify_init(pctx) != 1 ||
            (k->kind == KIND_RSA &&
             EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1) ||
            (k->kind == KIND_EC &&
             EVP_PKEY_CTX_set_signature_md(pctx, EVP_sha256()) != 1)) {
            EVP_PKEY_CTX_free(pctx);
            *fallback = "cannot make a verification context";
            return -1;
        }
        k->verify_ctx = pctx;
    }
    if (gauth_sha256_direct(data, len, md)) {
        mdlen = 32;
    } else {
        /* EVP, with the context kept in the key */
        if (k->md_ctx == NULL) {
            EVP_MD_CTX *mctx = EVP_MD_CTX_new();
            if (mctx == NULL || EVP_DigestInit_ex(mctx, EVP_sha256(), NULL) != 1) {
                EVP_MD_CTX_free(mctx);
                *fallback = "cannot make a digest context";
                return -1;
            }
            k->md_ctx = mctx;
        } else if (EVP_DigestInit_ex(k->md_ctx, NULL, NULL) != 1) {
            /* NULL: the digest it was made with, without a new lookup. */
            *fallback = "digest failed";
            return -1;
        }
        if (EVP_DigestUpdate(k->md_ctx, data, len) != 1 ||
            EVP_DigestFinal_ex(k->md_ctx, md, &mdlen) != 1) {
            *fallback = "digest failed";
            return -1;
        }
    }
    if (k->kind == KIND_RSA) {
        memcpy(tbs, SHA256_DIGEST_INFO, sizeof SHA256_DIGEST_INFO);
        rc = EVP_PKEY_verify(k->verify_ctx, sig, slen, tbs,
                             sizeof SHA256_DIGEST_INFO + mdlen);
    } else {
        rc = EVP_PKEY_verify(k->verify_ctx, sig, slen, md, mdlen);
    }
    /* A bad signature is an answer, not an error: drop OpenSSL's notes. */
    if (rc != 1 || ERR_peek_error() != 0)
        ERR_clear_error();
    return rc == 1;
}

/***
 * Verify a signature made with SHA-256 (RS256 or ES256 in JOSE form).
 * @function Key:verify
 * @tparam string alg
 * @tparam string data
 * @tparam string signature
 * @tparam[opt] integer len verify only the first `len` bytes of `data`
 * (the signed part of a token, without copying it out)
 * @return true or false; nil and an error message when the algorithm does
 * not fit the key
 */
static int l_key_verify(lua_State *L)
{
    gauth_key *k = key_check(L, 1);
    const char *alg = luaL_checkstring(L, 2);
    size_t n, slen;
    const char *data = luaL_checklstring(L, 3, &n);
    const unsigned char *sig =
        (const unsigned char *)luaL_checklstring(L, 4, &slen);
    lua_Integer len = luaL_optinteger(L, 5, (lua_Integer)n);
    const char *fallback = NULL;
    int kind = alg_kind(alg), rc;

    luaL_argcheck(L, len >= 0 && (size_t)len <= n, 5,
                  "length outside the data");
    if (kind == 0)
        return gauth_error(L, "verify", "unsupported algorithm (RS256, ES256)");
    if (kind != k->kind)
        return gauth_error(L, "verify", "algorithm does not match the key type");
    rc = verify_sha256(k, sig, slen, data, (size_t)len, &fallback);
    if (rc < 0)
        return gauth_ssl_error(L, "verify", fallback);
    lua_pushboolean(L, rc);
    return 1;
}

/***
 * Verify a compact JWS (`header.payload.signature`, RS256 or ES256) with
 * this key in one call: the token is checked as `jws_split` checks it
 * (bounds, three segments, strict base64url; the same messages), the
 * signature is decoded on the C stack and SHA-256 of `header.payload`
 * verified. The header is not returned: a caller that picked this key has
 * read it already.
 * @function Key:verify_jws
 * @tparam string alg "RS256" or "ES256", fitting the key
 * @tparam string token
 * @tparam[opt] boolean claims give the payload as its table, decoded as
 * `cjson.decode` would (`json_object`), when it can; the text otherwise
 * @return the payload (decoded JSON text, or with `claims` its table) and
 * true or false (the signature); or nil and a message: "gauth.core: jws: malformed: ..." for a
 * token of the wrong shape (never quoting it), or the algorithm's
 */
static int l_key_verify_jws(lua_State *L)
{
    gauth_key *k = key_check(L, 1);
    const char *alg = luaL_checkstring(L, 2);
    size_t n, slen = 0, signed_len = 0;
    const char *t = luaL_checklstring(L, 3, &n);
    int claims = lua_toboolean(L, 4);
    unsigned char sig[GAUTH_JWS_SIG_BYTES];
    const char *fallback = NULL;
    char msg[160];
    int kind = alg_kind(alg), rc;

    if (kind == 0)
        return gauth_error(L, "verify", "unsupported algorithm (RS256, ES256)");
    if (kind != k->kind)
        return gauth_error(L, "verify", "algorithm does not match the key type");
    /* Pushes the payload; nothing from here on raises. */
    if (gauth_jws_decode(L, t, n, sig, &slen, &signed_len, claims, msg,
                         sizeof msg) != NULL)
        return gauth_error(L, "jws", msg);
    rc = verify_sha256(k, sig, slen, t, signed_len, &fallback);
    if (rc < 0) {
        lua_pop(L, 1);
        return gauth_ssl_error(L, "verify", fallback);
    }
    lua_pushboolean(L, rc);
    return 2;
}

/***
 * Key type: "RSA" or "EC".
 * @function Key:type
 */
static int l_key_type(lua_State *L)
{
    gauth_key *k = key_check(L, 1);
    lua_pushstring(L, k->kind == KIND_RSA ? "RSA" : "EC");
    return 1;
}

/***
 * Key size in bits.
 * @function Key:bits
 */
static int l_key_bits(lua_State *L)
{
    gauth_key *k = key_check(L, 1);
    lua_pushinteger(L, EVP_PKEY_bits(k->pkey));
    return 1;
}

/***
 * Does the key hold a private half?
 * @function Key:is_private
 */
static int l_key_is_private(lua_State *L)
{
    gauth_key *k = key_check(L, 1);
    lua_pushboolean(L, k->is_private);
    return 1;
}

/***
 * The public half as PEM (`PUBLIC KEY`), e.g. to hand to a verifier.
 * @function Key:public_pem
 */
static int l_key_public_pem(lua_State *L)
{
    gauth_key *k = key_check(L, 1);
    BIO *bio = BIO_new(BIO_s_mem());
    char *p = NULL;
    long len;
    char buf[4096];

    if (bio == NULL)
        return gauth_ssl_error(L, "public pem", "out of memory");
    if (PEM_write_bio_PUBKEY(bio, k->pkey) != 1) {
        BIO_free(bio);
        return gauth_ssl_error(L, "public pem", "encoding failed");
    }
    len = BIO_get_mem_data(bio, &p);
    if (len <= 0 || (size_t)len > sizeof buf) {
        BIO_free(bio);
        return gauth_error(L, "public pem", "encoding failed");
    }
    memcpy(buf, p, (size_t)len);
    BIO_free(bio);
    lua_pushlstring(L, buf, (size_t)len);
    return 1;
}

/***
 * Free the key now; also what the garbage collector calls. Idempotent.
 * @function Key:close
 */
static int l_key_close(lua_State *L)
{
    gauth_key *k = (gauth_key *)luaL_checkudata(L, 1, GAUTH_KEY_MT);
    if (k->sign_ctx != NULL) {
        EVP_PKEY_CTX_free(k->sign_ctx);
        k->sign_ctx = NULL;
    }
    if (k->verify_ctx != NULL) {
        EVP_PKEY_CTX_free(k->verify_ctx);
        k->verify_ctx = NULL;
    }
    if (k->md_ctx != NULL) {
        EVP_MD_CTX_free(k->md_ctx);
        k->md_ctx = NULL;
    }
    if (k->pkey != NULL) {
        EVP_PKEY_free(k->pkey);
        k->pkey = NULL;
    }
    return 0;
}

static int l_key_tostring(lua_State *L)
{
    gauth_key *k = (gauth_key *)luaL_checkudata(L, 1, GAUTH_KEY_MT);
    if (k->pkey == NULL)
        lua_pushfstring(L, "gauth.Key (closed): %p", (void *)k);
    else
        lua_pushfstring(L, "gauth.Key (%s %d, %s): %p",
                        k->kind == KIND_RSA ? "RSA" : "EC",
                        EVP_PKEY_bits(k->pkey),
                        k->is_private ? "private" : "public", (void *)k);
    return 1;
}

static const luaL_Reg key_methods[] = {
    {"sign", l_key_sign},
    {"verify", l_key_verify},
    {"verify_jws", l_key_verify_jws},
    {"type", l_key_type},
    {"bits", l_key_bits},
    {"is_private", l_key_is_private},
    {"public_pem", l_key_public_pem},
    {"close", l_key_close},
    {NULL, NULL}
};

static const luaL_Reg key_meta[] = {
    {"__gc", l_key_close},
    {"__tostring", l_key_tostring},
    {NULL, NULL}
};

static int l_is_key(lua_State *L)
{
    lua_pushboolean(L, gauth_testudata(L, 1, GAUTH_KEY_MT) != NULL);
    return 1;
}

static const luaL_Reg pkey_funcs[] = {
    {"load_private_key", l_load_private_key},
    {"load_public_key", l_load_public_key},
    {"load_public_der", l_load_public_der},
    {"load_jwk", l_load_jwk},
    {"is_key", l_is_key},
    {NULL, NULL}
};

void gauth_pkey_open(lua_State *L)
{
    gauth_newclass(L, GAUTH_KEY_MT, key_methods, key_meta);
    gauth_setfuncs(L, pkey_funcs, 0);
}
