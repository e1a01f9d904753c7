/* Signature verification with fixed keys on arbitrary data and signatures:
 * the first byte picks the algorithm, the next 64 or 256 bytes are the
 * signature, the rest the signed data. Never true, never an error. */
#include "harness.h"

static const char CHUNK[] =
    "local s = ...\n"
    "local keys = fuzz_keys()\n"
    "if #s < 1 then return end\n"
    "local alg = s:byte(1) % 2 == 0 and 'RS256' or 'ES256'\n"
    "local n = alg == 'RS256' and 256 or 64\n"
    "local ok, e = keys[alg]:verify(alg, s:sub(n + 2), s:sub(2, n + 1))\n"
    "assert(ok == false, 'verify returned ' .. tostring(ok) .. ' ' .. tostring(e))\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_call(CHUNK, data, size);
}
