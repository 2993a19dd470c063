/**
 * The Alipay sandbox's trades in PostgreSQL (table sandbox_alipay_trades, migration 0002).
 * Every change is a compare-and-set on `version`: read, decide, update only if nobody changed the
 * row meanwhile, else read again (bounded). Times come from the database clock.
 */
import { createHash, randomInt } from 'node:crypto';
import type { Queryable } from '../../store/db.ts';
import { alipayDatePrefix } from './transformers.ts';

export type AlipayTradeStatus = 'PRECREATED' | 'WAIT_BUYER_PAY' | 'TRADE_SUCCESS' | 'TRADE_FINISHED' | 'TRADE_CLOSED';
/** How the sandbox processes this trade's refunds: Alipay's synchronous way, or held until simulated. */
export type RefundMode = 'sync' | 'pending';

export interface SandboxTrade {
  appId: string;
  outTradeNo: string;
  tradeNo: string | null;
  method: string;
  productCode: string;
  status: AlipayTradeStatus;
  amountFen: bigint;
  subject: string;
  body: string | null;
  passbackParams: string | null;
  notifyUrl: string | null;
  returnUrl: string | null;
  timeExpire: Date | null;
  qrCode: string | null;
  buyerId: string | null;
  buyerLogonId: string | null;
  gmtCreate: Date | null;
  gmtPayment: Date | null;
  gmtClose: Date | null;
  refundMode: RefundMode;
  version: number;
  /** The database clock when the row was read. */
  readAt: Date;
}

export type NewTrade = Pick<SandboxTrade, 'appId' | 'outTradeNo' | 'method' | 'productCode' | 'status' | 'amountFen' | 'subject' | 'body' | 'passbackParams' | 'notifyUrl' | 'returnUrl' | 'timeExpire' | 'qrCode'>;

export type TradeKey = { appId: string; outTradeNo: string } | { appId: string; tradeNo: string };

export const OPEN_STATUSES: readonly AlipayTradeStatus[] = ['PRECREATED', 'WAIT_BUYER_PAY'];
export const PAID_STATUSES: readonly AlipayTradeStatus[] = ['TRADE_SUCCESS', 'TRADE_FINISHED'];

export function isOpen(t: SandboxTrade): boolean {
  return OPEN_STATUSES.includes(t.status);
}

export function isPaid(t: SandboxTrade): boolean {
  return PAID_STATUSES.includes(t.status);
}

/** An open trade whose time_expire has passed (it can no longer be paid). */
export function isExpired(t: SandboxTrade): boolean {
  return isOpen(t) && t.timeExpire !== null && t.timeExpire.getTime() <= t.readAt.getTime();
}

interface TradeRow {
  app_id: string;
  out_trade_no: string;
  trade_no: string | null;
  method: string;
  product_code: string;
  status: AlipayTradeStatus;
  amount_fen: string;
  subject: string;
  body: string | null;
  passback_params: string | null;
  notify_url: string | null;
  return_url: string | null;
  time_expire: Date | null;
  qr_code: string | null;
  buyer_id: string | null;
  buyer_logon_id: string | null;
  gmt_create: Date | null;
  gmt_payment: Date | null;
  gmt_close: Date | null;
  refund_mode: RefundMode;
  version: number;
  read_at: Date;
}

const COLUMNS = `app_id, out_trade_no, trade_no, method, product_code, status, amount_fen, subject, body, passback_params,
  notify_url, return_url, time_expire, qr_code, buyer_id, buyer_logon_id, gmt_create, gmt_payment, gmt_close, refund_mode,
  version, clock_timestamp() AS read_at`;

function fromRow(r: TradeRow): SandboxTrade {
  return {
    appId: r.app_id,
    outTradeNo: r.out_trade_no,
    tradeNo: r.trade_no,
    method: r.method,
    productCode: r.product_code,
    status: r.status,
    amountFen: BigInt(r.amount_fen),
    subject: r.subject,
    body: r.body,
    passbackParams: r.passback_params,
    notifyUrl: r.notify_url,
    returnUrl: r.return_url,
    timeExpire: r.time_expire,
    qrCode: r.qr_code,
    buyerId: r.buyer_id,
    buyerLogonId: r.buyer_logon_id,
    gmtCreate: r.gmt_create,
    gmtPayment: r.gmt_payment,
    gmtClose: r.gmt_close,
    refundMode: r.refund_mode,
    version: r.version,
    readAt: r.read_at,
  };
}

export async function getTrade(db: Queryable, key: TradeKey): Promise<SandboxTrade | null> {
  const { rows } = 'outTradeNo' in key
    ? await db.query<TradeRow>(`SELECT ${COLUMNS} FROM sandbox_alipay_trades WHERE app_id = $1 AND out_trade_no = $2`, [key.appId, key.outTradeNo])
    : await db.query<TradeRow>(`SELECT ${COLUMNS} FROM sandbox_alipay_trades WHERE app_id = $1 AND trade_no = $2`, [key.appId, key.tradeNo]);
  return rows[0] ? fromRow(rows[0]) : null;
}

export async function getTradeByQrCode(db: Queryable, qrCode: string): Promise<SandboxTrade | null> {
  const { rows } = await db.query<TradeRow>(`SELECT ${COLUMNS} FROM sandbox_alipay_trades WHERE qr_code = $1`, [qrCode]);
  return rows[0] ? fromRow(rows[0]) : null;
}

/** Insert unless the (app_id, out_trade_no) exists; null when it already did. */
export async function insertTrade(db: Queryable, t: NewTrade & { tradeNo?: string | null }): Promise<SandboxTrade | null> {
  const opened = t.status === 'WAIT_BUYER_PAY';
  const { rows } = await db.query<TradeRow>(
    `INSERT INTO sandbox_alipay_trades
       (app_id, out_trade_no, trade_no, method, product_code, status, amount_fen, subject, body, passback_params,
        notify_url, return_url, time_expire, qr_code, gmt_create)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, CASE WHEN $15 THEN clock_timestamp() END)
     ON CONFLICT (app_id, out_trade_no) DO NOTHING
     RETURNING ${COLUMNS}`,
    [
      t.appId, t.outTradeNo, opened ? (t.tradeNo ?? newTradeNo()) : null, t.method, t.productCode, t.status,
      t.amountFen.toString(), t.subject, t.body, t.passbackParams, t.notifyUrl, t.returnUrl, t.timeExpire, t.qrCode, opened,
    ],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

/** What a transition changes. `now` means the database clock (clock_timestamp) at update time. */
export interface TradePatch {
  status?: AlipayTradeStatus;
  tradeNo?: string;
  qrCode?: string;
  buyerId?: string;
  buyerLogonId?: string;
  gmtCreate?: 'now';
  gmtPayment?: 'now';
  gmtClose?: 'now' | 'time_expire';
  refundMode?: RefundMode;
}

/**
 * Compare-and-set: apply `patch` only if the row still has `expected.version` (and, with
 * `requireUnexpired`, its time_expire has not passed). Null when the row moved meanwhile.
 */
export async function updateTrade(db: Queryable, expected: SandboxTrade, patch: TradePatch, opts: { requireUnexpired?: boolean } = {}): Promise<SandboxTrade | null> {
  const { rows } = await db.query<TradeRow>(
    `UPDATE sandbox_alipay_trades SET
        status = COALESCE($4, status),
        trade_no = COALESCE(trade_no, $5),
        qr_code = COALESCE(qr_code, $6),
        buyer_id = COALESCE(buyer_id, $7),
        buyer_logon_id = COALESCE(buyer_logon_id, $8),
        gmt_create = CASE WHEN $9 THEN COALESCE(gmt_create, clock_timestamp()) ELSE gmt_create END,
        gmt_payment = CASE WHEN $10 THEN clock_timestamp() ELSE gmt_payment END,
        gmt_close = CASE $11::text WHEN 'now' THEN clock_timestamp() WHEN 'time_expire' THEN time_expire ELSE gmt_close END,
        refund_mode = COALESCE($13, refund_mode),
        version = version + 1,
        updated_at = clock_timestamp()
      WHERE app_id = $1 AND out_trade_no = $2 AND version = $3
        AND (NOT $12 OR time_expire IS NULL OR time_expire > clock_timestamp())
      RETURNING ${COLUMNS}`,
    [
      expected.appId, expected.outTradeNo, expected.version, patch.status ?? null, patch.tradeNo ?? null, patch.qrCode ?? null,
      patch.buyerId ?? null, patch.buyerLogonId ?? null, patch.gmtCreate === 'now', patch.gmtPayment === 'now',
      patch.gmtClose ?? null, opts.requireUnexpired ?? false, patch.refundMode ?? null,
    ],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

const MAX_CAS_ROUNDS = 5;

/**
 * Read the trade and close it first if its time_expire has passed (Alipay closes unpaid trades at
 * their deadline). Null when there is no such trade.
 */
export async function loadTrade(db: Queryable, key: TradeKey): Promise<SandboxTrade | null> {
  for (let round = 0; round < MAX_CAS_ROUNDS; round++) {
    const trade = await getTrade(db, key);
    if (!trade || !isExpired(trade)) return trade;
    const closed = await updateTrade(db, trade, { status: 'TRADE_CLOSED', gmtClose: 'time_expire' });
    if (closed) return closed;
  }
  throw new Error(`trade ${JSON.stringify(key)} kept changing while being read`);
}

/**
 * Run a read-decide-write cycle until the compare-and-set holds (bounded). `decide` answers
 * either a patch to apply or a final answer without change.
 */
export async function mutateTrade<T>(
  db: Queryable,
  key: TradeKey,
  decide: (trade: SandboxTrade | null) => { patch: TradePatch; requireUnexpired?: boolean; then: (updated: SandboxTrade) => T } | { answer: T },
): Promise<T> {
  for (let round = 0; round < MAX_CAS_ROUNDS; round++) {
    const trade = await loadTrade(db, key);
    const decision = decide(trade);
    if ('answer' in decision) return decision.answer;
    const updated = await updateTrade(db, trade!, decision.patch, { requireUnexpired: decision.requireUnexpired ?? false });
    if (updated) return decision.then(updated);
  }
  throw new Error(`trade ${JSON.stringify(key)} kept changing while being updated`);
}

// ---- Identifiers shaped like Alipay's -------------------------------------------------------------

function digits(n: number): string {
  let out = '';
  for (let i = 0; i < n; i++) out += String(randomInt(10));
  return out;
}

/** 28 digits: GMT+8 date, "22001", 15 random digits (e.g. 2019081522001468450512505578). */
export function newTradeNo(now = new Date()): string {
  return `${alipayDatePrefix(now)}22001${digits(15)}`;
}

/** 34 digits like 2019081500222155624068450559358070; one per notification, stable across retries. */
export function newNotifyId(now = new Date()): string {
  return `${alipayDatePrefix(now)}00222${digits(21)}`;
}

/** Alipay user ids are 16 digits starting 2088. */
export function newBuyerId(): string {
  return `2088${digits(12)}`;
}

export function newBuyerLogonId(): string {
  return `138****${digits(4)}`;
}

/** A stable seller (merchant PID) for an app id. */
export function sellerIdFor(appId: string): string {
  const hex = createHash('sha256').update(appId).digest('hex').slice(0, 12);
  return `2088${(BigInt('0x' + hex) % 10n ** 12n).toString().padStart(12, '0')}`;
}

export function newQrToken(): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  let out = 'bax0';
  for (let i = 0; i < 20; i++) out += alphabet[randomInt(alphabet.length)];
  return out;
}
