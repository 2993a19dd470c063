/**
 * `npm run settle -- [--as-of 2026-11-22T00:00:00Z]`: a settlement run from the command line
 * against DATABASE_URL (or the embedded default's data directory), with a progress bar. Prints
 * the settlement as JSON on stdout.
 */
import { parseArgs } from 'node:util';
import { loadConfig } from '../config.ts';
import { createPool, migrate } from '../store/db.ts';
import { startEmbeddedPostgres } from '../store/embedded.ts';
import { runSettlement } from '../settlement/settlement.ts';
import { progressBar } from './progress.ts';

const { values } = parseArgs({ options: { 'as-of': { type: 'string' } } });
const asOf = values['as-of'] ? new Date(values['as-of']) : new Date();
if (Number.isNaN(asOf.getTime())) {
  process.stderr.write(`--as-of must be an ISO 8601 time, got ${values['as-of']}\n`);
  process.exit(2);
}
const config = loadConfig();
const embedded = config.databaseUrl ? null : await startEmbeddedPostgres({ dataDir: config.dataDir });
const url = config.databaseUrl ?? embedded!.url;
await migrate(url);
const pool = createPool(url, 4);
const bar = progressBar(`settlement as of ${asOf.toISOString()}`);
try {
  const s = await runSettlement(pool, { asOf, onProgress: (step, done, total) => bar(done, total, step) });
  process.stdout.write(JSON.stringify(s, null, 2) + '\n');
} catch (err) {
  process.stderr.write(`\nsettlement failed: ${(err as Error).message}\n`);
  process.exitCode = 1;
} finally {
  await pool.end();
  await embedded?.stop();
}
