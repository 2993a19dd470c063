/**
 * Ledger and settlement figures (issue: ledger): capture posting rate at 16 clients spread over
 * many creators and concentrated on one (no hot row on the synchronous path), batched posting,
 * four concurrent batch writers (deadlocks counted), and a set-based settlement of 1,000,000
 * paid orders for 10,000 creators with the Node process's memory watched.
 */
import pg from 'pg';
import { createPool, migrate, type Pool } from '../src/store/db.ts';
import { capturePostings, estimateFee, DEFAULT_FEES } from '../src/domain/ledger-rules.ts';
import { ensureAccounts, postEntry, postEntriesBatch, type EntryInput } from '../src/ledger/ledger.ts';
import { runSettlement } from '../src/settlement/settlement.ts';

const progress = (msg: string) => process.stderr.write(`[bench:ledger] ${msg}\n`);

function captureEntry(key: string, creatorId: string, channel: string): EntryInput {
  const gross = 9000n;
  const fee = estimateFee(gross, DEFAULT_FEES[channel]!);
  const { postings, splits } = capturePostings({ channel, currency: 'CNY', customerId: 'bench', gross, fee, lines: [{ creatorId, shareBps: 7000, amount: gross }] });
  return { idempotencyKey: key, kind: 'capture', reference: key, postings, splits: splits.map((s) => ({ ...s, kind: 'sale' as const, delayDays: 7 })) };
}

async function timedClients(pool: Pool, clients: number, seconds: number, make: (i: number) => EntryInput): Promise<{ perSecond: number; p99ms: number }> {
  let n = 0;
  const latencies: number[] = [];
  const deadline = performance.now() + seconds * 1000;
  const prepared = new Map<string, string>();
  for (const p of make(-1).postings) prepared.set(p.account.code, '');
  await Promise.all(Array.from({ length: clients }, async () => {
    while (performance.now() < deadline) {
      const e = make(n++);
      const ids = await ensureAccounts(pool, e.postings.map((p) => p.account));
      const t0 = performance.now();
      await postEntry(pool, e, ids);
      if (latencies.length < 200_000) latencies.push(performance.now() - t0);
    }
  }));
  latencies.sort((a, b) => a - b);
  return { perSecond: n / seconds, p99ms: +latencies[Math.floor(latencies.length * 0.99)]!.toFixed(2) };
}

const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2; };

/**
 * `pgbenchC16(seconds)` measures PostgreSQL's reference again: the capture rates are taken in
 * rounds interleaved with it (pgbench, spread, one creator), so drift in the machine's load hits
 * both sides of each round's ratio; the figures are the medians of the rounds.
 */
export async function ledgerBench(databaseUrl: string, pgbenchC16: (seconds: number) => number, opts: { seconds: number; rounds: number; settlementOrders: number; settlementCreators: number }) {
  await migrate(databaseUrl);
  const pool = createPool(databaseUrl, 24);
  const run = `${Date.now().toString(36)}`;
  try {
    const creators = Array.from({ length: 1000 }, (_, i) => `cr_bench_${i}`);
    const channels = ['alipay', 'wechatpay', 'stripe'];
    // Warm the account cache so both runs measure posting only.
    for (const c of creators) await ensureAccounts(pool, captureEntry('warm', c, 'alipay').postings.map((p) => p.account));
    for (const ch of channels) await ensureAccounts(pool, captureEntry('warm', creators[0]!, ch).postings.map((p) => p.account));

    progress('warm-up, 2 s');
    await timedClients(pool, 16, 2, (i) => captureEntry(`${run}:warm:${i}`, creators[Math.abs(i) % creators.length]!, 'alipay'));
    const rounds: Array<{ pgbench: number; spread: number; hot: number; p99Spread: number; p99Hot: number }> = [];
    for (let r = 0; r < Math.max(1, opts.rounds); r++) {
      const pgb = pgbenchC16(opts.seconds);
      progress(`round ${r + 1}/${opts.rounds}: capture, 16 clients, spread over ${creators.length} creators, ${opts.seconds}s`);
      const spread = await timedClients(pool, 16, opts.seconds, (i) => captureEntry(`${run}:spread:${r}:${i}`, creators[Math.abs(i) % creators.length]!, channels[Math.abs(i) % channels.length]!));
      progress(`round ${r + 1}/${opts.rounds}: capture, 16 clients, one creator and one channel, ${opts.seconds}s`);
      const hot = await timedClients(pool, 16, opts.seconds, (i) => captureEntry(`${run}:hot:${r}:${i}`, creators[0]!, 'alipay'));
      rounds.push({ pgbench: pgb, spread: spread.perSecond, hot: hot.perSecond, p99Spread: spread.p99ms, p99Hot: hot.p99ms });
    }
    const spreadRatio = median(rounds.map((x) => x.spread / x.pgbench));
    const hotRatio = median(rounds.map((x) => x.hot / x.spread));

    progress('batched posting, one writer, batches of 1000');
    const BATCH = 1000;
    const BATCHES = 20;
    let t0 = performance.now();
    for (let b = 0; b < BATCHES; b++) {
      const entries = Array.from({ length: BATCH }, (_, i) => captureEntry(`${run}:batch:${b}:${i}`, creators[(b * BATCH + i) % creators.length]!, 'alipay'));
      await postEntriesBatch(pool, entries);
    }
    const batchedPerSecond = (BATCH * BATCHES) / ((performance.now() - t0) / 1000);

    progress('four concurrent batch writers');
    let deadlocks = 0;
    let otherErrors = 0;
    t0 = performance.now();
    await Promise.all(Array.from({ length: 4 }, async (_, w) => {
      for (let b = 0; b < 10; b++) {
        // Writers overlap on creators and channels on purpose.
        const entries = Array.from({ length: BATCH }, (_, i) => captureEntry(`${run}:w${w}:${b}:${i}`, creators[(i * 7 + w) % 50]!, channels[i % 3]!));
        try { await postEntriesBatch(pool, entries); } catch (err) {
          if ((err as { code?: string }).code === '40P01') deadlocks++; else { otherErrors++; progress(String(err)); }
        }
      }
    }));
    const fourWritersPerSecond = (4 * 10 * BATCH) / ((performance.now() - t0) / 1000);

    progress(`settlement data: ${opts.settlementOrders} paid orders for ${opts.settlementCreators} creators (set-based insert)`);
    const admin = new pg.Client({ connectionString: databaseUrl });
    await admin.connect();
    await admin.query(`ALTER TABLE creator_splits DISABLE TRIGGER creator_splits_immutable`); // bench data only
    await admin.query(
      `INSERT INTO journal_entries (id, idempotency_key, content_hash, kind, reference)
       SELECT 'je_stlbench_${run}_' || g, 'stlbench:${run}:' || g, 'bench', 'capture', 'bench' FROM generate_series(1, $1) g`,
      [opts.settlementOrders],
    );
    await admin.query(
      `INSERT INTO creator_splits (entry_id, creator_id, currency, gross_amount, fee_amount, share_amount, kind, matures_at)
       SELECT 'je_stlbench_${run}_' || g, 'cr_stl_' || (g % $2), 'CNY', 9000, 54, 6262, 'sale', now() - interval '1 day'
         FROM generate_series(1, $1) g`,
      [opts.settlementOrders, opts.settlementCreators],
    );
    await admin.query(`ALTER TABLE creator_splits ENABLE TRIGGER creator_splits_immutable`);
    await admin.query(
      `INSERT INTO creators (id, name, revenue_share_bps) SELECT 'cr_stl_' || g, 'bench', 7000 FROM generate_series(0, $1 - 1) g ON CONFLICT DO NOTHING`,
      [opts.settlementCreators],
    );
    await admin.query('ANALYZE creator_splits');
    await admin.end();
    progress('settlement run');
    const rssBefore = process.memoryUsage().rss;
    let rssPeak = rssBefore;
    const sampler = setInterval(() => { rssPeak = Math.max(rssPeak, process.memoryUsage().rss); }, 50);
    t0 = performance.now();
    const settlement = await runSettlement(pool, {
      asOf: new Date(),
      onProgress: (step, done, total) => progress(`  settlement ${done}/${total} ${step}`),
    });
    const settlementSeconds = (performance.now() - t0) / 1000;
    clearInterval(sampler);

    return {
      capture_c16_spread: {
        per_second: Math.round(median(rounds.map((x) => x.spread))), p99_ms: median(rounds.map((x) => x.p99Spread)),
        ratio_to_pgbench_c16: +spreadRatio.toFixed(2), target: '>= 1.2',
        rounds: rounds.map((x) => ({ pgbench_c16: Math.round(x.pgbench), capture: Math.round(x.spread), ratio: +(x.spread / x.pgbench).toFixed(2) })),
      },
      capture_c16_one_creator_one_channel: {
        per_second: Math.round(median(rounds.map((x) => x.hot))), p99_ms: median(rounds.map((x) => x.p99Hot)), ratio_to_spread: +hotRatio.toFixed(2), target: '>= 0.8',
        rounds: rounds.map((x) => +(x.hot / x.spread).toFixed(2)),
      },
      batched_one_writer: { batch: BATCH, captures_per_second: Math.round(batchedPerSecond), target: '>= 15000' },
      four_batch_writers: { captures_per_second: Math.round(fourWritersPerSecond), deadlocks, other_errors: otherErrors, target: '0 deadlocks' },
      settlement: {
        orders: opts.settlementOrders, creators: opts.settlementCreators, statements: settlement.statement_count,
        seconds: +settlementSeconds.toFixed(2), node_rss_growth_mb: +((rssPeak - rssBefore) / 1048576).toFixed(1), target: '<= 10 s, memory flat',
      },
    };
  } finally {
    await pool.end();
  }
}
