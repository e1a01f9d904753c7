/* PEM loading: private, public and DER public keys from arbitrary bytes. */
#include "harness.h"

static const char CHUNK[] =
    "local s = ...\n"
    "local k, e = core.load_private_key(s)\n"
    "assert(k or type(e) == 'string')\n"
    "if k then k:close() end\n"
    "k, e = core.load_public_key(s)\n"
    "assert(k or type(e) == 'string')\n"
    "k, e = core.load_public_der(s)\n"
    "assert(k or type(e) == 'string')\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_call(CHUNK, data, size);
}
