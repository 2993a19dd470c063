// Runs the whole suite: against the machine's PostgreSQL when DATABASE_URL is set, else against an
// embedded PostgreSQL (from npm) started for this run in a temporary directory.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const args = process.argv.slice(2);
const files = args.length > 0 ? args : findTests(root);

function findTests(dir) {
  const out = [];
  for (const base of ['src', 'test']) {
    const walk = (d) => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) walk(p);
        else if (e.name.endsWith('.test.ts')) out.push(path.relative(root, p));
      }
    };
    walk(path.join(dir, base));
  }
  return out.sort();
}

let embedded = null;
const env = { ...process.env };
if (!env.DATABASE_URL) {
  const { startEmbeddedPostgres } = await import('tsx/esm/api').then(({ tsImport }) => tsImport('../src/store/embedded.ts', import.meta.url));
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'knowpay-test-'));
  const t0 = Date.now();
  embedded = await startEmbeddedPostgres({ dataDir });
  console.log(`# embedded PostgreSQL up in ${Date.now() - t0} ms (${dataDir})`);
  env.KNOWPAY_TEST_ADMIN_URL = embedded.url;
  process.on('exit', () => fs.rmSync(dataDir, { recursive: true, force: true }));
} else {
  console.log(`# using DATABASE_URL=${env.DATABASE_URL.replace(/:[^:@/]*@/, ':***@')}`);
}

const child = spawn(process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=2', '--test-timeout=300000', ...files], {
  cwd: root,
  env,
  stdio: 'inherit',
});
const code = await new Promise((resolve) => child.on('exit', (c, sig) => resolve(c ?? (sig ? 1 : 0))));
if (embedded) await embedded.stop();
process.exit(code);
