// Judge of gauth.id_token.credentials for a service account:
// google-auth-library's getIdTokenClient (pinned in
// spec/support/node/package.json) fetches an ID token for the same key and
// audience. It posts to the fixed host www.googleapis.com, which the spec
// routes to its loopback fake through a CONNECT proxy (HTTPS_PROXY,
// NODE_EXTRA_CA_CERTS for the test CA). One process for a batch: stdin
// { "cases": [ { "key": <key file JSON>, "audience" } ] }, stdout
// [ { "token" } | { "error" } ].
'use strict';
const judge = require('./node_judge');
const { GoogleAuth } = judge.lib('google-auth-library');

async function one(c) {
  const auth = new GoogleAuth({ credentials: c.key });
  const client = await auth.getIdTokenClient(c.audience);
  const headers = await client.getRequestHeaders();
  const m = /^Bearer (.+)$/.exec(headers.Authorization || headers.authorization || '');
  if (!m) throw new Error('no Bearer header');
  return { token: m[1] };
}

judge.run(one);
