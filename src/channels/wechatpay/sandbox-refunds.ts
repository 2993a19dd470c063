/**
 * The WeChat Pay sandbox's refunds (table sandbox_wechatpay_refunds, migration 0021), as WeChat
 * Pay runs them: asynchronous. `POST /v3/refund/domestic/refunds` accepts a refund in PROCESSING;
 * the sandbox finishes it by itself at `settle_at` (SUCCESS) unless /refunds/simulate ends it
 * first (SUCCESS, or ABNORMAL / CLOSED). A final refund sends the signed, encrypted REFUND.*
 * callback to the refund's notify_url through the shared dispatcher, in the same transaction.
 *
 * The refundable remainder is enforced under a compare-and-set on the trade row's `version`: a new
 * refund bumps the trade (its trade_state becomes REFUND) and is inserted in one transaction, so
 * two refunds of one trade, in one process or several, never both pass on the same remainder.
 * Refunds in PROCESSING or SUCCESS count against it; CLOSED and ABNORMAL ones give it back.
 */
import { randomInt, randomUUID } from 'node:crypto';
import type { Pool, Queryable } from '../../store/db.ts';
import { inTransaction } from '../../store/db.ts';
import { toJsonAmount } from '../../domain/money.ts';
import type { NotificationDispatcher } from '../sandbox/dispatcher.ts';
import type { CallbackPayload } from './sandbox.ts';
import { encryptResource } from './sign.ts';
import {
  MAX_REFUND_REASON_BYTES, MAX_TOTAL_FEN, OUT_REFUND_NO, REFUND_EVENT_OF, formatRfc3339, gmt8Compact, type RefundStatus,
} from './transformers.ts';
import { apiError, invalid, required, type ApiAnswer } from './sandbox-api.ts';
import { getTrade, isPaid, updateTrade, type SandboxTrade } from './sandbox-trades.ts';

export interface SandboxRefund {
  mchid: string;
  outRefundNo: string;
  refundId: string;
  outTradeNo: string;
  transactionId: string;
  status: RefundStatus;
  reason: string | null;
  notifyUrl: string | null;
  fundsAccount: string;
  refundFen: bigint;
  totalFen: bigint;
  currency: string;
  settleAt: Date | null;
  successTime: Date | null;
  createdAt: Date;
  version: number;
  /** The database clock when the row was read. */
  readAt: Date;
}

/** A refund by our number, WeChat Pay's id, or both (then both must match). */
export interface RefundKey {
  mchid: string;
  outRefundNo?: string;
  refundId?: string;
}

export type FinalRefundStatus = Exclude<RefundStatus, 'PROCESSING'>;

interface RefundRow {
  mchid: string;
  out_refund_no: string;
  refund_id: string;
  out_trade_no: string;
  transaction_id: string;
  status: RefundStatus;
  reason: string | null;
  notify_url: string | null;
  funds_account: string;
  amount_refund_fen: string;
  amount_total_fen: string;
  currency: string;
  settle_at: Date | null;
  success_time: Date | null;
  created_at: Date;
  version: number;
  read_at: Date;
}

const COLUMNS = `mchid, out_refund_no, refund_id, out_trade_no, transaction_id, status, reason, notify_url, funds_account,
  amount_refund_fen, amount_total_fen, currency, settle_at, success_time, created_at, version, clock_timestamp() AS read_at`;

function fromRow(r: RefundRow): SandboxRefund {
  return {
    mchid: r.mchid,
    outRefundNo: r.out_refund_no,
    refundId: r.refund_id,
    outTradeNo: r.out_trade_no,
    transactionId: r.transaction_id,
    status: r.status,
    reason: r.reason,
    notifyUrl: r.notify_url,
    fundsAccount: r.funds_account,
    refundFen: BigInt(r.amount_refund_fen),
    totalFen: BigInt(r.amount_total_fen),
    currency: r.currency,
    settleAt: r.settle_at,
    successTime: r.success_time,
    createdAt: r.created_at,
    version: r.version,
    readAt: r.read_at,
  };
}

export async function getRefund(db: Queryable, key: RefundKey): Promise<SandboxRefund | null> {
  if (key.outRefundNo === undefined && key.refundId === undefined) return null;
  const { rows } = await db.query<RefundRow>(
    `SELECT ${COLUMNS} FROM sandbox_wechatpay_refunds
      WHERE mchid = $1 AND ($2::text IS NULL OR out_refund_no = $2) AND ($3::text IS NULL OR refund_id = $3)`,
    [key.mchid, key.outRefundNo ?? null, key.refundId ?? null],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

export async function listRefundsOfTrade(db: Queryable, mchid: string, outTradeNo: string): Promise<SandboxRefund[]> {
  const { rows } = await db.query<RefundRow>(
    `SELECT ${COLUMNS} FROM sandbox_wechatpay_refunds WHERE mchid = $1 AND out_trade_no = $2 ORDER BY created_at, out_refund_no LIMIT 1000`,
    [mchid, outTradeNo],
  );
  return rows.map(fromRow);
}

/** What counts against the trade's refundable remainder (refunds under way or done), and how many refunds it has. */
async function refundsOfTrade(db: Queryable, mchid: string, outTradeNo: string): Promise<{ committedFen: bigint; count: number }> {
  const { rows } = await db.query<{ s: string; n: number }>(
    `SELECT coalesce(sum(amount_refund_fen) FILTER (WHERE status IN ('PROCESSING', 'SUCCESS')), 0)::bigint AS s, count(*)::int AS n
       FROM sandbox_wechatpay_refunds WHERE mchid = $1 AND out_trade_no = $2`,
    [mchid, outTradeNo],
  );
  return { committedFen: BigInt(rows[0]!.s), count: rows[0]!.n };
}

interface NewRefund {
  mchid: string;
  outRefundNo: string;
  refundId: string;
  outTradeNo: string;
  transactionId: string;
  reason: string | null;
  notifyUrl: string | null;
  fundsAccount: string;
  refundFen: bigint;
  totalFen: bigint;
  /** Milliseconds from now (database clock) until the sandbox finishes it; null: never by itself. */
  settleInMs: number | null;
}

/** Insert unless the out_refund_no (or the generated refund_id) exists; null then. */
async function insertRefund(db: Queryable, r: NewRefund): Promise<SandboxRefund | null> {
  const { rows } = await db.query<RefundRow>(
    `INSERT INTO sandbox_wechatpay_refunds
       (mchid, out_refund_no, refund_id, out_trade_no, transaction_id, status, reason, notify_url, funds_account,
        amount_refund_fen, amount_total_fen, settle_at)
     VALUES ($1, $2, $3, $4, $5, 'PROCESSING', $6, $7, $8, $9, $10,
        CASE WHEN $11::double precision IS NULL THEN NULL ELSE clock_timestamp() + make_interval(secs => $11::double precision / 1000) END)
     ON CONFLICT DO NOTHING
     RETURNING ${COLUMNS}`,
    [r.mchid, r.outRefundNo, r.refundId, r.outTradeNo, r.transactionId, r.reason, r.notifyUrl, r.fundsAccount,
      r.refundFen.toString(), r.totalFen.toString(), r.settleInMs],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

/** Compare-and-set PROCESSING → a final status; null when the row moved meanwhile. */
async function finishRow(db: Queryable, expected: SandboxRefund, status: FinalRefundStatus): Promise<SandboxRefund | null> {
  const { rows } = await db.query<RefundRow>(
    `UPDATE sandbox_wechatpay_refunds SET
        status = $4,
        success_time = CASE WHEN $4 = 'SUCCESS' THEN clock_timestamp() ELSE success_time END,
        version = version + 1,
        updated_at = clock_timestamp()
      WHERE mchid = $1 AND out_refund_no = $2 AND version = $3 AND status = 'PROCESSING'
      RETURNING ${COLUMNS}`,
    [expected.mchid, expected.outRefundNo, expected.version, status],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

// ---- Wire shapes ---------------------------------------------------------------------------------

/** The refund as WeChat Pay answers the refund call and the refund query. */
export function refundJson(r: SandboxRefund): Record<string, unknown> {
  const total = toJsonAmount(r.totalFen);
  const refund = toJsonAmount(r.refundFen);
  return {
    refund_id: r.refundId,
    out_refund_no: r.outRefundNo,
    transaction_id: r.transactionId,
    out_trade_no: r.outTradeNo,
    channel: 'ORIGINAL',
    user_received_account: '支付用户零钱',
    ...(r.successTime ? { success_time: formatRfc3339(r.successTime) } : {}),
    create_time: formatRfc3339(r.createdAt),
    status: r.status,
    funds_account: r.fundsAccount,
    amount: {
      total, refund, from: [], payer_total: total, payer_refund: refund, settlement_refund: refund, settlement_total: total,
      discount_refund: 0, currency: r.currency, refund_fee: 0,
    },
    promotion_detail: [],
  };
}

/** The REFUND.SUCCESS / REFUND.ABNORMAL / REFUND.CLOSED callback body, resource encrypted with the APIv3 key. */
export function refundCallbackBody(r: SandboxRefund & { status: FinalRefundStatus }, eventId: string, apiV3Key: Buffer, now = new Date()): string {
  const plaintext = JSON.stringify({
    mchid: r.mchid,
    transaction_id: r.transactionId,
    out_trade_no: r.outTradeNo,
    refund_id: r.refundId,
    out_refund_no: r.outRefundNo,
    refund_status: r.status,
    ...(r.successTime ? { success_time: formatRfc3339(r.successTime) } : {}),
    user_received_account: '支付用户零钱',
    amount: { total: toJsonAmount(r.totalFen), refund: toJsonAmount(r.refundFen), payer_total: toJsonAmount(r.totalFen), payer_refund: toJsonAmount(r.refundFen) },
  });
  const event = REFUND_EVENT_OF[r.status];
  return JSON.stringify({
    id: eventId,
    create_time: formatRfc3339(now),
    resource_type: 'encrypt-resource',
    event_type: event.eventType,
    summary: event.summary,
    resource: encryptResource(plaintext, apiV3Key, 'refund', 'refund'),
  });
}

/** The sandbox's own view of a refund (Knowpay style, for /refunds/simulate and /trades). */
export function refundView(r: SandboxRefund, extra: Record<string, unknown> = {}) {
  return {
    object: 'sandbox_refund',
    channel: 'wechatpay',
    refund_reference: r.outRefundNo,
    out_refund_no: r.outRefundNo,
    channel_refund_id: r.refundId,
    refund_id: r.refundId,
    channel_reference: r.outTradeNo,
    out_trade_no: r.outTradeNo,
    transaction_id: r.transactionId,
    status: r.status,
    amount: toJsonAmount(r.refundFen),
    total: toJsonAmount(r.totalFen),
    currency: r.currency,
    reason: r.reason,
    notify_url: r.notifyUrl,
    settle_at: r.settleAt ? r.settleAt.toISOString() : null,
    success_time: r.successTime ? r.successTime.toISOString() : null,
    created_at: r.createdAt.toISOString(),
    ...extra,
  };
}

/** 29 digits starting 50 with the GMT+8 date inside, e.g. 50300506452021111114147497880. */
export function newRefundId(now = new Date()): string {
  const digits = (n: number) => Array.from({ length: n }, () => String(randomInt(10))).join('');
  return `50${digits(5)}${gmt8Compact(now).slice(0, 8)}${digits(14)}`;
}

// ---- POST /v3/refund/domestic/refunds ------------------------------------------------------------

interface RefundRequestBody {
  outTradeNo: string | null;
  transactionId: string | null;
  outRefundNo: string;
  reason: string | null;
  notifyUrl: string | null;
  fundsAccount: string;
  refundFen: bigint;
  totalFen: bigint;
}

const obj = (v: unknown): Record<string, unknown> | null => (v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null);
const fenOk = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 1 && BigInt(v) <= MAX_TOTAL_FEN;

/** Validate a refund request the way WeChat Pay does (PARAM_ERROR in its wording). */
export function parseRefundRequest(b: Record<string, unknown>): { ok: true; request: RefundRequestBody } | { ok: false; answer: ApiAnswer } {
  const fail = (answer: ApiAnswer) => ({ ok: false as const, answer });
  const optionalString = (field: string, v: unknown, max: number, pattern?: RegExp): string | null | ApiAnswer => {
    if (v === undefined || v === null || v === '') return null;
    if (typeof v !== 'string') return invalid(field, v, '类型错误，应为字符串');
    if (Buffer.byteLength(v, 'utf8') > max) return invalid(field, v, `长度超过${max}字节`);
    if (pattern && !pattern.test(v)) return invalid(field, v, '格式错误');
    return v;
  };
  const outTradeNo = optionalString('out_trade_no', b['out_trade_no'], 32, /^[A-Za-z0-9_\-|*]{6,32}$/);
  if (outTradeNo !== null && typeof outTradeNo !== 'string') return fail(outTradeNo);
  const transactionId = optionalString('transaction_id', b['transaction_id'], 32, /^\d{1,32}$/);
  if (transactionId !== null && typeof transactionId !== 'string') return fail(transactionId);
  if (outTradeNo === null && transactionId === null) {
    return fail(apiError(400, 'PARAM_ERROR', 'transaction_id和out_trade_no必须二选一进行传参', { location: 'body', field: 'out_trade_no' }));
  }
  if (b['out_refund_no'] === undefined || b['out_refund_no'] === null || b['out_refund_no'] === '') return fail(required('out_refund_no'));
  const outRefundNo = b['out_refund_no'];
  if (typeof outRefundNo !== 'string' || !OUT_REFUND_NO.test(outRefundNo)) return fail(invalid('out_refund_no', outRefundNo, '只能是1-64位数字、大小写字母_-|*@'));
  const reason = optionalString('reason', b['reason'], MAX_REFUND_REASON_BYTES);
  if (reason !== null && typeof reason !== 'string') return fail(reason);
  const notifyUrl = optionalString('notify_url', b['notify_url'], 256, /^https?:\/\/[^\s?#]{1,}$/);
  if (notifyUrl !== null && typeof notifyUrl !== 'string') return fail(notifyUrl);
  const fundsAccount = b['funds_account'] ?? 'AVAILABLE';
  if (fundsAccount !== 'AVAILABLE') return fail(invalid('funds_account', fundsAccount, '枚举值只能是AVAILABLE'));
  const amount = obj(b['amount']);
  if (!amount) return fail(required('amount'));
  if (amount['refund'] === undefined) return fail(required('amount.refund'));
  if (!fenOk(amount['refund'])) return fail(invalid('amount.refund', amount['refund'], '须为大于0的整数（单位：分）'));
  if (amount['total'] === undefined) return fail(required('amount.total'));
  if (!fenOk(amount['total'])) return fail(invalid('amount.total', amount['total'], '须为大于0的整数（单位：分）'));
  if (amount['currency'] === undefined || amount['currency'] === '') return fail(required('amount.currency'));
  if (amount['currency'] !== 'CNY') return fail(invalid('amount.currency', amount['currency'], '目前只支持人民币：CNY'));
  return {
    ok: true,
    request: { outTradeNo, transactionId, outRefundNo, reason, notifyUrl, fundsAccount, refundFen: BigInt(amount['refund']), totalFen: BigInt(amount['total']) },
  };
}

const MAX_ROUNDS = 8;
/** WeChat Pay: at most 50 refunds per trade, within a year of payment. */
export const MAX_REFUNDS_PER_TRADE = 50;
const REFUND_WINDOW_MS = 365 * 24 * 3600_000;
const MISMATCH = '订单金额或退款金额与之前请求不一致，请核实后再试';
const EXCEEDS = '申请退款金额超过订单可退金额';

/** Thrown inside an attempt's transaction to roll it back and try again. */
class RetryAttempt extends Error {}

export interface RefundApiOptions {
  pool: Pool;
  mchid: string;
  /** Milliseconds (already scaled) until a new refund finishes by itself; null: only by simulate. */
  settleInMs: number | null;
}

/**
 * POST /v3/refund/domestic/refunds. The same out_refund_no again answers the same refund (its
 * current state) when trade and amounts match, else INVALID_REQUEST; an unpaid or unknown trade is
 * RESOURCE_NOT_EXISTS; more than the refundable remainder is INVALID_REQUEST 申请退款金额超过订单可退金额.
 * Also WeChat Pay's: at most 50 refunds per trade and none a year after payment (INVALID_REQUEST;
 * the wording of these two is the sandbox's). Its "one minute between two refunds of a trade" is
 * not enforced.
 */
export async function createRefund(opts: RefundApiOptions, body: Record<string, unknown>): Promise<ApiAnswer> {
  const parsed = parseRefundRequest(body);
  if (!parsed.ok) return parsed.answer;
  const q = parsed.request;
  const { mchid } = opts;
  for (let round = 0; round < MAX_ROUNDS; round++) {
    try {
      const answer = await inTransaction(opts.pool, async (db): Promise<ApiAnswer | null> => {
        const existing = await getRefund(db, { mchid, outRefundNo: q.outRefundNo });
        if (existing) {
          const same = existing.refundFen === q.refundFen && existing.totalFen === q.totalFen
            && (q.outTradeNo === null || existing.outTradeNo === q.outTradeNo) && (q.transactionId === null || existing.transactionId === q.transactionId);
          return same ? { status: 200, body: refundJson(existing) } : apiError(400, 'INVALID_REQUEST', MISMATCH);
        }
        const trade: SandboxTrade | null = q.outTradeNo !== null
          ? await getTrade(db, { mchid, outTradeNo: q.outTradeNo })
          : await getTrade(db, { mchid, transactionId: q.transactionId! });
        if (!trade || !isPaid(trade)) return apiError(404, 'RESOURCE_NOT_EXISTS', '订单不存在');
        if (q.transactionId !== null && trade.transactionId !== q.transactionId) return apiError(400, 'INVALID_REQUEST', '微信支付订单号与商户订单号不匹配');
        if (q.totalFen !== trade.amountFen) return apiError(400, 'INVALID_REQUEST', MISMATCH);
        if (trade.successTime && trade.readAt.getTime() - trade.successTime.getTime() > REFUND_WINDOW_MS) {
          return apiError(400, 'INVALID_REQUEST', '交易时间超过一年的订单无法提交退款');
        }
        const { committedFen, count } = await refundsOfTrade(db, mchid, trade.outTradeNo);
        if (q.refundFen > trade.amountFen - committedFen) return apiError(400, 'INVALID_REQUEST', EXCEEDS);
        if (count >= MAX_REFUNDS_PER_TRADE) return apiError(400, 'INVALID_REQUEST', `每笔订单最多支持${MAX_REFUNDS_PER_TRADE}次部分退款`);
        // The trade row is the serialization point: a concurrent refund of it makes this fail.
        if (!(await updateTrade(db, trade, { tradeState: 'REFUND' }))) return null;
        const inserted = await insertRefund(db, {
          mchid, outRefundNo: q.outRefundNo, refundId: newRefundId(), outTradeNo: trade.outTradeNo, transactionId: trade.transactionId!,
          reason: q.reason, notifyUrl: q.notifyUrl, fundsAccount: q.fundsAccount, refundFen: q.refundFen, totalFen: trade.amountFen,
          settleInMs: opts.settleInMs,
        });
        if (!inserted) throw new RetryAttempt('out_refund_no taken meanwhile');
        return { status: 200, body: refundJson(inserted) };
      });
      if (answer) return answer;
    } catch (err) {
      if (!(err instanceof RetryAttempt)) throw err;
    }
  }
  return apiError(500, 'SYSTEM_ERROR', '系统异常，请用相同参数重新调用');
}

/** GET /v3/refund/domestic/refunds/{out_refund_no}. */
export async function queryRefund(db: Queryable, mchid: string, outRefundNo: string): Promise<ApiAnswer> {
  const r = OUT_REFUND_NO.test(outRefundNo) ? await getRefund(db, { mchid, outRefundNo }) : null;
  return r ? { status: 200, body: refundJson(r) } : apiError(404, 'RESOURCE_NOT_EXISTS', '退款单不存在');
}

// ---- Finishing a refund ----------------------------------------------------------------------------

export type FinishResult =
  | { ok: true; refund: SandboxRefund; eventId: string | null }
  | { ok: false; status: 404 | 409; code: string; message: string };

/**
 * PROCESSING → `status`, and the REFUND.* callback queued, in one transaction. `onlyIfDue`: the
 * sandbox's own settling, which leaves alone a refund whose settle_at has not come.
 */
export async function finishRefund(
  pool: Pool,
  dispatcher: NotificationDispatcher<CallbackPayload>,
  key: RefundKey,
  status: FinalRefundStatus,
  apiV3Key: Buffer,
  opts: { onlyIfDue?: boolean } = {},
): Promise<FinishResult> {
  return inTransaction(pool, async (db): Promise<FinishResult> => {
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const r = await getRefund(db, key);
      if (!r) return { ok: false, status: 404, code: 'refund_not_found', message: `no WeChat Pay sandbox refund ${describeKey(key)}` };
      if (r.status !== 'PROCESSING') return { ok: false, status: 409, code: 'refund_already_final', message: `refund ${r.outRefundNo} is already ${r.status}` };
      if (opts.onlyIfDue && (r.settleAt === null || r.settleAt.getTime() > r.readAt.getTime())) {
        return { ok: false, status: 409, code: 'refund_not_due', message: `refund ${r.outRefundNo} is not due` };
      }
      const done = await finishRow(db, r, status);
      if (!done) continue;
      if (!done.notifyUrl) return { ok: true, refund: done, eventId: null };
      const eventId = randomUUID();
      await dispatcher.enqueue(db, {
        channelReference: done.outTradeNo,
        eventId,
        url: done.notifyUrl,
        payload: { body: refundCallbackBody(done as SandboxRefund & { status: FinalRefundStatus }, eventId, apiV3Key) },
      });
      return { ok: true, refund: done, eventId };
    }
    throw new Error(`refund ${describeKey(key)} kept changing while being finished`);
  });
}

function describeKey(key: RefundKey): string {
  return [key.outRefundNo !== undefined ? `out_refund_no ${key.outRefundNo}` : '', key.refundId !== undefined ? `refund_id ${key.refundId}` : '']
    .filter(Boolean).join(' and ');
}

const SETTLE_BATCH = 50;

/**
 * The sandbox finishing due refunds by itself (SUCCESS), at most SETTLE_BATCH per pass. Several
 * processes may run this at once: the compare-and-set lets one of them finish each refund.
 */
export async function settleDueRefunds(pool: Pool, dispatcher: NotificationDispatcher<CallbackPayload>, mchid: string, apiV3Key: Buffer): Promise<number> {
  const { rows } = await pool.query<{ out_refund_no: string }>(
    `SELECT out_refund_no FROM sandbox_wechatpay_refunds
      WHERE mchid = $1 AND status = 'PROCESSING' AND settle_at IS NOT NULL AND settle_at <= clock_timestamp()
      ORDER BY settle_at LIMIT $2`,
    [mchid, SETTLE_BATCH],
  );
  let finished = 0;
  for (const row of rows) {
    const result = await finishRefund(pool, dispatcher, { mchid, outRefundNo: row.out_refund_no }, 'SUCCESS', apiV3Key, { onlyIfDue: true });
    if (result.ok) finished++;
  }
  return finished;
}
