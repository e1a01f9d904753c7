// Node's @google-cloud/storage getSignedUrl (v4) per second with the same
// key and request as bench/sign_url_bench.lua (RSA only: the Node client
// has no HMAC signing). Prints `sign_url_rsa_node N url/s`.
'use strict';
const fs = require('fs');
const path = require('path');
const { Storage } = require(path.join(__dirname, '..', 'spec', 'support', 'node', 'node_modules',
  '@google-cloud', 'storage'));

const SECONDS = Number(process.env.BENCH_SECONDS || 1);
const ROUNDS = Number(process.env.BENCH_ROUNDS || 3);
const storage = new Storage({ projectId: 'bench', credentials: {
  client_email: 'bench@example-project.iam.gserviceaccount.com',
  private_key: fs.readFileSync(process.argv[2], 'utf8') } });
const file = storage.bucket('bench-bucket').file('dir/report 2024.pdf');

async function main() {
  let best = 0;
  for (let r = 0; r < ROUNDS; r++) {
    let n = 0;
    const t0 = process.hrtime.bigint();
    const deadline = t0 + BigInt(Math.round(SECONDS * 1e9));
    while (process.hrtime.bigint() < deadline) {
      for (let i = 0; i < 10; i++) {
        await file.getSignedUrl({ version: 'v4', action: 'read', expires: Date.now() + 900000 });
      }
      n += 10;
    }
    const rate = n / (Number(process.hrtime.bigint() - t0) / 1e9);
    if (rate > best) best = rate;
  }
  console.log(`sign_url_rsa_node ${best.toFixed(0)} url/s`);
}
main().catch(e => { console.error(e); process.exit(1); });
