/**
 * Stripe's daily bill: the balance transactions of one UTC day (channels.md: `{id, amount, fee,
 * fee_details[], net, currency, type, reporting_category, source, status, available_on, created,
 * exchange_rate}`), as `GET /v1/balance_transactions?expand[]=data.source` returns them, kept as
 * JSON Lines: one balance transaction per line, exactly as Stripe returned it.
 *
 * Reading (streaming, constant memory, lines bounded in length) normalises to BillLine:
 * - type `charge` / `payment` → a payment line: amount and fee as they are (positive); our trade
 *   number from the source's `metadata.knowpay_reference`, else from its PaymentIntent's (when
 *   expanded); the PaymentIntent id as channelTransactionId.
 * - type `refund` → a refund line: amount = −amount; fee = the fee given back (Stripe keeps its fee
 *   on refunds, so normally 0); our refund number from the refund's
 *   `metadata.knowpay_refund_reference`, our trade number from its `metadata.knowpay_reference`.
 * - every other type (payout, adjustment, refund_failure, stripe_fee, …) is skipped.
 * A line whose source carries no trade number of ours keeps the PaymentIntent (or charge) id as
 * its reference, so it shows as "missing in ledger" instead of vanishing.
 * Amounts are in Stripe's units of the balance currency: minor units as they are, zero-decimal
 * currencies included (JPY 500 is 500); ISK, which Stripe keeps in hundredths, is divided back to
 * krónur (transformers.ts). A cross-currency charge or refund is booked in the settlement currency
 * with `exchange_rate` (presentment × rate = settlement): the line then carries what the buyer paid
 * or got back, the source's own amount and currency (which is what our payment records), and the
 * fee converted back to that currency at the same rate (exact decimal arithmetic, half up).
 */
import fs from 'node:fs';
import { finished } from 'node:stream/promises';
import { BillFormatError, MAX_BILL_LINES, type BillLine } from '../../reconciliation/types.ts';
import { REFERENCE_METADATA_KEY, REFUND_REFERENCE_METADATA_KEY, stripeCurrency, stripeUnitFactor } from './transformers.ts';
import { currencyExponent } from '../../domain/money.ts';

/** An expanded balance transaction with charge, PaymentIntent and refund is a few kB; 1 MiB is far beyond any real one. */
export const MAX_BILL_LINE_CHARS = 1024 * 1024;
const PAYMENT_TYPES: ReadonlySet<string> = new Set(['charge', 'payment']);

/** A balance transaction as Stripe answers it (the fields the reader relies on; the rest is kept as is). */
export interface StripeBalanceTransaction extends Record<string, unknown> {
  id: string;
  object: 'balance_transaction';
  amount: number;
  fee: number;
  net: number;
  currency: string;
  type: string;
  created: number;
  /** An id, or the charge / refund object when expanded (`expand[]=data.source`). */
  source: string | Record<string, unknown> | null;
}

type Json = Record<string, unknown>;

const isObject = (v: unknown): v is Json => v !== null && typeof v === 'object' && !Array.isArray(v);

function metadataValue(o: unknown, key: string): string | undefined {
  if (!isObject(o) || !isObject(o['metadata'])) return undefined;
  const v = o['metadata'][key];
  return typeof v === 'string' && v !== '' ? v : undefined;
}

function idOf(v: unknown): string | undefined {
  if (typeof v === 'string' && v !== '') return v;
  if (isObject(v) && typeof v['id'] === 'string' && v['id'] !== '') return v['id'];
  return undefined;
}

/** Stripe's exchange_rate (a JSON number such as 1.0877) as an exact fraction num/den. */
export function rateFraction(rate: number): { num: bigint; den: bigint } | null {
  if (typeof rate !== 'number' || !Number.isFinite(rate) || rate <= 0) return null;
  const m = /^(\d+)(?:\.(\d+))?(?:e([+-]?\d+))?$/i.exec(String(rate));
  if (!m) return null;
  const frac = m[2] ?? '';
  let num = BigInt(m[1]! + frac);
  let den = 10n ** BigInt(frac.length);
  const e = Number(m[3] ?? 0);
  if (Math.abs(e) > 30) return null;
  if (e > 0) num *= 10n ** BigInt(e); else if (e < 0) den *= 10n ** BigInt(-e);
  return num > 0n ? { num, den } : null;
}

/** A settlement-currency fee (our minor units) in the presentment currency: fee / rate, half up. */
export function feeInPresentment(feeSettlement: bigint, settlementCurrency: string, presentmentCurrency: string, rate: { num: bigint; den: bigint }): bigint {
  const numerator = feeSettlement * 10n ** BigInt(currencyExponent(presentmentCurrency)) * rate.den;
  const denominator = 10n ** BigInt(currencyExponent(settlementCurrency)) * rate.num;
  return (numerator * 2n + denominator) / (2n * denominator);
}

/**
 * For a line booked in another currency than its source's: the source's amount and currency, and
 * the fee at the line's exchange rate. Null when the source is in the balance currency.
 */
function presentment(o: Json, source: Json, balanceCurrency: string, fee: bigint, where: string): { amount: bigint; fee: bigint; currency: string } | null {
  const cur = typeof source['currency'] === 'string' ? stripeCurrency(source['currency'].toUpperCase()) : null;
  if (!cur || cur === balanceCurrency) return null;
  const amount = source['amount'];
  if (typeof amount !== 'number' || !Number.isSafeInteger(amount) || amount < 0) throw new BillFormatError(`${where}: the source's amount is not a non-negative integer`);
  const rate = rateFraction(o['exchange_rate'] as number);
  if (!rate) throw new BillFormatError(`${where}: booked in ${balanceCurrency} for a ${cur} source without a usable exchange_rate`);
  return { amount: exact(amount, stripeUnitFactor(cur), where), fee: feeInPresentment(fee, balanceCurrency, cur, rate), currency: cur };
}

/** One JSON Lines record → a BillLine, or null for a type that is not a payment or refund. */
function toBillLine(text: string, lineNo: number): BillLine | null {
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch {
    throw new BillFormatError(lineNo === 1
      ? 'the first line is not JSON: not Stripe balance transactions (JSON Lines)'
      : `line ${lineNo} is not JSON`);
  }
  if (!isObject(o) || o['object'] !== 'balance_transaction') {
    throw new BillFormatError(lineNo === 1
      ? 'the first line is not a JSON object with object "balance_transaction": not Stripe balance transactions'
      : `line ${lineNo} is not a balance_transaction object`);
  }
  const id = typeof o['id'] === 'string' ? o['id'] : '';
  const where = `line ${lineNo} (${id || 'no id'})`;
  if (!/^txn_[A-Za-z0-9]+$/.test(id)) throw new BillFormatError(`${where}: id is not a txn_ id`);
  const type = o['type'];
  if (typeof type !== 'string') throw new BillFormatError(`${where}: no type`);
  const isPayment = PAYMENT_TYPES.has(type);
  if (!isPayment && type !== 'refund') return null;

  const amount = o['amount'];
  const fee = o['fee'];
  if (typeof amount !== 'number' || !Number.isSafeInteger(amount)) throw new BillFormatError(`${where}: amount is not an integer`);
  if (typeof fee !== 'number' || !Number.isSafeInteger(fee)) throw new BillFormatError(`${where}: fee is not an integer`);
  const currencyText = o['currency'];
  const currency = typeof currencyText === 'string' && /^[a-z]{3}$/.test(currencyText) ? stripeCurrency(currencyText.toUpperCase()) : null;
  if (!currency) throw new BillFormatError(`${where}: unknown currency ${JSON.stringify(currencyText)}`);
  const factor = stripeUnitFactor(currency);
  const created = o['created'];
  const occurredAt = typeof created === 'number' && Number.isSafeInteger(created) && created > 0 ? new Date(created * 1000) : undefined;

  const source = o['source'];
  if (!isObject(source)) {
    throw new BillFormatError(`${where}: source is not expanded (download with expand[]=data.source, so our references can be read)`);
  }
  const pi = source['payment_intent'];
  const piId = idOf(pi);

  if (isPayment) {
    if (amount < 0) throw new BillFormatError(`${where}: a ${type} with a negative amount`);
    if (fee < 0) throw new BillFormatError(`${where}: a ${type} with a negative fee`);
    const txId = piId ?? idOf(source);
    const reference = metadataValue(source, REFERENCE_METADATA_KEY) ?? metadataValue(pi, REFERENCE_METADATA_KEY) ?? txId;
    if (!reference) throw new BillFormatError(`${where}: the source has neither our reference nor an id`);
    const settled = { amount: exact(amount, factor, where), fee: rounded(fee, factor), currency };
    const paid = presentment(o, source, currency, settled.fee, where) ?? settled;
    return {
      lineNo, kind: 'payment', channelReference: reference, ...(txId ? { channelTransactionId: txId } : {}),
      amount: paid.amount, fee: paid.fee, currency: paid.currency, ...(occurredAt ? { occurredAt } : {}),
    };
  }

  if (amount > 0) throw new BillFormatError(`${where}: a refund with a positive amount`);
  const refundId = idOf(source);
  const reference = metadataValue(source, REFERENCE_METADATA_KEY) ?? metadataValue(pi, REFERENCE_METADATA_KEY) ?? piId ?? idOf(source['charge']) ?? refundId;
  if (!reference) throw new BillFormatError(`${where}: the refund has neither our reference nor an id`);
  const refundReference = metadataValue(source, REFUND_REFERENCE_METADATA_KEY);
  return {
    lineNo, kind: 'refund', channelReference: reference, ...(refundId ? { channelTransactionId: refundId } : {}),
    ...(refundReference ? { refundReference } : {}),
    ...(presentment(o, source, currency, rounded(fee < 0 ? -fee : fee, factor), where)
      ?? { amount: exact(-amount, factor, where), fee: rounded(fee < 0 ? -fee : fee, factor), currency }),
    ...(occurredAt ? { occurredAt } : {}),
  };
}

/** Stripe units → our minor units; an amount that is not whole in ours is not a bill we can trust. */
function exact(value: number, factor: bigint, where: string): bigint {
  const big = BigInt(value);
  if (big % factor !== 0n) throw new BillFormatError(`${where}: amount ${value} is not a whole number of minor units`);
  return big / factor;
}

/** Fees may be computed finer than our minor unit (ISK): round half up. */
function rounded(value: number, factor: bigint): bigint {
  return (BigInt(value) * 2n + factor) / (2n * factor);
}

/**
 * Stream the normalised lines of a Stripe bill (JSON Lines of balance transactions). An empty
 * file is a day without transactions. `lineNo` is the record's line in the file.
 */
export async function* readStripeBill(path: string): AsyncGenerator<BillLine> {
  const stream = fs.createReadStream(path, { encoding: 'utf8', highWaterMark: 64 * 1024 });
  let rest = '';
  let lineNo = 0;
  let records = 0;
  const handle = (raw: string): BillLine | null => {
    lineNo++;
    let line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (lineNo === 1 && line.startsWith('\uFEFF')) line = line.slice(1);
    if (line.trim() === '') return null;
    if (++records > MAX_BILL_LINES) throw new BillFormatError(`more than ${MAX_BILL_LINES} lines`);
    return toBillLine(line, lineNo);
  };
  try {
    for await (const chunk of stream as AsyncIterable<string>) {
      if (!chunk.includes('\n')) {
        rest += chunk;
        if (rest.length > MAX_BILL_LINE_CHARS) throw tooLong(lineNo + 1);
        continue;
      }
      const parts = (rest + chunk).split('\n');
      rest = parts.pop()!;
      if (rest.length > MAX_BILL_LINE_CHARS) throw tooLong(lineNo + parts.length + 1);
      const out: BillLine[] = [];
      for (const part of parts) {
        if (part.length > MAX_BILL_LINE_CHARS) throw tooLong(lineNo + 1);
        const l = handle(part);
        if (l) out.push(l);
      }
      yield* out;
    }
    if (rest !== '') {
      const l = handle(rest);
      if (l) yield l;
    }
  } finally {
    stream.destroy();
  }
}

function tooLong(lineNo: number): BillFormatError {
  return new BillFormatError(lineNo === 1
    ? `the first line is longer than ${MAX_BILL_LINE_CHARS} characters: not Stripe balance transactions (JSON Lines)`
    : `line ${lineNo} is longer than ${MAX_BILL_LINE_CHARS} characters`);
}

/**
 * Writes balance transactions as JSON Lines, honouring the stream's backpressure and a size
 * bound. Used by the connector's downloadBill, the sandbox's tests and writeStripeBill.
 */
export class StripeBillWriter {
  private readonly out: fs.WriteStream;
  private error: Error | null = null;
  bytes = 0;
  count = 0;

  constructor(path: string, private readonly maxBytes = Number.MAX_SAFE_INTEGER) {
    this.out = fs.createWriteStream(path);
    this.out.on('error', (err) => { this.error ??= err; });
  }

  async write(transaction: Json): Promise<void> {
    if (this.error) throw this.error;
    const line = JSON.stringify(transaction) + '\n';
    this.bytes += Buffer.byteLength(line);
    if (this.bytes > this.maxBytes) throw new RangeError(`the bill is larger than ${this.maxBytes} bytes`);
    this.count++;
    if (!this.out.write(line)) {
      await new Promise<void>((resolve, reject) => {
        const onDrain = () => { this.out.off('error', onError); resolve(); };
        const onError = (err: Error) => { this.out.off('drain', onDrain); reject(err); };
        this.out.once('drain', onDrain);
        this.out.once('error', onError);
      });
    }
  }

  async close(): Promise<void> {
    if (this.error) throw this.error;
    this.out.end();
    await finished(this.out);
    if (this.error) throw this.error;
  }

  /** Abandon the file (the caller removes it). */
  async abort(): Promise<void> {
    this.out.destroy();
    await finished(this.out).catch(() => {});
  }
}

/** Write balance transactions to `path` as a Stripe bill (JSON Lines); answers how many. */
export async function writeStripeBill(path: string, transactions: Iterable<Json> | AsyncIterable<Json>): Promise<number> {
  const writer = new StripeBillWriter(path);
  try {
    for await (const t of transactions) await writer.write(t);
    await writer.close();
  } catch (err) {
    await writer.abort();
    throw err;
  }
  return writer.count;
}
