/**
 * The ledger store: accounts created on first use (cached), journal entries posted in one SQL
 * statement (entry + postings + creator splits), idempotent by key (same key + same content →
 * the existing entry; other content → an error), tracked balances (wallets) updated in the same
 * transaction in account-id order, never below zero where the account forbids it.
 */
import { createHash } from 'node:crypto';
import type { Client, Pool, Queryable } from '../store/db.ts';
import { newId } from '../domain/ids.ts';
import { ApiError } from '../domain/errors.ts';
import { assert } from '../domain/assert.ts';
import { assertBalanced, balanceDelta, type AccountSpec, type PostingSpec, type SplitSpec } from '../domain/ledger-rules.ts';

/** Captures take this lock shared, settlement runs exclusive: no split can slip behind a cut-off. */
export const SETTLEMENT_LOCK_ID = 0x4b505354; // "KPST"

/**
 * Account ids by code, per database (a process may talk to several: tests, benchmarks). Only ids
 * of accounts that were already committed are cached: an account created inside a transaction
 * that later rolls back must not be remembered.
 */
const accountIdCache = new Map<string, Map<string, string>>();
const MAX_CACHED_ACCOUNTS = 100_000;

function databaseKey(db: Queryable): string {
  const c = db as unknown as { host?: string; port?: number; database?: string; options?: { connectionString?: string; host?: string; port?: number; database?: string } };
  if (c.database !== undefined) return `${c.host}:${c.port}/${c.database}`;
  const o = c.options ?? {};
  if (o.connectionString) {
    const u = new URL(o.connectionString);
    return `${u.hostname}:${u.port || 5432}${u.pathname}`;
  }
  return `${o.host}:${o.port}/${o.database}`;
}

export async function ensureAccounts(db: Queryable, specs: readonly AccountSpec[]): Promise<Map<string, string>> {
  const key = databaseKey(db);
  let cache = accountIdCache.get(key);
  if (!cache) { cache = new Map(); accountIdCache.set(key, cache); }
  const out = new Map<string, string>();
  const missing = specs.filter((s) => {
    const hit = cache!.get(s.code);
    if (hit) out.set(s.code, hit);
    return !hit;
  });
  if (missing.length === 0) return out;
  const unique = [...new Map(missing.map((s) => [s.code, s])).values()];
  const created = await db.query<{ id: string; code: string }>(
    `INSERT INTO ledger_accounts (code, type, currency, may_go_negative, tracked)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::bool[])
     ON CONFLICT (code) DO NOTHING RETURNING id, code`,
    [unique.map((s) => s.code), unique.map((s) => s.type), unique.map((s) => s.currency), unique.map((s) => s.mayGoNegative), unique.map((s) => s.tracked)],
  );
  const fresh = new Set(created.rows.map((r) => r.code));
  for (const r of created.rows) out.set(r.code, r.id);
  const rest = unique.filter((s) => !fresh.has(s.code)).map((s) => s.code);
  if (rest.length > 0) {
    // `mine`: created earlier in this same, still open, transaction — not safe to remember yet.
    const { rows } = await db.query<{ id: string; code: string; mine: boolean | null }>(
      `SELECT id, code, xmin::text = (pg_current_xact_id_if_assigned()::text::bigint % 4294967296)::text AS mine
         FROM ledger_accounts WHERE code = ANY($1)`,
      [rest],
    );
    for (const r of rows) {
      out.set(r.code, r.id);
      if (r.mine !== true && cache.size < MAX_CACHED_ACCOUNTS) cache.set(r.code, r.id);
    }
  }
  for (const s of unique) assert(out.has(s.code), `account ${s.code} was not created`);
  return out;
}

export interface EntryInput {
  idempotencyKey: string;
  kind: string;
  reference?: string | null;
  reverses?: string | null;
  memo?: string | null;
  postings: PostingSpec[];
  /** matures_at = the later of notBefore and (posting time + delayDays). */
  splits?: (SplitSpec & { kind: 'sale' | 'refund' | 'adjustment'; delayDays: number; notBefore?: Date })[];
}

export class LedgerConflictError extends ApiError {
  constructor(key: string) {
    super(409, 'idempotency_error', 'ledger_entry_conflict', `A different journal entry was already posted with key '${key}'`);
  }
}

export class InsufficientFundsError extends ApiError {
  constructor(readonly accountCode: string) {
    super(402, 'payment_error', 'insufficient_funds', `The balance of ${accountCode} does not cover this`);
  }
}

function contentHash(e: EntryInput): string {
  const canon = e.postings.map((p) => `${p.account.code}|${p.direction}|${p.amount}`).sort().join('\n')
    + '\n@' + (e.splits ?? []).map((s) => s.notBefore?.toISOString() ?? '').join(',')
    + '\n#' + e.kind + '|' + (e.reference ?? '') + '|' + (e.reverses ?? '')
    + '\n' + (e.splits ?? []).map((s) => `${s.creatorId}|${s.currency}|${s.gross}|${s.fee}|${s.share}|${s.kind}|${s.delayDays}`).sort().join('\n');
  return createHash('sha256').update(canon).digest('hex');
}

export interface PostResult { entryId: string; created: boolean }

/**
 * Post one entry inside the caller's transaction. Accounts must exist (call ensureAccounts first,
 * outside or inside the transaction). Splits mature at the lock-holding clock plus their delay.
 */
export async function postEntry(tx: Client | Pool, e: EntryInput, accountIdsByCode: Map<string, string>): Promise<PostResult> {
  assertBalanced(e.postings);
  const hash = contentHash(e);
  const id = newId('je');
  const acct = e.postings.map((p) => {
    const a = accountIdsByCode.get(p.account.code);
    assert(a, `account ${p.account.code} not ensured`);
    return a;
  });
  const splits = e.splits ?? [];
  // One statement: the shared settlement lock (so no split can land behind a running cut-off),
  // the entry, its postings (checked balanced by the statement trigger) and its splits.
  const { rows } = await tx.query<{ inserted: string | null; postings: string; splits: string }>({
    name: 'knowpay_post_entry',
    text: `WITH e AS (
       INSERT INTO journal_entries (id, idempotency_key, content_hash, kind, reference, reverses, memo)
       SELECT $1, $2, $3, $4, $5, $6, $7 FROM (SELECT pg_advisory_xact_lock_shared($19)) AS settlement_lock
       ON CONFLICT (idempotency_key) DO NOTHING RETURNING id
     ), p AS (
       INSERT INTO postings (entry_id, line, account_id, direction, amount, currency)
       SELECT e.id, x.n - 1, x.a, x.d, x.m, x.c FROM e, unnest($8::bigint[], $9::text[], $10::bigint[], $11::text[]) WITH ORDINALITY AS x(a, d, m, c, n)
       RETURNING 1
     ), s AS (
       INSERT INTO creator_splits (entry_id, creator_id, currency, gross_amount, fee_amount, share_amount, kind, matures_at)
       SELECT e.id, x.cr, x.cur, x.g, x.f, x.sh, x.k, greatest(x.nb, clock_timestamp() + make_interval(days => x.dd))
         FROM e, unnest($12::text[], $13::text[], $14::bigint[], $15::bigint[], $16::bigint[], $17::text[], $18::int[], $20::timestamptz[]) AS x(cr, cur, g, f, sh, k, dd, nb)
       RETURNING 1
     )
     SELECT (SELECT id FROM e) AS inserted, (SELECT count(*) FROM p) AS postings, (SELECT count(*) FROM s) AS splits`,
    values: [id, e.idempotencyKey, hash, e.kind, e.reference ?? null, e.reverses ?? null, e.memo ?? null,
      acct, e.postings.map((p) => p.direction), e.postings.map((p) => p.amount.toString()), e.postings.map((p) => p.account.currency),
      splits.map((s) => s.creatorId), splits.map((s) => s.currency), splits.map((s) => s.gross.toString()), splits.map((s) => s.fee.toString()),
      splits.map((s) => s.share.toString()), splits.map((s) => s.kind), splits.map((s) => s.delayDays), SETTLEMENT_LOCK_ID,
      splits.map((s) => s.notBefore ?? null)],
  });
  const r = rows[0]!;
  if (r.inserted === null) {
    const existing = await tx.query<{ id: string; content_hash: string }>('SELECT id, content_hash FROM journal_entries WHERE idempotency_key = $1', [e.idempotencyKey]);
    const ex = existing.rows[0];
    assert(ex, 'conflicting entry vanished');
    if (ex.content_hash !== hash) throw new LedgerConflictError(e.idempotencyKey);
    return { entryId: ex.id, created: false };
  }
  assert(Number(r.postings) === e.postings.length, 'not every posting was written');
  assert(Number(r.splits) === splits.length, 'not every split was written');
  // Tracked balances must move in the same transaction as the entry.
  assert(!e.postings.some((p) => p.account.tracked) || !('totalCount' in tx), 'tracked accounts need a transaction client');
  await applyTrackedBalances(tx, e.postings, accountIdsByCode);
  return { entryId: r.inserted, created: true };
}

export const MAX_BATCH_ENTRIES = 5000;

/**
 * Post many entries in one statement (imports, backfills, high-rate capture writers). Same rules
 * as postEntry: each entry balances (trigger), idempotent by key (a replayed key with the same
 * content is skipped, with other content is an error). Tracked (wallet) accounts are not allowed
 * here: their balance rows need postEntry's ordered updates.
 */
export async function postEntriesBatch(db: Client | Pool, entries: readonly EntryInput[]): Promise<{ created: number; skipped: number }> {
  assert(entries.length > 0 && entries.length <= MAX_BATCH_ENTRIES, `batch size must be 1..${MAX_BATCH_ENTRIES}`);
  const ids = await ensureAccounts(db, entries.flatMap((e) => e.postings.map((p) => p.account)));
  const eId: string[] = [], eKey: string[] = [], eHash: string[] = [], eKind: string[] = [], eRef: (string | null)[] = [], eMemo: (string | null)[] = [];
  const pE: string[] = [], pA: string[] = [], pD: string[] = [], pM: string[] = [], pC: string[] = [], pL: number[] = [];
  const sE: string[] = [], sCr: string[] = [], sCur: string[] = [], sG: string[] = [], sF: string[] = [], sSh: string[] = [], sK: string[] = [], sDd: number[] = [];
  const hashByKey = new Map<string, string>();
  for (const e of entries) {
    assertBalanced(e.postings);
    assert(!e.postings.some((p) => p.account.tracked), 'tracked accounts cannot be batch-posted');
    assert(!hashByKey.has(e.idempotencyKey), `key ${e.idempotencyKey} twice in one batch`);
    const id = newId('je');
    const hash = contentHash(e);
    hashByKey.set(e.idempotencyKey, hash);
    eId.push(id); eKey.push(e.idempotencyKey); eHash.push(hash); eKind.push(e.kind); eRef.push(e.reference ?? null); eMemo.push(e.memo ?? null);
    e.postings.forEach((p, line) => { pE.push(id); pL.push(line); pA.push(ids.get(p.account.code)!); pD.push(p.direction); pM.push(p.amount.toString()); pC.push(p.account.currency); });
    for (const x of e.splits ?? []) {
      sE.push(id); sCr.push(x.creatorId); sCur.push(x.currency); sG.push(x.gross.toString()); sF.push(x.fee.toString());
      sSh.push(x.share.toString()); sK.push(x.kind); sDd.push(x.delayDays);
    }
  }
  const { rows } = await db.query<{ entries: string; postings: string }>(
    `WITH settlement_lock AS (SELECT pg_advisory_xact_lock_shared($20)),
     e AS (
       INSERT INTO journal_entries (id, idempotency_key, content_hash, kind, reference, memo)
       SELECT x.id, x.k, x.h, x.kind, x.ref, x.memo FROM settlement_lock, unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) AS x(id, k, h, kind, ref, memo)
       ON CONFLICT (idempotency_key) DO NOTHING RETURNING id
     ), p AS (
       INSERT INTO postings (entry_id, line, account_id, direction, amount, currency)
       SELECT x.e, x.l, x.a, x.d, x.m, x.c FROM unnest($7::text[], $8::bigint[], $9::text[], $10::bigint[], $11::text[], $21::int[]) AS x(e, a, d, m, c, l) JOIN e ON e.id = x.e
       RETURNING 1
     ), s AS (
       INSERT INTO creator_splits (entry_id, creator_id, currency, gross_amount, fee_amount, share_amount, kind, matures_at)
       SELECT x.e, x.cr, x.cur, x.g, x.f, x.sh, x.k, clock_timestamp() + make_interval(days => x.dd)
         FROM unnest($12::text[], $13::text[], $14::text[], $15::bigint[], $16::bigint[], $17::bigint[], $18::text[], $19::int[]) AS x(e, cr, cur, g, f, sh, k, dd)
         JOIN e ON e.id = x.e
       RETURNING 1
     )
     SELECT (SELECT count(*) FROM e) AS entries, (SELECT count(*) FROM p) AS postings, (SELECT count(*) FROM s) AS splits`,
    [eId, eKey, eHash, eKind, eRef, eMemo, pE, pA, pD, pM, pC, sE, sCr, sCur, sG, sF, sSh, sK, sDd, SETTLEMENT_LOCK_ID, pL],
  );
  const created = Number(rows[0]!.entries);
  if (created < entries.length) {
    const existing = await db.query<{ idempotency_key: string; content_hash: string }>(
      'SELECT idempotency_key, content_hash FROM journal_entries WHERE idempotency_key = ANY($1)', [eKey]);
    for (const r of existing.rows) {
      if (hashByKey.get(r.idempotency_key) !== r.content_hash) throw new LedgerConflictError(r.idempotency_key);
    }
  }
  return { created, skipped: entries.length - created };
}

/** Balance rows of tracked accounts, updated in account-id order (no deadlocks), checked ≥ 0. */
async function applyTrackedBalances(tx: Client | Pool, postings: readonly PostingSpec[], ids: Map<string, string>): Promise<void> {
  const deltas = new Map<string, { delta: bigint; spec: AccountSpec }>();
  for (const p of postings) {
    if (!p.account.tracked) continue;
    const id = ids.get(p.account.code)!;
    const cur = deltas.get(id) ?? { delta: 0n, spec: p.account };
    cur.delta += balanceDelta(p.account.type, p.direction, p.amount);
    deltas.set(id, cur);
  }
  const sorted = [...deltas.entries()].sort(([a], [b]) => (BigInt(a) < BigInt(b) ? -1 : 1));
  for (const [id, { delta, spec }] of sorted) {
    const { rows } = await tx.query<{ balance: string }>(
      `INSERT INTO ledger_balances (account_id, balance) VALUES ($1, $2)
       ON CONFLICT (account_id) DO UPDATE SET balance = ledger_balances.balance + EXCLUDED.balance, updated_at = now()
       RETURNING balance`,
      [id, delta.toString()],
    );
    if (!spec.mayGoNegative && BigInt(rows[0]!.balance) < 0n) throw new InsufficientFundsError(spec.code);
  }
}

/** Convenience: ensure accounts and post, in the caller's transaction. */
export async function post(tx: Client, e: EntryInput): Promise<PostResult> {
  const ids = await ensureAccounts(tx, e.postings.map((p) => p.account));
  return postEntry(tx, e, ids);
}

// ---------- reading ----------

/** Natural balance of accounts matching a code pattern, per code (derived from postings). */
export async function balancesByCode(db: Queryable, codes: string[]): Promise<Map<string, bigint>> {
  const { rows } = await db.query<{ code: string; balance: string }>(
    `SELECT a.code,
            coalesce(sum(CASE WHEN (p.direction = 'debit') = (a.type IN ('asset', 'expense')) THEN p.amount ELSE -p.amount END), 0) AS balance
       FROM ledger_accounts a LEFT JOIN postings p ON p.account_id = a.id
      WHERE a.code = ANY($1) GROUP BY a.code`,
    [codes],
  );
  return new Map(rows.map((r) => [r.code, BigInt(r.balance)]));
}

export async function trialBalance(db: Queryable) {
  const { rows } = await db.query<{ currency: string; debits: string; credits: string }>(
    `SELECT currency,
            coalesce(sum(amount) FILTER (WHERE direction = 'debit'), 0) AS debits,
            coalesce(sum(amount) FILTER (WHERE direction = 'credit'), 0) AS credits
       FROM postings GROUP BY currency ORDER BY currency`,
  );
  return {
    object: 'trial_balance',
    currencies: rows.map((r) => ({ currency: r.currency, debits: Number(r.debits), credits: Number(r.credits), balanced: r.debits === r.credits })),
  };
}

interface EntryRow { id: string; kind: string; reference: string | null; reverses: string | null; memo: string | null; created_at: Date }

export async function listEntries(db: Queryable, q: { reference?: string; account?: string; limit: number; starting_after?: string }) {
  const params: unknown[] = [];
  const where: string[] = [];
  if (q.reference) { params.push(q.reference); where.push(`e.reference = $${params.length}`); }
  if (q.account) {
    params.push(q.account);
    where.push(`EXISTS (SELECT 1 FROM postings p JOIN ledger_accounts a ON a.id = p.account_id WHERE p.entry_id = e.id AND a.code = $${params.length})`);
  }
  if (q.starting_after) { params.push(q.starting_after); where.push(`e.id < $${params.length}`); }
  params.push(q.limit + 1);
  const { rows } = await db.query<EntryRow>(
    `SELECT e.* FROM journal_entries e ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY e.id DESC LIMIT $${params.length}`,
    params,
  );
  const page = rows.slice(0, q.limit);
  const postings = page.length
    ? (await db.query<{ entry_id: string; code: string; direction: string; amount: string; currency: string }>(
        `SELECT p.entry_id, a.code, p.direction, p.amount, p.currency FROM postings p JOIN ledger_accounts a ON a.id = p.account_id
          WHERE p.entry_id = ANY($1) ORDER BY p.entry_id, p.line`, [page.map((e) => e.id)])).rows
    : [];
  return {
    object: 'list' as const,
    data: page.map((e) => ({
      id: e.id, object: 'ledger_entry', kind: e.kind, reference: e.reference, reverses: e.reverses, memo: e.memo,
      created: Math.floor(e.created_at.getTime() / 1000),
      postings: postings.filter((p) => p.entry_id === e.id).map((p) => ({ account: p.code, direction: p.direction, amount: Number(p.amount), currency: p.currency })),
    })),
    has_more: rows.length > q.limit,
  };
}

export async function walletBalances(db: Queryable, customerId: string) {
  const { rows } = await db.query<{ currency: string; balance: string }>(
    `SELECT a.currency, coalesce(b.balance, 0) AS balance FROM ledger_accounts a LEFT JOIN ledger_balances b ON b.account_id = a.id
      WHERE a.code LIKE $1 ORDER BY a.currency`,
    [`customer_wallet:${encodeURIComponent(customerId).replace(/[\\%_]/g, (m) => '\\' + m)}:%`],
  );
  return { object: 'wallet', customer_id: customerId, balances: rows.map((r) => ({ currency: r.currency, amount: Number(r.balance) })) };
}

export type { Pool };
