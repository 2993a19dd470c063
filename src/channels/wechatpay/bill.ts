/**
 * WeChat Pay's trade bill (API v3 `GET /v3/bill/tradebill?bill_type=ALL`, then the signed download
 * of `download_url`): UTF-8 CSV. First line: the column header (no backticks). Then one line per
 * trade or refund, every field prefixed with a backtick (`` `2026-11-21 10:00:00,`wx…,`… ``). The
 * last two lines: a summary header (`总交易单数,应结订单总金额,…`) and its summary row. Amounts in
 * yuan; 手续费 in yuan with up to 5 decimals (negative on refund lines: the fee given back);
 * 费率 like `0.60%`.
 *
 * Reading streams (constant memory whatever the size). A payment is a line with 交易状态 SUCCESS
 * (amount: 订单金额, or 应结订单金额 when 订单金额 is empty); a refund is a line with 交易状态
 * REFUND, 商户退款单号 = our refund number, amount 退款金额 (only 退款状态 SUCCESS or empty is
 * kept). Other states (REVOKED, …) are not trades of ours and are skipped. The fee is rounded half
 * up to the fen, as the ledger's estimateFee does. Writing is for the sandbox and tests.
 */
import fs from 'node:fs';
import { once } from 'node:events';
import { currencyExponent, formatDecimal, normalizeCurrency, parseDecimal } from '../../domain/money.ts';
import { BillFormatError, MAX_BILL_LINES, type BillLine } from '../../reconciliation/types.ts';

export const WECHATPAY_BILL_COLUMNS = [
  '交易时间', '公众账号ID', '商户号', '特约商户号', '设备号', '微信订单号', '商户订单号', '用户标识', '交易类型', '交易状态', '付款银行',
  '货币种类', '应结订单金额', '代金券金额', '微信退款单号', '商户退款单号', '退款金额', '充值券退款金额', '退款类型', '退款状态', '商品名称',
  '商户数据包', '手续费', '费率', '订单金额', '申请退款金额', '费率备注',
] as const;

export const WECHATPAY_BILL_SUMMARY_COLUMNS = ['总交易单数', '应结订单总金额', '退款总金额', '充值券退款总金额', '手续费总金额', '订单总金额', '申请退款总金额'] as const;

const REQUIRED = ['交易时间', '微信订单号', '商户订单号', '交易状态', '货币种类', '应结订单金额', '商户退款单号', '退款金额', '手续费'] as const;

function gmt8(text: string): Date | undefined {
  const m = /^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})$/.exec(text);
  if (!m) return undefined;
  return new Date(Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]! - 8, +m[5]!, +m[6]!));
}

/**
 * A decimal text rounded half up (away from zero) to `exp` fraction digits, as minor units.
 * "0.00600" at exp 2 → 1n; "-0.00450" → -0n… → 0n; null for anything not a plain decimal.
 */
export function roundDecimal(text: string, exp: number): bigint | null {
  const m = /^(-?)(\d{1,18})(?:\.(\d{0,12}))?$/.exec(text.trim());
  if (!m) return null;
  const [, sign, whole, frac = ''] = m;
  const kept = BigInt(whole! + frac.slice(0, exp).padEnd(exp, '0'));
  const rest = frac.slice(exp);
  const value = rest !== '' && rest[0]! >= '5' ? kept + 1n : kept;
  return sign === '-' && value !== 0n ? -value : value;
}

/** A data line's fields: it starts with a backtick and its fields are joined by ",`" (so a comma inside a value survives). */
function splitBacktickLine(line: string): string[] | null {
  if (!line.startsWith('`')) return null;
  return line.slice(1).split(',`');
}

/** Stream the normalised lines of a WeChat Pay trade bill (bill_type ALL, UTF-8 CSV). */
export async function* readWechatpayBill(path: string): AsyncGenerator<BillLine> {
  const stream = fs.createReadStream(path, { encoding: 'utf8', highWaterMark: 256 * 1024 });
  let col: Record<(typeof REQUIRED)[number] | '订单金额' | '退款状态', number> | null = null;
  let width = 0;
  let state: 'header' | 'data' | 'summary-row' | 'done' = 'header';
  let physical = 0;
  let lineNo = 0;
  let rest = '';
  const handle = (raw: string): BillLine | null => {
    physical++;
    let line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (physical === 1 && line.charCodeAt(0) === 0xfeff) line = line.slice(1);
    if (line.trim() === '') return null;
    if (state === 'header') {
      const names = line.split(',').map((c) => c.trim());
      if (names[0] !== '交易时间') {
        throw new BillFormatError(`the first line is not the WeChat Pay trade bill header (交易时间,公众账号ID,…): not a WeChat Pay trade bill (UTF-8 CSV)`);
      }
      const index = new Map(names.map((c, i) => [c, i]));
      for (const c of REQUIRED) if (!index.has(c)) throw new BillFormatError(`the WeChat Pay bill header lacks the column ${c} (a bill_type=ALL trade bill is needed)`);
      const at = (c: string) => index.get(c) ?? -1;
      col = Object.fromEntries([...REQUIRED, '订单金额', '退款状态'].map((c) => [c, at(c)])) as NonNullable<typeof col>;
      width = names.length;
      state = 'data';
      return null;
    }
    if (state === 'summary-row') {
      if (!line.startsWith('`')) throw new BillFormatError(`line ${physical}: the summary row after 总交易单数,… is missing`);
      state = 'done';
      return null;
    }
    if (state === 'done') throw new BillFormatError(`line ${physical}: content after the summary row`);
    if (line.startsWith('总交易单数')) {
      state = 'summary-row';
      return null;
    }
    const row = splitBacktickLine(line);
    if (!row) throw new BillFormatError(`line ${physical}: a data line must start with a backtick (\`)`);
    if (row.length !== width) throw new BillFormatError(`line ${physical}: ${row.length} fields, the header has ${width}`);
    lineNo++;
    if (lineNo > MAX_BILL_LINES) throw new BillFormatError(`more than ${MAX_BILL_LINES} lines`);
    const c = col!;
    const v = (i: number) => (i >= 0 ? (row[i] ?? '').trim() : '');
    const status = v(c.交易状态);
    if (status !== 'SUCCESS' && status !== 'REFUND') return null;
    const refundStatus = v(c.退款状态);
    if (status === 'REFUND' && refundStatus !== '' && refundStatus !== 'SUCCESS') return null;
    const currency = normalizeCurrency(v(c.货币种类) || 'CNY');
    if (!currency) throw new BillFormatError(`line ${physical}: unknown currency '${v(c.货币种类)}'`);
    const exp = currencyExponent(currency);
    const amountText = status === 'SUCCESS' ? v(c.订单金额) || v(c.应结订单金额) : v(c.退款金额);
    const amount = parseDecimal(amountText, currency);
    const feeText = v(c.手续费) || '0';
    const fee = roundDecimal(feeText, exp);
    if (amount === null || fee === null) throw new BillFormatError(`line ${physical}: unreadable amount '${amountText}' or fee '${feeText}'`);
    const outTradeNo = v(c.商户订单号);
    if (outTradeNo === '') throw new BillFormatError(`line ${physical}: empty 商户订单号`);
    const refundNo = v(c.商户退款单号);
    if (status === 'REFUND' && (refundNo === '' || refundNo === '0')) throw new BillFormatError(`line ${physical}: a REFUND line without 商户退款单号`);
    const transactionId = v(c.微信订单号);
    return {
      lineNo,
      kind: status === 'SUCCESS' ? 'payment' : 'refund',
      channelReference: outTradeNo,
      ...(transactionId ? { channelTransactionId: transactionId } : {}),
      ...(status === 'REFUND' ? { refundReference: refundNo } : {}),
      amount: amount < 0n ? -amount : amount,
      fee: fee < 0n ? -fee : fee,
      currency,
      occurredAt: gmt8(v(c.交易时间)),
    };
  };
  for await (const chunk of stream as AsyncIterable<string>) {
    const parts = (rest + chunk).split('\n');
    rest = parts.pop()!;
    const out: BillLine[] = [];
    for (const part of parts) {
      const l = handle(part);
      if (l) out.push(l);
    }
    yield* out;
  }
  if (rest) { const l = handle(rest); if (l) yield l; }
  if (state === 'header') throw new BillFormatError('empty file: not a WeChat Pay trade bill');
  if (state === 'data') throw new BillFormatError('no summary (总交易单数,…) at the end: the bill is truncated');
  if (state === 'summary-row') throw new BillFormatError('the summary row after 总交易单数,… is missing: the bill is truncated');
}

// ---- Writing (sandbox, tests) ---------------------------------------------------------------------

export interface WechatpayBillRow {
  kind: 'payment' | 'refund';
  /** Payment: when paid; refund: when refunded. */
  time: Date;
  appid: string;
  mchid: string;
  transactionId: string;
  outTradeNo: string;
  openid: string;
  tradeType: string;
  /** Fen: the order's total on a payment line, the refund's amount on a refund line. */
  amount: bigint;
  /** The fee in thousandths of a fen (WeChat Pay bills show 5 decimals of a yuan), positive; written negative on refund lines. */
  feeMilliFen: bigint;
  /** e.g. "0.60%". */
  rate: string;
  description: string;
  attach?: string;
  refundId?: string;
  outRefundNo?: string;
}

/** WeChat Pay's fee of `amountFen` at `bps` basis points, in thousandths of a fen, rounded half up (exact at 60 bps). */
export function wechatpayFeeMilliFen(amountFen: bigint, bps: number): bigint {
  return (amountFen * BigInt(bps) * 2n + 10n) / 20n;
}

const fmtTime = (d: Date) => new Date(d.getTime() + 8 * 3600_000).toISOString().replace('T', ' ').slice(0, 19);
const yuan = (fen: bigint) => formatDecimal(fen, 'CNY');
/** Thousandths of a fen → yuan with 5 decimals. */
const yuan5 = (milliFen: bigint) => {
  const neg = milliFen < 0n;
  const abs = (neg ? -milliFen : milliFen).toString().padStart(6, '0');
  return `${neg ? '-' : ''}${abs.slice(0, -5)}.${abs.slice(-5)}`;
};
/** Free text in a field: no line breaks, no backtick (the field separator is ",`"). */
const text = (s: string) => s.replace(/[\r\n`]/g, ' ');

function dataLine(r: WechatpayBillRow): string {
  const pay = r.kind === 'payment';
  const cells = [
    fmtTime(r.time), r.appid, r.mchid, '0', '', r.transactionId, r.outTradeNo, r.openid, r.tradeType, pay ? 'SUCCESS' : 'REFUND', 'OTHERS', 'CNY',
    pay ? yuan(r.amount) : '0.00', '0.00', pay ? '0' : r.refundId ?? '', pay ? '0' : r.outRefundNo ?? '', pay ? '0.00' : yuan(r.amount), '0.00',
    pay ? '' : 'ORIGINAL', pay ? '' : 'SUCCESS', text(r.description), text(r.attach ?? ''), yuan5(pay ? r.feeMilliFen : -r.feeMilliFen), r.rate,
    pay ? yuan(r.amount) : '0.00', pay ? '0.00' : yuan(r.amount), '',
  ];
  return cells.map((c) => '`' + c).join(',');
}

/**
 * The bill's text in chunks (≤ ~1000 lines each), so a million lines never sit in memory at once:
 * header, lines, summary header, summary row; lines end with \r\n.
 */
export function* wechatpayBillChunks(rows: Iterable<WechatpayBillRow>): Generator<string> {
  yield WECHATPAY_BILL_COLUMNS.join(',') + '\r\n';
  let n = 0n;
  let settled = 0n;
  let refunded = 0n;
  let fees = 0n;
  let batch: string[] = [];
  for (const r of rows) {
    n++;
    if (r.kind === 'payment') { settled += r.amount; fees += r.feeMilliFen; } else { refunded += r.amount; fees -= r.feeMilliFen; }
    batch.push(dataLine(r));
    if (batch.length === 1000) { yield batch.join('\r\n') + '\r\n'; batch = []; }
  }
  if (batch.length) yield batch.join('\r\n') + '\r\n';
  yield WECHATPAY_BILL_SUMMARY_COLUMNS.join(',') + '\r\n';
  yield ['`' + n, '`' + yuan(settled), '`' + yuan(refunded), '`0.00', '`' + yuan5(fees), '`' + yuan(settled), '`' + yuan(refunded)].join(',') + '\r\n';
}

/** Write a bill file (UTF-8) at `path`, streaming. */
export async function writeWechatpayBill(path: string, rows: Iterable<WechatpayBillRow>): Promise<void> {
  const out = fs.createWriteStream(path);
  try {
    for (const chunk of wechatpayBillChunks(rows)) {
      if (!out.write(chunk, 'utf8')) await once(out, 'drain');
    }
  } finally {
    out.end();
    await once(out, 'close');
  }
}
