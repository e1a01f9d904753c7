// Google's Node library (google-auth-library, pinned in spec/support/node)
// as the judge of the requests gauth makes for ID tokens and for the
// universe domain: given the same credentials, it asks the same loopback
// servers, and the spec compares what both sent. Fixed Google hosts are
// reached through the CONNECT proxy (HTTPS_PROXY, NODE_EXTRA_CA_CERTS);
// the metadata server through GCE_METADATA_HOST. One process per batch:
//   node idtoken_judge.js < { "cases": [ ... ] }  ->  [ { token | universe } | { error } ]
// A case is one of
//   { op: "id_token", credentials: <file JSON> | null (ADC: the metadata
//     server), audience }: getIdTokenClient(audience), as fetch_id_token;
//   { op: "impersonated_id_token", source: <external_account JSON>, target,
//     audience, include_email }: Impersonated over an ExternalAccountClient
//     (Node's external accounts give no ID token themselves), fetchIdToken;
//   { op: "universe" }: getUniverseDomainFromMetadataServer().
// Cases run one after another, in order.
'use strict';
const judge = require('./node_judge');
const lib = judge.lib('google-auth-library');

async function one(c) {
  if (c.op === 'id_token') {
    const auth = c.credentials ? new lib.GoogleAuth({ credentials: c.credentials }) : new lib.GoogleAuth();
    const client = await auth.getIdTokenClient(c.audience);
    const headers = await client.getRequestHeaders();
    const m = /^Bearer (.+)$/.exec(headers.Authorization || headers.authorization || '');
    if (!m) throw new Error('no Bearer header');
    return { token: m[1] };
  }
  if (c.op === 'impersonated_id_token') {
    const source = lib.ExternalAccountClient.fromJSON(c.source);
    const client = new lib.Impersonated({ sourceClient: source, targetPrincipal: c.target,
      targetScopes: ['https://www.googleapis.com/auth/cloud-platform'] });
    return { token: await client.fetchIdToken(c.audience, { includeEmail: c.include_email }) };
  }
  if (c.op === 'universe') {
    return { universe: await new lib.GoogleAuth().getUniverseDomainFromMetadataServer() };
  }
  throw new Error('unknown op ' + c.op);
}

judge.run(one);
