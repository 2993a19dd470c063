/**
 * The Alipay sandbox's refunds: `alipay.trade.refund` and `alipay.trade.fastpay.refund.query` as
 * Alipay answers them, with its real sub-codes, and the refunds kept in PostgreSQL
 * (sandbox_alipay_refunds, migration 0020).
 *
 * Alipay refunds synchronously: a refund request either succeeds at once (`fund_change: "Y"`) or
 * is refused. Each out_request_no of a trade is refunded at most once; sending it again answers
 * success with `fund_change: "N"` (a different amount: ACQ.DISCORDANT_REPEAT_REQUEST). The sum
 * of a trade's refunds never exceeds its total: one refund above the total is
 * ACQ.REFUND_AMT_NOT_EQUAL_TOTAL ("退款金额超限"), several that together exceed it are
 * ACQ.REASON_TRADE_REFUND_FEE_ERR ("退款金额无效": 同一笔交易累计请求的退款金额不能大于交易总金额).
 * The trade stays TRADE_SUCCESS after a partial refund and becomes TRADE_CLOSED when fully refunded.
 *
 * A trade can be switched to refund mode 'pending' (POST /sandbox/alipay/refunds/mode): its refunds
 * then answer `fund_change: "N"` and stay REFUND_PROCESSING until POST /sandbox/alipay/refunds/simulate
 * finishes them. The sandbox never finishes them by itself.
 *
 * Concurrency: every change first takes the trade row's compare-and-set (`version`) inside one
 * transaction, so the refunds read before deciding cannot change before the commit.
 */
import type { Client, Pool, Queryable } from '../../store/db.ts';
import { inTransaction } from '../../store/db.ts';
import { formatDecimal, parseDecimal, toJsonAmount } from '../../domain/money.ts';
import { formatAlipayTime } from './transformers.ts';
import { acq, fromError, ok, tradeKeyOf, type AlipayGatewayError, type ApiResponse, type GatewayRequest } from './sandbox-gateway.ts';
import { isOpen, loadTrade, mutateTrade, updateTrade, type RefundMode, type SandboxTrade, type TradeKey, type TradePatch } from './sandbox-trades.ts';

export type AlipayRefundStatus = 'REFUND_PROCESSING' | 'REFUND_SUCCESS' | 'REFUND_FAIL';

export interface SandboxRefund {
  appId: string;
  outTradeNo: string;
  outRequestNo: string;
  tradeNo: string;
  amountFen: bigint;
  reason: string | null;
  status: AlipayRefundStatus;
  gmtRefund: Date | null;
  /** How many times this out_request_no was executed (a failed refund may be sent again). */
  executions: number;
  createdAt: Date;
}

interface RefundRow {
  app_id: string;
  out_trade_no: string;
  out_request_no: string;
  trade_no: string;
  refund_amount_fen: string;
  refund_reason: string | null;
  status: AlipayRefundStatus;
  gmt_refund: Date | null;
  executions: number;
  created_at: Date;
}

const REFUND_COLUMNS = 'app_id, out_trade_no, out_request_no, trade_no, refund_amount_fen, refund_reason, status, gmt_refund, executions, created_at';

function fromRow(r: RefundRow): SandboxRefund {
  return {
    appId: r.app_id,
    outTradeNo: r.out_trade_no,
    outRequestNo: r.out_request_no,
    tradeNo: r.trade_no,
    amountFen: BigInt(r.refund_amount_fen),
    reason: r.refund_reason,
    status: r.status,
    gmtRefund: r.gmt_refund,
    executions: r.executions,
    createdAt: r.created_at,
  };
}

export async function listRefunds(db: Queryable, appId: string, outTradeNo: string): Promise<SandboxRefund[]> {
  const { rows } = await db.query<RefundRow>(
    `SELECT ${REFUND_COLUMNS} FROM sandbox_alipay_refunds WHERE app_id = $1 AND out_trade_no = $2 ORDER BY created_at, out_request_no`,
    [appId, outTradeNo],
  );
  return rows.map(fromRow);
}

/** Refunds with this out_request_no (unique per trade only), at most `limit`. */
async function findRefundsByRequestNo(db: Queryable, appId: string, outRequestNo: string, outTradeNo: string | null, limit: number): Promise<SandboxRefund[]> {
  const { rows } = await db.query<RefundRow>(
    `SELECT ${REFUND_COLUMNS} FROM sandbox_alipay_refunds
      WHERE app_id = $1 AND out_request_no = $2 AND ($3::text IS NULL OR out_trade_no = $3) ORDER BY created_at LIMIT $4`,
    [appId, outRequestNo, outTradeNo, limit],
  );
  return rows.map(fromRow);
}

/** Insert a new refund, or execute a failed one again (same out_request_no). */
async function writeRefund(db: Client, trade: SandboxTrade, outRequestNo: string, amountFen: bigint, reason: string | null, status: AlipayRefundStatus): Promise<SandboxRefund> {
  const { rows } = await db.query<RefundRow>(
    `INSERT INTO sandbox_alipay_refunds (app_id, out_trade_no, out_request_no, trade_no, refund_amount_fen, refund_reason, status, gmt_refund)
     VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $7 = 'REFUND_SUCCESS' THEN clock_timestamp() END)
     ON CONFLICT (app_id, out_trade_no, out_request_no) DO UPDATE
        SET status = EXCLUDED.status, gmt_refund = EXCLUDED.gmt_refund, refund_reason = COALESCE(EXCLUDED.refund_reason, sandbox_alipay_refunds.refund_reason),
            executions = sandbox_alipay_refunds.executions + 1, updated_at = clock_timestamp()
      WHERE sandbox_alipay_refunds.status = 'REFUND_FAIL'
     RETURNING ${REFUND_COLUMNS}`,
    [trade.appId, trade.outTradeNo, outRequestNo, trade.tradeNo, amountFen.toString(), reason, status],
  );
  // The trade's compare-and-set is held: nobody else can have written this refund meanwhile.
  if (!rows[0]) throw new Error(`refund ${outRequestNo} of ${trade.outTradeNo} changed under the trade's lock`);
  return fromRow(rows[0]);
}

/** Finish a REFUND_PROCESSING refund (compare-and-set on its status). */
async function finishRefundRow(db: Client, refund: SandboxRefund, status: 'REFUND_SUCCESS' | 'REFUND_FAIL'): Promise<SandboxRefund | null> {
  const { rows } = await db.query<RefundRow>(
    `UPDATE sandbox_alipay_refunds
        SET status = $4, gmt_refund = CASE WHEN $4 = 'REFUND_SUCCESS' THEN clock_timestamp() ELSE gmt_refund END, updated_at = clock_timestamp()
      WHERE app_id = $1 AND out_trade_no = $2 AND out_request_no = $3 AND status = 'REFUND_PROCESSING'
      RETURNING ${REFUND_COLUMNS}`,
    [refund.appId, refund.outTradeNo, refund.outRequestNo, status],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

/** What Alipay counts: refunded (succeeded) and requested (succeeded or still processing). */
function sums(refunds: readonly SandboxRefund[]): { refundedFen: bigint; requestedFen: bigint } {
  let refundedFen = 0n;
  let requestedFen = 0n;
  for (const r of refunds) {
    if (r.status === 'REFUND_SUCCESS') refundedFen += r.amountFen;
    if (r.status !== 'REFUND_FAIL') requestedFen += r.amountFen;
  }
  return { refundedFen, requestedFen };
}

/** Refunding this much more closes the trade when it brings the refunded sum to the total. */
function closingPatch(trade: SandboxTrade, refundedAfterFen: bigint): TradePatch {
  return refundedAfterFen === trade.amountFen ? { status: 'TRADE_CLOSED', gmtClose: 'now' } : {};
}

// ---- alipay.trade.refund ----------------------------------------------------------------------------

export interface RefundDeps {
  pool: Pool;
  appId: string;
  /** Enqueue the refund's trade_status_sync notification in the caller's transaction; its notify_id, or null when the trade has no notify_url. */
  notifyRefund(db: Client, trade: SandboxTrade, refund: SandboxRefund, refundedFen: bigint): Promise<string | null>;
}

interface RefundOrder {
  key: TradeKey;
  amountFen: bigint;
  /** Absent: Alipay takes the out_trade_no, and only a full refund is allowed. */
  outRequestNo: string | null;
  reason: string | null;
}

const MAX_AMOUNT_FEN = 10_000_000_000n;
/** Compare-and-set rounds before giving up with ACQ.SYSTEM_ERROR (Alipay's "send it again"). */
const MAX_CAS_ROUNDS = 10;

function parseRefundOrder(appId: string, req: GatewayRequest): { ok: true; order: RefundOrder } | { ok: false; error: AlipayGatewayError } {
  const b = req.biz;
  const invalid = (what: string) => ({ ok: false as const, error: acq('ACQ.INVALID_PARAMETER', `参数无效: ${what}`) });
  const key = tradeKeyOf({ appId }, req);
  if (!key) return invalid('out_trade_no 和 trade_no 不能同时为空');
  const rawAmount = typeof b['refund_amount'] === 'number' ? String(b['refund_amount']) : b['refund_amount'];
  const amountFen = typeof rawAmount === 'string' && /^\d+(\.\d{1,2})?$/.test(rawAmount) ? parseDecimal(rawAmount, 'CNY') : null;
  if (amountFen === null || amountFen < 1n || amountFen > MAX_AMOUNT_FEN) return invalid('refund_amount');
  const outRequestNo = b['out_request_no'];
  if (outRequestNo !== undefined && (typeof outRequestNo !== 'string' || outRequestNo === '' || outRequestNo.length > 64)) return invalid('out_request_no');
  const reason = b['refund_reason'];
  if (reason !== undefined && (typeof reason !== 'string' || Array.from(reason).length > 256)) return invalid('refund_reason');
  return { ok: true, order: { key, amountFen, outRequestNo: outRequestNo ?? null, reason: reason ? reason : null } };
}

function refundAnswer(trade: SandboxTrade, fundChange: 'Y' | 'N', refundedFen: bigint, refund: SandboxRefund | null): ApiResponse {
  const fields: Record<string, string | null> = {
    trade_no: trade.tradeNo,
    out_trade_no: trade.outTradeNo,
    buyer_logon_id: trade.buyerLogonId,
    fund_change: fundChange,
    refund_fee: formatDecimal(refundedFen, 'CNY'),
    gmt_refund_pay: refund?.status === 'REFUND_SUCCESS' && refund.gmtRefund ? formatAlipayTime(refund.gmtRefund) : null,
    buyer_user_id: trade.buyerId,
  };
  return ok(Object.fromEntries(Object.entries(fields).filter((e): e is [string, string] => e[1] !== null)));
}

type Decision =
  | { answer: ApiResponse }
  | { execute: { outRequestNo: string; status: AlipayRefundStatus; patch: TradePatch; refundedAfterFen: bigint } };

/** Alipay's checks, in its order: a known out_request_no first (idempotency), then the trade, then amounts. */
function decideRefund(trade: SandboxTrade, refunds: readonly SandboxRefund[], order: RefundOrder): Decision {
  const outRequestNo = order.outRequestNo ?? trade.outTradeNo;
  const { refundedFen, requestedFen } = sums(refunds);
  const existing = refunds.find((r) => r.outRequestNo === outRequestNo);
  if (existing && existing.amountFen !== order.amountFen) {
    return { answer: fromError(acq('ACQ.DISCORDANT_REPEAT_REQUEST', '请求信息不一致: 退款请求号对应的退款金额与本次请求不一致')) };
  }
  if (existing && existing.status !== 'REFUND_FAIL') return { answer: refundAnswer(trade, 'N', refundedFen, existing) };
  if (trade.status === 'TRADE_FINISHED') return { answer: fromError(acq('ACQ.TRADE_HAS_FINISHED', '交易已完结')) };
  if (trade.status === 'TRADE_CLOSED') return { answer: fromError(acq('ACQ.TRADE_HAS_CLOSE', '交易已关闭')) };
  if (isOpen(trade)) return { answer: fromError(acq('ACQ.TRADE_STATUS_ERROR', '交易状态非法')) };
  if (order.amountFen > trade.amountFen || (order.outRequestNo === null && order.amountFen !== trade.amountFen)) {
    return { answer: fromError(acq('ACQ.REFUND_AMT_NOT_EQUAL_TOTAL', '退款金额超限')) };
  }
  if (requestedFen + order.amountFen > trade.amountFen) {
    return { answer: fromError(acq('ACQ.REASON_TRADE_REFUND_FEE_ERR', '退款金额无效: 同一笔交易累计请求的退款金额不能大于交易总金额')) };
  }
  if (trade.refundMode === 'pending') return { execute: { outRequestNo, status: 'REFUND_PROCESSING', patch: {}, refundedAfterFen: refundedFen } };
  const refundedAfterFen = refundedFen + order.amountFen;
  return { execute: { outRequestNo, status: 'REFUND_SUCCESS', patch: closingPatch(trade, refundedAfterFen), refundedAfterFen } };
}

/** alipay.trade.refund. Answers the signed response's content; a refund that succeeded enqueued its notification. */
export async function refundTrade(deps: RefundDeps, req: GatewayRequest): Promise<{ response: ApiResponse; notifyId: string | null }> {
  const parsed = parseRefundOrder(deps.appId, req);
  if (!parsed.ok) return { response: fromError(parsed.error), notifyId: null };
  const { order } = parsed;
  return inTransaction(deps.pool, async (db) => {
    for (let round = 0; round < MAX_CAS_ROUNDS; round++) {
      const trade = await loadTrade(db, order.key);
      if (!trade || trade.tradeNo === null) return { response: fromError(acq('ACQ.TRADE_NOT_EXIST', '交易不存在')), notifyId: null };
      const decision = decideRefund(trade, await listRefunds(db, trade.appId, trade.outTradeNo), order);
      if ('answer' in decision) return { response: decision.answer, notifyId: null };
      const { outRequestNo, status, patch, refundedAfterFen } = decision.execute;
      const updated = await updateTrade(db, trade, patch);
      if (!updated) continue; // the trade moved meanwhile: read it and its refunds again
      const refund = await writeRefund(db, updated, outRequestNo, order.amountFen, order.reason, status);
      const notifyId = status === 'REFUND_SUCCESS' ? await deps.notifyRefund(db, updated, refund, refundedAfterFen) : null;
      return { response: refundAnswer(updated, status === 'REFUND_SUCCESS' ? 'Y' : 'N', refundedAfterFen, refund), notifyId };
    }
    return { response: fromError(acq('ACQ.SYSTEM_ERROR', '系统错误: 交易正在被并发修改，请使用相同的参数再次调用')), notifyId: null };
  });
}

// ---- alipay.trade.fastpay.refund.query --------------------------------------------------------------

/**
 * alipay.trade.fastpay.refund.query: `refund_status: "REFUND_SUCCESS"` for a refunded request;
 * a processing one has its amount but no status; an unknown or failed one only echoes the numbers.
 */
export async function queryRefund(db: Queryable, appId: string, req: GatewayRequest): Promise<ApiResponse> {
  const key = tradeKeyOf({ appId }, req);
  if (!key) return fromError(acq('ACQ.INVALID_PARAMETER', '参数无效: out_trade_no 和 trade_no 不能同时为空'));
  const outRequestNo = req.biz['out_request_no'];
  if (typeof outRequestNo !== 'string' || outRequestNo === '') return fromError(acq('ACQ.INVALID_PARAMETER', '参数无效: out_request_no'));
  const trade = await loadTrade(db, key);
  if (!trade || trade.tradeNo === null) return fromError(acq('ACQ.TRADE_NOT_EXIST', '交易不存在'));
  const refund = (await listRefunds(db, trade.appId, trade.outTradeNo)).find((r) => r.outRequestNo === outRequestNo);
  const options = Array.isArray(req.biz['query_options']) ? (req.biz['query_options'] as unknown[]) : [];
  const known = refund && refund.status !== 'REFUND_FAIL' ? refund : null;
  const fields: Record<string, string | null> = {
    trade_no: trade.tradeNo,
    out_trade_no: trade.outTradeNo,
    out_request_no: outRequestNo,
    total_amount: known ? formatDecimal(trade.amountFen, 'CNY') : null,
    refund_amount: known ? formatDecimal(known.amountFen, 'CNY') : null,
    refund_reason: known?.reason ?? null,
    refund_status: known?.status === 'REFUND_SUCCESS' ? 'REFUND_SUCCESS' : null,
    gmt_refund_pay: known?.gmtRefund && options.includes('gmt_refund_pay') ? formatAlipayTime(known.gmtRefund) : null,
  };
  return ok(Object.fromEntries(Object.entries(fields).filter((e): e is [string, string] => e[1] !== null)));
}

// ---- The sandbox's own controls ---------------------------------------------------------------------

export type RefundOutcome = 'succeeded' | 'failed';
export const REFUND_OUTCOMES: readonly RefundOutcome[] = ['succeeded', 'failed'];

export type ControlResult<T> = { ok: true; value: T } | { ok: false; status: 404 | 409; code: string; message: string };

/**
 * Finish a refund left REFUND_PROCESSING: succeeded refunds it (closing the trade when it is now
 * fully refunded) and sends the notification; failed releases its amount, and the same
 * out_request_no may then be sent again. Found by out_request_no, and out_trade_no when several
 * trades use the same number.
 */
export async function finishRefund(
  deps: RefundDeps,
  target: { outRequestNo: string; outTradeNo: string | null },
  outcome: RefundOutcome,
): Promise<ControlResult<{ trade: SandboxTrade; refund: SandboxRefund; notifyId: string | null }>> {
  return inTransaction(deps.pool, async (db) => {
    const found = await findRefundsByRequestNo(db, deps.appId, target.outRequestNo, target.outTradeNo, 2);
    if (found.length === 0) return { ok: false, status: 404, code: 'refund_not_found', message: `no Alipay sandbox refund with out_request_no ${target.outRequestNo}` };
    if (found.length > 1) {
      return { ok: false, status: 409, code: 'refund_ambiguous', message: `several trades have a refund ${target.outRequestNo}: give channel_reference (out_trade_no) too` };
    }
    const outTradeNo = found[0]!.outTradeNo;
    for (let round = 0; round < MAX_CAS_ROUNDS; round++) {
      const trade = await loadTrade(db, { appId: deps.appId, outTradeNo });
      const refunds = await listRefunds(db, deps.appId, outTradeNo);
      const refund = refunds.find((r) => r.outRequestNo === target.outRequestNo);
      if (!trade || !refund) return { ok: false, status: 404, code: 'refund_not_found', message: `no Alipay sandbox refund with out_request_no ${target.outRequestNo}` };
      if (refund.status !== 'REFUND_PROCESSING') {
        return { ok: false, status: 409, code: 'refund_already_final', message: `refund ${refund.outRequestNo} of ${outTradeNo} is already ${refund.status}` };
      }
      const refundedAfterFen = sums(refunds).refundedFen + (outcome === 'succeeded' ? refund.amountFen : 0n);
      const updated = await updateTrade(db, trade, outcome === 'succeeded' ? closingPatch(trade, refundedAfterFen) : {});
      if (!updated) continue;
      const finished = await finishRefundRow(db, refund, outcome === 'succeeded' ? 'REFUND_SUCCESS' : 'REFUND_FAIL');
      if (!finished) throw new Error(`refund ${refund.outRequestNo} changed under the trade's lock`);
      const notifyId = outcome === 'succeeded' ? await deps.notifyRefund(db, updated, finished, refundedAfterFen) : null;
      return { ok: true, value: { trade: updated, refund: finished, notifyId } };
    }
    throw new Error(`trade ${outTradeNo} kept changing while its refund was finished`);
  });
}

/** Switch how the sandbox processes this trade's refunds from now on. */
export async function setRefundMode(pool: Pool, key: TradeKey, mode: RefundMode): Promise<ControlResult<SandboxTrade>> {
  return mutateTrade<ControlResult<SandboxTrade>>(pool, key, (trade) => {
    if (!trade) return { answer: { ok: false, status: 404, code: 'trade_not_found', message: 'no such Alipay sandbox trade' } };
    if (trade.refundMode === mode) return { answer: { ok: true, value: trade } };
    return { patch: { refundMode: mode }, then: (t) => ({ ok: true, value: t }) };
  });
}

export function refundJson(r: SandboxRefund) {
  return {
    object: 'sandbox_refund',
    channel: 'alipay',
    channel_reference: r.outTradeNo,
    out_trade_no: r.outTradeNo,
    trade_no: r.tradeNo,
    refund_reference: r.outRequestNo,
    out_request_no: r.outRequestNo,
    status: r.status,
    amount: toJsonAmount(r.amountFen),
    currency: 'CNY',
    refund_amount: formatDecimal(r.amountFen, 'CNY'),
    refund_reason: r.reason,
    gmt_refund: r.gmtRefund ? r.gmtRefund.toISOString() : null,
    executions: r.executions,
    created_at: r.createdAt.toISOString(),
  };
}
