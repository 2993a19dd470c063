/**
 * Google Play earnings report reader (bill.ts), without a database: hand-written reports in
 * Google's format (Charge + Google fee merged, refunds, Tax ignored, rows of one order apart, two
 * and zero decimal currencies, BOM, CRLF, UTF-16), the writer's zip, the connector's day filter,
 * and files that are not an earnings report (each refused with a BillFormatError saying why).
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import iconv from 'iconv-lite';
import { BillFormatError, type BillLine } from '../../reconciliation/types.ts';
import { writeAlipayBillZip, alipayBillCsv } from '../alipay/bill.ts';
import { writeWechatpayBill } from '../wechatpay/bill.ts';
import {
  GOOGLE_PLAY_EARNINGS_COLUMNS, MAX_PENDING_ORDER_ROWS, extractGooglePlayEarningsDay, googlePlayEarningsCsvChunks, googlePlayOrderRows, pacificDay,
  parseReportDate, parseReportTime, readGooglePlayBill, reportDateTime, writeGooglePlayEarningsReport, type GooglePlayEarningsRow,
} from './bill.ts';
import { readAllLines } from '../../../test/support/assertions.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'play-bill-test-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));
let fileNo = 0;
function file(content: string | Buffer, ext = 'csv'): string {
  const p = path.join(dir, `report-${++fileNo}.${ext}`);
  fs.writeFileSync(p, content);
  return p;
}
const newPath = (ext: string) => path.join(dir, `report-${++fileNo}.${ext}`);
const readAll = (p: string) => readAllLines(readGooglePlayBill, p);
async function rejectsFormat(p: string, reason: RegExp): Promise<void> {
  await assert.rejects(readAll(p), (err: unknown) => {
    assert.ok(err instanceof BillFormatError, `expected a BillFormatError, got ${String(err)}`);
    assert.match(err.message, reason);
    return true;
  });
}

const HEADER = GOOGLE_PLAY_EARNINGS_COLUMNS.join(',');
const PKG = 'com.knowpay.app';
/** One row in Google's column order; `over` by column name. */
function row(over: Partial<Record<(typeof GOOGLE_PLAY_EARNINGS_COLUMNS)[number], string>>): string {
  const base: Record<string, string> = {
    'Description': 'GPA.3300-1111-2222-33333', 'Transaction Date': '"Nov 22, 2026"', 'Transaction Time': '10:12:33 AM PST', 'Tax Type': '',
    'Transaction Type': 'Charge', 'Refund Type': '', 'Product Title': 'TypeScript in depth (Knowpay)', 'Product id': PKG, 'Product Type': 'inapp',
    'Sku Id': 'course_1', 'Hardware': 'samsung a54', 'Buyer Country': 'US', 'Buyer State': 'CA', 'Buyer Postal Code': '940', 'Buyer Currency': 'USD',
    'Amount (Buyer Currency)': '19.99', 'Currency Conversion Rate': '1', 'Merchant Currency': 'USD', 'Amount (Merchant Currency)': '19.99',
    'Base Plan ID': '', 'Offer ID': '', 'Group ID': '', 'First USD 1M Eligible': '', 'Service Fee %': '', 'Fee Description': '', 'Promotion ID': '',
  };
  return GOOGLE_PLAY_EARNINGS_COLUMNS.map((c) => over[c] ?? base[c]).join(',');
}
const A = 'GPA.3300-1111-2222-33333';
const B = 'GPA.3300-4444-5555-66666';
const C = 'GPA.3300-7777-8888-99999';
const D = 'GPA.3300-0000-1212-34343';

// ---- Positive cases -------------------------------------------------------------------------------

test('known answer: Charge + Google fee → one payment line, refunds, Tax ignored, rows of one order apart, USD and JPY', async () => {
  const csv = [
    HEADER,
    // A: USD, the fee row comes after another order's rows; a Tax row between.
    row({ 'Description': A, 'Transaction Type': 'Charge', 'Amount (Buyer Currency)': '19.99' }),
    row({ 'Description': B, 'Transaction Type': 'Charge', 'Buyer Country': 'JP', 'Buyer Currency': 'JPY', 'Amount (Buyer Currency)': '1200', 'Currency Conversion Rate': '0.0066', 'Amount (Merchant Currency)': '7.92', 'Transaction Time': '11:00:00 PM PST' }),
    row({ 'Description': A, 'Transaction Type': 'Tax', 'Tax Type': 'Sales tax', 'Amount (Buyer Currency)': '-1.50', 'Amount (Merchant Currency)': '-1.50' }),
    row({ 'Description': B, 'Transaction Type': 'Google fee', 'Buyer Country': 'JP', 'Buyer Currency': 'JPY', 'Amount (Buyer Currency)': '-180', 'Amount (Merchant Currency)': '-1.19', 'First USD 1M Eligible': 'Yes', 'Service Fee %': '15', 'Transaction Time': '11:00:00 PM PST' }),
    row({ 'Description': A, 'Transaction Type': 'Google fee', 'Amount (Buyer Currency)': '-3.00', 'Amount (Merchant Currency)': '-3.00', 'First USD 1M Eligible': 'Yes', 'Service Fee %': '15' }),
    // C: refunded the same day: the fee refund comes first, then the charge refund; Tax refund ignored.
    row({ 'Description': C, 'Transaction Type': 'Google fee refund', 'Refund Type': 'Full', 'Amount (Buyer Currency)': '0.75', 'Transaction Time': '3:04:05 PM PST' }),
    row({ 'Description': C, 'Transaction Type': 'Tax refund', 'Refund Type': 'Full', 'Amount (Buyer Currency)': '0.40', 'Transaction Time': '3:04:05 PM PST' }),
    row({ 'Description': C, 'Transaction Type': 'Charge refund', 'Refund Type': 'Full', 'Amount (Buyer Currency)': '-4.99', 'Transaction Time': '3:04:05 PM PST' }),
  ].join('\n') + '\n';
  assert.deepEqual(await readAll(file(csv)), [
    { lineNo: 2, kind: 'payment', channelReference: '', channelTransactionId: B, amount: 1200n, fee: 180n, currency: 'JPY', occurredAt: new Date('2026-11-23T07:00:00Z') },
    { lineNo: 1, kind: 'payment', channelReference: '', channelTransactionId: A, amount: 1999n, fee: 300n, currency: 'USD', occurredAt: new Date('2026-11-22T18:12:33Z') },
    { lineNo: 8, kind: 'refund', channelReference: '', channelTransactionId: `${C}:voided`, amount: 499n, fee: 75n, currency: 'USD', occurredAt: new Date('2026-11-22T23:04:05Z') },
  ]);
});

test('UTF-8 BOM, CRLF, quoted titles with commas and quotes, thousands separators, 24-hour PDT times, KRW, sub-cent fees rounded', async () => {
  const csv = '\uFEFF' + [
    HEADER,
    row({ 'Description': A, 'Transaction Date': '"Jul 04, 2026"', 'Transaction Time': '22:01:02 PDT', 'Product Title': '"Course, ""advanced"" edition"', 'Amount (Buyer Currency)': '"1,234.56"' }),
    row({ 'Description': A, 'Transaction Date': '"Jul 04, 2026"', 'Transaction Time': '22:01:02 PDT', 'Transaction Type': 'Google fee', 'Amount (Buyer Currency)': '-185.1835' }),
    row({ 'Description': B, 'Transaction Date': '"Jul 4, 2026"', 'Transaction Time': '12:00:01 AM PDT', 'Buyer Currency': 'KRW', 'Amount (Buyer Currency)': '11000' }),
    row({ 'Description': B, 'Transaction Date': '"Jul 4, 2026"', 'Transaction Time': '12:00:01 AM PDT', 'Transaction Type': 'Google fee', 'Buyer Currency': 'KRW', 'Amount (Buyer Currency)': '-1500.00' }),
  ].join('\r\n') + '\r\n';
  assert.deepEqual(await readAll(file(csv)), [
    { lineNo: 1, kind: 'payment', channelReference: '', channelTransactionId: A, amount: 123456n, fee: 18518n, currency: 'USD', occurredAt: new Date('2026-07-05T05:01:02Z') },
    { lineNo: 3, kind: 'payment', channelReference: '', channelTransactionId: B, amount: 11000n, fee: 1500n, currency: 'KRW', occurredAt: new Date('2026-07-04T07:00:01Z') },
  ]);
});

test('UTF-16LE with its BOM (how Play Console exports some reports) reads the same', async () => {
  const csv = [HEADER, row({}), row({ 'Transaction Type': 'Google fee', 'Amount (Buyer Currency)': '-3.00' })].join('\n') + '\n';
  const bytes = Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(csv, 'utf16le')]);
  assert.deepEqual(await readAll(file(bytes)), [
    { lineNo: 1, kind: 'payment', channelReference: '', channelTransactionId: A, amount: 1999n, fee: 300n, currency: 'USD', occurredAt: new Date('2026-11-22T18:12:33Z') },
  ]);
});

test('the writer\'s zip (PlayApps_YYYYMM.csv inside) reads back; several partial refunds of one order pair up; a charge without a fee row has fee 0', async () => {
  const at = new Date('2026-11-21T17:00:00Z');
  const rows: GooglePlayEarningsRow[] = [
    ...googlePlayOrderRows({ kind: 'payment', orderId: A, at, amount: 4999n, fee: 750n, currency: 'EUR', packageName: PKG, skuId: 'course_1', buyerCountry: 'DE' }),
    ...googlePlayOrderRows({ kind: 'refund', orderId: A, at: new Date(at.getTime() + 60_000), amount: 1000n, fee: 150n, currency: 'EUR', packageName: PKG, skuId: 'course_1', refundType: 'Partial' }),
    ...googlePlayOrderRows({ kind: 'refund', orderId: A, at: new Date(at.getTime() + 120_000), amount: 2000n, fee: 300n, currency: 'EUR', packageName: PKG, skuId: 'course_1', refundType: 'Partial' }),
    // A promotion Google funded in full: a charge and no fee row.
    googlePlayOrderRows({ kind: 'payment', orderId: D, at, amount: 500n, fee: 0n, currency: 'USD', packageName: PKG, skuId: 'course_2' })[0],
  ];
  const p = newPath('zip');
  await writeGooglePlayEarningsReport(p, rows);
  const head = fs.readFileSync(p).subarray(0, 4);
  assert.equal(head.readUInt32LE(0), 0x04034b50, 'a zip');
  assert.ok(fs.readFileSync(p).includes(Buffer.from('PlayApps_202611.csv')));
  assert.deepEqual(await readAll(p), [
    { lineNo: 1, kind: 'payment', channelReference: '', channelTransactionId: A, amount: 4999n, fee: 750n, currency: 'EUR', occurredAt: at },
    { lineNo: 3, kind: 'refund', channelReference: '', channelTransactionId: `${A}:voided`, amount: 1000n, fee: 150n, currency: 'EUR', occurredAt: new Date(at.getTime() + 60_000) },
    { lineNo: 5, kind: 'refund', channelReference: '', channelTransactionId: `${A}:voided`, amount: 2000n, fee: 300n, currency: 'EUR', occurredAt: new Date(at.getTime() + 120_000) },
    { lineNo: 7, kind: 'payment', channelReference: '', channelTransactionId: D, amount: 500n, fee: 0n, currency: 'USD', occurredAt: at },
  ]);
});

test('a month without transactions (the header only) has no lines', async () => {
  assert.deepEqual(await readAll(file(HEADER + '\n')), []);
  const p = newPath('zip');
  await writeGooglePlayEarningsReport(p, [], { month: '202611' });
  assert.deepEqual(await readAll(p), []);
});

test('Pacific dates and times: the writer\'s format, PST/PDT, 12 and 24 hours, no zone', () => {
  assert.deepEqual(reportDateTime(new Date('2026-11-22T18:12:33Z')), { date: 'Nov 22, 2026', time: '10:12:33 AM PST' });
  assert.deepEqual(reportDateTime(new Date('2026-07-04T07:00:00Z')), { date: 'Jul 4, 2026', time: '12:00:00 AM PDT' });
  assert.equal(parseReportDate('Nov 2, 2026'), '2026-11-02');
  assert.equal(parseReportDate('Feb 29, 2028'), '2028-02-29');
  for (const bad of ['Feb 29, 2026', 'Nov 31, 2026', '2026-11-22', 'November 22, 2026', '']) assert.equal(parseReportDate(bad), null, bad);
  assert.equal(parseReportTime('2026-11-22', '10:12:33 AM PST')?.toISOString(), '2026-11-22T18:12:33.000Z');
  assert.equal(parseReportTime('2026-11-22', '12:00:00 PM PST')?.toISOString(), '2026-11-22T20:00:00.000Z');
  assert.equal(parseReportTime('2026-07-04', '23:59:59 PDT')?.toISOString(), '2026-07-05T06:59:59.000Z');
  assert.equal(parseReportTime('2026-07-04', '8:00:00 AM')?.toISOString(), '2026-07-04T15:00:00.000Z');
  assert.equal(parseReportTime('2026-01-04', '8:00:00 AM')?.toISOString(), '2026-01-04T16:00:00.000Z');
  for (const bad of ['13:00:00 PM PST', '10:61:00 PST', '10:00:00 CET', 'noon']) assert.equal(parseReportTime('2026-11-22', bad), null, bad);
  assert.equal(pacificDay(new Date('2026-11-22T07:59:59Z')), '2026-11-21');
  assert.equal(pacificDay(new Date('2026-11-22T08:00:00Z')), '2026-11-22');
});

test('the connector\'s day filter keeps one Pacific day of one app, with the report\'s header', async () => {
  const rows: GooglePlayEarningsRow[] = [
    ...googlePlayOrderRows({ kind: 'payment', orderId: A, at: new Date('2026-11-21T07:59:59Z'), amount: 100n, fee: 15n, currency: 'USD', packageName: PKG, skuId: 's' }), // Nov 20 PST
    ...googlePlayOrderRows({ kind: 'payment', orderId: B, at: new Date('2026-11-21T08:00:00Z'), amount: 200n, fee: 30n, currency: 'USD', packageName: PKG, skuId: 's' }), // Nov 21
    ...googlePlayOrderRows({ kind: 'payment', orderId: C, at: new Date('2026-11-21T12:00:00Z'), amount: 300n, fee: 45n, currency: 'USD', packageName: 'com.other.app', skuId: 's' }),
    ...googlePlayOrderRows({ kind: 'refund', orderId: A, at: new Date('2026-11-22T07:59:59Z'), amount: 100n, fee: 15n, currency: 'USD', packageName: PKG, skuId: 's' }), // Nov 21
  ];
  const zip = newPath('zip');
  await writeGooglePlayEarningsReport(zip, rows);
  const out = newPath('csv');
  assert.deepEqual(await extractGooglePlayEarningsDay(zip, out, { date: '2026-11-21', packageName: PKG }), { rows: 8, kept: 4 });
  assert.equal(fs.readFileSync(out, 'utf8').split('\n')[0], HEADER);
  const lines = await readAll(out);
  assert.deepEqual(lines.map((l) => [l.kind, l.channelTransactionId, l.amount]), [['payment', B, 200n], ['refund', `${A}:voided`, 100n]]);
  const empty = newPath('csv');
  assert.deepEqual(await extractGooglePlayEarningsDay(zip, empty, { date: '2026-11-23', packageName: PKG }), { rows: 8, kept: 0 });
  assert.deepEqual(await readAll(empty), []);
});

const CURRENCIES = ['USD', 'EUR', 'JPY', 'KRW', 'GBP'] as const;
test('fast-check: whatever order the rows come in, each order\'s charge meets its fee', async () => {
  await fc.assert(fc.asyncProperty(
    fc.uniqueArray(fc.record({
      id: fc.integer({ min: 0, max: 99_999 }), amount: fc.bigInt({ min: 1n, max: 10_000_000n }), currency: fc.constantFrom(...CURRENCIES),
      refunded: fc.boolean(), tax: fc.boolean(), at: fc.integer({ min: Date.UTC(2026, 0, 1), max: Date.UTC(2026, 11, 31) }),
    }), { selector: (o) => o.id, maxLength: 25 }),
    fc.infiniteStream(fc.nat()),
    async (orders, noise) => {
      const rows: GooglePlayEarningsRow[] = [];
      for (const o of orders) {
        const orderId = `GPA.1000-2000-3000-${String(o.id).padStart(5, '0')}`;
        const fee = (o.amount * 15n + 50n) / 100n;
        const common = { orderId, at: new Date(o.at), amount: o.amount, fee, currency: o.currency, packageName: PKG, skuId: 'sku' };
        rows.push(...googlePlayOrderRows({ ...common, kind: 'payment' }));
        if (o.tax) rows.push({ ...rows[rows.length - 1]!, type: 'Tax', amountBuyer: -1n });
        if (o.refunded) rows.push(...googlePlayOrderRows({ ...common, kind: 'refund' }));
      }
      // Shuffle (the rows of one order end up anywhere).
      const it = noise[Symbol.iterator]();
      for (let i = rows.length - 1; i > 0; i--) {
        const j = it.next().value! % (i + 1);
        [rows[i], rows[j]] = [rows[j]!, rows[i]!];
      }
      const p = newPath('zip');
      await writeGooglePlayEarningsReport(p, rows, { month: '202611' });
      const got = await readAll(p);
      fs.rmSync(p);
      const key = (kind: string, id: string) => `${kind}|${id}`;
      const expected = new Map<string, [bigint, bigint, string]>();
      for (const o of orders) {
        const orderId = `GPA.1000-2000-3000-${String(o.id).padStart(5, '0')}`;
        const fee = (o.amount * 15n + 50n) / 100n;
        expected.set(key('payment', orderId), [o.amount, fee, o.currency]);
        if (o.refunded) expected.set(key('refund', `${orderId}:voided`), [o.amount, fee, o.currency]);
      }
      assert.equal(got.length, expected.size);
      assert.equal(new Set(got.map((l) => l.lineNo)).size, got.length, 'line numbers are unique');
      for (const l of got) assert.deepEqual([l.amount, l.fee, l.currency], expected.get(key(l.kind, l.channelTransactionId!)), `${l.kind} ${l.channelTransactionId}`);
    },
  ), { numRuns: 40 });
});

test('streams: 60k orders (120k rows) read in bounded memory', async () => {
  const p = newPath('zip');
  const n = 60_000;
  await writeGooglePlayEarningsReport(p, (function* () {
    for (let i = 0; i < n; i++) {
      yield* googlePlayOrderRows({ kind: i % 10 === 0 ? 'refund' : 'payment', orderId: `GPA.9000-0000-${String(Math.floor(i / 100000)).padStart(4, '0')}-${String(i % 100000).padStart(5, '0')}`,
        at: new Date(Date.UTC(2026, 10, 1) + i * 1000), amount: 1999n, fee: 300n, currency: 'USD', packageName: PKG, skuId: 'course_1' });
    }
  })(), { month: '202611' });
  const before = process.memoryUsage().heapUsed;
  let count = 0;
  let refunds = 0;
  let peak = 0;
  for await (const l of readGooglePlayBill(p)) {
    count++;
    if (l.kind === 'refund') refunds++;
    if (count % 20_000 === 0) peak = Math.max(peak, process.memoryUsage().heapUsed - before);
  }
  assert.equal(count, n);
  assert.equal(refunds, n / 10);
  assert.ok(peak < 64 * 1024 * 1024, `heap grew by ${Math.round(peak / 1048576)} MiB`);
});

// ---- Negative cases: not an earnings report, or a damaged one ---------------------------------------

test('an Alipay bill is refused: its zip holds two CSVs, its bare CSV is GBK', async () => {
  const alipayZip = newPath('zip');
  await writeAlipayBillZip(alipayZip, '2088123412341234', '2026-11-21', [
    { tradeNo: '2026112122001', outTradeNo: 'KP1', kind: 'payment', subject: '课程', createdAt: new Date(), finishedAt: new Date(), amount: 10000n, fee: 60n },
  ]);
  await rejectsFormat(alipayZip, /the zip holds 2 CSV files .*holds one CSV/);
  const gbk = file(iconv.encode(alipayBillCsv('2088123412341234', '2026-11-21', []), 'gbk'));
  await rejectsFormat(gbk, /not UTF-8 text/);
});

test('a WeChat Pay bill is refused: its first line is no earnings report header', async () => {
  const p = newPath('csv');
  await writeWechatpayBill(p, [{
    kind: 'payment', time: new Date(), appid: 'wx8888888888888888', mchid: '1900000109', transactionId: '4200001234202611210000000001', outTradeNo: 'KP1',
    openid: 'o1', tradeType: 'NATIVE', amount: 100n, feeMilliFen: 600n, rate: '0.60%', description: '课程',
  }]);
  await rejectsFormat(p, /first line \("交易时间,公众账号ID,商户号,特约商户号"\) is not a Google Play earnings report header/);
});

test('a PayPal report, a Stripe CSV, an empty file and random bytes are refused with the reason', async () => {
  await rejectsFormat(file('{"transaction_info":{"transaction_id":"5TY05013RG002845M","transaction_event_code":"T0006"}}\n'), /not a Google Play earnings report header/);
  await rejectsFormat(file('id,Type,Source,Amount,Fee,Net,Currency,Created (UTC)\ntxn_1,charge,ch_1,10.00,0.59,9.41,usd,2026-11-21 10:00\n'), /not a Google Play earnings report header/);
  await rejectsFormat(file(''), /empty/);
  await rejectsFormat(file(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0xff, 0xfe, 0x00, 0xc3, 0x28])), /not UTF-8 text/);
});

test('a truncated or damaged zip is refused', async () => {
  const good = newPath('zip');
  await writeGooglePlayEarningsReport(good, googlePlayOrderRows({ kind: 'payment', orderId: A, at: new Date(), amount: 1999n, fee: 300n, currency: 'USD', packageName: PKG, skuId: 's' }));
  const bytes = fs.readFileSync(good);
  await rejectsFormat(file(bytes.subarray(0, Math.floor(bytes.length / 2)), 'zip'), /not a readable zip/);
  // The directory intact, the compressed data broken.
  const broken = Buffer.from(bytes);
  for (let i = 40; i < 120; i++) broken[i] = broken[i]! ^ 0x5a;
  await rejectsFormat(file(broken, 'zip'), /could not be read \(.*\): a damaged or truncated file/);
});

test('a zip without a CSV is refused', async () => {
  const yazl = (await import('yazl')).default;
  const zip = new yazl.ZipFile();
  zip.addBuffer(Buffer.from('hello'), 'readme.txt');
  zip.end();
  const chunks: Buffer[] = [];
  for await (const c of zip.outputStream) chunks.push(c as Buffer);
  await rejectsFormat(file(Buffer.concat(chunks), 'zip'), /the zip holds no CSV file/);
});

test('a header without a column the reader needs is refused, naming the column', async () => {
  for (const missing of ['Amount (Buyer Currency)', 'Buyer Currency', 'Transaction Date', 'Product id'] as const) {
    const cols = GOOGLE_PLAY_EARNINGS_COLUMNS.filter((c) => c !== missing);
    const at = GOOGLE_PLAY_EARNINGS_COLUMNS.indexOf(missing);
    const body = row({}).split(/,(?=(?:[^"]*"[^"]*")*[^"]*$)/).filter((_, i) => i !== at).join(',');
    await rejectsFormat(file([cols.join(','), body].join('\n') + '\n'), new RegExp(`lacks the column "${missing.replace(/[()]/g, '\\$&')}"`));
  }
});

test('unreadable amounts are refused: words, a comma decimal, too many decimals on a charge, a negative charge, an unknown currency', async () => {
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ 'Amount (Buyer Currency)': 'ten' }, /line 2: unreadable Amount \(Buyer Currency\) "ten" for USD/],
    [{ 'Amount (Buyer Currency)': '"19,99"' }, /unreadable Amount \(Buyer Currency\) "19,99"/],
    [{ 'Amount (Buyer Currency)': '19.999' }, /unreadable Amount \(Buyer Currency\) "19.999"/],
    [{ 'Amount (Buyer Currency)': '1.5', 'Buyer Currency': 'JPY' }, /unreadable Amount \(Buyer Currency\) "1.5" for JPY/],
    [{ 'Amount (Buyer Currency)': '1e3' }, /unreadable Amount/],
    [{ 'Amount (Buyer Currency)': '-19.99' }, /a Charge of order .* with a negative amount/],
    [{ 'Buyer Currency': 'XYZ' }, /unknown Buyer Currency "XYZ"/],
  ];
  for (const [over, reason] of cases) await rejectsFormat(file([HEADER, row(over), row({ ...over, 'Transaction Type': 'Google fee' })].join('\n') + '\n'), reason);
  await rejectsFormat(file([HEADER, row({}), row({ 'Transaction Type': 'Google fee', 'Amount (Buyer Currency)': '"-3,00"' })].join('\n') + '\n'), /line 3: unreadable Amount/);
});

test('unreadable dates and times, a missing order id, a short row are refused', async () => {
  await rejectsFormat(file([HEADER, row({ 'Transaction Date': '2026-11-22' })].join('\n')), /unreadable Transaction Date "2026-11-22"/);
  await rejectsFormat(file([HEADER, row({ 'Transaction Date': '"Feb 30, 2026"' })].join('\n')), /unreadable Transaction Date/);
  await rejectsFormat(file([HEADER, row({ 'Transaction Time': '10:12 AM PST' })].join('\n')), /unreadable Transaction Time "10:12 AM PST"/);
  await rejectsFormat(file([HEADER, row({ 'Description': '' })].join('\n')), /a Charge row without an order id/);
  await rejectsFormat(file([HEADER, 'GPA.1,"Nov 22, 2026",Charge'].join('\n')), /line 2: 3 fields, the header has 26/);
});

test('a fee row without its charge, or in another currency, means a damaged report', async () => {
  await rejectsFormat(file([HEADER, row({ 'Transaction Type': 'Google fee', 'Amount (Buyer Currency)': '-3.00' })].join('\n')), /line 2: a Google fee row without its Charge row \(order GPA/);
  await rejectsFormat(file([HEADER, row({ 'Transaction Type': 'Google fee refund', 'Amount (Buyer Currency)': '3.00' })].join('\n')), /a Google fee refund row without its Charge refund row/);
  await rejectsFormat(file([HEADER, row({}), row({ 'Transaction Type': 'Google fee', 'Buyer Currency': 'EUR', 'Amount (Buyer Currency)': '-3.00' })].join('\n')), /the Google fee of order .* is in EUR, its charge \(line 2\) in USD/);
});

test('rows of an order too far apart are refused rather than held in memory', async () => {
  const p = newPath('csv');
  const out = fs.createWriteStream(p);
  out.write(HEADER + '\n');
  const id = (i: number) => `GPA.7000-0000-${String(Math.floor(i / 100000)).padStart(4, '0')}-${String(i % 100000).padStart(5, '0')}`;
  let batch = '';
  for (let i = 0; i <= MAX_PENDING_ORDER_ROWS; i++) {
    batch += row({ 'Description': id(i) }) + '\n';
    if (batch.length > 1 << 20) { out.write(batch); batch = ''; }
  }
  out.write(batch);
  out.end(row({ 'Description': id(0), 'Transaction Type': 'Google fee', 'Amount (Buyer Currency)': '-3.00' }) + '\n');
  await new Promise<void>((r) => out.on('close', () => r()));
  await rejectsFormat(p, /more than 100000 rows wait for the other row of their order/);
});

test('the writer\'s CSV chunks start with Google\'s header, and every row has its 26 fields', () => {
  const text = [...googlePlayEarningsCsvChunks(googlePlayOrderRows({ kind: 'payment', orderId: A, at: new Date(), amount: 1n, fee: 0n, currency: 'USD', packageName: PKG, skuId: 's', productTitle: 'a, "b"' }))].join('');
  const [header, ...rows] = text.trimEnd().split('\n');
  assert.equal(header, HEADER);
  for (const r of rows) assert.equal(r.split(/,(?=(?:[^"]*"[^"]*")*[^"]*$)/).length, 26);
});
