/* Token segments: jws_split on arbitrary bytes either refuses with a
 * "malformed:" message or returns segments that re-encode to the input. */
#include "harness.h"

static const char CHUNK[] =
    "local s = ...\n"
    "local h, p, sig, n = core.jws_split(s)\n"
    "if h then\n"
    "  local e = core.b64url_encode\n"
    "  assert(e(h) .. '.' .. e(p) .. '.' .. e(sig) == s, 'not the input')\n"
    "  assert(n == #e(h) + 1 + #e(p), 'signed length')\n"
    "else assert(type(p) == 'string' and p:find('malformed: ', 1, true)) end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_call(CHUNK, data, size);
}
