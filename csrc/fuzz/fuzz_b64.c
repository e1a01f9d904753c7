/* base64url/base64 strict decoding: anything accepted must re-encode to the
 * same text (one encoding per byte string). */
#include "harness.h"

static const char CHUNK[] =
    "local s = ...\n"
    "local d, e = core.b64url_decode(s)\n"
    "if d then assert(core.b64url_encode(d) == s, 'not canonical')\n"
    "else assert(type(e) == 'string') end\n"
    "d, e = core.b64_decode(s)\n"
    "if d then assert(core.b64_encode(d) == s, 'not canonical')\n"
    "else assert(type(e) == 'string') end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_call(CHUNK, data, size);
}
