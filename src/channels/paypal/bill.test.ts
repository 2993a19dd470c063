/**
 * PayPal bill reader (bill.ts), without a database: a hand-written Transaction Search report in
 * PayPal's shape (known answer, edge cases), files that are not such a report, and writer ↔ reader
 * round trips (fast-check).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { BillFormatError, type BillLine } from '../../reconciliation/types.ts';
import { paypalTransactionDetail, readPaypalBill, writePaypalBill, parsePayPalTime, type PayPalBillRow } from './bill.ts';
import { readAllLines, billFiles } from '../../../test/support/assertions.ts';

const { dir, fresh, file } = billFiles('paypal-bill-test');
const readAll = (p: string) => readAllLines(readPaypalBill, p);

const usd = (value: string) => ({ currency_code: 'USD', value });
const info = (o: Record<string, unknown>) => JSON.stringify({ transaction_info: { paypal_account_id: 'MERCHANT123', protection_eligibility: '01', ...o } });

test('known answer: payments, refunds and what is skipped, in PayPal Transaction Search shape', async () => {
  const lines = [
    // A captured Orders v2 payment: custom_field and invoice_id both carry our trade number.
    info({ transaction_id: '5TY05013RG002845M', transaction_event_code: 'T0006', transaction_initiation_date: '2024-03-05T10:15:30+0000',
      transaction_updated_date: '2024-03-05T10:15:30+0000', transaction_amount: usd('12.34'), fee_amount: usd('-0.92'), transaction_status: 'S',
      invoice_id: 'KP20240305A', custom_field: 'KP20240305A', protection_eligibility: '01' }),
    // Only invoice_id, RFC 3339 date with Z and fraction, no fee at all.
    info({ transaction_id: '8MC585209K746392H', transaction_event_code: 'T0003', transaction_initiation_date: '2024-03-05T11:00:00.250Z',
      transaction_amount: usd('5.00'), transaction_status: 'S', invoice_id: 'KP20240305B' }),
    // Pending, reversed and denied payments are no payment (yet).
    info({ transaction_id: '1AB23456CD789012E', transaction_event_code: 'T0006', transaction_amount: usd('9.99'), fee_amount: usd('-0.84'), transaction_status: 'P', custom_field: 'KP20240305C' }),
    info({ transaction_id: '2AB23456CD789012E', transaction_event_code: 'T0006', transaction_amount: usd('9.99'), transaction_status: 'V', custom_field: 'KP20240305D' }),
    info({ transaction_id: '3AB23456CD789012E', transaction_event_code: 'T0006', transaction_amount: usd('9.99'), transaction_status: 'D', custom_field: 'KP20240305E' }),
    '',
    // A refund: negative amount, PayPal returns part of the fee (positive fee_amount); invoice_id = our refund number.
    info({ transaction_id: '1JU08902781691411', paypal_reference_id: '5TY05013RG002845M', paypal_reference_id_type: 'TXN', transaction_event_code: 'T1107',
      transaction_initiation_date: '2024-03-05T12:00:00-0700', transaction_amount: usd('-10.00'), fee_amount: usd('0.35'), transaction_status: 'S',
      invoice_id: 'KR20240305A', custom_field: 'KP20240305A' }),
    // A pending refund, a reversal (T1106), a withdrawal (T0400), a payment we sent (negative T0007): skipped.
    info({ transaction_id: '4AB23456CD789012E', transaction_event_code: 'T1107', transaction_amount: usd('-1.00'), transaction_status: 'P', invoice_id: 'KR20240305B', custom_field: 'KP20240305A' }),
    info({ transaction_id: '5AB23456CD789012E', transaction_event_code: 'T1106', transaction_amount: usd('-2.00'), transaction_status: 'S', custom_field: 'KP20240305B' }),
    info({ transaction_id: '6AB23456CD789012E', transaction_event_code: 'T0400', transaction_amount: usd('-100.00'), transaction_status: 'S' }),
    info({ transaction_id: '7AB23456CD789012E', transaction_event_code: 'T0007', transaction_amount: usd('-3.00'), fee_amount: usd('0.00'), transaction_status: 'S', invoice_id: 'X1' }),
    // A payment that carries no reference of ours (a PayPal.me payment): not our trade.
    info({ transaction_id: '8AB23456CD789012E', transaction_event_code: 'T0000', transaction_amount: usd('4.00'), fee_amount: usd('-0.63'), transaction_status: 'S' }),
    // A whole search answer on one line (saved straight from the API); JPY has no decimals; lower-case currency.
    JSON.stringify({ transaction_details: [
      { transaction_info: { transaction_id: '9AB23456CD789012E', transaction_event_code: 'T0006', transaction_initiation_date: '2024-03-05T23:59:59+0000',
        transaction_amount: { currency_code: 'jpy', value: '1500' }, fee_amount: { currency_code: 'JPY', value: '-101' }, transaction_status: 'S', custom_field: 'KP20240305F' },
        payer_info: { email_address: 'buyer@example.com' } },
    ], account_number: 'MERCHANT123', page: 1, total_items: 1, total_pages: 1, last_refreshed_datetime: '2024-03-06T02:59:59+0000' }),
  ];
  const got = await readAll(file('\uFEFF' + lines.join('\r\n') + '\r\n'));
  assert.deepEqual(got, [
    { lineNo: 1, kind: 'payment', channelReference: 'KP20240305A', channelTransactionId: '5TY05013RG002845M', amount: 1234n, fee: 92n, currency: 'USD', occurredAt: new Date('2024-03-05T10:15:30Z') },
    { lineNo: 2, kind: 'payment', channelReference: 'KP20240305B', channelTransactionId: '8MC585209K746392H', amount: 500n, fee: 0n, currency: 'USD', occurredAt: new Date('2024-03-05T11:00:00.250Z') },
    { lineNo: 6, kind: 'refund', channelReference: 'KP20240305A', refundReference: 'KR20240305A', channelTransactionId: '1JU08902781691411', amount: 1000n, fee: 35n, currency: 'USD', occurredAt: new Date('2024-03-05T19:00:00Z') },
    { lineNo: 12, kind: 'payment', channelReference: 'KP20240305F', channelTransactionId: '9AB23456CD789012E', amount: 1500n, fee: 101n, currency: 'JPY', occurredAt: new Date('2024-03-05T23:59:59Z') },
  ]);
});

test('an empty report (a day without transactions) has no lines', async () => {
  assert.deepEqual(await readAll(file('')), []);
  assert.deepEqual(await readAll(file('\n\n')), []);
});

test('not a PayPal report → BillFormatError with the reason', async () => {
  const cases: Array<[string | Buffer, RegExp]> = [
    ['支付宝交易号,商户订单号,业务类型\n2024,KP1,交易\n', /line 1 is not JSON/],
    ['{"id":"txn_1","object":"balance_transaction","amount":100}\n', /no transaction_info/],
    ['{"transaction_info":{"transaction_id":"X"}}\n', /transaction_event_code/],
    [info({ transaction_id: 'A', transaction_event_code: 'T0006', transaction_status: 'S', transaction_amount: usd('ten'), custom_field: 'KP1' }) + '\n', /unreadable transaction_amount/],
    [info({ transaction_id: 'A', transaction_event_code: 'T0006', transaction_status: 'S', transaction_amount: { currency_code: 'XYZ', value: '1.00' }, custom_field: 'KP1' }) + '\n', /unknown currency/],
    [info({ transaction_id: 'A', transaction_event_code: 'T0006', transaction_status: 'S', transaction_amount: usd('1.00'), fee_amount: { currency_code: 'EUR', value: '-0.10' }, custom_field: 'KP1' }) + '\n', /fee in EUR/],
    ['[1,2,3]\n', /no transaction_info/],
    [Buffer.from([0x50, 0x4b, 0x03, 0x04, 0x00, 0xff, 0x0a]), /not JSON/],
    ['{' + 'x'.repeat(1100 * 1024), /longer than/],
  ];
  for (const [content, reason] of cases) {
    await assert.rejects(readAll(file(content)), (err: unknown) => {
      assert.ok(err instanceof BillFormatError, String(err));
      assert.match(err.message, reason);
      return true;
    });
  }
  // The valid lines before a bad one are read; the bad one still fails the file.
  const good = info({ transaction_id: 'A', transaction_event_code: 'T0006', transaction_status: 'S', transaction_amount: usd('1.00'), custom_field: 'KP1' });
  await assert.rejects(readAll(file(`${good}\nnot json\n`)), /line 2 is not JSON/);
});

test('PayPal times: +0000, ±hh:mm, Z, fractions; nonsense → undefined', () => {
  assert.equal(parsePayPalTime('2024-03-05T10:15:30+0000')?.toISOString(), '2024-03-05T10:15:30.000Z');
  assert.equal(parsePayPalTime('2024-03-05T10:15:30+08:00')?.toISOString(), '2024-03-05T02:15:30.000Z');
  assert.equal(parsePayPalTime('2024-03-05T10:15:30.123456Z')?.toISOString(), '2024-03-05T10:15:30.123Z');
  for (const bad of ['2024-03-05', '2024-03-05 10:15:30', 'yesterday', 42, null]) assert.equal(parsePayPalTime(bad), undefined);
});

const CODES = ['T0006', 'T0003', 'T0000', 'T1107', 'T1106', 'T0400', 'T1201'] as const;
const rowArb = fc.record({
  transactionId: fc.stringMatching(/^[0-9A-Z]{17}$/),
  eventCode: fc.constantFrom(...CODES),
  status: fc.constantFrom('S', 'S', 'S', 'P', 'V', 'D'),
  amount: fc.bigInt({ min: 1n, max: 10_000_000n }),
  fee: fc.bigInt({ min: 0n, max: 100_000n }),
  currency: fc.constantFrom('USD', 'EUR', 'JPY', 'GBP'),
  invoiceId: fc.option(fc.stringMatching(/^K[PR][0-9A-Za-z_-]{1,29}$/), { nil: null }),
  customField: fc.option(fc.stringMatching(/^KP[0-9A-Za-z_-]{1,28}$/), { nil: null }),
  at: fc.integer({ min: Date.UTC(2020, 0, 1) / 1000, max: Date.UTC(2030, 0, 1) / 1000 }),
});

test('round trip: what the writer writes, the reader reads (payments S with a reference, refunds S)', async () => {
  await fc.assert(fc.asyncProperty(fc.array(rowArb, { maxLength: 40 }), async (specs) => {
    const rows: PayPalBillRow[] = specs.map((s) => {
      const refund = s.eventCode === 'T1107' || s.eventCode === 'T1106' || s.eventCode === 'T0400';
      return {
        transactionId: s.transactionId, eventCode: s.eventCode, status: s.status, currency: s.currency,
        amountMinor: refund ? -s.amount : s.amount, feeMinor: refund ? s.fee : -s.fee,
        invoiceId: s.invoiceId, customField: s.customField, initiatedAt: new Date(s.at * 1000),
      };
    });
    const p = fresh();
    assert.equal(await writePaypalBill(p, rows.map(paypalTransactionDetail)), rows.length);
    const got = await readAll(p);
    fs.rmSync(p);
    const expected: BillLine[] = [];
    specs.forEach((s, i) => {
      if (s.status !== 'S') return;
      const common = { lineNo: i + 1, channelTransactionId: s.transactionId, amount: s.amount, fee: s.fee, currency: s.currency, occurredAt: new Date(s.at * 1000) };
      if (s.eventCode === 'T1107') {
        expected.push({ ...common, kind: 'refund', channelReference: s.customField ?? '', ...(s.invoiceId ? { refundReference: s.invoiceId } : {}) });
      } else if (s.eventCode.startsWith('T00') && (s.customField ?? s.invoiceId)) {
        expected.push({ ...common, kind: 'payment', channelReference: (s.customField ?? s.invoiceId)! });
      }
    });
    assert.deepEqual(got, expected);
  }), { numRuns: 60 });
});

test('streams: 50k transactions read in constant memory', async () => {
  const p = path.join(dir, 'big.jsonl');
  const n = 50_000;
  await writePaypalBill(p, (function* () {
    for (let i = 0; i < n; i++) {
      yield paypalTransactionDetail({ transactionId: `TX${String(i).padStart(15, '0')}`, eventCode: i % 10 === 0 ? 'T1107' : 'T0006', status: 'S',
        amountMinor: i % 10 === 0 ? -500n : 1234n, feeMinor: i % 10 === 0 ? 0n : -92n, currency: 'USD', invoiceId: i % 10 === 0 ? `KR${i}` : `KP${i}`, customField: `KP${i}`,
        initiatedAt: new Date(Date.UTC(2024, 2, 5) + i) });
    }
  })());
  const before = process.memoryUsage().heapUsed;
  let count = 0;
  let refunds = 0;
  let peak = 0;
  for await (const l of readPaypalBill(p)) {
    count++;
    if (l.kind === 'refund') refunds++;
    if (count % 20_000 === 0) peak = Math.max(peak, process.memoryUsage().heapUsed - before);
  }
  assert.equal(count, n);
  assert.equal(refunds, n / 10);
  assert.ok(peak < 64 * 1024 * 1024, `heap grew by ${Math.round(peak / 1048576)} MiB`);
});
