/**
 * Google Play's bill: the monthly *earnings report* Play writes to the developer's Cloud Storage
 * bucket `pubsite_prod_rev_<developer id>` as `earnings/earnings_YYYYMM_<developer id>.zip`, a zip
 * holding one CSV (`PlayApps_YYYYMM.csv`, UTF-8; UTF-16 with a BOM is read too). One row per money
 * movement, columns (GOOGLE_PLAY_EARNINGS_COLUMNS): Description (the order id,
 * GPA.xxxx-xxxx-xxxx-xxxxx), Transaction Date ("Nov 22, 2026") and Transaction Time
 * ("10:12:33 AM PST"), both Pacific time, Transaction Type, …, Buyer Currency, Amount (Buyer
 * Currency) (a signed decimal: fees and refunds negative), …, Merchant Currency, Amount (Merchant
 * Currency), …. The report covers every app of the developer account (Product id = package name).
 *
 * Normalised (ledger.md's one line shape), per order:
 * - `Charge` + its `Google fee` → ONE payment line: channelReference '' (the report does not carry
 *   our reference: the line is matched on channelTransactionId = the order id), amount = the
 *   charge, fee = |Google fee|, both in the buyer's currency (what Knowpay's payment is in).
 * - `Charge refund` + its `Google fee refund` → ONE refund line: channelTransactionId
 *   `${orderId}:voided` (how Knowpay stores a Play refund's channel_refund_id, connector.ts),
 *   amount positive, fee = the fee Google gave back.
 * - `Tax` / `Tax refund` rows are ignored: they are the sales tax / VAT Google remits as merchant of
 *   record, taken out of the charge. They are neither what the buyer paid (the Charge row is, tax
 *   included) nor Google's fee, and Knowpay's ledger books no tax: nothing to compare them with.
 * - Any other Transaction Type (subscription-only or account-level rows) is not a trade of ours:
 *   skipped.
 * The two rows of an order need not be adjacent: a row waits in a bounded map for its other half
 * (halves of one order and kind are paired in order of appearance, so several partial refunds of
 * one order pair up). At the end, a charge (or refund) whose fee row never came is emitted with fee
 * 0 (the report lists every fee Google took: none listed, none taken); a fee row without its charge
 * means a damaged report and is refused.
 *
 * Amounts are parsed as decimal strings (never floats): the charge exactly in the currency's minor
 * units, fees rounded half away from zero to the minor unit (Play computes them on tax-exclusive
 * prices and may show sub-unit digits). Reading streams (constant memory whatever the size);
 * writing is for the sandbox and tests.
 */
import fs from 'node:fs';
import { TextDecoder } from 'node:util';
import { once } from 'node:events';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import yauzl from 'yauzl';
import yazl from 'yazl';
import { parse } from 'csv-parse';
import { currencyExponent, formatDecimal, normalizeCurrency, parseDecimal } from '../../domain/money.ts';
import { BillFormatError, MAX_BILL_LINES, type BillLine } from '../../reconciliation/types.ts';

/** The earnings report's header, in Google's order and spelling. */
export const GOOGLE_PLAY_EARNINGS_COLUMNS = [
  'Description', 'Transaction Date', 'Transaction Time', 'Tax Type', 'Transaction Type', 'Refund Type', 'Product Title', 'Product id',
  'Product Type', 'Sku Id', 'Hardware', 'Buyer Country', 'Buyer State', 'Buyer Postal Code', 'Buyer Currency', 'Amount (Buyer Currency)',
  'Currency Conversion Rate', 'Merchant Currency', 'Amount (Merchant Currency)', 'Base Plan ID', 'Offer ID', 'Group ID', 'First USD 1M Eligible',
  'Service Fee %', 'Fee Description', 'Promotion ID',
] as const;

/** The columns this module reads; a file without them is not an earnings report. */
const REQUIRED = ['Description', 'Transaction Date', 'Transaction Time', 'Transaction Type', 'Product id', 'Buyer Currency', 'Amount (Buyer Currency)'] as const;
type Required = (typeof REQUIRED)[number];

/** The time zone of the report's dates and of Knowpay's Play bill day (BILL_TIME_ZONE). */
export const GOOGLE_PLAY_REPORT_TIME_ZONE = 'America/Los_Angeles';

/** Orders whose other row has not come yet; past this the report is refused rather than held in memory. */
export const MAX_PENDING_ORDER_ROWS = 100_000;
/** A longer CSV record is no earnings report row (they are a few hundred bytes). */
const MAX_RECORD_CHARS = 64 * 1024;
/** A zip with more entries than this is no earnings report (it holds one CSV). */
const MAX_ZIP_ENTRIES = 100;

export const TRANSACTION_TYPE = {
  CHARGE: 'Charge',
  GOOGLE_FEE: 'Google fee',
  CHARGE_REFUND: 'Charge refund',
  GOOGLE_FEE_REFUND: 'Google fee refund',
  TAX: 'Tax',
  TAX_REFUND: 'Tax refund',
} as const;

const BUCKET = /^pubsite_prod_rev_(\d{1,40})$/;

/** The developer id of a Play reporting bucket `pubsite_prod_rev_<developer id>`; null for another name. */
export function developerIdOfBucket(bucket: string): string | null {
  return BUCKET.exec(bucket)?.[1] ?? null;
}

/** The month's earnings report object in the reporting bucket: `earnings/earnings_YYYYMM_<developer id>.zip`. */
export function earningsObjectName(month: string, developerId: string): string {
  return `earnings/earnings_${month}_${developerId}.zip`;
}

/** The refund line's channelTransactionId: Knowpay's channel_refund_id of a voided Play order. */
export const voidedRefundId = (orderId: string) => `${orderId}:voided`;

// ---- Pacific dates and times ------------------------------------------------------------------------

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

const dayFormat = new Intl.DateTimeFormat('en-CA', { timeZone: GOOGLE_PLAY_REPORT_TIME_ZONE, year: 'numeric', month: '2-digit', day: '2-digit' });
const partsFormat = new Intl.DateTimeFormat('en-US', {
  timeZone: GOOGLE_PLAY_REPORT_TIME_ZONE, year: 'numeric', month: 'short', day: 'numeric', hour: 'numeric', minute: '2-digit', second: '2-digit',
  hour12: true, timeZoneName: 'short',
});
const offsetFormat = new Intl.DateTimeFormat('en-US', { timeZone: GOOGLE_PLAY_REPORT_TIME_ZONE, timeZoneName: 'shortOffset' });

/** The Pacific calendar day of an instant, YYYY-MM-DD. */
export function pacificDay(d: Date): string {
  return dayFormat.format(d);
}

/** An instant as the report writes it: `{ date: "Nov 22, 2026", time: "10:12:33 AM PST" }`. */
export function reportDateTime(d: Date): { date: string; time: string } {
  const p: Record<string, string> = {};
  for (const part of partsFormat.formatToParts(d)) p[part.type] = part.value;
  return { date: `${p['month']} ${p['day']}, ${p['year']}`, time: `${p['hour']}:${p['minute']}:${p['second']} ${p['dayPeriod']} ${p['timeZoneName']}` };
}

/** "Nov 22, 2026" (also "Nov 02, 2026") → "2026-11-22"; null when it is no such date. */
export function parseReportDate(text: string): string | null {
  const m = /^([A-Z][a-z]{2}) (\d{1,2}), (\d{4})$/.exec(text.trim());
  if (!m) return null;
  const month = MONTHS.indexOf(m[1]!) + 1;
  const day = Number(m[2]);
  const year = Number(m[3]);
  if (month === 0 || day < 1 || day > new Date(Date.UTC(year, month, 0)).getUTCDate()) return null;
  return `${m[3]}-${String(month).padStart(2, '0')}-${String(day).padStart(2, '0')}`;
}

/** Minutes east of UTC of Pacific time at an instant (-480 PST, -420 PDT). */
function pacificOffsetMinutes(at: Date): number {
  const name = offsetFormat.formatToParts(at).find((p) => p.type === 'timeZoneName')?.value ?? 'GMT-8';
  const m = /^GMT([+-])(\d{1,2})(?::(\d{2}))?$/.exec(name);
  if (!m) return 0;
  const minutes = Number(m[2]) * 60 + Number(m[3] ?? 0);
  return m[1] === '-' ? -minutes : minutes;
}

const ZONES: Record<string, number> = { PST: -480, PDT: -420, UTC: 0, GMT: 0 };

/**
 * A report date (YYYY-MM-DD, from parseReportDate) and Transaction Time — "10:12:33 AM PST",
 * "22:12:33 PDT", "10:12:33 AM" (no zone: Pacific) — → the instant; null when unreadable.
 */
export function parseReportTime(day: string, text: string): Date | null {
  const m = /^(\d{1,2}):(\d{2}):(\d{2})(?:\s*([AaPp][Mm]))?(?:\s+([A-Za-z]{3,4}))?$/.exec(text.trim());
  if (!m) return null;
  let hour = Number(m[1]);
  const minute = Number(m[2]);
  const second = Number(m[3]);
  if (m[4]) {
    if (hour < 1 || hour > 12) return null;
    hour = (hour % 12) + (m[4].toUpperCase() === 'PM' ? 12 : 0);
  }
  if (hour > 23 || minute > 59 || second > 59) return null;
  const [y, mo, d] = day.split('-').map(Number) as [number, number, number];
  const wall = Date.UTC(y, mo - 1, d, hour, minute, second);
  let offset: number;
  if (m[5]) {
    const known = ZONES[m[5].toUpperCase()];
    if (known === undefined) return null;
    offset = known;
  } else {
    // Pacific wall time: the offset in force at that wall time (taken at wall + 8 h, then checked).
    offset = pacificOffsetMinutes(new Date(wall + 480 * 60_000));
    offset = pacificOffsetMinutes(new Date(wall - offset * 60_000));
  }
  return new Date(wall - offset * 60_000);
}

// ---- Decimals -----------------------------------------------------------------------------------

/** "1,234.56" → "1234.56" when the commas are thousands separators; the text as it is otherwise. */
function plainDecimal(text: string): string {
  const t = text.trim();
  return /^-?\d{1,3}(,\d{3})+(\.\d+)?$/.test(t) ? t.replaceAll(',', '') : t;
}

/** A decimal text rounded half away from zero to the currency's minor units; null when it is no plain decimal. */
export function roundedMinor(text: string, currency: string): bigint | null {
  const m = /^([+-]?)(\d{1,18})(?:\.(\d{0,12}))?$/.exec(plainDecimal(text));
  if (!m) return null;
  const exp = currencyExponent(currency);
  const [, sign, whole, frac = ''] = m;
  const kept = BigInt(whole! + frac.slice(0, exp).padEnd(exp, '0'));
  const rest = frac.slice(exp);
  const value = rest !== '' && rest[0]! >= '5' ? kept + 1n : kept;
  return sign === '-' ? -value : value;
}

/** A decimal text exactly in the currency's minor units (extra fraction digits only if zeros); null otherwise. */
export function exactMinor(text: string, currency: string): bigint | null {
  const t = plainDecimal(text).replace(/^\+/, '');
  return parseDecimal(t, currency);
}

// ---- The CSV inside (zip or bare, UTF-8 or UTF-16) ------------------------------------------------------

const isZip = (head: Buffer) => head.length >= 4 && head.readUInt32LE(0) === 0x04034b50;

/** The CSV's bytes: the zip's one CSV entry when the file is a zip, else the file itself. */
async function openReportBytes(path: string): Promise<Readable> {
  const head = Buffer.alloc(4);
  const fd = await fs.promises.open(path, 'r');
  let read = 0;
  try {
    ({ bytesRead: read } = await fd.read(head, 0, 4, 0));
  } finally {
    await fd.close();
  }
  if (!isZip(head.subarray(0, read))) return fs.createReadStream(path, { highWaterMark: 256 * 1024 });
  return new Promise((resolve, reject) => {
    yauzl.open(path, { lazyEntries: true, autoClose: false }, (err, zip) => {
      if (err || !zip) return reject(new BillFormatError(`not a readable zip (${err?.message ?? 'unknown error'}): a Google Play earnings report is a zip holding one CSV`));
      const csvs: yauzl.Entry[] = [];
      let entries = 0;
      const fail = (e: Error) => {
        zip.close();
        reject(e);
      };
      zip.on('entry', (entry: yauzl.Entry) => {
        entries++;
        if (entries > MAX_ZIP_ENTRIES) return fail(new BillFormatError(`the zip holds more than ${MAX_ZIP_ENTRIES} entries: a Google Play earnings report holds one CSV`));
        if (!entry.fileName.endsWith('/') && entry.fileName.toLowerCase().endsWith('.csv')) csvs.push(entry);
        zip.readEntry();
      });
      zip.on('error', (e: Error) => fail(new BillFormatError(`damaged zip (${e.message}): not a readable Google Play earnings report`)));
      zip.on('end', () => {
        if (csvs.length !== 1) {
          const what = csvs.length === 0 ? 'no CSV file' : `${csvs.length} CSV files (${csvs.map((e) => e.fileName).join(', ').slice(0, 200)})`;
          return fail(new BillFormatError(`the zip holds ${what}: a Google Play earnings report (earnings_YYYYMM_….zip) holds one CSV`));
        }
        zip.openReadStream(csvs[0]!, (e, stream) => {
          if (e || !stream) return fail(new BillFormatError(`damaged zip (${e?.message ?? 'no stream'}): not a readable Google Play earnings report`));
          stream.on('close', () => zip.close());
          resolve(stream);
        });
      });
      zip.readEntry();
    });
  });
}

/** Bytes → text: UTF-16 when the file starts with its BOM, else UTF-8 (its BOM dropped). Invalid bytes are refused. */
async function* decodeText(source: AsyncIterable<Buffer>): AsyncGenerator<string> {
  let decoder: TextDecoder | null = null;
  let head = Buffer.alloc(0);
  let label = 'UTF-8';
  const choose = (buf: Buffer): Buffer => {
    if (buf[0] === 0xff && buf[1] === 0xfe) { decoder = new TextDecoder('utf-16le', { fatal: true }); label = 'UTF-16'; return buf.subarray(2); }
    if (buf[0] === 0xfe && buf[1] === 0xff) { decoder = new TextDecoder('utf-16be', { fatal: true }); label = 'UTF-16'; return buf.subarray(2); }
    decoder = new TextDecoder('utf-8', { fatal: true });
    return buf;
  };
  const decode = (buf: Buffer, stream: boolean): string => {
    try {
      return decoder!.decode(buf, { stream });
    } catch {
      throw new BillFormatError(`the file is not ${label} text (a Google Play earnings report is a UTF-8 CSV; an Alipay bill, for one, is GBK)`);
    }
  };
  for await (const chunk of source) {
    let buf = chunk as Buffer;
    if (!decoder) {
      head = Buffer.concat([head, buf]);
      if (head.length < 3) continue;
      buf = choose(head);
    }
    const text = decode(buf, true);
    if (text) yield text;
  }
  const rest = decoder ? Buffer.alloc(0) : choose(head);
  const tail = decode(rest, false);
  if (tail) yield tail;
}

interface CsvRecord { cells: string[]; line: number }

/** The report's CSV records (header first), streamed; source damage becomes BillFormatError. */
async function* csvRecords(path: string): AsyncGenerator<CsvRecord> {
  const bytes = await openReportBytes(path);
  const parser = parse({ bom: true, relax_quotes: true, relax_column_count: true, skip_empty_lines: true, info: true, max_record_size: MAX_RECORD_CHARS });
  pipeline(Readable.from(decodeText(bytes)), parser).catch(() => { /* surfaces through the parser */ });
  const it = parser[Symbol.asyncIterator]() as AsyncIterator<{ record: string[]; info: { lines: number } }>;
  try {
    for (;;) {
      let r: IteratorResult<{ record: string[]; info: { lines: number } }>;
      try {
        r = await it.next();
      } catch (err) {
        throw sourceError(err);
      }
      if (r.done) return;
      yield { cells: r.value.record, line: r.value.info.lines };
    }
  } finally {
    parser.destroy();
    bytes.destroy();
  }
}

function sourceError(err: unknown): Error {
  if (err instanceof BillFormatError) return err;
  const e = err as { code?: string; message?: string; lines?: number };
  if (typeof e?.code === 'string' && e.code.startsWith('CSV_')) {
    return new BillFormatError(`line ${e.lines ?? '?'}: ${e.code === 'CSV_MAX_RECORD_SIZE' ? `a record longer than ${MAX_RECORD_CHARS} characters` : e.message}: not a Google Play earnings report CSV`);
  }
  return new BillFormatError(`the report could not be read (${e?.message ?? String(err)}): a damaged or truncated file`);
}

type Columns = Record<Required, number>;

/** The header's column positions; BillFormatError saying why when this is no earnings report header. */
function columnsOf(header: string[]): Columns {
  const names = header.map((c) => c.trim().toLowerCase());
  const index = new Map(names.map((c, i) => [c, i]));
  if (!index.has('description') || !index.has('transaction type')) {
    const seen = header.slice(0, 4).map((c) => c.trim()).join(',').slice(0, 80);
    throw new BillFormatError(`the first line (${JSON.stringify(seen)}) is not a Google Play earnings report header (Description,Transaction Date,Transaction Time,Tax Type,Transaction Type,…)`);
  }
  const col = {} as Columns;
  for (const c of REQUIRED) {
    const i = index.get(c.toLowerCase());
    if (i === undefined) throw new BillFormatError(`the Google Play earnings report header lacks the column "${c}"`);
    col[c] = i;
  }
  return col;
}

// ---- Reading ------------------------------------------------------------------------------------

interface Half {
  rowNo: number;
  line: number;
  amount: bigint;
  currency: string;
  at?: Date;
}

interface Pending {
  kind: 'payment' | 'refund';
  orderId: string;
  primaries: Half[];
  fees: Half[];
}

const ROLES: Record<string, { kind: 'payment' | 'refund'; role: 'primary' | 'fee' }> = {
  [TRANSACTION_TYPE.CHARGE.toLowerCase()]: { kind: 'payment', role: 'primary' },
  [TRANSACTION_TYPE.GOOGLE_FEE.toLowerCase()]: { kind: 'payment', role: 'fee' },
  [TRANSACTION_TYPE.CHARGE_REFUND.toLowerCase()]: { kind: 'refund', role: 'primary' },
  [TRANSACTION_TYPE.GOOGLE_FEE_REFUND.toLowerCase()]: { kind: 'refund', role: 'fee' },
};

function lineOf(p: Pending, primary: Half, fee: Half | undefined): BillLine {
  if (fee && fee.currency !== primary.currency) {
    throw new BillFormatError(`line ${fee.line}: the Google fee of order ${p.orderId} is in ${fee.currency}, its charge (line ${primary.line}) in ${primary.currency}`);
  }
  return {
    lineNo: primary.rowNo,
    kind: p.kind,
    channelReference: '',
    channelTransactionId: p.kind === 'payment' ? p.orderId : voidedRefundId(p.orderId),
    amount: primary.amount,
    fee: fee ? fee.amount : 0n,
    currency: primary.currency,
    ...(primary.at ? { occurredAt: primary.at } : {}),
  };
}

/** Stream the normalised lines of a Google Play earnings report (the zip Play writes, or its CSV). */
export async function* readGooglePlayBill(path: string): AsyncGenerator<BillLine> {
  let col: Columns | null = null;
  let width = 0;
  let rowNo = 0;
  let waiting = 0;
  const pending = new Map<string, Pending>();
  for await (const { cells, line } of csvRecords(path)) {
    if (!col) {
      col = columnsOf(cells);
      width = cells.length;
      continue;
    }
    rowNo++;
    if (rowNo > MAX_BILL_LINES) throw new BillFormatError(`more than ${MAX_BILL_LINES} rows`);
    if (cells.length !== width) throw new BillFormatError(`line ${line}: ${cells.length} fields, the header has ${width}`);
    const v = (c: Required) => (cells[col![c]] ?? '').trim();
    const type = v('Transaction Type');
    const role = ROLES[type.toLowerCase()];
    if (!role) continue; // Tax, Tax refund (see the file comment) and rows that are no trade of ours
    const orderId = v('Description');
    if (orderId === '' || orderId.length > 200) throw new BillFormatError(`line ${line}: a ${type} row without an order id in Description`);
    const code = v('Buyer Currency');
    const currency = normalizeCurrency(code);
    if (!currency) throw new BillFormatError(`line ${line}: unknown Buyer Currency ${JSON.stringify(code.slice(0, 20))}`);
    const amountText = v('Amount (Buyer Currency)');
    const signed = role.role === 'primary' ? exactMinor(amountText, currency) : roundedMinor(amountText, currency);
    if (signed === null) throw new BillFormatError(`line ${line}: unreadable Amount (Buyer Currency) ${JSON.stringify(amountText.slice(0, 40))} for ${currency}`);
    if (role.kind === 'payment' && role.role === 'primary' && signed < 0n) throw new BillFormatError(`line ${line}: a Charge of order ${orderId} with a negative amount ${amountText}`);
    const half: Half = { rowNo, line, amount: signed < 0n ? -signed : signed, currency };
    if (role.role === 'primary') {
      const day = parseReportDate(v('Transaction Date'));
      if (!day) throw new BillFormatError(`line ${line}: unreadable Transaction Date ${JSON.stringify(v('Transaction Date').slice(0, 40))} (like "Nov 22, 2026")`);
      const at = parseReportTime(day, v('Transaction Time'));
      if (!at) throw new BillFormatError(`line ${line}: unreadable Transaction Time ${JSON.stringify(v('Transaction Time').slice(0, 40))} (like "10:12:33 AM PST")`);
      half.at = at;
    }
    const key = `${role.kind}|${orderId}`;
    let p = pending.get(key);
    if (!p) {
      p = { kind: role.kind, orderId, primaries: [], fees: [] };
      pending.set(key, p);
    }
    (role.role === 'primary' ? p.primaries : p.fees).push(half);
    waiting++;
    if (p.primaries.length > 0 && p.fees.length > 0) {
      const out = lineOf(p, p.primaries.shift()!, p.fees.shift()!);
      waiting -= 2;
      if (p.primaries.length === 0 && p.fees.length === 0) pending.delete(key);
      yield out;
    } else if (waiting > MAX_PENDING_ORDER_ROWS) {
      throw new BillFormatError(`more than ${MAX_PENDING_ORDER_ROWS} rows wait for the other row of their order (a Charge for its Google fee, or the reverse): the rows of an order are too far apart to be read in bounded memory`);
    }
  }
  if (!col) throw new BillFormatError('the file is empty: no Google Play earnings report header');
  for (const p of pending.values()) {
    const fee = p.fees[0];
    if (fee) {
      const what = p.kind === 'payment' ? 'a Google fee row without its Charge row' : 'a Google fee refund row without its Charge refund row';
      throw new BillFormatError(`line ${fee.line}: ${what} (order ${p.orderId}): the report is incomplete`);
    }
    for (const primary of p.primaries) yield lineOf(p, primary, undefined);
  }
}

// ---- The day's rows of one app (the connector) ------------------------------------------------------

/**
 * Copy the rows of one Pacific day (Transaction Date) and, when given, one app (Product id) from a
 * report (zip or CSV) to `destination` as a bare UTF-8 CSV with the report's own header. Streams.
 */
export async function extractGooglePlayEarningsDay(source: string, destination: string, filter: { date: string; packageName?: string }): Promise<{ rows: number; kept: number }> {
  const out = fs.createWriteStream(destination);
  let col: Columns | null = null;
  let width = 0;
  let rows = 0;
  let kept = 0;
  const write = async (cells: string[]) => {
    if (!out.write(csvLine(cells))) await once(out, 'drain');
  };
  try {
    for await (const { cells, line } of csvRecords(source)) {
      if (!col) {
        col = columnsOf(cells);
        width = cells.length;
        await write(cells.map((c) => c.trim()));
        continue;
      }
      rows++;
      if (cells.length !== width) throw new BillFormatError(`line ${line}: ${cells.length} fields, the header has ${width}`);
      const dateText = (cells[col['Transaction Date']] ?? '').trim();
      const day = parseReportDate(dateText);
      if (!day) throw new BillFormatError(`line ${line}: unreadable Transaction Date ${JSON.stringify(dateText.slice(0, 40))} (like "Nov 22, 2026")`);
      if (day !== filter.date) continue;
      if (filter.packageName !== undefined && (cells[col['Product id']] ?? '').trim() !== filter.packageName) continue;
      kept++;
      await write(cells);
    }
    if (!col) throw new BillFormatError('the file is empty: no Google Play earnings report header');
    out.end();
    await once(out, 'finish');
  } catch (err) {
    out.destroy();
    throw err;
  }
  return { rows, kept };
}

// ---- Writing (the sandbox, tests) ------------------------------------------------------------------

export interface GooglePlayEarningsRow {
  orderId: string;
  at: Date;
  /** A TRANSACTION_TYPE word (or any other, written as it is). */
  type: string;
  taxType?: string;
  /** "Full" or "Partial" on refund rows. */
  refundType?: string;
  productTitle: string;
  /** The app's package name (column "Product id"). */
  packageName: string;
  /** "inapp" for a one-time product. */
  productType?: string;
  /** The product id (column "Sku Id"). */
  skuId: string;
  hardware?: string;
  buyerCountry: string;
  buyerState?: string;
  buyerPostalCode?: string;
  buyerCurrency: string;
  /** Signed minor units of buyerCurrency, as Google reports them: fees, refunds and taxes negative. */
  amountBuyer: bigint;
  /** Default: the buyer's currency, at rate 1, the same amount. */
  merchantCurrency?: string;
  conversionRate?: string;
  amountMerchant?: bigint;
  firstUsd1mEligible?: string;
  serviceFeePercent?: string;
  feeDescription?: string;
  promotionId?: string;
}

const needsQuotes = /[",\r\n]|^\s|\s$/;
const csvCell = (s: string) => (needsQuotes.test(s) ? `"${s.replaceAll('"', '""')}"` : s);
const csvLine = (cells: readonly string[]) => cells.map(csvCell).join(',') + '\n';

function rowCells(r: GooglePlayEarningsRow): string[] {
  const { date, time } = reportDateTime(r.at);
  const merchantCurrency = r.merchantCurrency ?? r.buyerCurrency;
  const fee = r.type === TRANSACTION_TYPE.GOOGLE_FEE || r.type === TRANSACTION_TYPE.GOOGLE_FEE_REFUND;
  return [
    r.orderId, date, time, r.taxType ?? '', r.type, r.refundType ?? '', r.productTitle.replace(/[\r\n]/g, ' '), r.packageName, r.productType ?? 'inapp',
    r.skuId, r.hardware ?? '', r.buyerCountry, r.buyerState ?? '', r.buyerPostalCode ?? '', r.buyerCurrency, formatDecimal(r.amountBuyer, r.buyerCurrency),
    r.conversionRate ?? '1', merchantCurrency, formatDecimal(r.amountMerchant ?? r.amountBuyer, merchantCurrency), '', '', '',
    r.firstUsd1mEligible ?? (fee ? 'Yes' : ''), r.serviceFeePercent ?? '', r.feeDescription ?? '', r.promotionId ?? '',
  ];
}

/** The report's CSV text in chunks (≤ ~1000 rows each), header first; lines end with \n. */
export function* googlePlayEarningsCsvChunks(rows: Iterable<GooglePlayEarningsRow>): Generator<string> {
  yield csvLine(GOOGLE_PLAY_EARNINGS_COLUMNS);
  let batch = '';
  let n = 0;
  for (const r of rows) {
    batch += csvLine(rowCells(r));
    if (++n % 1000 === 0) { yield batch; batch = ''; }
  }
  if (batch) yield batch;
}

/** The zip entry's name, as in Play's zips: PlayApps_YYYYMM.csv. */
export const earningsCsvName = (month: string) => `PlayApps_${month}.csv`;

/**
 * Write an earnings report as Play stores it: a zip holding one CSV (PlayApps_YYYYMM.csv), real
 * header, real formats. `month` (YYYYMM) names the entry; default: the first row's Pacific month.
 */
export async function writeGooglePlayEarningsReport(path: string, rows: Iterable<GooglePlayEarningsRow>, opts: { month?: string } = {}): Promise<void> {
  const list = Array.isArray(rows) ? (rows as GooglePlayEarningsRow[]) : null;
  const first = list?.[0];
  const month = opts.month ?? (first ? pacificDay(first.at).slice(0, 7).replace('-', '') : pacificDay(new Date()).slice(0, 7).replace('-', ''));
  const zip = new yazl.ZipFile();
  zip.addReadStream(Readable.from(googlePlayEarningsCsvChunks(rows)), earningsCsvName(month));
  zip.end();
  await pipeline(zip.outputStream, fs.createWriteStream(path));
}

/** The two rows of one payment (Charge, Google fee) or refund (Charge refund, Google fee refund) of an order. */
export function googlePlayOrderRows(o: {
  kind: 'payment' | 'refund'; orderId: string; at: Date; amount: bigint; fee: bigint; currency: string; packageName: string; skuId: string;
  productTitle?: string; buyerCountry?: string; refundType?: 'Full' | 'Partial'; feePercent?: string;
}): [GooglePlayEarningsRow, GooglePlayEarningsRow] {
  const common = {
    orderId: o.orderId, at: o.at, productTitle: o.productTitle ?? o.skuId, packageName: o.packageName, productType: 'inapp', skuId: o.skuId,
    buyerCountry: o.buyerCountry ?? 'US', buyerCurrency: o.currency,
  };
  if (o.kind === 'payment') {
    return [
      { ...common, type: TRANSACTION_TYPE.CHARGE, amountBuyer: o.amount },
      { ...common, type: TRANSACTION_TYPE.GOOGLE_FEE, amountBuyer: -o.fee, serviceFeePercent: o.feePercent ?? '15' },
    ];
  }
  const refundType = o.refundType ?? 'Full';
  return [
    { ...common, type: TRANSACTION_TYPE.CHARGE_REFUND, refundType, amountBuyer: -o.amount },
    { ...common, type: TRANSACTION_TYPE.GOOGLE_FEE_REFUND, refundType, amountBuyer: o.fee, serviceFeePercent: o.feePercent ?? '15' },
  ];
}
