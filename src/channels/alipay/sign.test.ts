/**
 * Known-answer tests against real Alipay signatures (test/fixtures/alipay, see SOURCE.md there),
 * cross-checked with the official SDK, plus round-trip properties of our own signing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateKeyPairSync } from 'node:crypto';
import fc from 'fast-check';
import { AlipaySdk } from 'alipay-sdk';
import {
  extractSignedResponseContent, notifySigningStringV1, notifySigningStringV2, requestSigningString, signAlipayNotification,
  signAlipayRequest, signAlipayResponse, verifyAlipayNotifySignature, verifyAlipayRequestSignature, verifyAlipayResponseSignature,
  loadPublicKey,
} from './sign.ts';
import { parseFormBody } from './transformers.ts';

const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../test/fixtures/alipay');
const read = (name: string) => fs.readFileSync(path.join(fixtures, name), 'utf8');
const readJson = <T>(name: string): T => JSON.parse(read(name)) as T;

const notify = readJson<Record<string, string>>('notify.json');
const notifyKey = read('alipay-public-key.pem');
const serviceMarket = readJson<Record<string, string>>('servicemarket-notify.json');
const serviceMarketKey = read('servicemarket-notify-public-key.pem');
const negatives = readJson<Record<string, { key: string; expect: boolean; fields: Record<string, string> }>>('notify-negative.json');

/** Change one character of a string (keeps the length, never the same text). */
function mutateOneChar(s: string, at = Math.floor(s.length / 2)): string {
  const ch = s[at]!;
  const replacement = ch === 'A' ? 'B' : ch === '0' ? '1' : /[0-9]/.test(ch) ? '0' : 'A';
  return s.slice(0, at) + replacement + s.slice(at + 1);
}

test('the published trade notification verifies with Alipay\'s key (V1 rule: sign and sign_type removed)', () => {
  assert.equal(notifySigningStringV1(notify), read('notify.signing-string.txt'));
  assert.equal(verifyAlipayNotifySignature(notify, notifyKey), true);
  // The same key as Alipay's console shows it (bare base64) works too.
  assert.equal(verifyAlipayNotifySignature(notify, loadPublicKey(read('alipay-public-key.base64.txt'))), true);
});

test('the official SDK agrees on the published notification', () => {
  const sdk = new AlipaySdk({ appId: notify['app_id']!, privateKey: generatedKeys().privateKey, alipayPublicKey: notifyKey });
  assert.equal(sdk.checkNotifySignV2({ ...notify }), true);
});

test('any one changed character in a signed field breaks the notification', () => {
  for (const field of ['total_amount', 'trade_status', 'out_trade_no', 'subject', 'notify_id', 'app_id', 'trade_no', 'fund_bill_list', 'gmt_payment', 'buyer_id']) {
    const tampered = { ...notify, [field]: mutateOneChar(notify[field]!) };
    assert.equal(verifyAlipayNotifySignature(tampered, notifyKey), false, `changed ${field}`);
  }
});

test('a changed, truncated, extended or missing signature fails', () => {
  const sign = notify['sign']!;
  for (const at of [0, 10, Math.floor(sign.length / 2), sign.length - 5]) {
    assert.equal(verifyAlipayNotifySignature({ ...notify, sign: mutateOneChar(sign, at) }, notifyKey), false, `sign char ${at}`);
  }
  assert.equal(verifyAlipayNotifySignature({ ...notify, sign: sign.slice(0, -4) }, notifyKey), false);
  assert.equal(verifyAlipayNotifySignature({ ...notify, sign: sign + 'AAAA' }, notifyKey), false);
  assert.equal(verifyAlipayNotifySignature({ ...notify, sign: 'not base64 !' }, notifyKey), false);
  const { sign: _s, ...unsigned } = notify;
  assert.equal(verifyAlipayNotifySignature(unsigned, notifyKey), false);
});

test('adding or removing a field breaks the notification; only RSA2 is accepted', () => {
  assert.equal(verifyAlipayNotifySignature({ ...notify, refund_fee: '0.10' }, notifyKey), false);
  const { point_amount: _p, ...fewer } = notify;
  assert.equal(verifyAlipayNotifySignature(fewer, notifyKey), false);
  assert.equal(verifyAlipayNotifySignature({ ...notify, sign_type: 'RSA' }, notifyKey), false);
});

test('the notification does not verify under a wrong key', () => {
  assert.equal(verifyAlipayNotifySignature(notify, serviceMarketKey), false);
  assert.equal(verifyAlipayNotifySignature(notify, read('response-public-key.pem')), false);
  assert.equal(verifyAlipayNotifySignature(notify, generatedKeys().publicKey), false);
});

test('the published negative notifications fail', () => {
  for (const [name, c] of Object.entries(negatives)) {
    assert.equal(c.expect, false);
    assert.equal(verifyAlipayNotifySignature(c.fields, read(c.key)), false, name);
  }
});

test('the service-market notification verifies only under the sign_type-kept rule, which we also accept', () => {
  assert.equal(notifySigningStringV2(serviceMarket), read('servicemarket-notify.signing-string.txt'));
  assert.equal(verifyAlipayNotifySignature(serviceMarket, serviceMarketKey), true);
  const withoutType = { ...serviceMarket };
  delete withoutType['sign_type'];
  assert.equal(verifyAlipayNotifySignature(withoutType, serviceMarketKey), false, 'V1 alone must not verify it');
});

interface ResponseSample { name: string; responseKey: string; rawBodyFile: string; signedContentFile: string; sign: string; key: string; expect: boolean }
const samples = readJson<ResponseSample[]>('response-samples.json');

test('the published signed responses (success and error) verify with our response check', () => {
  assert.equal(samples.length, 2);
  for (const s of samples) {
    const raw = read(s.rawBodyFile);
    assert.equal(extractSignedResponseContent(raw, s.responseKey), read(s.signedContentFile), s.name);
    assert.equal(verifyAlipayResponseSignature(raw, s.responseKey, read(s.key)), s.expect, s.name);
  }
});

test('the official SDK agrees on the published responses', () => {
  for (const s of samples) {
    const sdk = new AlipaySdk({ appId: '2021000000000000', privateKey: generatedKeys().privateKey, alipayPublicKey: read(s.key) });
    assert.doesNotThrow(() => sdk.checkResponseSign(read(s.rawBodyFile), s.responseKey, s.sign, 'trace'), s.name);
    assert.throws(() => sdk.checkResponseSign(read(s.rawBodyFile), s.responseKey, 'wrong-sing', 'trace'), s.name);
  }
});

test('tampered responses fail: content byte, signature, wrong key, wrong response key', () => {
  for (const s of samples) {
    const raw = read(s.rawBodyFile);
    const content = read(s.signedContentFile);
    const tamperedContent = raw.replace(content, mutateOneChar(content, content.indexOf('"code"') + 9));
    assert.notEqual(tamperedContent, raw);
    assert.equal(verifyAlipayResponseSignature(tamperedContent, s.responseKey, read(s.key)), false, `${s.name} content`);
    assert.equal(verifyAlipayResponseSignature(raw.replace(s.sign, 'wrong-sing'), s.responseKey, read(s.key)), false, `${s.name} sign`);
    assert.equal(verifyAlipayResponseSignature(raw.replace(s.sign, mutateOneChar(s.sign, 20)), s.responseKey, read(s.key)), false);
    assert.equal(verifyAlipayResponseSignature(raw, s.responseKey, notifyKey), false, `${s.name} key`);
    assert.equal(verifyAlipayResponseSignature(raw, 'alipay_trade_query_response', read(s.key)), false);
  }
  assert.equal(verifyAlipayResponseSignature('not json', 'x_response', notifyKey), false);
});

// ---- Our own signing ---------------------------------------------------------------------------

let keys: { privateKey: string; publicKey: string } | null = null;
function generatedKeys() {
  keys ??= generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  return keys;
}

test('signing string rules: ASCII key order, empty values dropped, raw values', () => {
  const params = { b: '2', a: 'x y&z=1', B: 'upper', empty: '', sign: 'S', sign_type: 'RSA2', 中: '文' };
  assert.equal(requestSigningString(params), 'B=upper&a=x y&z=1&b=2&sign_type=RSA2&中=文');
  assert.equal(notifySigningStringV1(params), 'B=upper&a=x y&z=1&b=2&中=文');
});

test('our response signing produces a body the SDK and our check accept', () => {
  const { privateKey, publicKey } = generatedKeys();
  const body = signAlipayResponse('alipay_trade_query_response', { code: '10000', msg: 'Success', subject: '课程 "A"/B' }, privateKey);
  assert.equal(verifyAlipayResponseSignature(body, 'alipay_trade_query_response', publicKey), true);
  const sdk = new AlipaySdk({ appId: '2021000000000000', privateKey, alipayPublicKey: publicKey });
  const sign = (JSON.parse(body) as { sign: string }).sign;
  assert.doesNotThrow(() => sdk.checkResponseSign(body, 'alipay_trade_query_response', sign, 't'));
});

const keyArb = fc.stringMatching(/^[a-z][a-z0-9_]{0,11}$/).filter((k) => k !== 'sign' && k !== 'sign_type');
const valueArb = fc.string({ unit: 'grapheme', maxLength: 24 }).filter((v) => !v.includes('\uFFFD'));
const paramsArb = fc.dictionary(keyArb, valueArb, { minKeys: 1, maxKeys: 8 });

test('property: notification signing and verification round-trip through the form encoding; any value change fails', () => {
  const { privateKey, publicKey } = generatedKeys();
  fc.assert(
    fc.property(paramsArb, fc.nat(), valueArb, (params, pick, replacement) => {
      const signed = signAlipayNotification(params, privateKey);
      const wire = Buffer.from(new URLSearchParams(signed).toString(), 'utf8');
      const parsed = parseFormBody(wire);
      assert.ok(parsed.ok);
      assert.equal(verifyAlipayNotifySignature(parsed.params, publicKey), true);

      const keys = Object.keys(params);
      const key = keys[pick % keys.length]!;
      const original = params[key]!;
      // Empty and absent are the same under Alipay's rule, so mutate to a different non-empty value.
      const next = replacement !== '' && replacement !== original ? replacement : original + 'x';
      assert.equal(verifyAlipayNotifySignature({ ...parsed.params, [key]: next }, publicKey), false);
    }),
    { numRuns: 150 },
  );
});

test('property: request signing round-trips; changing any value or adding a parameter fails', () => {
  const { privateKey, publicKey } = generatedKeys();
  fc.assert(
    fc.property(paramsArb, fc.nat(), valueArb, (params, pick, replacement) => {
      const signed = signAlipayRequest(params, privateKey);
      assert.equal(verifyAlipayRequestSignature(signed, publicKey), true);
      const keys = Object.keys(params);
      const key = keys[pick % keys.length]!;
      const next = replacement !== '' && replacement !== params[key] ? replacement : params[key] + 'x';
      assert.equal(verifyAlipayRequestSignature({ ...signed, [key]: next }, publicKey), false);
      assert.equal(verifyAlipayRequestSignature({ ...signed, zzz_extra: 'v' }, publicKey), false);
      assert.equal(verifyAlipayRequestSignature({ ...signed, sign_type: 'RSA' }, publicKey), false);
    }),
    { numRuns: 150 },
  );
});
