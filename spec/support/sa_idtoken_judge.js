// Judge of gauth.id_token.credentials for a service account:
// google-auth-library's getIdTokenClient (pinned in
// spec/support/node/package.json) fetches an ID token for the same key and
// audience. It posts to the fixed host www.googleapis.com, which the spec
// routes to its loopback fake through a CONNECT proxy (HTTPS_PROXY,
// NODE_EXTRA_CA_CERTS for the test CA). One process for a batch: stdin
// { "cases": [ { "key": <key file JSON>, "audience" } ] }, stdout
// [ { "token" } | { "error" } ].
'use strict';
const path = require('path');
const { GoogleAuth } = require(
  path.join(__dirname, 'node', 'node_modules', 'google-auth-library'));

async function one(c) {
  const auth = new GoogleAuth({ credentials: c.key });
  const client = await auth.getIdTokenClient(c.audience);
  const headers = await client.getRequestHeaders();
  const m = /^Bearer (.+)$/.exec(headers.Authorization || headers.authorization || '');
  if (!m) throw new Error('no Bearer header');
  return { token: m[1] };
}

async function main() {
  const chunks = [];
  for await (const ch of process.stdin) chunks.push(ch);
  const input = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  const out = [];
  for (const c of input.cases) {
    try {
      out.push(await one(c));
    } catch (e) {
      out.push({ error: String(e && e.message || e) });
    }
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch(e => { process.stderr.write(String(e && e.stack || e)); process.exit(1); });
