/**
 * The Stripe bill (JSON Lines of balance transactions): known answers on a hand-written sample in
 * Stripe's shape, refusals of what is not one, and a writer ↔ reader round trip.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { BillFormatError, type BillLine } from '../../reconciliation/types.ts';
import { feeInPresentment, MAX_BILL_LINE_CHARS, rateFraction, readStripeBill, writeStripeBill } from './bill.ts';
import { readAllLines, billFiles } from '../../../test/support/assertions.ts';

const { dir, fresh, file } = billFiles('stripe-bill-test');

const readAll = (p: string) => readAllLines(readStripeBill, p);

async function refuses(p: string, reason: RegExp) {
  await assert.rejects(readAll(p), (err: unknown) => {
    assert.ok(err instanceof BillFormatError, String(err));
    assert.match(err.message, reason);
    return true;
  });
}

const T = 1767225600; // 2026-01-01T00:00:00Z

/** Balance transactions as Stripe returns them with expand[]=data.source (trimmed of fields the reader ignores). */
const SAMPLE = [
  // A card charge in USD; our metadata on the charge itself.
  { id: 'txn_3Usd1', object: 'balance_transaction', amount: 10000, available_on: T + 172800, created: T + 60, currency: 'usd', description: 'Course', exchange_rate: null,
    fee: 320, fee_details: [{ amount: 320, application: null, currency: 'usd', description: 'Stripe processing fees', type: 'stripe_fee' }], net: 9680,
    reporting_category: 'charge', status: 'pending', type: 'charge',
    source: { id: 'ch_3Usd1', object: 'charge', amount: 10000, currency: 'usd', metadata: { knowpay_reference: 'KPusd1', knowpay_payment_id: 'pay_1' }, payment_intent: 'pi_3Usd1', status: 'succeeded' } },
  // JPY is zero-decimal: 500 is ¥500. The charge has no metadata; its expanded PaymentIntent does.
  { id: 'txn_3Jpy1', object: 'balance_transaction', amount: 500, available_on: T + 172800, created: T + 120, currency: 'jpy', description: null, exchange_rate: null,
    fee: 45, fee_details: [{ amount: 45, currency: 'jpy', type: 'stripe_fee' }], net: 455, reporting_category: 'charge', status: 'pending', type: 'charge',
    source: { id: 'ch_3Jpy1', object: 'charge', amount: 500, currency: 'jpy', metadata: {}, payment_intent: { id: 'pi_3Jpy1', object: 'payment_intent', metadata: { knowpay_reference: 'KPjpy1' } } } },
  // A payout: not a trade of ours.
  { id: 'txn_3Po1', object: 'balance_transaction', amount: -50000, available_on: T, created: T + 180, currency: 'usd', fee: 0, fee_details: [], net: -50000,
    reporting_category: 'payout', status: 'available', type: 'payout', source: { id: 'po_1', object: 'payout', amount: 50000 } },
  // A partial refund: negative, no fee given back; CRLF line end.
  { id: 'txn_3Re1', object: 'balance_transaction', amount: -2500, available_on: T + 172800, created: T + 240, currency: 'usd', fee: 0, fee_details: [], net: -2500,
    reporting_category: 'refund', status: 'pending', type: 'refund',
    source: { id: 're_3Re1', object: 'refund', amount: 2500, currency: 'usd', charge: 'ch_3Usd1', payment_intent: 'pi_3Usd1', status: 'succeeded',
      metadata: { knowpay_reference: 'KPusd1', knowpay_refund_reference: 'RFusd1a' } } },
  // A refund on old pricing that gave the fee back (fee negative on the refund).
  { id: 'txn_3Re2', object: 'balance_transaction', amount: -10000, created: T + 300, currency: 'eur', fee: -320, fee_details: [], net: -9680, reporting_category: 'refund', type: 'refund',
    source: { id: 're_3Re2', object: 'refund', amount: 10000, currency: 'eur', payment_intent: { id: 'pi_3Eur1', object: 'payment_intent', metadata: { knowpay_reference: 'KPeur1' } }, metadata: { knowpay_refund_reference: 'RFeur1' } } },
  // A refund that failed later: Stripe books the money back; not a trade line.
  { id: 'txn_3Rf1', object: 'balance_transaction', amount: 2500, created: T + 360, currency: 'usd', fee: 0, fee_details: [], net: 2500, reporting_category: 'refund_failure', type: 'refund_failure',
    source: { id: 're_3Re1', object: 'refund', metadata: { knowpay_reference: 'KPusd1', knowpay_refund_reference: 'RFusd1a' } } },
  // A non-card payment (type payment, py_ source).
  { id: 'txn_3Py1', object: 'balance_transaction', amount: 2000, created: T + 420, currency: 'eur', fee: 88, fee_details: [], net: 1912, reporting_category: 'charge', type: 'payment',
    source: { id: 'py_3Py1', object: 'charge', metadata: { knowpay_reference: 'KPeur2' }, payment_intent: 'pi_3Py1' } },
  // ISK: Stripe counts hundredths (50000 = 500 kr); the fee 1480 is 14.80 kr, rounded to 15.
  { id: 'txn_3Isk1', object: 'balance_transaction', amount: 50000, created: T + 480, currency: 'isk', fee: 1480, fee_details: [], net: 48520, reporting_category: 'charge', type: 'charge',
    source: { id: 'ch_3Isk1', object: 'charge', metadata: { knowpay_reference: 'KPisk1' }, payment_intent: 'pi_3Isk1' } },
  // A charge not made by Knowpay (dashboard): it keeps the PaymentIntent id as its reference.
  { id: 'txn_3Ext1', object: 'balance_transaction', amount: 700, created: T + 540, currency: 'usd', fee: 50, fee_details: [], net: 650, reporting_category: 'charge', type: 'charge',
    source: { id: 'ch_3Ext1', object: 'charge', metadata: {}, payment_intent: 'pi_3Ext1' } },
  // A refund made in the dashboard: no refund number of ours.
  { id: 'txn_3Ext2', object: 'balance_transaction', amount: -700, created: T + 600, currency: 'usd', fee: 0, fee_details: [], net: -700, reporting_category: 'refund', type: 'refund',
    source: { id: 're_3Ext2', object: 'refund', metadata: {}, payment_intent: 'pi_3Ext1', charge: 'ch_3Ext1' } },
];

const at = (s: number) => new Date((T + s) * 1000);

test('reader: the sample gives the payment and refund lines, amounts and fees in minor units, other types skipped', async () => {
  const text = SAMPLE.map((o, i) => JSON.stringify(o) + (i === 3 ? '\r\n' : '\n')).join('') + '\n   \n';
  const lines = await readAll(file(text));
  assert.deepEqual(lines, [
    { lineNo: 1, kind: 'payment', channelReference: 'KPusd1', channelTransactionId: 'pi_3Usd1', amount: 10000n, fee: 320n, currency: 'USD', occurredAt: at(60) },
    { lineNo: 2, kind: 'payment', channelReference: 'KPjpy1', channelTransactionId: 'pi_3Jpy1', amount: 500n, fee: 45n, currency: 'JPY', occurredAt: at(120) },
    { lineNo: 4, kind: 'refund', channelReference: 'KPusd1', channelTransactionId: 're_3Re1', refundReference: 'RFusd1a', amount: 2500n, fee: 0n, currency: 'USD', occurredAt: at(240) },
    { lineNo: 5, kind: 'refund', channelReference: 'KPeur1', channelTransactionId: 're_3Re2', refundReference: 'RFeur1', amount: 10000n, fee: 320n, currency: 'EUR', occurredAt: at(300) },
    { lineNo: 7, kind: 'payment', channelReference: 'KPeur2', channelTransactionId: 'pi_3Py1', amount: 2000n, fee: 88n, currency: 'EUR', occurredAt: at(420) },
    { lineNo: 8, kind: 'payment', channelReference: 'KPisk1', channelTransactionId: 'pi_3Isk1', amount: 500n, fee: 15n, currency: 'ISK', occurredAt: at(480) },
    { lineNo: 9, kind: 'payment', channelReference: 'pi_3Ext1', channelTransactionId: 'pi_3Ext1', amount: 700n, fee: 50n, currency: 'USD', occurredAt: at(540) },
    { lineNo: 10, kind: 'refund', channelReference: 'pi_3Ext1', channelTransactionId: 're_3Ext2', amount: 700n, fee: 0n, currency: 'USD', occurredAt: at(600) },
  ]);
});

test('reader: an empty file is a day without transactions; a byte-order mark is tolerated', async () => {
  assert.deepEqual(await readAll(file('')), []);
  const lines = await readAll(file('\uFEFF' + JSON.stringify(SAMPLE[0]) + '\n'));
  assert.equal(lines.length, 1);
  assert.equal(lines[0]!.channelReference, 'KPusd1');
});

test('reader: what is not Stripe balance transactions is refused with the reason', async () => {
  await refuses(file('支付宝交易号,商户订单号,业务类型\n2026,KP1,交易\n'), /first line is not JSON: not Stripe balance transactions/);
  await refuses(file(Buffer.from([0x50, 0x4b, 0x03, 0x04, 0x00, 0x01])), /first line is not JSON/);
  // The list envelope itself, a single JSON document, is not the JSON Lines bill.
  await refuses(file(JSON.stringify({ object: 'list', data: [SAMPLE[0]], has_more: false }) + '\n'), /first line is not a JSON object with object "balance_transaction"/);
  await refuses(file('[1,2]\n'), /not Stripe balance transactions/);
  await refuses(file(JSON.stringify(SAMPLE[0]) + '\n{"object":"charge","id":"ch_1"}\n'), /line 2 is not a balance_transaction/);
  await refuses(file(JSON.stringify(SAMPLE[0]) + '\nnot json\n'), /line 2 is not JSON/);
  await refuses(file(JSON.stringify({ ...SAMPLE[0], source: 'ch_3Usd1' }) + '\n'), /source is not expanded/);
  await refuses(file(JSON.stringify({ ...SAMPLE[0], amount: 100.5 }) + '\n'), /amount is not an integer/);
  await refuses(file(JSON.stringify({ ...SAMPLE[0], currency: 'xxx' }) + '\n'), /unknown currency/);
  await refuses(file(JSON.stringify({ ...SAMPLE[3], amount: 2500 }) + '\n'), /refund with a positive amount/);
  await refuses(file(JSON.stringify({ ...SAMPLE[7], amount: 50050 }) + '\n'), /not a whole number of minor units/);
  await refuses(file('x'.repeat(MAX_BILL_LINE_CHARS + 10)), /first line is longer than/);
});

// ---- Round trip -----------------------------------------------------------------------------------

interface Row { kind: 'payment' | 'refund'; currency: 'usd' | 'jpy' | 'eur'; amount: number; fee: number; ref: string; refundRef: string; created: number; piInMetadata: boolean }

const rowArb: fc.Arbitrary<Row> = fc.record({
  kind: fc.constantFrom('payment' as const, 'refund' as const),
  currency: fc.constantFrom('usd' as const, 'jpy' as const, 'eur' as const),
  amount: fc.integer({ min: 1, max: 99_999_999 }),
  fee: fc.integer({ min: 0, max: 5_000_000 }),
  ref: fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/),
  refundRef: fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/),
  created: fc.integer({ min: 1_500_000_000, max: 2_000_000_000 }),
  piInMetadata: fc.boolean(),
});

function stripeShape(r: Row, i: number): Record<string, unknown> {
  const pi = r.piInMetadata ? { id: `pi_${i}x`, object: 'payment_intent', metadata: { knowpay_reference: r.ref } } : `pi_${i}x`;
  const metadata = r.piInMetadata ? {} : { knowpay_reference: r.ref };
  if (r.kind === 'payment') {
    return { id: `txn_${i}c`, object: 'balance_transaction', amount: r.amount, fee: r.fee, net: r.amount - r.fee, currency: r.currency, type: 'charge', reporting_category: 'charge', created: r.created,
      source: { id: `ch_${i}c`, object: 'charge', metadata, payment_intent: pi } };
  }
  return { id: `txn_${i}r`, object: 'balance_transaction', amount: -r.amount, fee: 0, net: -r.amount, currency: r.currency, type: 'refund', reporting_category: 'refund', created: r.created,
    source: { id: `re_${i}r`, object: 'refund', metadata: { ...metadata, knowpay_refund_reference: r.refundRef }, payment_intent: pi } };
}

test('writer ↔ reader: what Stripe lists comes back as the lines it means (property)', async () => {
  await fc.assert(fc.asyncProperty(fc.array(rowArb, { maxLength: 30 }), async (rows) => {
    const p = fresh();
    assert.equal(await writeStripeBill(p, rows.map(stripeShape)), rows.length);
    const lines = await readAll(p);
    assert.deepEqual(lines, rows.map((r, i): BillLine => ({
      lineNo: i + 1, kind: r.kind, channelReference: r.ref, channelTransactionId: r.kind === 'payment' ? `pi_${i}x` : `re_${i}r`,
      ...(r.kind === 'refund' ? { refundReference: r.refundRef } : {}),
      amount: BigInt(r.amount), fee: r.kind === 'payment' ? BigInt(r.fee) : 0n, currency: r.currency.toUpperCase(), occurredAt: new Date(r.created * 1000),
    })));
    fs.rmSync(p);
  }), { numRuns: 60 });
});

test('reader streams: 50,000 lines written from a generator are read back in one pass', async () => {
  const p = path.join(dir, 'big.jsonl');
  const count = 50_000;
  await writeStripeBill(p, (function* () {
    for (let i = 0; i < count; i++) yield stripeShape({ kind: i % 10 === 0 ? 'refund' : 'payment', currency: 'usd', amount: 1000 + (i % 97), fee: 59, ref: `KP${i}`, refundRef: `RF${i}`, created: T + i, piInMetadata: false }, i);
  })());
  let lines = 0;
  let total = 0n;
  for await (const l of readStripeBill(p)) {
    lines++;
    total += l.kind === 'payment' ? l.amount : -l.amount;
  }
  let expected = 0n;
  for (let i = 0; i < count; i++) expected += BigInt((i % 10 === 0 ? -1 : 1) * (1000 + (i % 97)));
  assert.equal(lines, count);
  assert.equal(total, expected);
});

describeCrossCurrency();
function describeCrossCurrency() {
  const charge = (id: string, o: Record<string, unknown>, source: Record<string, unknown>) => JSON.stringify({
    id, object: 'balance_transaction', fee_details: [], status: 'pending', created: T, type: 'charge', reporting_category: 'charge', ...o,
    source: { id: `ch_${id.slice(4)}`, object: 'charge', payment_intent: `pi_${id.slice(4)}`, metadata: { knowpay_reference: `KP${id.slice(4)}` }, ...source },
  });
  test('reader: a charge settled in another currency carries what the buyer paid, and the fee at the same rate', async () => {
    const lines = await readAll(file([
      // EUR 14.00 settled as USD 15.23 (rate 1.0879), fee USD 0.74 → EUR 0.68.
      charge('txn_Eur1', { amount: 1523, fee: 74, net: 1449, currency: 'usd', exchange_rate: 1.0879 }, { amount: 1400, currency: 'eur' }),
      // JPY 2000 (zero-decimal) settled as USD 13.36 (rate 0.00668), fee USD 0.69 → JPY 103.
      charge('txn_Jpy1', { amount: 1336, fee: 69, net: 1267, currency: 'usd', exchange_rate: 0.00668 }, { amount: 2000, currency: 'jpy' }),
      // Same currency: exchange_rate null, the line as booked.
      charge('txn_Usd1', { amount: 1500, fee: 74, net: 1426, currency: 'usd', exchange_rate: null }, { amount: 1500, currency: 'usd' }),
      // A refund of EUR 5.00 booked as USD −5.44.
      JSON.stringify({ id: 'txn_Ref1', object: 'balance_transaction', amount: -544, fee: 0, net: -544, currency: 'usd', exchange_rate: 1.0879, type: 'refund', created: T,
        source: { id: 're_1', object: 'refund', amount: 500, currency: 'eur', payment_intent: 'pi_Eur1', metadata: { knowpay_reference: 'KPEur1', knowpay_refund_reference: 'KPR1' } } }),
    ].join('\n') + '\n'));
    assert.deepEqual(lines.map((l) => [l.kind, l.channelReference, l.amount, l.fee, l.currency]), [
      ['payment', 'KPEur1', 1400n, 68n, 'EUR'],
      ['payment', 'KPJpy1', 2000n, 103n, 'JPY'],
      ['payment', 'KPUsd1', 1500n, 74n, 'USD'],
      ['refund', 'KPEur1', 500n, 0n, 'EUR'],
    ]);
  });
  test('reader: a cross-currency line without a usable exchange_rate, or with a bad source amount, is refused', async () => {
    await refuses(file(charge('txn_Eur2', { amount: 1523, fee: 74, currency: 'usd', exchange_rate: null }, { amount: 1400, currency: 'eur' }) + '\n'), /exchange_rate/);
    await refuses(file(charge('txn_Eur3', { amount: 1523, fee: 74, currency: 'usd', exchange_rate: -1 }, { amount: 1400, currency: 'eur' }) + '\n'), /exchange_rate/);
    await refuses(file(charge('txn_Eur4', { amount: 1523, fee: 74, currency: 'usd', exchange_rate: '1.08' }, { amount: 1400, currency: 'eur' }) + '\n'), /exchange_rate/);
    await refuses(file(charge('txn_Eur5', { amount: 1523, fee: 74, currency: 'usd', exchange_rate: 1.0879 }, { amount: 14.5, currency: 'eur' }) + '\n'), /source's amount/);
    await refuses(file(charge('txn_Eur6', { amount: 1523, fee: 74, currency: 'usd', exchange_rate: 1.0879 }, { amount: -1, currency: 'eur' }) + '\n'), /source's amount/);
  });
  test('fee conversion is exact decimal arithmetic, half up', () => {
    assert.deepEqual(rateFraction(1.0879), { num: 10879n, den: 10000n });
    assert.deepEqual(rateFraction(2), { num: 2n, den: 1n });
    assert.deepEqual(rateFraction(1e-7), { num: 1n, den: 10000000n });
    for (const bad of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) assert.equal(rateFraction(bad), null);
    // 0.5 of a minor unit rounds up; just below rounds down.
    assert.equal(feeInPresentment(1n, 'USD', 'EUR', { num: 2n, den: 1n }), 1n);
    assert.equal(feeInPresentment(1n, 'USD', 'EUR', { num: 3n, den: 1n }), 0n);
    assert.equal(feeInPresentment(100n, 'USD', 'JPY', { num: 1n, den: 150n }), 150n);
    assert.equal(feeInPresentment(150n, 'JPY', 'USD', { num: 150n, den: 1n }), 100n);
  });
}
