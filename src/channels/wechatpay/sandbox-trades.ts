/**
 * The WeChat Pay sandbox's trades in PostgreSQL (table sandbox_wechatpay_trades, migration 0010).
 * Every change is a compare-and-set on `version`: read, decide, update only if nobody changed the
 * row meanwhile, else read again (bounded). Times come from the database clock.
 */
import { randomInt } from 'node:crypto';
import type { Queryable } from '../../store/db.ts';
import { newHex, newNonce } from './sign.ts';
import { gmt8Compact, type TradeState } from './transformers.ts';

export interface SandboxTrade {
  mchid: string;
  outTradeNo: string;
  appid: string;
  /** NATIVE, JSAPI, APP or MWEB. */
  tradeType: string;
  tradeState: TradeState;
  transactionId: string | null;
  prepayId: string;
  codeUrl: string | null;
  description: string;
  attach: string | null;
  notifyUrl: string;
  amountFen: bigint;
  currency: string;
  payerOpenid: string | null;
  payerClientIp: string | null;
  timeExpire: Date | null;
  /** Digest of the order fields WeChat Pay compares when the same out_trade_no is ordered again. */
  requestDigest: string;
  successTime: Date | null;
  closedAt: Date | null;
  createdAt: Date;
  version: number;
  /** The database clock when the row was read. */
  readAt: Date;
}

export type NewTrade = Pick<SandboxTrade, 'mchid' | 'outTradeNo' | 'appid' | 'tradeType' | 'prepayId' | 'codeUrl' | 'description' | 'attach'
  | 'notifyUrl' | 'amountFen' | 'currency' | 'payerOpenid' | 'payerClientIp' | 'timeExpire' | 'requestDigest'>;

export type TradeKey = { mchid: string; outTradeNo: string } | { mchid: string; transactionId: string } | { mchid: string; prepayId: string };

export const OPEN_STATES: readonly TradeState[] = ['NOTPAY', 'USERPAYING'];
export const PAID_STATES: readonly TradeState[] = ['SUCCESS', 'REFUND'];

export const isOpen = (t: SandboxTrade) => OPEN_STATES.includes(t.tradeState);
export const isPaid = (t: SandboxTrade) => PAID_STATES.includes(t.tradeState);

/** An open trade whose time_expire has passed: it can no longer be paid. */
export function isExpired(t: SandboxTrade): boolean {
  return isOpen(t) && t.timeExpire !== null && t.timeExpire.getTime() <= t.readAt.getTime();
}

interface TradeRow {
  mchid: string;
  out_trade_no: string;
  appid: string;
  trade_type: string;
  trade_state: TradeState;
  transaction_id: string | null;
  prepay_id: string;
  code_url: string | null;
  description: string;
  attach: string | null;
  notify_url: string;
  amount_total_fen: string;
  currency: string;
  payer_openid: string | null;
  payer_client_ip: string | null;
  time_expire: Date | null;
  request_digest: string;
  success_time: Date | null;
  closed_at: Date | null;
  created_at: Date;
  version: number;
  read_at: Date;
}

const COLUMNS = `mchid, out_trade_no, appid, trade_type, trade_state, transaction_id, prepay_id, code_url, description, attach,
  notify_url, amount_total_fen, currency, payer_openid, payer_client_ip, time_expire, request_digest, success_time, closed_at,
  created_at, version, clock_timestamp() AS read_at`;

function fromRow(r: TradeRow): SandboxTrade {
  return {
    mchid: r.mchid,
    outTradeNo: r.out_trade_no,
    appid: r.appid,
    tradeType: r.trade_type,
    tradeState: r.trade_state,
    transactionId: r.transaction_id,
    prepayId: r.prepay_id,
    codeUrl: r.code_url,
    description: r.description,
    attach: r.attach,
    notifyUrl: r.notify_url,
    amountFen: BigInt(r.amount_total_fen),
    currency: r.currency,
    payerOpenid: r.payer_openid,
    payerClientIp: r.payer_client_ip,
    timeExpire: r.time_expire,
    requestDigest: r.request_digest,
    successTime: r.success_time,
    closedAt: r.closed_at,
    createdAt: r.created_at,
    version: r.version,
    readAt: r.read_at,
  };
}

export async function getTrade(db: Queryable, key: TradeKey): Promise<SandboxTrade | null> {
  const [column, value] = 'outTradeNo' in key ? ['out_trade_no', key.outTradeNo] : 'transactionId' in key ? ['transaction_id', key.transactionId] : ['prepay_id', key.prepayId];
  const { rows } = await db.query<TradeRow>(`SELECT ${COLUMNS} FROM sandbox_wechatpay_trades WHERE mchid = $1 AND ${column} = $2`, [key.mchid, value]);
  return rows[0] ? fromRow(rows[0]) : null;
}

export async function getTradeByCodeUrl(db: Queryable, codeUrl: string): Promise<SandboxTrade | null> {
  const { rows } = await db.query<TradeRow>(`SELECT ${COLUMNS} FROM sandbox_wechatpay_trades WHERE code_url = $1`, [codeUrl]);
  return rows[0] ? fromRow(rows[0]) : null;
}

/** Insert unless (mchid, out_trade_no) exists; null when it already did. */
export async function insertTrade(db: Queryable, t: NewTrade): Promise<SandboxTrade | null> {
  const { rows } = await db.query<TradeRow>(
    `INSERT INTO sandbox_wechatpay_trades
       (mchid, out_trade_no, appid, trade_type, trade_state, prepay_id, code_url, description, attach, notify_url,
        amount_total_fen, currency, payer_openid, payer_client_ip, time_expire, request_digest)
     VALUES ($1, $2, $3, $4, 'NOTPAY', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
     ON CONFLICT (mchid, out_trade_no) DO NOTHING
     RETURNING ${COLUMNS}`,
    [
      t.mchid, t.outTradeNo, t.appid, t.tradeType, t.prepayId, t.codeUrl, t.description, t.attach, t.notifyUrl,
      t.amountFen.toString(), t.currency, t.payerOpenid, t.payerClientIp, t.timeExpire, t.requestDigest,
    ],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

/** What a transition changes. `now` means the database clock at update time. */
export interface TradePatch {
  tradeState: TradeState;
  transactionId?: string;
  payerOpenid?: string;
  successTime?: 'now';
  closedAt?: 'now';
}

/**
 * Compare-and-set: apply `patch` only if the row still has `expected.version` (and, with
 * `requireUnexpired`, its time_expire has not passed). Null when the row moved meanwhile.
 */
export async function updateTrade(db: Queryable, expected: SandboxTrade, patch: TradePatch, opts: { requireUnexpired?: boolean } = {}): Promise<SandboxTrade | null> {
  const { rows } = await db.query<TradeRow>(
    `UPDATE sandbox_wechatpay_trades SET
        trade_state = $4,
        transaction_id = COALESCE(transaction_id, $5),
        payer_openid = COALESCE(payer_openid, $6),
        success_time = CASE WHEN $7 THEN clock_timestamp() ELSE success_time END,
        closed_at = CASE WHEN $8 THEN clock_timestamp() ELSE closed_at END,
        version = version + 1,
        updated_at = clock_timestamp()
      WHERE mchid = $1 AND out_trade_no = $2 AND version = $3
        AND (NOT $9 OR time_expire IS NULL OR time_expire > clock_timestamp())
      RETURNING ${COLUMNS}`,
    [
      expected.mchid, expected.outTradeNo, expected.version, patch.tradeState, patch.transactionId ?? null, patch.payerOpenid ?? null,
      patch.successTime === 'now', patch.closedAt === 'now', opts.requireUnexpired ?? false,
    ],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

const MAX_CAS_ROUNDS = 5;

export type Decision<T> = { patch: TradePatch; requireUnexpired?: boolean; then: (updated: SandboxTrade) => T } | { answer: T };

/**
 * Read-decide-write until the compare-and-set holds (bounded). `decide` answers a patch to apply
 * or a final answer without change. A trade whose deadline passed while deciding is read again.
 */
export async function mutateTrade<T>(db: Queryable, key: TradeKey, decide: (trade: SandboxTrade | null) => Decision<T>): Promise<T> {
  for (let round = 0; round < MAX_CAS_ROUNDS; round++) {
    const trade = await getTrade(db, key);
    const decision = decide(trade);
    if ('answer' in decision) return decision.answer;
    const updated = await updateTrade(db, trade!, decision.patch, { requireUnexpired: decision.requireUnexpired ?? false });
    if (updated) return decision.then(updated);
  }
  throw new Error(`trade ${JSON.stringify(key)} kept changing while being updated`);
}

// ---- Identifiers shaped like WeChat Pay's --------------------------------------------------------

function digits(n: number): string {
  let out = '';
  for (let i = 0; i < n; i++) out += String(randomInt(10));
  return out;
}

/** `wx` + GMT+8 yyyyMMddHHmmss + 20 hex characters (36), e.g. wx201410272009395522657a690389285100. */
export function newPrepayId(now = new Date()): string {
  return `wx${gmt8Compact(now)}${newHex(10).toLowerCase()}`;
}

/** 28 digits starting 4200 with the GMT+8 date inside, e.g. 4200000985202103031441826014. */
export function newTransactionId(now = new Date()): string {
  return `4200${digits(6)}${gmt8Compact(now).slice(0, 8)}${digits(10)}`;
}

export function newCodeUrl(): string {
  return `weixin://wxpay/bizpayurl?pr=${newNonce(9)}`;
}

/** An openid shaped like WeChat's (28 characters starting with o). */
export function newOpenid(): string {
  return `o${newNonce(27)}`;
}
