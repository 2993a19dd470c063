/**
 * A day's bill of WeChat Pay, Stripe and PayPal, each in the channel's own format (WeChat's
 * backtick CSV with its summary, Stripe's balance transactions, PayPal's Transaction Search
 * items), with the same planted differences as the Alipay test: a lost notification, an amount
 * that differs, a line only on our side, a line only on theirs. Exactly those are found, and the
 * lost notification is healed by asking the channel.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { eventually, startTestService, type TestService } from '../support/service.ts';
import { DRIVERS, simulate, type Driver } from '../support/drivers.ts';
import { writeWechatpayBill, wechatpayFeeMilliFen, type WechatpayBillRow } from '../../src/channels/wechatpay/bill.ts';
import { writeStripeBill } from '../../src/channels/stripe/bill.ts';
import { paypalTransactionDetail, writePaypalBill } from '../../src/channels/paypal/bill.ts';
import { writeAppleBill, type AppleHistoryItem } from '../../src/channels/apple/bill.ts';
import { googlePlayOrderRows, writeGooglePlayEarningsReport } from '../../src/channels/google/bill.ts';
import { randomUUID } from 'node:crypto';

let t: TestService;
let product: any;
const storeIds = { apple_iap: 'com.knowpay.sandbox.course1', google_play: 'course_1' };
const json = { 'content-type': 'application/json' };

before(async () => {
  t = await startTestService({ pollInitialDelayMs: 120_000, pollMaxDelayMs: 120_000 });
  const creator = (await t.api('POST', '/v1/creators', { name: 'Ada', revenue_share_bps: 7000 })).body;
  const created = await t.api('POST', '/v1/products', {
    title: 'Course 课程', type: 'course', creator_id: creator.id, store_product_ids: storeIds,
    prices: [{ currency: 'CNY', unit_amount: 10000 }, { currency: 'USD', unit_amount: 1500 }, { currency: 'EUR', unit_amount: 1400 }],
  });
  assert.equal(created.status, 200, created.text);
  product = created.body;
});
after(async () => { await t.raw('DELETE', '/sandbox/faults', undefined); await t.stop(); });

interface Paid { order: any; payment: any; sim: any; fee: bigint }
/** The bill day each channel's test reconciled (the summary test reads them back, whatever the clock did since). */
const billDays: Record<string, string> = {};

async function paidOrder(d: Driver, customer: string, lose = false): Promise<Paid> {
  const o = (await t.api('POST', '/v1/orders', { customer_id: customer, currency: d.currency, client_platform: d.platform, items: [{ product_id: product.id }] })).body;
  const p = (await t.api('POST', `/v1/orders/${o.id}/payments`, { channel: d.channel, method: d.method, ...(d.payer ? { payer: d.payer } : {}) })).body;
  assert.ok(p.id, JSON.stringify(p));
  await d.open(t, p, storeIds);
  if (lose) await t.raw('POST', '/sandbox/faults', JSON.stringify({ channel: d.channel, drop_rate: 1 }), json);
  const res = await simulate(t, d, p, storeIds);
  assert.equal(res.status, 200, JSON.stringify(res.body));
  if (lose) await t.raw('DELETE', '/sandbox/faults', undefined);
  else await eventually(async () => (await t.api('GET', `/v1/orders/${o.id}`)).body.status === 'paid', { what: 'paid', timeoutMs: 15_000 });
  const { rows } = await t.svc.pool.query('SELECT fee_amount FROM payments WHERE id = $1', [p.id]);
  return { order: o, payment: (await t.api('GET', `/v1/payments/${p.id}`)).body, sim: res.body, fee: BigInt(rows[0].fee_amount ?? 0) };
}

interface Planted { good: Paid[]; lost: Paid; differs: Paid; onlyOurs: Paid; customerOfLost: string }

/**
 * What every channel's planted day must show: exactly the four kinds among our trades' exceptions,
 * the amount that differs by one minor unit, the lost notification healed (order paid, access
 * granted), the only-ours payment missing in the channel (or expected in the day's last half hour),
 * and no exception for the good trades. Answers the exceptions by kind for channel-specific checks.
 */
async function expectPlanted(up: any, here: any[], all: any[], x: Planted, lateInDay: boolean): Promise<Record<string, any>> {
  assert.deepEqual(here.map((e: any) => e.kind).sort(),
    ['amount_mismatch', 'missing_in_ledger', lateInDay ? 'expected' : 'missing_in_channel', 'status_mismatch'].sort(), JSON.stringify(here));
  assert.equal(up.body.summary.healed, 1);
  const byKind = Object.fromEntries(here.map((e: any) => [e.kind, e]));
  assert.equal(byKind.amount_mismatch.channel_reference, x.differs.payment.channel_reference);
  assert.deepEqual([byKind.amount_mismatch.expected_amount, byKind.amount_mismatch.actual_amount], [x.differs.payment.amount, x.differs.payment.amount - 1]);
  assert.equal(byKind.status_mismatch.channel_reference, x.lost.payment.channel_reference);
  assert.equal(byKind.status_mismatch.resolution, 'healed');
  assert.equal(byKind.missing_in_ledger.resolution, 'open');
  assert.equal((byKind.missing_in_channel ?? byKind.expected).channel_reference, x.onlyOurs.payment.channel_reference);
  // The good lines matched: no exception names them.
  for (const g of x.good) assert.ok(!all.some((e: any) => e.channel_reference === g.payment.channel_reference));
  // The lost notification was healed: the order is paid, the buyer has access.
  assert.equal((await t.api('GET', `/v1/orders/${x.lost.order.id}`)).body.status, 'paid');
  const access = await t.api('GET', `/v1/customers/${x.customerOfLost}/access/${product.id}`);
  assert.equal(access.body.has_access, true, access.text);
  return byKind;
}

interface BillSpec {
  key: string;
  timeZoneHours: number;
  /** The bill's file: a line per payment (amount as given), plus one trade that is not ours. */
  write(file: string, lines: Array<{ paid: Paid; amount: bigint; fee: bigint }>, foreignReference: string): Promise<void>;
  contentType: string;
}

const now = () => new Date();
const dayIn = (hours: number) => new Date(Date.now() + hours * 3600_000).toISOString().slice(0, 10);

const SPECS: BillSpec[] = [
  {
    key: 'wechatpay:native', timeZoneHours: 8, contentType: 'text/csv',
    async write(file, lines, foreign) {
      const row = (ref: string, transactionId: string, amount: bigint, feeFen: bigint): WechatpayBillRow => ({
        kind: 'payment', time: now(), appid: 'wx_sandbox', mchid: '1900000109', transactionId, outTradeNo: ref, openid: 'o_sandbox', tradeType: 'NATIVE',
        amount, feeMilliFen: feeFen * 1000n, rate: '0.60%', description: 'Course 课程',
      });
      await writeWechatpayBill(file, [
        ...lines.map((l) => row(l.paid.payment.channel_reference, l.paid.sim.transaction_id, l.amount, l.fee)),
        { ...row(foreign, '4200009999202611229999999999', 100n, 0n), feeMilliFen: wechatpayFeeMilliFen(100n, 60) },
      ]);
    },
  },
  {
    key: 'stripe:card', timeZoneHours: 0, contentType: 'application/x-ndjson',
    async write(file, lines, foreign) {
      let n = 0;
      const txn = (ref: string, pi: string, amount: bigint, fee: bigint) => ({
        id: `txn_plant${++n}`, object: 'balance_transaction', amount: Number(amount), fee: Number(fee), net: Number(amount - fee), currency: 'usd',
        type: 'charge', reporting_category: 'charge', status: 'pending', created: Math.floor(Date.now() / 1000), exchange_rate: null,
        source: { id: `ch_plant${n}`, object: 'charge', payment_intent: pi, metadata: { knowpay_reference: ref } },
      });
      await writeStripeBill(file, [
        ...lines.map((l) => txn(l.paid.payment.channel_reference, l.paid.payment.channel_transaction_id, l.amount, l.fee)),
        txn(foreign, 'pi_NOTOURS0000000000000001', 1500n, 74n),
      ]);
    },
  },
  {
    key: 'paypal:paypal', timeZoneHours: 0, contentType: 'application/x-ndjson',
    async write(file, lines, foreign) {
      let n = 0;
      const item = (ref: string, captureId: string | undefined, amount: bigint, fee: bigint) => paypalTransactionDetail({
        transactionId: captureId ?? `7PLANT${String(++n).padStart(11, '0')}`, eventCode: 'T0006', status: 'S', amountMinor: amount, feeMinor: -fee,
        currency: 'USD', invoiceId: ref, customField: ref, initiatedAt: now(),
      });
      await writePaypalBill(file, [
        ...lines.map((l) => item(l.paid.payment.channel_reference, l.paid.sim.capture_id ?? undefined, l.amount, l.fee)),
        item(foreign, undefined, 1500n, 82n),
      ]);
    },
  },
];

for (const spec of SPECS) {
  test(`${spec.key}: a day's bill with a lost notification, an amount that differs, a line only ours and one only theirs`, async () => {
    const d = DRIVERS.find((x) => `${x.channel}:${x.method}` === spec.key && x.platform === 'web')!;
    const tag = spec.key.replace(':', '_');
    const good: Paid[] = [];
    for (let i = 0; i < 3; i++) good.push(await paidOrder(d, `${tag}_good_${i}`));
    const lost = await paidOrder(d, `${tag}_lost`, true);
    assert.equal(lost.payment.status, 'requires_action', `the notification was lost: ${JSON.stringify(lost.payment)}`);
    const differs = await paidOrder(d, `${tag}_differs`);
    const onlyOurs = await paidOrder(d, `${tag}_only_ours`);
    const fee = good[0]!.fee;
    const foreign = `KPNOTOURS${tag.toUpperCase().replace(/[^A-Z]/g, '')}0000000001`.slice(0, 32);
    const file = path.join(os.tmpdir(), `bill-${tag}-${Date.now()}`);
    const billDate = dayIn(spec.timeZoneHours);
    billDays[d.channel] = billDate;
    await spec.write(file, [
      ...good.map((g) => ({ paid: g, amount: BigInt(g.payment.amount), fee: g.fee })),
      { paid: lost, amount: BigInt(lost.payment.amount), fee },
      { paid: differs, amount: BigInt(differs.payment.amount) - 1n, fee: differs.fee },
    ], foreign);
    try {
      const up = await t.raw('POST', `/v1/reconciliations?channel=${d.channel}&bill_date=${billDate}`, fs.readFileSync(file),
        { authorization: `Bearer ${t.apiKey}`, 'content-type': spec.contentType });
      assert.equal(up.status, 200, up.text);
      assert.equal(up.body.status, 'completed');
      // Our own earlier tests of this file may have paid other trades today: only ours are counted here.
      const ex = (await t.api('GET', `/v1/reconciliations/${up.body.id}/exceptions?limit=100`)).body.data;
      const mine = new Set([...good, lost, differs, onlyOurs].map((x) => x.payment.channel_reference).concat(foreign));
      const here = ex.filter((x: any) => mine.has(x.channel_reference));
      const minutes = (Date.now() / 60_000 + spec.timeZoneHours * 60) % 1440;
      assert.equal(up.body.summary.lines, 6);
      const byKind = await expectPlanted(up, here, ex, { good, lost, differs, onlyOurs, customerOfLost: `${tag}_lost` }, minutes > 1440 - 31);
      assert.equal(byKind.missing_in_ledger.channel_reference, foreign);
    } finally {
      fs.rmSync(file, { force: true });
    }
  });
}

test('a bill of one channel uploaded as another is a 400 that says why', async () => {
  const auth = { authorization: `Bearer ${t.apiKey}`, 'content-type': 'text/plain' };
  const stripeLine = JSON.stringify({ id: 'txn_1', object: 'balance_transaction', amount: 100, fee: 3, currency: 'usd', type: 'charge', source: { id: 'ch_1' } }) + '\n';
  const asWechat = await t.raw('POST', `/v1/reconciliations?channel=wechatpay&bill_date=${dayIn(8)}`, stripeLine, auth);
  assert.equal(asWechat.status, 400);
  assert.equal(asWechat.body.error.code, 'bill_invalid');
  const asPaypal = await t.raw('POST', `/v1/reconciliations?channel=paypal&bill_date=${dayIn(0)}`, stripeLine, auth);
  assert.equal(asPaypal.status, 400);
  assert.match(asPaypal.body.error.message, /PayPal/);
  const wechatText = '交易时间,公众账号ID,商户号\n`2026-11-22 10:00:00,`wx1,`1900000109\n';
  const asStripe = await t.raw('POST', `/v1/reconciliations?channel=stripe&bill_date=${dayIn(0)}`, wechatText, auth);
  assert.equal(asStripe.status, 400);
  assert.match(asStripe.body.error.message, /Stripe|JSON/);
});

// ---- Apple: the day's App Store notification history, as Knowpay downloads it ---------------------

const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
const unb64 = (s: string) => JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));
/** A JWS with its payload changed (the signature no longer fits: the reader of an uploaded bill only decodes). */
const rewrite = (jws: string, change: (payload: any) => void) => {
  const [h, p, sig] = jws.split('.');
  const payload = unb64(p!);
  change(payload);
  return `${h}.${b64(payload)}.${sig}`;
};
const transactionOf = (item: AppleHistoryItem) => unb64(unb64(item.signedPayload.split('.')[1]!).data.signedTransactionInfo.split('.')[1]);

test("apple_iap: the day's notification history with a lost notification, an amount that differs, a line only ours and one only theirs", async () => {
  const d = DRIVERS.find((x) => x.channel === 'apple_iap')!;
  const good: Paid[] = [];
  for (let i = 0; i < 3; i++) good.push(await paidOrder(d, `apple_good_${i}`));
  const lost = await paidOrder(d, 'apple_lost', true);
  assert.equal(lost.payment.status, 'requires_action', 'the notification was lost');
  const differs = await paidOrder(d, 'apple_differs');
  const onlyOurs = await paidOrder(d, 'apple_only_ours');
  const billDate = dayIn(0);
  billDays.apple_iap = billDate;
  const downloaded = path.join(os.tmpdir(), `apple-history-${Date.now()}`);
  const file = `${downloaded}.planted`;
  try {
    // Apple's record of the day, verified item by item on download: it lists the lost notification too.
    await t.svc.channels.get('apple_iap')!.downloadBill!({ billDate, destination: downloaded });
    const items: AppleHistoryItem[] = fs.readFileSync(downloaded, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
    const byRef = new Map(items.map((it) => [transactionOf(it).appAccountToken as string, it]));
    for (const x of [...good, lost, differs, onlyOurs]) assert.ok(byRef.has(x.payment.channel_reference), `history lists ${x.payment.channel_reference}`);
    const planted: AppleHistoryItem[] = [];
    for (const [ref, it] of byRef) {
      if (ref === onlyOurs.payment.channel_reference) continue; // the line only on our side
      if (ref === differs.payment.channel_reference) {
        planted.push({ ...it, signedPayload: rewrite(it.signedPayload, (n) => { n.data.signedTransactionInfo = rewrite(n.data.signedTransactionInfo, (tx) => { tx.price -= 10; }); }) });
      } else planted.push(it);
    }
    const foreignRef = randomUUID();
    planted.push({ ...items[0]!, signedPayload: rewrite(items[0]!.signedPayload, (n) => {
      n.notificationUUID = randomUUID();
      n.data.signedTransactionInfo = rewrite(n.data.signedTransactionInfo, (tx) => { tx.appAccountToken = foreignRef; tx.transactionId = '2000009999999999'; tx.originalTransactionId = '2000009999999999'; });
    }) });
    await writeAppleBill(file, planted);
    const up = await t.raw('POST', `/v1/reconciliations?channel=apple_iap&bill_date=${billDate}`, fs.readFileSync(file),
      { authorization: `Bearer ${t.apiKey}`, 'content-type': 'application/x-ndjson' });
    assert.equal(up.status, 200, up.text);
    const ex = (await t.api('GET', `/v1/reconciliations/${up.body.id}/exceptions?limit=100`)).body.data;
    const mine = new Set([...good, lost, differs, onlyOurs].map((x) => x.payment.channel_reference).concat(foreignRef));
    const here = ex.filter((x: any) => mine.has(x.channel_reference));
    const byKind = await expectPlanted(up, here, ex, { good, lost, differs, onlyOurs, customerOfLost: 'apple_lost' }, (Date.now() / 60_000) % 1440 > 1440 - 31);
    assert.equal(byKind.missing_in_ledger.channel_reference, foreignRef);

    // Downloaded from Apple over the API, the same day has no exception for these trades any more.
    const again = await t.api('POST', '/v1/reconciliations', { channel: 'apple_iap', bill_date: billDate });
    assert.equal(again.status, 200, again.text);
    const ex2 = (await t.api('GET', `/v1/reconciliations/${again.body.id}/exceptions?limit=100`)).body.data;
    assert.deepEqual(ex2.filter((x: any) => mine.has(x.channel_reference) && x.kind !== 'expected'), []);
  } finally {
    fs.rmSync(downloaded, { force: true });
    fs.rmSync(file, { force: true });
  }
});

// ---- Google Play: the month's earnings report, a day of it, matched on Play's order ids -----------

test("google_play: a day's earnings report with a lost notification, an amount that differs, a line only ours and one only theirs", async () => {
  const d = DRIVERS.find((x) => x.channel === 'google_play')!;
  const good: Paid[] = [];
  for (let i = 0; i < 3; i++) good.push(await paidOrder(d, `google_good_${i}`));
  const lost = await paidOrder(d, 'google_lost', true);
  assert.equal(lost.payment.status, 'requires_action', 'the notification was lost');
  const differs = await paidOrder(d, 'google_differs');
  const onlyOurs = await paidOrder(d, 'google_only_ours');
  for (const g of [...good, differs]) assert.equal(g.payment.channel_transaction_id, g.sim.order_id, 'the Play order id is kept on the payment');
  assert.match(lost.sim.order_id, /^GPA\./);
  const billDate = new Intl.DateTimeFormat('en-CA', { timeZone: 'America/Los_Angeles' }).format(new Date());
  billDays.google_play = billDate;
  const file = path.join(os.tmpdir(), `google-earnings-${Date.now()}.zip`);
  const packageName = lost.sim.package_name ?? 'com.knowpay.sandbox';
  const rows = (x: Paid, amount: bigint) => googlePlayOrderRows({
    kind: 'payment', orderId: x.sim.order_id, at: new Date(), amount, fee: x.fee || good[0]!.fee, currency: x.payment.currency, packageName, skuId: 'course_1',
  });
  const foreignOrder = 'GPA.3399-9999-9999-99999';
  await writeGooglePlayEarningsReport(file, [
    ...good.flatMap((g) => rows(g, BigInt(g.payment.amount))),
    ...rows(lost, BigInt(lost.payment.amount)),
    ...rows(differs, BigInt(differs.payment.amount) - 1n),
    ...googlePlayOrderRows({ kind: 'payment', orderId: foreignOrder, at: new Date(), amount: 500n, fee: 75n, currency: 'CNY', packageName, skuId: 'course_1' }),
  ]);
  try {
    const up = await t.raw('POST', `/v1/reconciliations?channel=google_play&bill_date=${billDate}`, fs.readFileSync(file),
      { authorization: `Bearer ${t.apiKey}`, 'content-type': 'application/zip' });
    assert.equal(up.status, 200, up.text);
    const ex = (await t.api('GET', `/v1/reconciliations/${up.body.id}/exceptions?limit=100`)).body.data;
    const refs = new Set([...good, lost, differs, onlyOurs].map((x) => x.payment.channel_reference));
    const here = ex.filter((x: any) => refs.has(x.channel_reference) || x.evidence?.channel_transaction_id === foreignOrder);
    const laMinutes = (() => { const [h, m] = new Intl.DateTimeFormat('en-GB', { timeZone: 'America/Los_Angeles', hour: '2-digit', minute: '2-digit', hour12: false }).format(new Date()).split(':'); return Number(h) * 60 + Number(m); })();
    assert.equal(up.body.summary.lines, 6);
    const byKind = await expectPlanted(up, here, ex, { good, lost, differs, onlyOurs, customerOfLost: 'google_lost' }, laMinutes > 1440 - 31);
    // The lost one named only Play's order id: looked up with orders.get, found to be ours, healed.
    assert.equal(byKind.status_mismatch.payment_id, lost.payment.id);
    assert.equal(byKind.missing_in_ledger.channel_reference, null);

    // Downloaded from the bucket over the API: the same day, our trades all match now.
    const again = await t.api('POST', '/v1/reconciliations', { channel: 'google_play', bill_date: billDate });
    assert.equal(again.status, 200, again.text);
    const ex2 = (await t.api('GET', `/v1/reconciliations/${again.body.id}/exceptions?limit=100`)).body.data;
    assert.deepEqual(ex2.filter((x: any) => refs.has(x.channel_reference) && x.kind !== 'expected'), []);
  } finally {
    fs.rmSync(file, { force: true });
  }
});

test("the day's summary across channels, and the list of runs", async () => {
  // Each channel's run is under its own bill day (Beijing for WeChat, Pacific for Google Play).
  for (const ch of ['wechatpay', 'stripe', 'paypal', 'apple_iap', 'google_play']) {
    const s = await t.api('GET', `/v1/reconciliations/daily_summary?bill_date=${billDays[ch]}`);
    assert.ok(s.body.channels.some((c: any) => c.channel === ch), `${ch} under ${billDays[ch]}: ${JSON.stringify(s.body)}`);
  }
  const day = billDays.stripe!;
  const r = await t.api('GET', `/v1/reconciliations/daily_summary?bill_date=${day}`);
  assert.equal(r.status, 200, r.text);
  assert.equal(r.body.object, 'reconciliation_daily_summary');
  const byChannel = Object.fromEntries(r.body.channels.map((c: any) => [c.channel, c]));
  // Stripe's one run: the amount that differs, the line only theirs, the line only ours stay open
  // (the last one is 'expected', not open, in the day's last half hour); the healed one does not.
  const st = byChannel.stripe.summary;
  assert.deepEqual([st.amount_mismatch, st.missing_in_ledger, st.missing_in_channel + st.expected], [1, 1, 1]);
  assert.equal(byChannel.stripe.open_exceptions, 2 + st.missing_in_channel);
  assert.equal(byChannel.stripe.summary.healed, 1);
  const sum = (k: string) => r.body.channels.reduce((s: number, c: any) => s + (c.summary[k] ?? 0), 0);
  assert.equal(r.body.totals.lines, sum('lines'));
  assert.equal(r.body.totals.open_exceptions, r.body.channels.reduce((s: number, c: any) => s + c.open_exceptions, 0));
  // Apple ran twice today (upload, then download): the summary names the latest.
  const appleDay = billDays.apple_iap!;
  const appleSummary = (await t.api('GET', `/v1/reconciliations/daily_summary?bill_date=${appleDay}`)).body.channels.find((c: any) => c.channel === 'apple_iap');
  const apple = await t.api('GET', `/v1/reconciliations?channel=apple_iap&bill_date=${appleDay}&limit=10`);
  assert.equal(apple.status, 200, apple.text);
  assert.equal(apple.body.data.length, 2);
  assert.equal(appleSummary.reconciliation_id, apple.body.data[0].id);
  assert.equal(apple.body.data[0].source, 'download');
  const page = await t.api('GET', `/v1/reconciliations?channel=apple_iap&bill_date=${appleDay}&limit=1`);
  assert.equal(page.body.has_more, true);
  const next = await t.api('GET', `/v1/reconciliations?channel=apple_iap&bill_date=${appleDay}&limit=1&starting_after=${page.body.data[0].id}`);
  assert.deepEqual([next.body.data[0].id, next.body.has_more], [apple.body.data[1].id, false]);

  const empty = await t.api('GET', '/v1/reconciliations/daily_summary?bill_date=2001-01-01');
  assert.deepEqual([empty.status, empty.body.channels, empty.body.failed], [200, [], []]);
  for (const bad of ['/v1/reconciliations/daily_summary', '/v1/reconciliations/daily_summary?bill_date=22-11-2026', '/v1/reconciliations?bill_date=yesterday']) {
    const x = await t.api('GET', bad);
    assert.equal(x.status, 400, `${bad}: ${x.text}`);
    assert.ok(x.body.error.code, x.text);
  }
});
