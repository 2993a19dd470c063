/**
 * The Stripe sandbox's balance (migration 0031): a balance transaction for each successful charge
 * (type charge, Stripe's fee: 2.9% + 30 of our minor units, as ledger-rules' DEFAULT_FEES.stripe
 * estimates it, so sandbox bills reconcile), for each refund when it is made (type refund, amount
 * negative, fee 0: Stripe does not give its fee back) and for each refund that later fails (type
 * refund_failure, the money back). `GET /v1/balance_transactions` lists them like Stripe: newest
 * first, `created` filters, `limit`, `starting_after`, `type`, and `expand[]` of `data.source`
 * (and `data.source.payment_intent`).
 */
import type { Queryable } from '../../store/db.ts';
import { DEFAULT_FEES, estimateFee } from '../../domain/ledger-rules.ts';
import type { FormObject } from './sandbox-form.ts';
import { apiError, newBalanceTransactionId, unknownParam, type ApiResult, type Transition } from './sandbox-intents.ts';
import { fromStripeAmount, stripeUnitFactor } from './transformers.ts';

export type BalanceTransactionJson = Record<string, unknown> & {
  id: string;
  object: 'balance_transaction';
  amount: number;
  fee: number;
  net: number;
  currency: string;
  type: 'charge' | 'refund' | 'refund_failure';
  source: string;
  created: number;
  available_on: number;
};

/** Card funds become available two days later (Stripe's US standard), at midnight UTC. */
export const AVAILABLE_AFTER_DAYS = 2;
const DAY_S = 86_400;

function availableOn(createdS: number): number {
  return (Math.floor(createdS / DAY_S) + AVAILABLE_AFTER_DAYS) * DAY_S;
}

/** Stripe's fee on a charge, in Stripe units: estimated on our minor units, then converted back. */
export function stripeSandboxFee(amount: number, currency: string): number {
  const money = fromStripeAmount(amount, currency);
  if (!money) throw new Error(`stripeSandboxFee: unusable amount ${amount} ${currency}`);
  return Number(estimateFee(money.amountMinor, DEFAULT_FEES.stripe!) * stripeUnitFactor(money.currency));
}

function transaction(o: { id: string; type: BalanceTransactionJson['type']; amount: number; fee: number; currency: string; source: string; createdS: number; description: string | null }): BalanceTransactionJson {
  const category = o.type === 'charge' ? 'charge' : o.type === 'refund' ? 'refund' : 'refund_failure';
  return {
    id: o.id,
    object: 'balance_transaction',
    amount: o.amount,
    available_on: availableOn(o.createdS),
    created: o.createdS,
    currency: o.currency,
    description: o.description,
    exchange_rate: null,
    fee: o.fee,
    fee_details: o.fee === 0 ? [] : [{ amount: o.fee, application: null, currency: o.currency, description: 'Stripe processing fees', type: 'stripe_fee' }],
    net: o.amount - o.fee,
    reporting_category: category,
    source: o.source,
    status: 'pending',
    type: o.type,
  };
}

export function chargeTransaction(charge: Record<string, unknown>, createdS: number): BalanceTransactionJson {
  const amount = Number(charge['amount_captured'] ?? charge['amount']);
  const currency = String(charge['currency']);
  return transaction({
    id: typeof charge['balance_transaction'] === 'string' ? charge['balance_transaction'] : newBalanceTransactionId(),
    type: 'charge', amount, fee: stripeSandboxFee(amount, currency), currency, source: String(charge['id']), createdS,
    description: typeof charge['description'] === 'string' ? charge['description'] : null,
  });
}

export function refundTransaction(refund: Record<string, unknown>, createdS: number): BalanceTransactionJson {
  return transaction({
    id: typeof refund['balance_transaction'] === 'string' ? refund['balance_transaction'] : newBalanceTransactionId(),
    type: 'refund', amount: -Number(refund['amount']), fee: 0, currency: String(refund['currency']), source: String(refund['id']), createdS,
    description: 'REFUND FOR CHARGE',
  });
}

export function refundFailureTransaction(refund: Record<string, unknown>, createdS: number): BalanceTransactionJson {
  return transaction({
    id: typeof refund['failure_balance_transaction'] === 'string' ? refund['failure_balance_transaction'] : newBalanceTransactionId(),
    type: 'refund_failure', amount: Number(refund['amount']), fee: 0, currency: String(refund['currency']), source: String(refund['id']), createdS,
    description: 'REFUND FAILURE',
  });
}

/**
 * Book what a state change moved on the balance, in the change's transaction: a paid charge, a
 * refund made, a refund failed (read off the events it emits). A transaction already booked for
 * the same source and type is left alone.
 */
export async function recordBalanceTransactions(db: Queryable, accountId: string, events: Transition['events'], createdS: number): Promise<void> {
  for (const e of events) {
    const o = e.object;
    let bt: BalanceTransactionJson;
    if (e.type === 'charge.succeeded') bt = chargeTransaction(o, createdS);
    else if (e.type === 'refund.created') bt = refundTransaction(o, createdS);
    else if (e.type === 'refund.failed') bt = refundFailureTransaction(o, createdS);
    else continue;
    const pi = o['payment_intent'];
    if (typeof pi !== 'string') throw new Error(`${e.type} ${String(o['id'])} has no payment_intent`);
    await db.query(
      `INSERT INTO sandbox_stripe_balance_transactions (id, account_id, type, source, payment_intent, created, object)
       VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING`,
      [bt.id, accountId, bt.type, bt.source, pi, bt.created, JSON.stringify(bt)],
    );
  }
}

// ---- GET /v1/balance_transactions --------------------------------------------------------------

export interface BalanceListRequest {
  created: { gte: number | null; gt: number | null; lte: number | null; lt: number | null };
  type: string | null;
  limit: number;
  startingAfter: string | null;
  expandSource: boolean;
  expandPaymentIntent: boolean;
}

const LIST_PARAMS = new Set(['created', 'limit', 'starting_after', 'type', 'expand']);
const RANGE_KEYS = ['gte', 'gt', 'lte', 'lt'] as const;
const EXPANDABLE = new Set(['data.source', 'data.source.payment_intent']);
const DEFAULT_LIMIT = 10;

function integerParam(v: unknown, param: string): { ok: true; value: number } | { ok: false; error: ApiResult } {
  if (typeof v === 'string' && /^\d{1,12}$/.test(v)) return { ok: true, value: Number(v) };
  return { ok: false, error: apiError(400, 'invalid_request_error', `Invalid integer: ${typeof v === 'string' ? v.slice(0, 20) : 'not a string'}`, { code: 'parameter_invalid_integer', param }) };
}

export function parseBalanceList(params: FormObject): { ok: true; request: BalanceListRequest } | { ok: false; error: ApiResult } {
  const unknown = unknownParam(params, LIST_PARAMS);
  if (unknown) return { ok: false, error: unknown };
  const created: BalanceListRequest['created'] = { gte: null, gt: null, lte: null, lt: null };
  const c = params['created'];
  if (typeof c === 'string') {
    const exact = integerParam(c, 'created');
    if (!exact.ok) return exact;
    created.gte = exact.value;
    created.lte = exact.value;
  } else if (c !== undefined) {
    if (Array.isArray(c) || typeof c !== 'object') return { ok: false, error: apiError(400, 'invalid_request_error', 'Invalid created: an integer or a hash of gt, gte, lt, lte', { param: 'created' }) };
    for (const [k, v] of Object.entries(c)) {
      if (!(RANGE_KEYS as readonly string[]).includes(k)) return { ok: false, error: apiError(400, 'invalid_request_error', `Received unknown parameter: created[${k}]`, { param: `created[${k}]` }) };
      const n = integerParam(v, `created[${k}]`);
      if (!n.ok) return n;
      created[k as (typeof RANGE_KEYS)[number]] = n.value;
    }
  }
  const limitText = params['limit'] ?? String(DEFAULT_LIMIT);
  const limit = typeof limitText === 'string' && /^\d{1,3}$/.test(limitText) ? Number(limitText) : NaN;
  if (!(limit >= 1 && limit <= 100)) return { ok: false, error: apiError(400, 'invalid_request_error', 'This value must be less than or equal to 100.', { code: 'parameter_invalid_integer', param: 'limit' }) };
  const after = params['starting_after'];
  if (after !== undefined && (typeof after !== 'string' || !/^txn_[A-Za-z0-9]{1,250}$/.test(after))) {
    return { ok: false, error: apiError(400, 'invalid_request_error', 'Invalid starting_after: a balance transaction id', { param: 'starting_after' }) };
  }
  const type = params['type'];
  if (type !== undefined && (typeof type !== 'string' || !/^[a-z_]{1,50}$/.test(type))) return { ok: false, error: apiError(400, 'invalid_request_error', 'Invalid type', { param: 'type' }) };
  const expandParam = params['expand'];
  const expand = expandParam === undefined ? [] : Array.isArray(expandParam) ? expandParam : [expandParam];
  for (const e of expand) {
    if (typeof e !== 'string' || !EXPANDABLE.has(e)) {
      return { ok: false, error: apiError(400, 'invalid_request_error', `This property cannot be expanded (${typeof e === 'string' ? e.slice(0, 100) : 'not a string'}).`, { param: 'expand' }) };
    }
  }
  const expandPaymentIntent = expand.includes('data.source.payment_intent');
  return {
    ok: true,
    request: { created, type: type ?? null, limit, startingAfter: after ?? null, expandSource: expandPaymentIntent || expand.includes('data.source'), expandPaymentIntent },
  };
}

export interface BalancePage { data: Array<Record<string, unknown>>; hasMore: boolean }

/** Newest first by (created, id); null when `starting_after` names no transaction of the account. */
export async function listBalanceTransactions(db: Queryable, accountId: string, req: BalanceListRequest, nowS: number): Promise<BalancePage | null> {
  let cursor: { created: number; id: string } | null = null;
  if (req.startingAfter !== null) {
    const { rows } = await db.query<{ created: string }>(`SELECT created FROM sandbox_stripe_balance_transactions WHERE account_id = $1 AND id = $2`, [accountId, req.startingAfter]);
    if (!rows[0]) return null;
    cursor = { created: Number(rows[0].created), id: req.startingAfter };
  }
  const { rows } = await db.query<{ object: BalanceTransactionJson; payment_intent: string; pi: Record<string, unknown> | null; charge: Record<string, unknown> | null; refund: Record<string, unknown> | null }>(
    `SELECT b.object, b.payment_intent,
            CASE WHEN $9 THEN p.object END AS pi,
            CASE WHEN $8 AND b.type = 'charge' THEN p.latest_charge END AS charge,
            CASE WHEN $8 AND b.type <> 'charge' THEN r.object END AS refund
       FROM sandbox_stripe_balance_transactions b
       JOIN sandbox_stripe_payment_intents p ON p.id = b.payment_intent
       LEFT JOIN sandbox_stripe_refunds r ON $8 AND b.type <> 'charge' AND r.id = b.source
      WHERE b.account_id = $1
        AND ($2::bigint IS NULL OR b.created >= $2) AND ($3::bigint IS NULL OR b.created > $3)
        AND ($4::bigint IS NULL OR b.created <= $4) AND ($5::bigint IS NULL OR b.created < $5)
        AND ($6::text IS NULL OR b.type = $6)
        AND ($7::bigint IS NULL OR (b.created, b.id) < ($7::bigint, $10::text))
      ORDER BY b.created DESC, b.id DESC LIMIT $11`,
    [accountId, req.created.gte, req.created.gt, req.created.lte, req.created.lt, req.type, cursor?.created ?? null, req.expandSource, req.expandPaymentIntent, cursor?.id ?? '', req.limit + 1],
  );
  const data = rows.slice(0, req.limit).map((r) => {
    const bt: Record<string, unknown> = { ...r.object, status: r.object.available_on <= nowS ? 'available' : 'pending' };
    if (req.expandSource) {
      const source = r.charge ?? r.refund;
      if (source) bt['source'] = req.expandPaymentIntent && r.pi ? { ...source, payment_intent: r.pi } : source;
    }
    return bt;
  });
  return { data, hasMore: rows.length > req.limit };
}
