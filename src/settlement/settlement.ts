/**
 * Settlement runs (T+N): a run `as_of` a cut-off moves every creator share that matured in
 * (previous cut-off, as_of] from pending to available, writes one statement per creator and
 * currency, and a payout batch for balances at or above the creator's minimum. Set-based SQL over
 * creator_splits (nothing is loaded into Node); one run at a time (exclusive advisory lock, which
 * captures take shared, so no split can appear behind a cut-off). Idempotent per cut-off; closed
 * statements never change (immutable rows).
 */
import type { Pool, Queryable } from '../store/db.ts';
import { inTransaction } from '../store/db.ts';
import { newId } from '../domain/ids.ts';
import { invalid, notFound } from '../domain/errors.ts';
import { SETTLEMENT_LOCK_ID } from '../ledger/ledger.ts';
import { toJsonAmount } from '../domain/money.ts';

export interface SettlementProgress { (step: string, done: number, total: number): void }

const STEPS = ['lock', 'aggregate', 'accounts', 'move', 'payouts', 'statements'] as const;

export async function runSettlement(db: Pool, opts: { asOf?: Date; onProgress?: SettlementProgress } = {}) {
  const asOf = opts.asOf ?? new Date();
  if (asOf.getTime() > Date.now() + 1000) throw invalid('as_of_in_future', 'as_of may not be in the future', 'as_of');
  const progress = (i: number) => opts.onProgress?.(STEPS[i]!, i + 1, STEPS.length);
  const id = await inTransaction(db, async (tx) => {
    await tx.query('SELECT pg_advisory_xact_lock($1)', [SETTLEMENT_LOCK_ID]);
    progress(0);
    const same = await tx.query<{ id: string }>('SELECT id FROM settlements WHERE as_of = $1', [asOf]);
    if (same.rows[0]) return same.rows[0].id; // this cut-off was settled already
    const last = await tx.query<{ as_of: Date | null }>('SELECT max(as_of) AS as_of FROM settlements');
    const prev = last.rows[0]?.as_of ?? null;
    if (prev && prev.getTime() > asOf.getTime()) {
      throw invalid('as_of_before_last_run', `A settlement already ran for ${prev.toISOString()}; as_of must not be earlier`, 'as_of');
    }
    const sid = newId('stl');
    await tx.query('INSERT INTO settlements (id, as_of, covers_from) VALUES ($1, $2, $3)', [sid, asOf, prev]);

    await tx.query(
      `CREATE TEMP TABLE stl_agg ON COMMIT DROP AS
       SELECT s.creator_id, s.currency,
              coalesce(sum(s.gross_amount) FILTER (WHERE s.kind = 'sale'), 0)::bigint AS sales,
              coalesce(-sum(s.gross_amount) FILTER (WHERE s.kind = 'refund'), 0)::bigint AS refunds,
              coalesce(sum(s.fee_amount) FILTER (WHERE s.kind <> 'adjustment'), 0)::bigint AS fees,
              coalesce(sum(s.gross_amount - s.fee_amount - s.share_amount) FILTER (WHERE s.kind <> 'adjustment'), 0)::bigint AS commission,
              coalesce(sum(s.share_amount) FILTER (WHERE s.kind = 'adjustment'), 0)::bigint AS adjustments,
              sum(s.share_amount)::bigint AS moved,
              0::bigint AS opening, 0::bigint AS payout, NULL::text AS payout_id,
              NULL::bigint AS pending_id, NULL::bigint AS available_id, NULL::bigint AS transit_id
         FROM creator_splits s
        WHERE s.matures_at <= $1 AND ($2::timestamptz IS NULL OR s.matures_at > $2)
        GROUP BY s.creator_id, s.currency`,
      [asOf, prev],
    );
    progress(1);
    // Accounts (pending / available / in transit) for every creator and currency in the run.
    await tx.query(
      `INSERT INTO ledger_accounts (code, type, currency, may_go_negative, tracked)
       SELECT code, 'liability', currency, true, false FROM (
         SELECT 'creator_payable:' || creator_id || ':pending:' || currency AS code, currency FROM stl_agg
         UNION ALL SELECT 'creator_payable:' || creator_id || ':available:' || currency, currency FROM stl_agg
         UNION ALL SELECT 'payouts_in_transit:' || creator_id || ':' || currency, currency FROM stl_agg) c
       ON CONFLICT (code) DO NOTHING`,
    );
    await tx.query(
      `UPDATE stl_agg g SET
         pending_id = (SELECT id FROM ledger_accounts WHERE code = 'creator_payable:' || g.creator_id || ':pending:' || g.currency),
         available_id = (SELECT id FROM ledger_accounts WHERE code = 'creator_payable:' || g.creator_id || ':available:' || g.currency),
         transit_id = (SELECT id FROM ledger_accounts WHERE code = 'payouts_in_transit:' || g.creator_id || ':' || g.currency)`,
    );
    // Opening = the available balance before this run (credit-normal liability).
    await tx.query(
      `UPDATE stl_agg g SET opening = b.balance FROM (
         SELECT p.account_id, sum(CASE WHEN p.direction = 'credit' THEN p.amount ELSE -p.amount END)::bigint AS balance
           FROM postings p WHERE p.account_id IN (SELECT available_id FROM stl_agg) GROUP BY p.account_id) b
        WHERE b.account_id = g.available_id`,
    );
    progress(2);
    const moved = await tx.query<{ n: string }>('SELECT count(*) AS n FROM stl_agg WHERE moved <> 0');
    if (Number(moved.rows[0]!.n) > 0) {
      const entryId = newId('je');
      await tx.query(
        `INSERT INTO journal_entries (id, idempotency_key, content_hash, kind, reference, memo)
         VALUES ($1, $2, $3, 'settlement', $4, $5)`,
        [entryId, `settlement:${sid}`, sid, sid, `pending → available as of ${asOf.toISOString()}`],
      );
      await tx.query(
        `INSERT INTO postings (entry_id, line, account_id, direction, amount, currency)
         SELECT $1, (row_number() OVER ()) - 1, x.account_id, x.direction, x.amount, x.currency FROM (
           SELECT pending_id AS account_id, CASE WHEN moved > 0 THEN 'debit' ELSE 'credit' END AS direction, abs(moved) AS amount, currency FROM stl_agg WHERE moved <> 0
           UNION ALL
           SELECT available_id, CASE WHEN moved > 0 THEN 'credit' ELSE 'debit' END, abs(moved), currency FROM stl_agg WHERE moved <> 0) x`,
        [entryId],
      );
    }
    progress(3);
    // Payouts: closing balances at or above the creator's minimum (and above zero).
    await tx.query(
      `UPDATE stl_agg g SET payout = g.opening + g.moved, payout_id = 'po_' || substr(md5(random()::text || g.creator_id || g.currency), 1, 24)
         FROM creators c
        WHERE c.id = g.creator_id AND g.opening + g.moved > 0 AND g.opening + g.moved >= c.min_payout_amount`,
    );
    const payouts = await tx.query<{ n: string }>('SELECT count(*) AS n FROM stl_agg WHERE payout > 0');
    if (Number(payouts.rows[0]!.n) > 0) {
      const entryId = newId('je');
      await tx.query(
        `INSERT INTO journal_entries (id, idempotency_key, content_hash, kind, reference, memo)
         VALUES ($1, $2, $3, 'payout', $4, 'payout batch: available → in transit')`,
        [entryId, `payout_batch:${sid}`, sid, sid],
      );
      await tx.query(
        `INSERT INTO postings (entry_id, line, account_id, direction, amount, currency)
         SELECT $1, (row_number() OVER ()) - 1, x.account_id, x.direction, x.payout, x.currency FROM (
           SELECT available_id AS account_id, 'debit' AS direction, payout, currency FROM stl_agg WHERE payout > 0
           UNION ALL SELECT transit_id, 'credit', payout, currency FROM stl_agg WHERE payout > 0) x`,
        [entryId],
      );
      await tx.query(
        `INSERT INTO payouts (id, settlement_id, creator_id, currency, amount, status)
         SELECT payout_id, $1, creator_id, currency, payout, 'in_transit' FROM stl_agg WHERE payout > 0`,
        [sid],
      );
    }
    progress(4);
    await tx.query(
      `INSERT INTO settlement_statements (settlement_id, creator_id, currency, opening_amount, sales_amount, refunds_amount, fees_amount,
                                          commission_amount, adjustments_amount, closing_amount, payout_amount, payout_id)
       SELECT $1, creator_id, currency, opening, sales, refunds, fees, commission, adjustments, opening + moved, payout, payout_id FROM stl_agg`,
      [sid],
    );
    progress(5);
    return sid;
  });
  return getSettlement(db, id);
}

interface StatementRow {
  creator_id: string; currency: string; opening_amount: string; sales_amount: string; refunds_amount: string; fees_amount: string;
  commission_amount: string; adjustments_amount: string; closing_amount: string; payout_amount: string; payout_id: string | null;
}

const MAX_STATEMENTS_INLINE = 1000;

export async function getSettlement(db: Queryable, id: string) {
  const { rows } = await db.query<{ id: string; as_of: Date; covers_from: Date | null; created_at: Date }>('SELECT * FROM settlements WHERE id = $1', [id]);
  const s = rows[0];
  if (!s) throw notFound('settlement', id);
  const count = await db.query<{ n: string }>('SELECT count(*) AS n FROM settlement_statements WHERE settlement_id = $1', [id]);
  const statements = await db.query<StatementRow>(
    'SELECT * FROM settlement_statements WHERE settlement_id = $1 ORDER BY creator_id, currency LIMIT $2', [id, MAX_STATEMENTS_INLINE]);
  const n = (v: string) => toJsonAmount(BigInt(v));
  return {
    id: s.id, object: 'settlement', as_of: Math.floor(s.as_of.getTime() / 1000),
    covers_from: s.covers_from ? Math.floor(s.covers_from.getTime() / 1000) : null,
    created: Math.floor(s.created_at.getTime() / 1000),
    statement_count: Number(count.rows[0]!.n),
    statements: statements.rows.map((r) => ({
      creator_id: r.creator_id, currency: r.currency, opening_amount: n(r.opening_amount), sales_amount: n(r.sales_amount),
      refunds_amount: n(r.refunds_amount), fees_amount: n(r.fees_amount), commission_amount: n(r.commission_amount),
      adjustments_amount: n(r.adjustments_amount), closing_amount: n(r.closing_amount), payout_amount: n(r.payout_amount), payout_id: r.payout_id,
    })),
    has_more_statements: Number(count.rows[0]!.n) > MAX_STATEMENTS_INLINE,
  };
}

/** The payout batch of a run as CSV (one line per payout), for the bank or payout provider. */
export async function payoutsCsv(db: Queryable, settlementId: string): Promise<string> {
  await getSettlement(db, settlementId);
  const { rows } = await db.query<{ id: string; creator_id: string; name: string; currency: string; amount: string; status: string }>(
    `SELECT p.id, p.creator_id, c.name, p.currency, p.amount, p.status FROM payouts p JOIN creators c ON c.id = p.creator_id
      WHERE p.settlement_id = $1 ORDER BY p.creator_id, p.currency`,
    [settlementId],
  );
  const esc = (v: string) => (/[",\n\r]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v);
  const lines = ['payout_id,creator_id,creator_name,currency,amount_minor,status'];
  for (const r of rows) lines.push([r.id, r.creator_id, r.name, r.currency, r.amount, r.status].map(esc).join(','));
  return lines.join('\n') + '\n';
}

export async function creatorBalance(db: Queryable, creatorId: string) {
  const c = await db.query('SELECT 1 FROM creators WHERE id = $1', [creatorId]);
  if (!c.rowCount) throw notFound('creator', creatorId);
  const { rows } = await db.query<{ kind: string; currency: string; balance: string }>(
    `SELECT CASE WHEN a.code LIKE '%:pending:%' THEN 'pending' ELSE 'available' END AS kind, a.currency,
            coalesce(sum(CASE WHEN p.direction = 'credit' THEN p.amount ELSE -p.amount END), 0) AS balance
       FROM ledger_accounts a LEFT JOIN postings p ON p.account_id = a.id
      WHERE a.code IN (SELECT 'creator_payable:' || $1 || ':' || k || ':' || cur.currency
                         FROM (VALUES ('pending'), ('available')) v(k), (SELECT DISTINCT currency FROM ledger_accounts) cur)
      GROUP BY 1, 2 ORDER BY 2`,
    [creatorId],
  );
  const pick = (k: string) => rows.filter((r) => r.kind === k).map((r) => ({ currency: r.currency, amount: toJsonAmount(BigInt(r.balance)) }));
  return { object: 'creator_balance', creator_id: creatorId, pending: pick('pending'), available: pick('available') };
}
