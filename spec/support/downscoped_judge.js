// Judge of gauth.downscoped: google-auth-library's DownscopedClient
// (pinned in spec/support/node/package.json) exchanges the same source
// token with the same Credential Access Boundary. It calls the fixed host
// sts.googleapis.com, which the spec routes to its loopback fake through a
// CONNECT proxy (HTTPS_PROXY, NODE_EXTRA_CA_CERTS for the test CA).
// One process for a batch: stdin { "cases": [ { "source_token",
// "source_expiry" (ms), "boundary" } ] }, stdout [ { "token",
// "expiry" } | { "error" } ].
'use strict';
const judge = require('./node_judge');
const { OAuth2Client, DownscopedClient } = judge.lib('google-auth-library');

// The boundary as a Node user writes it (the documented key order); the
// JSON from Lua may have any order, and an empty Lua table arrives as {}.
function boundary(b) {
  const list = b.accessBoundary.accessBoundaryRules;
  const rules = (Array.isArray(list) ? list : []).map(r => {
    const o = { availableResource: r.availableResource,
                availablePermissions: Array.isArray(r.availablePermissions) ? r.availablePermissions : [] };
    const c = r.availabilityCondition;
    if (c) {
      o.availabilityCondition = { expression: c.expression };
      if (c.title !== undefined) o.availabilityCondition.title = c.title;
      if (c.description !== undefined) o.availabilityCondition.description = c.description;
    }
    return o;
  });
  return { accessBoundary: { accessBoundaryRules: rules } };
}

async function one(c) {
  const source = new OAuth2Client();
  source.setCredentials({ access_token: c.source_token, expiry_date: c.source_expiry });
  const client = new DownscopedClient(source, boundary(c.boundary));
  const res = await client.getAccessToken();
  return { token: res.token, expiry: res.expirationTime };
}

judge.run(one);
