/* core.json_object on arbitrary text: whatever it decodes, cjson.decode
 * decodes to the same table (types, signs of zero, nesting); what it
 * declines is left to cjson. */
#include "harness.h"

static const char CHUNK[] =
    "local s = ...\n"
    "local t = core.json_object(s)\n"
    "if t == nil then return end\n"
    "local ok, c = pcall(require('cjson').decode, s)\n"
    "assert(ok, 'cjson refused what json_object decoded')\n"
    "assert(fuzz_same(t, c), 'json_object and cjson differ')\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_call(CHUNK, data, size);
}
