// Google's Node library as the judge of ID-token verdicts: one process for
// a batch of cases.
//   node verify_id_tokens.js INPUT.json
// INPUT: {"certs": {kid: PEM}, "clock_skew": s, "cases": [{"token",
//   "audience", "issuers", "max_expiry"}]}
// Prints [{"ok": true, "claims": {...}} | {"ok": false, "error": "..."}].
'use strict';
const fs = require('fs');
const path = require('path');
const { OAuth2Client } = require(path.join(__dirname, 'node_modules', 'google-auth-library'));

async function main() {
  const input = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  OAuth2Client.CLOCK_SKEW_SECS_ = input.clock_skew || 0;
  const client = new OAuth2Client();
  const out = [];
  for (const c of input.cases) {
    try {
      const ticket = await client.verifySignedJwtWithCertsAsync(
        c.token, input.certs, c.audience, c.issuers || undefined, c.max_expiry || undefined);
      out.push({ ok: true, claims: ticket.getPayload() });
    } catch (e) {
      // The library quotes the token in some messages: keep the first words.
      out.push({ ok: false, error: String(e.message).split(':')[0] });
    }
  }
  process.stdout.write(JSON.stringify(out));
}
main().catch((e) => { process.stderr.write(String(e.stack)); process.exit(2); });
