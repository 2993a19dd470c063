/**
 * PayPal's bill: the day's Transaction Search (`GET /v1/reporting/transactions`) saved as JSON
 * Lines, one `transaction_details` item per line (`{"transaction_info":{…}}`). A line may also be
 * a whole search answer (`{"transaction_details":[…], …}`), whose items are read in order.
 *
 * Normalised (ledger.md's one line shape):
 * - `T00xx` payments received (positive amount) with status `S` → payment lines; the trade number
 *   is `custom_field`, else `invoice_id` (the connector sends our reference as both).
 * - `T1107` refunds with status `S` → refund lines; `invoice_id` is our refund reference (the
 *   connector sends it), `custom_field` our trade number; the amount is made positive.
 * - fee = |fee_amount| (0 when absent); transaction_id → channelTransactionId (the capture or
 *   refund id); transaction_initiation_date → occurredAt.
 * - Everything else (pending/denied/reversed, reversals T1106, holds, transfers, payments we sent,
 *   payments that carry no reference of ours) is not a trade of ours: skipped.
 * Reading streams with a bounded line length, so memory stays constant whatever the size.
 */
import { readJsonLines, writeJsonLines } from '../../reconciliation/json-lines.ts';
import { formatDecimal, normalizeCurrency, parseDecimal } from '../../domain/money.ts';
import { BillFormatError, MAX_BILL_LINES, type BillLine } from '../../reconciliation/types.ts';

/** A longer line is no Transaction Search item (they are a few hundred bytes, a few KiB with fields=all). */
export const MAX_PAYPAL_BILL_LINE_BYTES = 1024 * 1024;

const PAYMENT_CODE = /^T00\d\d$/;
export const PAYPAL_REFUND_CODE = 'T1107';

export interface PayPalMoneyJson { currency_code: string; value: string }

/** The `transaction_info` fields this module reads or writes (PayPal sends many more). */
export interface PayPalTransactionInfo {
  transaction_id: string;
  transaction_event_code: string;
  transaction_initiation_date?: string;
  transaction_updated_date?: string;
  transaction_amount: PayPalMoneyJson;
  fee_amount?: PayPalMoneyJson;
  transaction_status?: string;
  invoice_id?: string;
  custom_field?: string;
  paypal_reference_id?: string;
  paypal_reference_id_type?: string;
  [key: string]: unknown;
}

export interface PayPalTransactionDetail { transaction_info: PayPalTransactionInfo; [key: string]: unknown }

/** PayPal's date-time in reports: `2024-01-05T10:00:00+0000`. */
export function paypalReportTime(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, '+0000');
}

/** RFC 3339 or PayPal's `+0000` form; undefined when unreadable. */
export function parsePayPalTime(text: unknown): Date | undefined {
  if (typeof text !== 'string') return undefined;
  const m = /^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(\.\d{1,9})?(?:([Zz])|([+-])(\d{2}):?(\d{2}))$/.exec(text);
  if (!m) return undefined;
  const frac = m[3] ? m[3].slice(0, 4).padEnd(4, '0') : '.000';
  const zone = m[4] ? 'Z' : `${m[5]}${m[6]}:${m[7]}`;
  const ms = Date.parse(`${m[1]}T${m[2]}${frac}${zone}`);
  return Number.isNaN(ms) ? undefined : new Date(ms);
}

// ---- Reading -----------------------------------------------------------------------------------------

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (v: unknown): string | undefined => (typeof v === 'string' && v.trim() !== '' ? v.trim() : undefined);

function money(v: unknown, what: string, where: string): { minor: bigint; currency: string } {
  if (!isObject(v)) throw new BillFormatError(`${where}: ${what} is not {currency_code, value}`);
  const code = typeof v['currency_code'] === 'string' ? v['currency_code'] : '';
  const currency = normalizeCurrency(code);
  if (!currency) throw new BillFormatError(`${where}: unknown currency ${JSON.stringify(code).slice(0, 20)} in ${what}`);
  const minor = typeof v['value'] === 'string' ? parseDecimal(v['value'], currency) : null;
  if (minor === null) throw new BillFormatError(`${where}: unreadable ${what} value ${JSON.stringify(v['value'])?.slice(0, 40)}`);
  return { minor, currency };
}

/** One item → a line, or null when it is not a trade of ours. Throws BillFormatError when it is no item at all. */
function normalise(item: unknown, lineNo: number, where: string): BillLine | null {
  const info = isObject(item) ? item['transaction_info'] : undefined;
  if (!isObject(info)) throw new BillFormatError(`${where}: no transaction_info object: not a PayPal Transaction Search item`);
  const id = str(info['transaction_id']);
  const code = str(info['transaction_event_code']);
  if (!id || !code || !/^T\d{4}$/.test(code)) {
    throw new BillFormatError(`${where}: transaction_info lacks transaction_id or a Tnnnn transaction_event_code: not a PayPal Transaction Search item`);
  }
  const isPayment = PAYMENT_CODE.test(code);
  const isRefund = code === PAYPAL_REFUND_CODE;
  if ((!isPayment && !isRefund) || info['transaction_status'] !== 'S') return null;
  const amount = money(info['transaction_amount'], 'transaction_amount', where);
  if (isPayment && amount.minor <= 0n) return null; // money we sent, not a payment received
  let fee = 0n;
  if (info['fee_amount'] !== undefined && info['fee_amount'] !== null) {
    const f = money(info['fee_amount'], 'fee_amount', where);
    if (f.currency !== amount.currency) throw new BillFormatError(`${where}: fee in ${f.currency}, amount in ${amount.currency}`);
    fee = f.minor < 0n ? -f.minor : f.minor;
  }
  const custom = str(info['custom_field']);
  const invoice = str(info['invoice_id']);
  const occurredAt = parsePayPalTime(info['transaction_initiation_date']);
  const common = { lineNo, channelTransactionId: id, amount: amount.minor < 0n ? -amount.minor : amount.minor, fee, currency: amount.currency, ...(occurredAt ? { occurredAt } : {}) };
  if (isPayment) {
    const reference = custom ?? invoice;
    return reference ? { ...common, kind: 'payment', channelReference: reference } : null;
  }
  return { ...common, kind: 'refund', channelReference: custom ?? '', ...(invoice ? { refundReference: invoice } : {}) };
}

/** Stream the normalised lines of a PayPal bill (JSON Lines of Transaction Search items). */
export async function* readPaypalBill(path: string): AsyncGenerator<BillLine> {
  let items = 0;
  for await (const { lineNo, value } of readJsonLines(path, { maxLineChars: MAX_PAYPAL_BILL_LINE_BYTES, what: 'not a PayPal Transaction Search report (JSON Lines)' })) {
    const list = isObject(value) && Array.isArray(value['transaction_details']) ? value['transaction_details'] : [value];
    for (const item of list) {
      items++;
      if (items > MAX_BILL_LINES) throw new BillFormatError(`more than ${MAX_BILL_LINES} transactions`);
      const l = normalise(item, items, `line ${lineNo}`);
      if (l) yield l;
    }
  }
}

// ---- Writing (the sandbox, tests) ----------------------------------------------------------------------

export interface PayPalBillRow {
  transactionId: string;
  /** T0006 capture, T1107 refund, T1106 reversal, … */
  eventCode: string;
  /** S, P, V, D. */
  status: string;
  /** Signed, as PayPal reports it: refunds negative. */
  amountMinor: bigint;
  /** Signed: PayPal's fee on a payment is negative. */
  feeMinor?: bigint;
  currency: string;
  invoiceId?: string | null;
  customField?: string | null;
  initiatedAt: Date;
  updatedAt?: Date;
  /** The related transaction (a refund's capture). */
  referenceId?: string | null;
}

/** A `transaction_details` item as the Transaction Search answers it (transaction_info only). */
export function paypalTransactionDetail(r: PayPalBillRow): PayPalTransactionDetail {
  const m = (minor: bigint): PayPalMoneyJson => ({ currency_code: r.currency, value: formatDecimal(minor, r.currency) });
  const info: PayPalTransactionInfo = {
    ...(r.referenceId ? { paypal_reference_id: r.referenceId, paypal_reference_id_type: 'TXN' } : {}),
    transaction_id: r.transactionId,
    transaction_event_code: r.eventCode,
    transaction_initiation_date: paypalReportTime(r.initiatedAt),
    transaction_updated_date: paypalReportTime(r.updatedAt ?? r.initiatedAt),
    transaction_amount: m(r.amountMinor),
    ...(r.feeMinor !== undefined ? { fee_amount: m(r.feeMinor) } : {}),
    transaction_status: r.status,
    ...(r.invoiceId ? { invoice_id: r.invoiceId } : {}),
    ...(r.customField ? { custom_field: r.customField } : {}),
    protection_eligibility: '02',
  };
  return { transaction_info: info };
}

/** Write items as JSON Lines to `path` (streamed, with backpressure). */
export function writePaypalBill(path: string, items: Iterable<PayPalTransactionDetail> | AsyncIterable<PayPalTransactionDetail>): Promise<number> {
  return writeJsonLines(path, items);
}
