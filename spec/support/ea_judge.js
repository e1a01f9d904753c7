// Google's Node library (google-auth-library, pinned in spec/support/node)
// as the judge of gauth's external-account requests: given the same
// configurations, it asks the same loopback servers for tokens, and the
// specs compare what both sent. One process per batch.
//   node ea_judge.js < cases.json  ->  [{ token } | { error }, ...]
// Each case: { config (a credentials file's content), scopes (array or
// null) }; the environment (AWS_*, GOOGLE_EXTERNAL_ACCOUNT_*) is the
// process's. Cases run one after another, in order.
'use strict';
const { ExternalAccountClient } = require('google-auth-library');
// Not exported from the package's index in 9.15.1.
const { ExternalAccountAuthorizedUserClient } =
  require('google-auth-library/build/src/auth/externalAccountAuthorizedUserClient');

async function one(c) {
  try {
    let client;
    if (c.config.type === 'external_account_authorized_user') {
      client = new ExternalAccountAuthorizedUserClient(c.config);
    } else {
      client = ExternalAccountClient.fromJSON(c.config);
      if (c.scopes) client.scopes = c.scopes;
    }
    const r = await client.getAccessToken();
    return { token: r.token };
  } catch (e) {
    return { error: String(e && e.message || e) };
  }
}

async function main() {
  let input = '';
  for await (const chunk of process.stdin) input += chunk;
  const cases = JSON.parse(input);
  const out = [];
  for (const c of cases) out.push(await one(c));
  process.stdout.write(JSON.stringify(out));
}
main().catch((e) => { process.stderr.write(String(e && e.stack || e)); process.exit(1); });
