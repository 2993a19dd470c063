/**
 * Reconciliation of one channel's bill for one day: stream the bill's lines into recon_lines
 * (COPY, constant memory), classify them against our payments and refunds in set-based SQL,
 * heal what a lost notification explains (ask the channel, apply its answer), and keep every
 * other difference as an exception with its evidence for a person to resolve.
 */
import type { Pool, Queryable } from '../store/db.ts';
import { inTransaction } from '../store/db.ts';
import { newId } from '../domain/ids.ts';
import { invalid, notFound, ApiError } from '../domain/errors.ts';
import { toJsonAmount } from '../domain/money.ts';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { from as copyFrom } from 'pg-copy-streams';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ChannelError, type ChannelConnector, type ChannelName } from '../channels/types.ts';
import { applyTradeSnapshot } from '../payments/payments.ts';
import { BillFormatError, type BillLine } from './types.ts';
import { post } from '../ledger/ledger.ts';
import { accounts } from '../domain/ledger-rules.ts';

/** Payments whose success came this close to the day's end may be billed the next day. */
export const EXPECTED_WINDOW_MINUTES = 30;
const MAX_HEALS_PER_RUN = 1000;
/** The time zone of the channel's bill day: Alipay and WeChat bill by Beijing time, Google Play by Pacific time, the rest by UTC. */
export const BILL_TIME_ZONE: Partial<Record<ChannelName, string>> = { alipay: 'Asia/Shanghai', wechatpay: 'Asia/Shanghai', google_play: 'America/Los_Angeles' };

/** The bill date of the day before `now` in the channel's bill time zone (YYYY-MM-DD). */
export function previousBillDate(channel: ChannelName, now = new Date()): string {
  const timeZone = BILL_TIME_ZONE[channel] ?? 'UTC';
  return new Intl.DateTimeFormat('en-CA', { timeZone, year: 'numeric', month: '2-digit', day: '2-digit' }).format(new Date(now.getTime() - 86_400_000));
}

export interface ReconContext { db: Pool; channels: ReadonlyMap<ChannelName, ChannelConnector> }

export type BillReader = (path: string) => AsyncGenerator<BillLine>;

const esc = (v: string) => v.replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n').replace(/\r/g, '\\r');

async function copyLines(db: Pool, reconId: string, lines: AsyncIterable<BillLine>, onProgress?: (n: number) => void): Promise<number> {
  const client = await db.connect();
  let n = 0;
  try {
    const text = Readable.from((async function* () {
      let chunk: string[] = [];
      for await (const l of lines) {
        n++;
        chunk.push([reconId, l.lineNo, l.kind, esc(l.channelReference), l.channelTransactionId ? esc(l.channelTransactionId) : '\\N',
          l.refundReference ? esc(l.refundReference) : '\\N', l.amount, l.fee ?? '\\N', l.currency, l.occurredAt ? l.occurredAt.toISOString() : '\\N'].join('\t'));
        if (chunk.length === 5000) { yield chunk.join('\n') + '\n'; chunk = []; onProgress?.(n); }
      }
      if (chunk.length) yield chunk.join('\n') + '\n';
    })());
    const sink = client.query(copyFrom(
      'COPY recon_lines (recon_id, line_no, kind, channel_reference, channel_transaction_id, refund_reference, amount, fee, currency, occurred_at) FROM STDIN'));
    await pipeline(text, sink);
  } finally {
    client.release();
  }
  onProgress?.(n);
  return n;
}

export async function runReconciliation(ctx: ReconContext, input: {
  channel: ChannelName; billDate: string; source: 'upload' | 'download'; file: string; reader: BillReader; onProgress?: (step: string, n: number) => void;
}) {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(input.billDate) || Number.isNaN(Date.parse(input.billDate))) {
    throw invalid('bill_date_invalid', 'bill_date must be YYYY-MM-DD', 'bill_date');
  }
  const id = newId('recon');
  await ctx.db.query(`INSERT INTO reconciliations (id, channel, bill_date, source, status) VALUES ($1, $2, $3, $4, 'running')`,
    [id, input.channel, input.billDate, input.source]);
  try {
    const lines = await copyLines(ctx.db, id, input.reader(input.file), (n) => input.onProgress?.('load', n));
    input.onProgress?.('classify', lines);
    await classify(ctx.db, id, input.channel, input.billDate);
    input.onProgress?.('heal', lines);
    const healed = await heal(ctx, id, input.channel);
    const summary = await summarize(ctx.db, id, lines, healed);
    await ctx.db.query(`UPDATE reconciliations SET status = 'completed', summary = $2, completed_at = now() WHERE id = $1`, [id, JSON.stringify(summary)]);
  } catch (err) {
    await ctx.db.query(`DELETE FROM recon_lines WHERE recon_id = $1`, [id]);
    await ctx.db.query(`UPDATE reconciliations SET status = 'failed', failure = $2, completed_at = now() WHERE id = $1`, [id, String((err as Error).message).slice(0, 500)]);
    if (err instanceof BillFormatError) throw new ApiError(400, 'invalid_request_error', 'bill_invalid', `Not a ${input.channel} bill: ${err.message}`);
    throw err;
  }
  return getReconciliation(ctx.db, id);
}

/** One set-based pass per kind of difference. */
async function classify(db: Pool, id: string, channel: ChannelName, billDate: string) {
  const timeZone = BILL_TIME_ZONE[channel] ?? 'UTC';
  await db.query('ANALYZE recon_lines');
  // A bill that names no reference of ours (a Play earnings report) is matched on the channel's
  // ids: the payment's channel_transaction_id, the refund's channel_refund_id.
  await db.query(
    `UPDATE recon_lines l SET channel_reference = p.channel_reference
       FROM payments p
      WHERE l.recon_id = $1 AND l.kind = 'payment' AND l.channel_reference = '' AND l.channel_transaction_id IS NOT NULL
        AND p.channel = $2 AND p.channel_transaction_id = l.channel_transaction_id`,
    [id, channel],
  );
  await db.query(
    `UPDATE recon_lines l SET refund_reference = r.refund_reference, channel_reference = CASE WHEN l.channel_reference = '' THEN p.channel_reference ELSE l.channel_reference END
       FROM refunds r JOIN payments p ON p.id = r.payment_id
      WHERE l.recon_id = $1 AND l.kind = 'refund' AND l.refund_reference IS NULL AND l.channel_transaction_id IS NOT NULL
        AND r.channel_refund_id = l.channel_transaction_id AND p.channel = $2`,
    [id, channel],
  );
  // Payment lines against our payments.
  await db.query(
    `INSERT INTO recon_exceptions (recon_id, kind, channel_reference, line_no, payment_id, expected_amount, actual_amount, evidence)
     SELECT $1,
            CASE WHEN p.id IS NULL THEN 'missing_in_ledger'
                 WHEN p.status <> 'succeeded' THEN 'status_mismatch'
                 WHEN p.amount <> l.amount OR p.currency <> l.currency THEN 'amount_mismatch'
                 ELSE 'fee_mismatch' END,
            nullif(l.channel_reference, ''), l.line_no, p.id, p.amount, l.amount,
            jsonb_build_object('bill_fee', l.fee, 'ledger_fee', p.fee_amount, 'our_status', p.status, 'channel_transaction_id', l.channel_transaction_id,
                               'bill_currency', l.currency, 'our_currency', p.currency)
       FROM recon_lines l
       LEFT JOIN payments p ON p.channel = $2 AND p.channel_reference = l.channel_reference AND l.channel_reference <> ''
      WHERE l.recon_id = $1 AND l.kind = 'payment'
        AND (p.id IS NULL OR p.status <> 'succeeded' OR p.amount <> l.amount OR p.currency <> l.currency OR l.fee <> coalesce(p.fee_amount, 0))`,
    [id, channel],
  );
  // Refund lines against our refunds.
  await db.query(
    `INSERT INTO recon_exceptions (recon_id, kind, channel_reference, line_no, refund_id, expected_amount, actual_amount, evidence)
     SELECT $1, CASE WHEN r.id IS NULL THEN 'missing_in_ledger' WHEN r.status <> 'succeeded' THEN 'status_mismatch' ELSE 'amount_mismatch' END,
            nullif(l.channel_reference, ''), l.line_no, r.id, r.amount, l.amount,
            jsonb_build_object('refund_reference', l.refund_reference, 'our_status', r.status, 'channel_transaction_id', l.channel_transaction_id)
       FROM recon_lines l LEFT JOIN refunds r ON r.refund_reference = l.refund_reference
      WHERE l.recon_id = $1 AND l.kind = 'refund' AND (r.id IS NULL OR r.status <> 'succeeded' OR r.amount <> l.amount OR r.currency <> l.currency)`,
    [id],
  );
  // Our successes of that day that the bill lacks: an exception, or expected near the day's end.
  await db.query(
    `WITH day AS (SELECT ($3::date)::timestamp AT TIME ZONE $4 AS start_at,
                         ($3::date + 1)::timestamp AT TIME ZONE $4 AS end_at)
     INSERT INTO recon_exceptions (recon_id, kind, channel_reference, payment_id, expected_amount, evidence)
     SELECT $1, CASE WHEN p.succeeded_at > day.end_at - make_interval(mins => $5) THEN 'expected' ELSE 'missing_in_channel' END,
            p.channel_reference, p.id, p.amount, jsonb_build_object('succeeded_at', p.succeeded_at)
       FROM payments p, day
      WHERE p.channel = $2 AND p.status = 'succeeded' AND p.succeeded_at >= day.start_at AND p.succeeded_at < day.end_at
        AND NOT EXISTS (SELECT 1 FROM recon_lines l WHERE l.recon_id = $1 AND l.kind = 'payment' AND l.channel_reference = p.channel_reference)`,
    [id, channel, billDate, timeZone, EXPECTED_WINDOW_MINUTES],
  );
}

/**
 * A line the channel says was paid while our payment is still open: a lost notification. Ask the
 * channel (by its transaction id when the line or the payment has one: Apple and Google Play are
 * looked up that way) and apply its answer. A line that names only the channel's id (a Play
 * earnings report) is first looked up to learn whose trade it is.
 */
async function heal(ctx: ReconContext, id: string, channel: ChannelName): Promise<number> {
  const connector = ctx.channels.get(channel);
  if (!connector) return 0;
  const { rows } = await ctx.db.query<{ id: string; payment_id: string | null; channel_reference: string | null; currency: string; transaction_id: string | null }>(
    `SELECT x.id, x.payment_id, coalesce(p.channel_reference, nullif(l.channel_reference, '')) AS channel_reference,
            coalesce(p.currency, l.currency) AS currency, coalesce(p.channel_transaction_id, l.channel_transaction_id) AS transaction_id
       FROM recon_exceptions x
       JOIN recon_lines l ON l.recon_id = x.recon_id AND l.line_no = x.line_no
       LEFT JOIN payments p ON p.id = x.payment_id
      WHERE x.recon_id = $1 AND l.kind = 'payment'
        AND ((x.kind = 'status_mismatch' AND p.status IN ('requires_action', 'processing'))
          OR (x.kind = 'missing_in_ledger' AND l.channel_reference = '' AND l.channel_transaction_id IS NOT NULL))
      ORDER BY x.id LIMIT $2`,
    [id, MAX_HEALS_PER_RUN],
  );
  let healed = 0;
  for (const r of rows) {
    try {
      const s = await connector.queryPayment({ channelReference: r.channel_reference ?? '', currency: r.currency, ...(r.transaction_id ? { channelTransactionId: r.transaction_id } : {}) });
      let paymentId = r.payment_id;
      if (!paymentId) {
        // Whose trade the channel's id is: only a payment of ours that is still open is healed.
        const { rows: found } = await ctx.db.query<{ id: string }>(
          `SELECT id FROM payments WHERE channel = $1 AND channel_reference = $2 AND status IN ('requires_action', 'processing')`, [channel, s.channelReference]);
        paymentId = found[0]?.id ?? null;
      } else if (s.channelReference !== r.channel_reference) {
        continue; // the channel answered about another trade: left for a person
      }
      if (!paymentId) continue;
      const applied = await inTransaction(ctx.db, (tx) => applyTradeSnapshot(tx, paymentId, s, `reconciliation:${id}`));
      if (applied.outcome === 'applied' && applied.payment.status === 'succeeded') {
        await ctx.db.query(
          // A line that named only the channel's id turned out to be our open payment: a status
          // mismatch (a lost notification), like on the channels whose bills carry our reference.
          `UPDATE recon_exceptions SET resolution = 'healed', resolution_reason = 'queried the channel: paid', resolved_at = now(),
                  kind = 'status_mismatch', payment_id = $2, channel_reference = coalesce(channel_reference, $3),
                  expected_amount = coalesce(expected_amount, (SELECT amount FROM payments WHERE id = $2)) WHERE id = $1`,
          [r.id, paymentId, s.channelReference]);
        healed++;
      }
    } catch {
      // Left open for a person; the evidence stays.
    }
  }
  return healed;
}

async function summarize(db: Queryable, id: string, lines: number, healed: number) {
  const { rows } = await db.query<{ kind: string; n: string }>(`SELECT kind, count(*) AS n FROM recon_exceptions WHERE recon_id = $1 GROUP BY kind`, [id]);
  const count = (k: string) => Number(rows.find((r) => r.kind === k)?.n ?? 0);
  const lineExceptions = count('amount_mismatch') + count('fee_mismatch') + count('status_mismatch') + count('missing_in_ledger');
  return {
    lines, matched: lines - lineExceptions, amount_mismatch: count('amount_mismatch'), fee_mismatch: count('fee_mismatch'),
    status_mismatch: count('status_mismatch'), missing_in_ledger: count('missing_in_ledger'), missing_in_channel: count('missing_in_channel'),
    expected: count('expected'), healed,
  };
}

export async function getReconciliation(db: Queryable, id: string) {
  const { rows } = await db.query<{ id: string; channel: string; bill_date: string; source: string; status: string; summary: unknown; failure: string | null; created_at: Date }>(
    `SELECT id, channel, to_char(bill_date, 'YYYY-MM-DD') AS bill_date, source, status, summary, failure, created_at FROM reconciliations WHERE id = $1`, [id]);
  if (!rows[0]) throw notFound('reconciliation', id);
  const r = rows[0];
  return { id: r.id, object: 'reconciliation', channel: r.channel, bill_date: r.bill_date, source: r.source, status: r.status, summary: r.summary, failure: r.failure, created: Math.floor(r.created_at.getTime() / 1000) };
}

const validDate = (d: string) => /^\d{4}-\d{2}-\d{2}$/.test(d) && !Number.isNaN(Date.parse(d));

/** Reconciliation runs, newest first, optionally of one bill day and/or channel. */
export async function listReconciliations(db: Queryable, q: { limit: number; starting_after?: string; bill_date?: string; channel?: string }) {
  if (q.bill_date !== undefined && !validDate(q.bill_date)) throw invalid('bill_date_invalid', 'bill_date must be YYYY-MM-DD', 'bill_date');
  const params: unknown[] = [];
  const where: string[] = [];
  if (q.bill_date) { params.push(q.bill_date); where.push(`bill_date = $${params.length}`); }
  if (q.channel) { params.push(q.channel); where.push(`channel = $${params.length}`); }
  if (q.starting_after) { params.push(q.starting_after); where.push(`id < $${params.length}`); }
  params.push(q.limit + 1);
  const { rows } = await db.query<{ id: string }>(
    `SELECT id FROM reconciliations ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY id DESC LIMIT $${params.length}`, params);
  const data = [];
  for (const r of rows.slice(0, q.limit)) data.push(await getReconciliation(db, r.id));
  return { object: 'list' as const, data, has_more: rows.length > q.limit };
}

/**
 * The day's summary across channels: for each channel, its latest completed run of that bill day,
 * the exceptions still open (not healed, accepted or ignored), and the totals of those runs.
 */
export async function dailySummary(db: Queryable, billDate: string) {
  if (!validDate(billDate)) throw invalid('bill_date_invalid', 'bill_date must be YYYY-MM-DD', 'bill_date');
  const { rows } = await db.query<{ id: string; channel: string; summary: Record<string, number>; open: string; completed_at: Date }>(
    `SELECT DISTINCT ON (r.channel) r.id, r.channel, r.summary, r.completed_at,
            (SELECT count(*) FROM recon_exceptions x WHERE x.recon_id = r.id AND x.resolution = 'open' AND x.kind <> 'expected') AS open
       FROM reconciliations r
      WHERE r.bill_date = $1 AND r.status = 'completed'
      ORDER BY r.channel, r.completed_at DESC, r.id DESC`,
    [billDate],
  );
  const { rows: failed } = await db.query<{ channel: string; failure: string | null }>(
    `SELECT DISTINCT ON (channel) channel, failure FROM reconciliations WHERE bill_date = $1 AND status = 'failed' ORDER BY channel, created_at DESC`, [billDate]);
  const totals: Record<string, number> = {};
  const channels = rows.map((r) => {
    for (const [k, v] of Object.entries(r.summary ?? {})) if (typeof v === 'number') totals[k] = (totals[k] ?? 0) + v;
    totals['open_exceptions'] = (totals['open_exceptions'] ?? 0) + Number(r.open);
    return { channel: r.channel, reconciliation_id: r.id, completed: Math.floor(r.completed_at.getTime() / 1000), summary: r.summary, open_exceptions: Number(r.open) };
  });
  const reconciled = new Set(rows.map((r) => r.channel));
  return {
    object: 'reconciliation_daily_summary', bill_date: billDate, channels, totals,
    // A channel whose only runs of the day failed: named, so a missing bill is not silently absent.
    failed: failed.filter((f) => !reconciled.has(f.channel)).map((f) => ({ channel: f.channel, failure: f.failure })),
  };
}

interface ExceptionRow {
  id: string; kind: string; channel_reference: string | null; line_no: number | null; payment_id: string | null; refund_id: string | null;
  expected_amount: string | null; actual_amount: string | null; evidence: unknown; resolution: string; resolution_reason: string | null;
}

function exceptionJson(x: ExceptionRow) {
  const n = (v: string | null) => (v === null ? null : toJsonAmount(BigInt(v)));
  return {
    id: x.id, object: 'reconciliation_exception', kind: x.kind, channel_reference: x.channel_reference, line_no: x.line_no,
    payment_id: x.payment_id, refund_id: x.refund_id, expected_amount: n(x.expected_amount), actual_amount: n(x.actual_amount),
    evidence: x.evidence, resolution: x.resolution, resolution_reason: x.resolution_reason,
  };
}

export async function listExceptions(db: Queryable, reconId: string, q: { limit: number; starting_after?: string; kind?: string }) {
  await getReconciliation(db, reconId);
  const params: unknown[] = [reconId];
  let where = 'recon_id = $1';
  if (q.kind) { params.push(q.kind); where += ` AND kind = $${params.length}`; }
  if (q.starting_after) { params.push(q.starting_after); where += ` AND id > $${params.length}`; }
  params.push(q.limit + 1);
  const { rows } = await db.query<ExceptionRow>(`SELECT * FROM recon_exceptions WHERE ${where} ORDER BY id LIMIT $${params.length}`, params);
  return { object: 'list' as const, data: rows.slice(0, q.limit).map(exceptionJson), has_more: rows.length > q.limit };
}

/**
 * A person's decision on an exception, with a reason: 'ignore' marks it; 'accept' takes the
 * channel's amount as the truth and posts a correcting entry for the difference.
 */
export async function resolveException(db: Pool, reconId: string, exceptionId: string, input: { action: 'accept' | 'ignore'; reason: string }) {
  return inTransaction(db, async (tx) => {
    const { rows } = await tx.query<ExceptionRow & { channel: ChannelName }>(
      `SELECT x.*, r.channel FROM recon_exceptions x JOIN reconciliations r ON r.id = x.recon_id WHERE x.id = $1 AND x.recon_id = $2 FOR UPDATE OF x`,
      [exceptionId, reconId]);
    const x = rows[0];
    if (!x) throw notFound('reconciliation exception', exceptionId);
    if (x.resolution !== 'open') throw new ApiError(400, 'invalid_request_error', 'exception_resolved', `Exception ${exceptionId} is ${x.resolution}`);
    if (input.action === 'accept') {
      if (x.kind !== 'amount_mismatch' || x.expected_amount === null || x.actual_amount === null) {
        throw invalid('accept_not_supported', 'Only amount mismatches are accepted with a correcting entry; ignore others with a reason', 'action');
      }
      const diff = BigInt(x.actual_amount) - BigInt(x.expected_amount);
      const { rows: cur } = await tx.query<{ currency: string }>('SELECT currency FROM payments WHERE id = $1', [x.payment_id]);
      const currency = cur[0]!.currency;
      const clearing = accounts.clearing(x.channel, currency);
      const differences = { code: `reconciliation_differences:${currency}`, type: 'revenue' as const, currency, mayGoNegative: true, tracked: false };
      const amount = diff < 0n ? -diff : diff;
      await post(tx, {
        idempotencyKey: `recon_accept:${x.id}`, kind: 'reconciliation_adjustment', reference: x.payment_id, memo: input.reason.slice(0, 500),
        postings: diff > 0n
          ? [{ account: clearing, direction: 'debit', amount }, { account: differences, direction: 'credit', amount }]
          : [{ account: differences, direction: 'debit', amount }, { account: clearing, direction: 'credit', amount }],
      });
    }
    const { rows: updated } = await tx.query<ExceptionRow>(
      `UPDATE recon_exceptions SET resolution = $2, resolution_reason = $3, resolved_at = now() WHERE id = $1 RETURNING *`,
      [x.id, input.action === 'accept' ? 'accepted' : 'ignored', input.reason]);
    return exceptionJson(updated[0]!);
  });
}

/** Download the channel's bill for the day (from the channel, or its sandbox) and reconcile it. */
export async function reconcileFromChannel(ctx: ReconContext, input: { channel: ChannelName; billDate: string; reader: BillReader }) {
  const connector = ctx.channels.get(input.channel);
  if (!connector?.downloadBill) throw invalid('bill_download_not_supported', `Bills of '${input.channel}' cannot be downloaded; upload the file instead`, 'channel');
  const file = path.join(os.tmpdir(), `knowpay-bill-${input.channel}-${input.billDate}-${randomBytes(6).toString('hex')}`);
  try {
    try {
      await connector.downloadBill({ billDate: input.billDate, destination: file });
    } catch (err) {
      if (err instanceof ChannelError) throw new ApiError(err.retryable ? 502 : 400, err.retryable ? 'api_error' : 'invalid_request_error', 'bill_download_failed', `The channel did not give the bill: ${err.message}`);
      throw err;
    }
    return await runReconciliation(ctx, { ...input, source: 'download', file });
  } finally {
    fs.rmSync(file, { force: true });
  }
}
