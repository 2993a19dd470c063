/**
 * The WeChat Pay trade bill reader: a hand-written bill in WeChat Pay's format (backtick-prefixed
 * fields, 5-decimal fees, negative refund fees, a comma inside a product name, BOM, CRLF, a REVOKED
 * line, a refund still PROCESSING, the summary lines), files that are not such a bill, and a
 * writer ↔ reader round trip.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { BillFormatError, type BillLine } from '../../reconciliation/types.ts';
import { estimateFee, DEFAULT_FEES } from '../../domain/ledger-rules.ts';
import { readWechatpayBill, roundDecimal, wechatpayFeeMilliFen, writeWechatpayBill, WECHATPAY_BILL_COLUMNS, type WechatpayBillRow } from './bill.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wx-bill-test-'));
let n = 0;
const file = (content: string | Buffer) => {
  const p = path.join(dir, `bill-${++n}.csv`);
  fs.writeFileSync(p, content);
  return p;
};
const readAll = async (p: string) => {
  const out: BillLine[] = [];
  for await (const l of readWechatpayBill(p)) out.push(l);
  return out;
};

const HEADER = WECHATPAY_BILL_COLUMNS.join(',');
const SAMPLE = '\ufeff' + [
  HEADER,
  '`2026-11-21 09:15:02,`wx8888888888888888,`1900000109,`0,`,`4200001234202611210000000001,`KP20261121A0001,`oUpF8uN95-Ptaags6E_roPHg7AG0,`NATIVE,`SUCCESS,`OTHERS,`CNY,`100.00,`0.00,`0,`0,`0.00,`0.00,`,`,`课程,含讲义,`pay_1,`0.60000,`0.60%,`100.00,`0.00,`',
  '`2026-11-21 10:00:00,`wx8888888888888888,`1900000109,`0,`,`4200001234202611210000000002,`KP20261121A0002,`oUpF8uN95-Ptaags6E_roPHg7AG1,`JSAPI,`SUCCESS,`CMB_CREDIT,`CNY,`0.99,`0.00,`0,`0,`0.00,`0.00,`,`,`单节,`,`0.00594,`0.60%,`1.00,`0.00,`',
  '`2026-11-21 11:00:00,`wx8888888888888888,`1900000109,`0,`,`4200001234202611210000000003,`KP20261121A0003,`oUpF8uN95-Ptaags6E_roPHg7AG2,`MICROPAY,`REVOKED,`OTHERS,`CNY,`5.00,`0.00,`0,`0,`0.00,`0.00,`,`,`撤销,`,`0.00000,`0.60%,`5.00,`0.00,`',
  '`2026-11-21 12:30:45,`wx8888888888888888,`1900000109,`0,`,`4200001234202611210000000001,`KP20261121A0001,`oUpF8uN95-Ptaags6E_roPHg7AG0,`NATIVE,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50300001234202611210000000001,`re_KP0001a,`30.00,`0.00,`ORIGINAL,`SUCCESS,`课程,含讲义,`pay_1,`-0.18000,`0.60%,`0.00,`30.00,`',
  '`2026-11-21 13:00:00,`wx8888888888888888,`1900000109,`0,`,`4200001234202611210000000002,`KP20261121A0002,`oUpF8uN95-Ptaags6E_roPHg7AG1,`JSAPI,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50300001234202611210000000002,`re_KP0002a,`1.00,`0.00,`ORIGINAL,`PROCESSING,`单节,`,`-0.00600,`0.60%,`0.00,`1.00,`',
  '总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额',
  '`5,`105.99,`31.00,`0.00,`0.41594,`106.00,`31.00',
].join('\r\n') + '\r\n';

test('a hand-written WeChat Pay bill reads as expected', async () => {
  const lines = await readAll(file(SAMPLE));
  assert.deepEqual(lines, [
    { lineNo: 1, kind: 'payment', channelReference: 'KP20261121A0001', channelTransactionId: '4200001234202611210000000001', amount: 10000n, fee: 60n, currency: 'CNY', occurredAt: new Date('2026-11-21T01:15:02Z') },
    // 订单金额 (1.00) is the amount, not 应结订单金额 (0.99 after a coupon); 0.00594 yuan rounds to 1 fen.
    { lineNo: 2, kind: 'payment', channelReference: 'KP20261121A0002', channelTransactionId: '4200001234202611210000000002', amount: 100n, fee: 1n, currency: 'CNY', occurredAt: new Date('2026-11-21T02:00:00Z') },
    // REVOKED (line 3) and the PROCESSING refund (line 5) are not kept.
    { lineNo: 4, kind: 'refund', channelReference: 'KP20261121A0001', channelTransactionId: '4200001234202611210000000001', refundReference: 're_KP0001a', amount: 3000n, fee: 18n, currency: 'CNY', occurredAt: new Date('2026-11-21T04:30:45Z') },
  ]);
});

test('订单金额 empty: 应结订单金额 is the amount; LF line ends and no BOM read the same', async () => {
  const body = [HEADER,
    '`2026-11-21 09:15:02,`wx1,`1900000109,`0,`,`42001,`KPREF0001,`o1,`APP,`SUCCESS,`OTHERS,`cny,`12.34,`0.00,`0,`0,`0.00,`0.00,`,`,`x,`,`0.07404,`0.60%,`,`0.00,`',
    '总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额', '`1,`12.34,`0.00,`0.00,`0.07404,`12.34,`0.00'].join('\n');
  const [l] = await readAll(file(body));
  assert.equal(l!.amount, 1234n);
  assert.equal(l!.fee, 7n);
  assert.equal(l!.currency, 'CNY');
});

test('files that are not a WeChat Pay trade bill are refused with BillFormatError', async () => {
  const alipay = '#支付宝业务明细查询\r\n支付宝交易号,商户订单号,业务类型\r\n';
  const cases: Array<[string, string | Buffer, RegExp]> = [
    ['empty', '', /empty file/],
    ['Alipay bill', alipay, /not a WeChat Pay trade bill/],
    ['GBK-encoded', Buffer.from([0xbd, 0xbb, 0xd2, 0xd7, 0xca, 0xb1, 0xbc, 0xe4, 0x2c, 0x41]), /not a WeChat Pay trade bill/],
    ['SUCCESS-type bill (no refund columns)', '交易时间,公众账号ID,商户号,微信订单号,商户订单号,交易状态,货币种类,应结订单金额,手续费\r\n', /lacks the column 商户退款单号/],
    ['truncated (no summary)', SAMPLE.split('\r\n').slice(0, 3).join('\r\n'), /truncated/],
    ['summary header without row', SAMPLE.split('\r\n').slice(0, 7).join('\r\n'), /summary row/],
    ['data without backticks', HEADER + '\r\n2026-11-21 09:15:02,wx1,1900000109\r\n', /must start with a backtick/],
    ['wrong field count', HEADER + '\r\n`2026-11-21 09:15:02,`wx1,`1900000109\r\n', /3 fields, the header has 27/],
    ['bad amount', SAMPLE.replace('`0.60%,`100.00,', '`0.60%,`1OO.00,'), /unreadable amount/],
    ['refund without refund number', SAMPLE.replace('`re_KP0001a', '`'), /without 商户退款单号/],
    ['lines after the summary', SAMPLE + '`6,`1.00\r\n', /after the summary/],
  ];
  for (const [name, content, reason] of cases) {
    await assert.rejects(readAll(file(content)), (e: unknown) => e instanceof BillFormatError && reason.test(e.message), name);
  }
});

test('roundDecimal rounds half up to the fen; the fee matches estimateFee at 60 bps', () => {
  assert.equal(roundDecimal('0.00500', 2), 1n);
  assert.equal(roundDecimal('0.00499', 2), 0n);
  assert.equal(roundDecimal('-0.18000', 2), -18n);
  assert.equal(roundDecimal('12', 2), 1200n);
  assert.equal(roundDecimal('1.2.3', 2), null);
  fc.assert(fc.property(fc.bigInt({ min: 1n, max: 2_147_483_647n }), (fen) => {
    const milli = wechatpayFeeMilliFen(fen, 60);
    assert.equal((milli + 500n) / 1000n, estimateFee(fen, DEFAULT_FEES.wechatpay!));
  }));
});

const row = fc.record({
  kind: fc.constantFrom('payment' as const, 'refund' as const),
  time: fc.integer({ min: Date.UTC(2020, 0, 1), max: Date.UTC(2030, 0, 1) }).map((ms) => new Date(Math.floor(ms / 1000) * 1000)),
  appid: fc.constant('wx8888888888888888'),
  mchid: fc.constant('1900000109'),
  transactionId: fc.stringMatching(/^42\d{26}$/),
  outTradeNo: fc.stringMatching(/^[A-Za-z0-9_\-|*]{6,32}$/),
  openid: fc.stringMatching(/^[A-Za-z0-9_-]{28}$/),
  tradeType: fc.constantFrom('NATIVE', 'JSAPI', 'APP', 'MWEB'),
  amount: fc.bigInt({ min: 1n, max: 2_147_483_647n }),
  description: fc.string({ maxLength: 40 }),
  attach: fc.string({ maxLength: 20 }),
  refundId: fc.stringMatching(/^50\d{28}$/),
  // WeChat's bill writes `0 for "none" in the refund-number columns, so "0" is not a refund number.
  outRefundNo: fc.stringMatching(/^[A-Za-z0-9_\-|*@]{1,64}$/).filter((s) => s !== '0'),
}).map((r): WechatpayBillRow => ({ ...r, feeMilliFen: wechatpayFeeMilliFen(r.amount, 60), rate: '0.60%' }));

test('writer ↔ reader round trip', async () => {
  await fc.assert(fc.asyncProperty(fc.array(row, { maxLength: 30 }), async (rows) => {
    const p = path.join(dir, `rt-${++n}.csv`);
    await writeWechatpayBill(p, rows);
    const lines = await readAll(p);
    fs.rmSync(p);
    assert.deepEqual(lines, rows.map((r, i): BillLine => ({
      lineNo: i + 1, kind: r.kind, channelReference: r.outTradeNo, channelTransactionId: r.transactionId,
      ...(r.kind === 'refund' ? { refundReference: r.outRefundNo } : {}),
      amount: r.amount, fee: estimateFee(r.amount, DEFAULT_FEES.wechatpay!), currency: 'CNY', occurredAt: r.time,
    })));
  }), { numRuns: 60 });
});

test('a large bill streams (50 000 lines)', async () => {
  const p = path.join(dir, 'large.csv');
  const base: WechatpayBillRow = { kind: 'payment', time: new Date('2026-11-21T01:00:00Z'), appid: 'wx1', mchid: '1', transactionId: '42', outTradeNo: 'KP0', openid: 'o', tradeType: 'NATIVE', amount: 100n, feeMilliFen: 600n, rate: '0.60%', description: 'd' };
  await writeWechatpayBill(p, (function* () { for (let i = 0; i < 50_000; i++) yield { ...base, outTradeNo: `KP${i}` }; })());
  let count = 0;
  let fees = 0n;
  for await (const l of readWechatpayBill(p)) { count++; fees += l.fee ?? 0n; }
  assert.equal(count, 50_000);
  assert.equal(fees, 50_000n);
  fs.rmSync(dir, { recursive: true, force: true });
});
