/**
 * `npm run reconcile -- --channel alipay --bill-date 2026-11-21 [--file bill.zip]`: reconcile a
 * channel's bill from the command line against DATABASE_URL (or the embedded default), with a
 * progress bar on stderr; without --file the bill is downloaded from the channel. Prints the
 * reconciliation as JSON on stdout, and, with --stats, the run's time and the peak memory.
 */
import { parseArgs } from 'node:util';
import { loadConfig } from '../config.ts';
import { createPool, migrate } from '../store/db.ts';
import { startEmbeddedPostgres } from '../store/embedded.ts';
import { reconcileFromChannel, runReconciliation } from '../reconciliation/reconcile.ts';
import { BILL_READERS } from '../reconciliation/readers.ts';
import { setupChannels } from '../channels/setup.ts';
import type { ChannelName } from '../channels/types.ts';

const { values } = parseArgs({ options: { channel: { type: 'string' }, 'bill-date': { type: 'string' }, file: { type: 'string' }, stats: { type: 'boolean' } } });
const channel = values.channel as ChannelName | undefined;
const reader = channel ? BILL_READERS[channel] : undefined;
if (!channel || !reader || !values['bill-date']) {
  process.stderr.write(`usage: npm run reconcile -- --channel <${Object.keys(BILL_READERS).join('|')}> --bill-date YYYY-MM-DD [--file <bill>]\n`);
  process.exit(2);
}
const config = loadConfig();
const embedded = config.databaseUrl ? null : await startEmbeddedPostgres({ dataDir: config.dataDir });
const url = config.databaseUrl ?? embedded!.url;
await migrate(url);
const pool = createPool(url, 4);
let started = performance.now();
let lastDraw = 0;
try {
  const setup = await setupChannels(pool, { publicBaseUrl: config.publicBaseUrl, sandboxTimeScale: config.sandboxTimeScale, only: [channel] });
  started = performance.now();
  const onProgress = (step: string, n: number) => {
      const now = performance.now();
      if (now - lastDraw < 200 && step === 'load') return;
      lastDraw = now;
      process.stderr.write(`\r${channel} bill ${values['bill-date']}: ${step.padEnd(8)} ${String(n).padStart(9)} lines  ${((now - started) / 1000).toFixed(1)}s`);
  };
  const ctx = { db: pool, channels: setup.channels };
  const recon = values.file
    ? await runReconciliation(ctx, { channel, billDate: values['bill-date'], source: 'upload', file: values.file, reader, onProgress })
    : await reconcileFromChannel(ctx, { channel, billDate: values['bill-date'], reader });
  process.stderr.write('\n');
  const stats = { seconds: +((performance.now() - started) / 1000).toFixed(2), peak_rss_mb: Math.round(process.resourceUsage().maxRSS / 1024) };
  process.stdout.write(JSON.stringify(values.stats ? { ...recon, stats } : recon, null, 2) + '\n');
} catch (err) {
  process.stderr.write(`\nreconciliation failed: ${(err as Error).message}\n`);
  process.exitCode = 1;
} finally {
  await pool.end();
  await embedded?.stop();
}
