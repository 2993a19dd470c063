/** The embedded default: a real PostgreSQL under KNOWPAY_DATA_DIR; data and the API key survive a restart. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { startService } from '../../src/service.ts';
import { testConfig } from '../support/service.ts';

test('embedded PostgreSQL: generated key printed once, data kept across a restart', async () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'knowpay-restart-'));
  try {
    const config = { ...(await testConfig('unused')), databaseUrl: undefined, dataDir, apiKey: undefined, runWorker: false };
    const first = await startService(config, pino({ level: 'silent' }));
    const key = first.generatedApiKey;
    assert.match(key ?? '', /^sk_/);
    const headers = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
    const created = await (await fetch(`${first.url}/v1/creators`, { method: 'POST', headers, body: JSON.stringify({ name: "Kept", revenue_share_bps: 5000 }) })).json() as any;
    assert.match(created.id, /^cr_/);
    await first.close();

    const second = await startService(config, pino({ level: 'silent' }));
    try {
      assert.equal(second.generatedApiKey, null, 'a key is generated only on first start');
      const health = await (await fetch(`${second.url}/healthz`)).json();
      assert.deepEqual(health, { status: 'ok' });
      const got = await fetch(`${second.url}/v1/creators/${created.id}`, { headers });
      assert.equal(got.status, 200);
      assert.equal(((await got.json()) as any).name, "Kept");
    } finally {
      await second.close();
    }
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});
