/* Key:verify_jws on arbitrary tokens with fixed keys: it agrees with
 * jws_split on every input (the same "malformed:" message, or the same
 * payload), and never calls a signature good; with claims = true, the
 * same verdicts and json_object's table of the payload (or the text where
 * it declines). The first byte picks the algorithm. */
#include "harness.h"

static const char CHUNK[] =
    "local s = ...\n"
    "local keys = fuzz_keys()\n"
    "if #s < 1 then return end\n"
    "local alg = s:byte(1) % 2 == 0 and 'RS256' or 'ES256'\n"
    "local token = s:sub(2)\n"
    "local p, ok = keys[alg]:verify_jws(alg, token)\n"
    "local h, sp = core.jws_split(token)\n"
    "local c, cok = keys[alg]:verify_jws(alg, token, true)\n"
    "if p then\n"
    "  assert(ok == false, 'verify_jws returned ' .. tostring(ok))\n"
    "  assert(h and sp == p, 'payload differs from jws_split')\n"
    "  assert(cok == false, 'verify_jws (claims) returned ' .. tostring(cok))\n"
    "  local t = core.json_object(p)\n"
    "  if type(c) == 'table' then\n"
    "    assert(t and fuzz_same(c, t), 'claims differ from json_object')\n"
    "  else\n"
    "    assert(c == p and (t == nil or #p > 4000), 'claims: declined differently')\n"
    "  end\n"
    "else\n"
    "  assert(not h and ok == sp, 'message differs from jws_split')\n"
    "  assert(c == nil and cok == ok, 'message (claims) differs')\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_call(CHUNK, data, size);
}
