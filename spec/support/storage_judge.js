// Judge of gauth.storage: Google's Node client for Cloud Storage
// (@google-cloud/storage, pinned in spec/support/node/package.json) signs
// the same cases with the same key on a pinned clock. One process for a
// whole batch: a JSON document on stdin, a JSON array on stdout.
//
// stdin: { "key": { "client_email", "private_key" }, "cases": [ case, ... ] }
// case: { "kind": "url" | "policy", "now": epoch seconds, "bucket", "object",
//         "action": "read" | "write" | "delete" | "resumable",
//         "expires": seconds from now, "headers": [[name, value], ...],
//         "query": [[name, value], ...], "virtual": bool, "cname": URL,
//         "api_endpoint": URL, "universe": domain,
//         "conditions": [...], "fields": [[name, value], ...] }
// Each answer: { "url" } for a URL, { "url", "fields" } for a policy, or
// { "error": message }.
'use strict';
const judge = require('./node_judge');

// The pinned clock: `new Date()` and `Date.now()` answer the case's time
// (the client reads the clock itself for POST policies and to check that
// an expiry is in the future).
const RealDate = Date;
let pinned = RealDate.now();
class PinnedDate extends RealDate {
  constructor(...args) {
    if (args.length === 0) super(pinned); else super(...args);
  }
  static now() { return pinned; }
}
global.Date = PinnedDate;

const { Storage } = judge.lib('@google-cloud/storage');

// Ordered [name, value] pairs (an empty Lua table arrives as {}).
function pairs(list) {
  const o = {};
  if (Array.isArray(list)) for (const [k, v] of list) o[k] = v;
  return o;
}

async function one(key, c) {
  pinned = c.now * 1000;
  const opts = { projectId: 'judge-project',
                 credentials: { client_email: key.client_email, private_key: key.private_key } };
  if (c.api_endpoint) opts.apiEndpoint = c.api_endpoint;
  if (c.universe) {
    opts.universeDomain = c.universe;
    opts.credentials.universe_domain = c.universe;
  }
  const storage = new Storage(opts);
  const file = storage.bucket(c.bucket).file(c.object === undefined ? '' : c.object);
  const expires = new RealDate((c.now + c.expires) * 1000);
  if (c.kind === 'policy') {
    const cfg = { expires, conditions: Array.isArray(c.conditions) ? c.conditions : [],
                  fields: pairs(c.fields) };
    if (c.virtual) cfg.virtualHostedStyle = true;
    if (c.cname) cfg.bucketBoundHostname = c.cname;
    const [res] = await file.generateSignedPostPolicyV4(cfg);
    return { url: res.url, fields: res.fields };
  }
  const cfg = { version: 'v4', action: c.action, expires,
                extensionHeaders: pairs(c.headers), queryParams: pairs(c.query) };
  if (c.virtual) cfg.virtualHostedStyle = true;
  if (c.cname) cfg.cname = c.cname;
  const [url] = await file.getSignedUrl(cfg);
  return { url };
}

judge.run((c, input) => one(input.key, c));
