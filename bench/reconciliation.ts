/**
 * Reconciliation figure (issue: refunds and reconciliation): a 1,000,000-line Alipay bill (the
 * real format: zip of GBK CSVs) reconciled end to end — parse, load, match, classify — against
 * 1,000,000 payments, with the Node process's peak memory watched. Ten planted differences of
 * each kind must be found exactly.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createPool, migrate } from '../src/store/db.ts';
import { spawnSync } from 'node:child_process';
import { writeAlipayBillZip, type AlipayBillRow } from '../src/channels/alipay/bill.ts';

const T0 = Date.now();
const progress = (msg: string) => process.stderr.write(`[bench:recon] +${((Date.now() - T0) / 1000).toFixed(2)}s ${msg}\n`);

export async function reconciliationBench(databaseUrl: string, opts: { lines: number }) {
  await migrate(databaseUrl);
  const pool = createPool(databaseUrl, 8);
  const N = opts.lines;
  const billDate = '2026-11-21';
  const file = path.join(os.tmpdir(), `knowpay-bench-bill-${Date.now()}.zip`);
  try {
    progress(`setup: ${N} paid Alipay payments (set-based insert)`);
    await pool.query(`INSERT INTO orders (id, customer_id, currency, status, subtotal_amount, discount_amount, total_amount, client_platform, expires_at)
                      SELECT 'ord_rb' || g, 'c', 'CNY', 'paid', 10000, 0, 10000, 'web', now() FROM generate_series(1, $1) g`, [N]);
    await pool.query(`INSERT INTO payments (id, order_id, channel, method, status, amount, currency, channel_reference, channel_transaction_id, succeeded_at)
                      SELECT 'pay_rb' || g, 'ord_rb' || g, 'alipay', 'qr', 'succeeded', 10000, 'CNY', 'KPRB' || lpad(g::text, 12, '0'), 'T' || g,
                             timestamptz '2026-11-21 12:00:00+08' FROM generate_series(1, $1) g`, [N]);
    await pool.query('ANALYZE payments');
    progress(`setup: writing the ${N}-line bill (zip of GBK CSVs)`);
    const at = new Date('2026-11-21T04:00:00Z');
    await writeAlipayBillZip(file, '2088000000000001', billDate, (function* (): Generator<AlipayBillRow> {
      for (let g = 1; g <= N; g++) {
        if (g <= 10) continue; // 10 lines only on our side
        const amount = g <= 20 ? 9999n : 10000n; // 10 amounts that differ
        yield { tradeNo: 'T' + g, outTradeNo: 'KPRB' + String(g).padStart(12, '0'), kind: 'payment', subject: '课程', createdAt: at, finishedAt: at, amount, fee: 0n };
      }
      for (let k = 1; k <= 10; k++) yield { tradeNo: 'X' + k, outTradeNo: 'KPFOREIGN' + k, kind: 'payment', subject: 'x', createdAt: at, finishedAt: at, amount: 100n, fee: 0n };
    })());
    const sizeMb = fs.statSync(file).size / 1048576;

    // The reconciliation runs as the CLI does, in its own process, so its peak memory is its own.
    progress('reconciling (npm run reconcile, a separate process)');
    const child = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/reconcile.ts', '--channel', 'alipay', '--bill-date', billDate, '--file', file, '--stats'], {
      env: { ...process.env, DATABASE_URL: databaseUrl, KNOWPAY_SANDBOX_TIME_SCALE: '0.001' }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 16 * 1048576,
    });
    if (child.status !== 0) throw new Error(`reconcile CLI failed: ${child.status}`);
    const recon = JSON.parse(child.stdout) as { summary: Record<string, number>; stats: { seconds: number; peak_rss_mb: number } };
    const seconds = recon.stats.seconds;
    const s = recon.summary;
    const exact = s.amount_mismatch === 10 && s.missing_in_ledger === 10 && s.missing_in_channel === 10 && s.lines === N;
    return {
      lines: s.lines, zip_mb: +sizeMb.toFixed(1), seconds, peak_rss_mb: recon.stats.peak_rss_mb,
      summary: s, planted_differences_found_exactly: exact, target: '<= 15 s, peak <= 300 MB',
    };
  } finally {
    fs.rmSync(file, { force: true });
    await pool.end();
  }
}
