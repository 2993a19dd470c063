/**
 * The Alipay sandbox's trade bill: `alipay.data.dataservice.bill.downloadurl.query` answers a
 * download URL; the URL serves the day's bill zip (GBK CSVs, Alipay's columns) built from the
 * sandbox's own trades and refunds, with Alipay's 0.6% fee.
 */
import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Queryable } from '../../store/db.ts';
import { estimateFee, DEFAULT_FEES } from '../../domain/ledger-rules.ts';
import { acq, gatewayError, fromError, ok, type ApiResponse, type GatewayRequest } from './sandbox-gateway.ts';
import { writeAlipayBillZip, type AlipayBillRow } from './bill.ts';

export interface BillDeps { db: Queryable; appId: string; billBaseUrl: string; secret: string }

const DAY = /^\d{4}-\d{2}-\d{2}$/;

export function billToken(secret: string, appId: string, date: string): string {
  return createHmac('sha256', secret).update(`${appId}|${date}`).digest('hex').slice(0, 32);
}

function bizOf(req: GatewayRequest): Record<string, unknown> | null {
  try { return JSON.parse(req.params['biz_content'] ?? '') as Record<string, unknown>; } catch { return null; }
}

export async function billDownloadUrl(deps: BillDeps, req: GatewayRequest): Promise<ApiResponse> {
  const biz = bizOf(req);
  if (!biz) return fromError(gatewayError('40002', 'isv.invalid-parameter', 'biz_content 不是有效的 JSON'));
  if (biz['bill_type'] !== 'trade') return fromError(acq('isv.invalid-bill-type', '账单类型不正确'));
  const date = String(biz['bill_date'] ?? '');
  if (!DAY.test(date) || Number.isNaN(Date.parse(date))) return fromError(gatewayError('40002', 'isv.invalid-bill-date', '账单日期格式不正确'));
  const today = new Date(Date.now() + 8 * 3600_000).toISOString().slice(0, 10);
  if (date > today) return fromError(acq('isp.bill_not_exist', '账单不存在'));
  return ok({ bill_download_url: `${deps.billBaseUrl}/${encodeURIComponent(deps.appId)}/${date}?token=${billToken(deps.secret, deps.appId, date)}` });
}

/** Build the day's bill (Beijing time) into a temporary file; the caller streams and deletes it. */
export async function buildBill(deps: BillDeps, date: string): Promise<string> {
  const start = new Date(`${date}T00:00:00+08:00`);
  const end = new Date(start.getTime() + 86_400_000);
  const trades = await deps.db.query<{ trade_no: string; out_trade_no: string; subject: string; gmt_create: Date; gmt_payment: Date; amount_fen: string }>(
    `SELECT trade_no, out_trade_no, subject, gmt_create, gmt_payment, amount_fen FROM sandbox_alipay_trades
      WHERE app_id = $1 AND gmt_payment >= $2 AND gmt_payment < $3 AND trade_no IS NOT NULL ORDER BY gmt_payment, out_trade_no`,
    [deps.appId, start, end]);
  const refunds = await deps.db.query<{ trade_no: string; out_trade_no: string; out_request_no: string; refund_amount_fen: string; gmt_refund: Date; subject: string; gmt_create: Date; amount_fen: string }>(
    `SELECT r.trade_no, r.out_trade_no, r.out_request_no, r.refund_amount_fen, r.gmt_refund, t.subject, t.gmt_create, t.amount_fen
       FROM sandbox_alipay_refunds r JOIN sandbox_alipay_trades t ON t.app_id = r.app_id AND t.out_trade_no = r.out_trade_no
      WHERE r.app_id = $1 AND r.status = 'REFUND_SUCCESS' AND r.gmt_refund >= $2 AND r.gmt_refund < $3 ORDER BY r.gmt_refund, r.out_request_no`,
    [deps.appId, start, end]);
  const fee = (fen: bigint) => estimateFee(fen, DEFAULT_FEES.alipay!);
  const rows: AlipayBillRow[] = [
    ...trades.rows.map((t) => ({ tradeNo: t.trade_no, outTradeNo: t.out_trade_no, kind: 'payment' as const, subject: t.subject,
      createdAt: t.gmt_create, finishedAt: t.gmt_payment, amount: BigInt(t.amount_fen), fee: fee(BigInt(t.amount_fen)) })),
    ...refunds.rows.map((r) => {
      // The fee returned on a partial refund: the trade's fee pro rata, as Alipay does.
      const total = BigInt(r.amount_fen);
      const amount = BigInt(r.refund_amount_fen);
      return { tradeNo: r.trade_no, outTradeNo: r.out_trade_no, kind: 'refund' as const, subject: r.subject, createdAt: r.gmt_create,
        finishedAt: r.gmt_refund, amount, fee: (fee(total) * amount) / total, refundReference: r.out_request_no };
    }),
  ];
  const file = path.join(os.tmpdir(), `alipay-sandbox-bill-${deps.appId}-${date}-${process.pid}-${Date.now()}.zip`);
  await writeAlipayBillZip(file, deps.appId, date, rows);
  return file;
}

export async function serveBill(deps: BillDeps, appId: string, date: string, token: string): Promise<{ status: number; file?: string; message?: string }> {
  if (appId !== deps.appId || !DAY.test(date) || token !== billToken(deps.secret, appId, date)) return { status: 403, message: 'invalid or expired bill link' };
  const file = await buildBill(deps, date);
  return { status: 200, file };
}

export function removeLater(file: string): void {
  setTimeout(() => fs.rm(file, { force: true }, () => {}), 60_000).unref();
}
