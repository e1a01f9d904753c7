// Google's Node library (google-auth-library, pinned in spec/support/node)
// as the judge of gauth's external-account requests: given the same
// configurations, it asks the same loopback servers for tokens, and the
// specs compare what both sent. One process per batch.
//   node ea_judge.js < cases.json  ->  [{ token } | { error }, ...]
// Each case: { config (a credentials file's content), scopes (array or
// null) }; the environment (AWS_*, GOOGLE_EXTERNAL_ACCOUNT_*) is the
// process's. Cases run one after another, in order.
'use strict';
const judge = require('./node_judge');
const { ExternalAccountClient } = judge.lib('google-auth-library');
// Not exported from the package's index in 9.15.1.
const { ExternalAccountAuthorizedUserClient } =
  judge.lib('google-auth-library/build/src/auth/externalAccountAuthorizedUserClient');

async function one(c) {
  let client;
  if (c.config.type === 'external_account_authorized_user') {
    client = new ExternalAccountAuthorizedUserClient(c.config);
  } else {
    client = ExternalAccountClient.fromJSON(c.config);
    if (c.scopes) client.scopes = c.scopes;
  }
  const r = await client.getAccessToken();
  return { token: r.token };
}

judge.run(one);
