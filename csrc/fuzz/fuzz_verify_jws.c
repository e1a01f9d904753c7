/* Key:verify_jws on arbitrary tokens with fixed keys: it agrees with
 * jws_split on every input (the same "malformed:" message, or the same
 * payload), and never calls a signature good. The first byte picks the
 * algorithm. */
#include "harness.h"

static const char CHUNK[] =
    "local s = ...\n"
    "local keys = fuzz_keys()\n"
    "if #s < 1 then return end\n"
    "local alg = s:byte(1) % 2 == 0 and 'RS256' or 'ES256'\n"
    "local token = s:sub(2)\n"
    "local p, ok = keys[alg]:verify_jws(alg, token)\n"
    "local h, sp = core.jws_split(token)\n"
    "if p then\n"
    "  assert(ok == false, 'verify_jws returned ' .. tostring(ok))\n"
    "  assert(h and sp == p, 'payload differs from jws_split')\n"
    "else\n"
    "  assert(not h and ok == sp, 'message differs from jws_split')\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_call(CHUNK, data, size);
}
