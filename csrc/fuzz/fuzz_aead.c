/* Sealed values read back from a shared store (Redis) are attacker-
 * controlled bytes: aead_open on anything either refuses with a
 * "gauth.core: aead_open:" message or (only for a value sealed under the
 * key) returns the plaintext; a seal of the input always opens to it, and
 * the same bytes under other additional data never do. */
#include "harness.h"

static const char CHUNK[] =
    "local s = ...\n"
    "local key = string.rep('k', 32)\n"
    "local cut = s:find('\\0', 1, true) or (#s + 1)\n"
    "local aad, sealed = s:sub(1, cut - 1), s:sub(cut + 1)\n"
    "local pt, err = core.aead_open(key, sealed, aad)\n"
    "if pt == nil then\n"
    "  assert(type(err) == 'string' and err:find('gauth.core: aead_open: ', 1, true), err)\n"
    "else assert(type(pt) == 'string') end\n"
    "local box = assert(core.aead_seal(key, sealed, aad))\n"
    "assert(#box == #sealed + 28, 'sealed length')\n"
    "assert(core.aead_open(key, box, aad) == sealed, 'round trip')\n"
    "local p2, e2 = core.aead_open(key, box, aad .. 'x')\n"
    "assert(p2 == nil and e2 == 'gauth.core: aead_open: authentication failed', 'aad not bound')\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_call(CHUNK, data, size);
}
