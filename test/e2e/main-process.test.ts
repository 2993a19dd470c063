/**
 * `npm start` as a user runs it: the embedded default answers /healthz, prints the generated key
 * once, and SIGTERM stops it cleanly (embedded server stopped, exit code 0).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { eventually, freePort } from '../support/service.ts';

test('main process: embedded start, /healthz, key printed once, graceful SIGTERM', async () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'knowpay-main-'));
  const port = await freePort();
  const env = { ...process.env, PORT: String(port), KNOWPAY_DATA_DIR: dataDir, LOG_LEVEL: 'info' } as NodeJS.ProcessEnv;
  delete env.DATABASE_URL;
  delete env.KNOWPAY_API_KEY;
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  try {
    const t0 = Date.now();
    await eventually(async () => {
      try { return (await fetch(`http://127.0.0.1:${port}/healthz`)).status === 200; } catch { return false; }
    }, { timeoutMs: 30_000, intervalMs: 100, what: '/healthz' });
    assert.ok(Date.now() - t0 < 30_000);
    // The key is printed once the service is up; /healthz can answer a moment before the line
    // reaches this pipe, so wait for it rather than read the buffer once.
    const keyPattern = /API key \(shown once[^)]*\): (sk_\S+)\n/;
    await eventually(async () => keyPattern.test(out), { timeoutMs: 10_000, intervalMs: 50, what: 'the printed key' });
    const key = keyPattern.exec(out)?.[1];
    assert.ok(key, 'generated key printed');
    assert.equal(out.match(/shown once/g)?.length, 1, 'key printed exactly once');
    // The logs are JSON lines, and the key never appears in them.
    const logLines = out.split('\n').filter((l) => l.startsWith('{'));
    assert.ok(logLines.length > 0);
    for (const l of logLines) { JSON.parse(l); assert.ok(!l.includes(key!), 'key leaked into a log line'); }
    const r = await fetch(`http://127.0.0.1:${port}/v1/orders?customer_id=x`, { headers: { authorization: `Bearer ${key}` } });
    assert.equal(r.status, 200);
    child.kill('SIGTERM');
    assert.equal(await exited, 0);
    assert.ok(!fs.existsSync(path.join(dataDir, 'pg', 'postmaster.pid')), 'embedded server stopped');
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});
