// The part every Node judge in spec/support shares: where the pinned
// packages are (spec/support/node, installed by `make test`), the loopback
// guard, and the batch protocol (one process per batch: a JSON document on
// stdin, a JSON array on stdout, one answer per case in order, a case's
// failure as { "error": message }). A judge requires this module and gives
// `run` its one-case function:
//
//   const judge = require('./node_judge');
//   const lib = judge.lib('google-auth-library');
//   judge.run(async (c, input) => ({ token: ... }));
//
// The environment comes from the spec (spec/support/judges.lua and the specs
// that run judges): METADATA_SERVER_DETECTION, a CONNECT proxy on loopback
// in HTTPS_PROXY/https_proxy (for libraries that call fixed Google hosts:
// the fake Google behind it; for the others a closed loopback port, so
// that any connection attempt fails), NODE_EXTRA_CA_CERTS for the test CA.
// Node reads NODE_EXTRA_CA_CERTS itself at start; here it is only checked.
'use strict';
const fs = require('fs');
const path = require('path');

const NODE_MODULES = path.join(__dirname, 'node', 'node_modules');
exports.NODE_MODULES = NODE_MODULES;

// A pinned package (or a file inside one), from spec/support/node.
exports.lib = (name) => require(path.join(NODE_MODULES, name));

function fail(message) {
  process.stderr.write('node judge: ' + message + '\n');
  process.exit(1);
}

// Nothing may leave the machine: every proxy variable that is set must
// name a loopback proxy, and the test CA must be readable when it is named
// (a missing file makes Node warn and go on with its own roots).
function check_environment() {
  for (const name of ['HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy']) {
    const v = process.env[name];
    if (v === undefined || v === '') continue;
    let host;
    try {
      host = new URL(v).hostname;
    } catch (e) {
      fail(name + ' is not a URL: ' + v);
    }
    if (host !== '127.0.0.1' && host !== 'localhost' && host !== '[::1]') {
      fail(name + ' is not a loopback proxy: ' + v);
    }
  }
  const ca = process.env.NODE_EXTRA_CA_CERTS;
  if (ca !== undefined && ca !== '') {
    try {
      fs.accessSync(ca, fs.constants.R_OK);
    } catch (e) {
      fail('NODE_EXTRA_CA_CERTS is not readable: ' + ca);
    }
  }
}
exports.check_environment = check_environment;

async function read_stdin() {
  const chunks = [];
  for await (const ch of process.stdin) chunks.push(ch);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

// Run `one(c, input)` on each case of the batch on stdin, one after another
// in order, and write the answers. `input.cases` holds the cases, or the
// input is the array of cases itself (ea_judge's shape).
exports.run = (one) => {
  check_environment();
  (async () => {
    const input = await read_stdin();
    const cases = Array.isArray(input) ? input : input.cases;
    const out = [];
    for (const c of cases) {
      try {
        out.push(await one(c, input));
      } catch (e) {
        out.push({ error: String(e && e.message || e) });
      }
    }
    process.stdout.write(JSON.stringify(out));
  })().catch(e => { process.stderr.write(String(e && e.stack || e) + '\n'); process.exit(1); });
};
