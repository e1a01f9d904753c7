/* JWK parameters: the first byte picks RSA or EC (and the curve name), the
 * rest is split in two at its middle for n/e or x/y. Never raises; a key
 * that loads is public and of the kind asked. */
#include "harness.h"

static const char CHUNK[] =
    "local s = ...\n"
    "if #s < 1 then return end\n"
    "local sel = s:byte(1)\n"
    "local rest = s:sub(2)\n"
    "local mid = math.floor(#rest / 2)\n"
    "local a, b = rest:sub(1, mid), rest:sub(mid + 1)\n"
    "local kty = sel % 2 == 0 and 'RSA' or 'EC'\n"
    "local crv = sel % 4 < 2 and 'P-256' or 'P-384'\n"
    "local k, e = core.load_jwk(kty, a, b, crv)\n"
    "if k then\n"
    "  assert(k:type() == kty and not k:is_private())\n"
    "  k:close()\n"
    "else assert(type(e) == 'string') end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_call(CHUNK, data, size);
}
