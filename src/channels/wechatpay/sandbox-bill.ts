/**
 * The WeChat Pay sandbox's trade bill, built from its own trades and refunds of the day (Beijing
 * time), with WeChat Pay's 0.6% fee (DEFAULT_FEES.wechatpay, so a sandbox bill reconciles):
 * - `GET /v3/bill/tradebill?bill_date=YYYY-MM-DD&bill_type=ALL` (signed request, signed answer) →
 *   `{hash_type:"SHA1", hash_value, download_url}`; 400 NO_STATEMENT_EXIST for a day without
 *   trades or refunds, 400 INVALID_REQUEST for a day in the future. Today's bill is served too (the
 *   day so far; WeChat Pay only serves past days, from about 10:00 the next day).
 * - `GET /v3/billdownload/file?token=…` (signed request; the answer is NOT signed) → the CSV.
 * The token carries the moment of the tradebill call: the download rebuilds the bill as of that
 * moment, so its bytes (and SHA1) are the ones announced even while trades go on. Links live 10 min.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { Queryable } from '../../store/db.ts';
import { DEFAULT_FEES } from '../../domain/ledger-rules.ts';
import { apiError, type ApiAnswer } from './sandbox-api.ts';
import { wechatpayBillChunks, wechatpayFeeMilliFen, type WechatpayBillRow } from './bill.ts';

export interface BillDeps {
  db: Queryable;
  mchid: string;
  /** HMAC key for download tokens. */
  secret: Buffer;
  /** Absolute URL of the sandbox's /v3/billdownload/file. */
  downloadUrl: string;
  now: () => Date;
}

const DAY = /^\d{4}-\d{2}-\d{2}$/;
const LINK_TTL_MS = 10 * 60_000;

const beijingDay = (d: Date) => new Date(d.getTime() + 8 * 3600_000).toISOString().slice(0, 10);

function tokenMac(deps: BillDeps, date: string, asOf: number): string {
  return createHmac('sha256', deps.secret).update(`bill|${deps.mchid}|${date}|${asOf}`).digest('base64url').slice(0, 32);
}

function queryError(field: string, message: string): ApiAnswer {
  return apiError(400, 'PARAM_ERROR', message, { location: 'query_string', field });
}

/** The day's rows as of `asOf` (payments by success_time, successful refunds by success_time). */
export async function billRows(deps: BillDeps, date: string, asOf: Date): Promise<WechatpayBillRow[]> {
  const start = new Date(`${date}T00:00:00+08:00`);
  const end = new Date(Math.min(start.getTime() + 86_400_000, asOf.getTime() + 1));
  const bps = DEFAULT_FEES.wechatpay!.bps;
  const rate = `${(bps / 100).toFixed(2)}%`;
  const trades = await deps.db.query<{ out_trade_no: string; appid: string; transaction_id: string; payer_openid: string | null; trade_type: string;
    amount_total_fen: string; description: string; attach: string | null; success_time: Date }>(
    `SELECT out_trade_no, appid, transaction_id, payer_openid, trade_type, amount_total_fen, description, attach, success_time
       FROM sandbox_wechatpay_trades
      WHERE mchid = $1 AND trade_state IN ('SUCCESS', 'REFUND') AND success_time >= $2 AND success_time < $3
      ORDER BY success_time, out_trade_no`, [deps.mchid, start, end]);
  const refunds = await deps.db.query<{ out_refund_no: string; refund_id: string; out_trade_no: string; transaction_id: string; amount_refund_fen: string;
    success_time: Date; appid: string; payer_openid: string | null; trade_type: string; description: string; attach: string | null }>(
    `SELECT r.out_refund_no, r.refund_id, r.out_trade_no, r.transaction_id, r.amount_refund_fen, r.success_time,
            t.appid, t.payer_openid, t.trade_type, t.description, t.attach
       FROM sandbox_wechatpay_refunds r JOIN sandbox_wechatpay_trades t ON t.mchid = r.mchid AND t.out_trade_no = r.out_trade_no
      WHERE r.mchid = $1 AND r.status = 'SUCCESS' AND r.success_time >= $2 AND r.success_time < $3
      ORDER BY r.success_time, r.out_refund_no`, [deps.mchid, start, end]);
  const rows: WechatpayBillRow[] = [
    ...trades.rows.map((t) => ({
      kind: 'payment' as const, time: t.success_time, appid: t.appid, mchid: deps.mchid, transactionId: t.transaction_id, outTradeNo: t.out_trade_no,
      openid: t.payer_openid ?? '', tradeType: t.trade_type, amount: BigInt(t.amount_total_fen), feeMilliFen: wechatpayFeeMilliFen(BigInt(t.amount_total_fen), bps),
      rate, description: t.description, attach: t.attach ?? '',
    })),
    // The fee given back on a refund: the refunded part's share (pro rata), as WeChat Pay does.
    ...refunds.rows.map((r) => ({
      kind: 'refund' as const, time: r.success_time, appid: r.appid, mchid: deps.mchid, transactionId: r.transaction_id, outTradeNo: r.out_trade_no,
      openid: r.payer_openid ?? '', tradeType: r.trade_type, amount: BigInt(r.amount_refund_fen), feeMilliFen: wechatpayFeeMilliFen(BigInt(r.amount_refund_fen), bps),
      rate, description: r.description, attach: r.attach ?? '', refundId: r.refund_id, outRefundNo: r.out_refund_no,
    })),
  ];
  return rows.sort((a, b) => a.time.getTime() - b.time.getTime());
}

/** GET /v3/bill/tradebill */
export async function tradeBill(deps: BillDeps, query: Record<string, string | undefined>): Promise<ApiAnswer> {
  const date = query['bill_date'];
  if (!date) return queryError('bill_date', '输入源“/query_string/bill_date”映射到字段“账单日期”必填性规则校验失败，此字段为必填项');
  if (!DAY.test(date) || Number.isNaN(Date.parse(date))) return queryError('bill_date', '账单日期格式不正确，应为YYYY-MM-DD');
  const type = query['bill_type'] ?? 'ALL';
  if (type !== 'ALL') return queryError('bill_type', '沙箱仅支持账单类型ALL');
  if (query['tar_type'] !== undefined) return queryError('tar_type', '沙箱不支持压缩账单（tar_type）');
  const now = deps.now();
  if (date > beijingDay(now)) return apiError(400, 'INVALID_REQUEST', '账单日期不能晚于今天');
  const asOf = now.getTime();
  const rows = await billRows(deps, date, now);
  if (rows.length === 0) return apiError(400, 'NO_STATEMENT_EXIST', '账单文件不存在，请检查当前商户号是否在指定日期内有交易');
  const hash = createHash('sha1');
  for (const chunk of wechatpayBillChunks(rows)) hash.update(chunk, 'utf8');
  const token = `${date.replaceAll('-', '')}${asOf}.${tokenMac(deps, date, asOf)}`;
  return { status: 200, body: { hash_type: 'SHA1', hash_value: hash.digest('hex'), download_url: `${deps.downloadUrl}?token=${token}` } };
}

/** GET /v3/billdownload/file?token=: the bill's chunks, or an error answer. */
export async function billDownload(deps: BillDeps, token: string | undefined): Promise<{ ok: true; chunks: Iterable<string> } | { ok: false; answer: ApiAnswer }> {
  const denied = { ok: false as const, answer: apiError(400, 'INVALID_REQUEST', '下载链接无效或已过期') };
  const m = /^(\d{4})(\d{2})(\d{2})(\d{1,15})\.([A-Za-z0-9_-]{32})$/.exec(token ?? '');
  if (!m) return denied;
  const date = `${m[1]}-${m[2]}-${m[3]}`;
  const asOf = Number(m[4]);
  const expected = Buffer.from(tokenMac(deps, date, asOf));
  if (!timingSafeEqual(expected, Buffer.from(m[5]!))) return denied;
  if (deps.now().getTime() - asOf > LINK_TTL_MS) return denied;
  const rows = await billRows(deps, date, new Date(asOf));
  return { ok: true, chunks: wechatpayBillChunks(rows) };
}
