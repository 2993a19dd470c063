/**
 * Known-answer tests against WeChat Pay's own published examples (official docs) and the official
 * Go SDK's vectors (test/fixtures/wechatpay/SOURCE.md): request signatures from the example
 * merchant key, reproduced by our code AND by the SDK; the official signed response; a complete
 * signed callback; the AES-GCM vector. Every positive vector has one-byte negatives.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { Formatter, Rsa } from 'wechatpay-axios-plugin';
import {
  appPayMessage, buildAppPayParams, buildJsapiPayParams, decryptAead, decryptResource, encryptAead, encryptResource, formatAuthorization,
  jsapiPayMessage, loadPlatformKey, parseAuthorization, readSignatureHeaders, requestMessage, responseMessage, rsaSign, rsaVerify,
  signRequest, signatureHeaders, verifyAppPayParams, verifyJsapiPayParams, verifyWechatpaySignature,
} from './sign.ts';

const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../test/fixtures/wechatpay');
const read = (p: string) => fs.readFileSync(path.join(fixtures, p), 'utf8');
const json = (p: string) => JSON.parse(read(p));

const testKey = createPrivateKey({ key: Buffer.from(read('official-doc/apiclient_test_key.pkcs8.der.base64.txt').trim(), 'base64'), format: 'der', type: 'pkcs8' });
const testPub = createPublicKey(read('official-doc/apiclient_test_pub.pem'));
const requestVectors = json('official-doc/request-signatures.json') as {
  merchant: { mchid: string; serial_no: string };
  vectors: Array<Record<string, string>>;
};
const httpVectors = requestVectors.vectors.filter((v) => v['method']);
const paySignVector = requestVectors.vectors.find((v) => v['id'] === 'miniprogram-paysign')!;

function flipByte(buf: Buffer, at: number): Buffer {
  const out = Buffer.from(buf);
  out[at] = out[at]! ^ 0x01;
  return out;
}

function flipChar(s: string, at: number): string {
  return s.slice(0, at) + (s[at] === 'A' ? 'B' : 'A') + s.slice(at + 1);
}

test('the fixture holds the five request vectors and the paySign vector', () => {
  assert.equal(httpVectors.length, 5);
  assert.ok(paySignVector);
});

test('request signatures: our message builder and signer reproduce every official example byte for byte', () => {
  for (const v of httpVectors) {
    const message = requestMessage(v['method']!, v['url']!, v['timestamp']!, v['nonce']!, v['body']!);
    assert.equal(message.toString('utf8'), v['message'], `${v['id']}: message`);
    assert.equal(rsaSign(message, testKey), v['expectedSignature'], `${v['id']}: signature`);
    assert.equal(rsaVerify(message, v['expectedSignature']!, testPub), true, v['id']);
  }
});

test('request signatures: the SDK\'s own formatter and signer give the same official values', () => {
  for (const v of httpVectors) {
    const message = Formatter.request(v['method']!, v['url']!, v['timestamp']!, v['nonce']!, v['body']!);
    assert.equal(message, v['message'], v['id']);
    assert.equal(Rsa.sign(message, testKey), v['expectedSignature'], v['id']);
  }
});

test('request signatures: one changed byte anywhere (message or signature) fails', () => {
  for (const v of httpVectors) {
    const message = requestMessage(v['method']!, v['url']!, v['timestamp']!, v['nonce']!, v['body']!);
    for (const at of [0, message.indexOf('\n') + 1, message.length - 2, message.length - 1]) {
      assert.equal(rsaVerify(flipByte(message, at), v['expectedSignature']!, testPub), false, `${v['id']} byte ${at}`);
    }
    assert.equal(rsaVerify(message, flipChar(v['expectedSignature']!, 17), testPub), false, `${v['id']} signature`);
    assert.equal(rsaVerify(message.subarray(0, message.length - 1), v['expectedSignature']!, testPub), false, `${v['id']}: no final newline`);
  }
  // A GET signed without the empty body line is a different message.
  const get = httpVectors.find((v) => v['id'] === 'get-path-param')!;
  const withoutBodyLine = `GET\n${get['url']}\n${get['timestamp']}\n${get['nonce']}\n`;
  assert.equal(rsaVerify(withoutBodyLine, get['expectedSignature']!, testPub), false);
});

test('the official Authorization header is what signRequest builds, and parses back', () => {
  const header = read('official-doc/authorization-header.txt').trim();
  const v = httpVectors.find((x) => x['id'] === 'get-path-param')!;
  const built = signRequest({
    method: 'GET', url: v['url']!, mchid: requestVectors.merchant.mchid, serialNo: requestVectors.merchant.serial_no,
    privateKey: testKey, timestamp: v['timestamp']!, nonce: v['nonce']!,
  });
  assert.equal(built, header);
  const parsed = parseAuthorization(header);
  assert.deepEqual(parsed, {
    mchid: '1900007291', nonce_str: v['nonce'], signature: v['expectedSignature'], timestamp: '1554208460', serial_no: '408B07E79B8269FEC3D5D3E6AB8ED163A6A380DB',
  });
  // The SDK orders the fields differently; both parse to the same fields.
  const sdkStyle = Formatter.authorization(parsed!.mchid, parsed!.nonce_str, parsed!.signature, parsed!.timestamp, parsed!.serial_no);
  assert.notEqual(sdkStyle, header);
  assert.deepEqual(parseAuthorization(sdkStyle), parsed);
});

test('parseAuthorization refuses malformed headers', () => {
  const good = read('official-doc/authorization-header.txt').trim();
  const bad = [
    undefined, '', 'Bearer x', good.replace('WECHATPAY2-SHA256-RSA2048', 'WECHATPAY2-SHA256-RSA4096'),
    good.replace(/,serial_no="[^"]+"/, ''), // missing field
    `${good},mchid="1"`, // repeated
    `${good},extra="1"`, // unknown
    `${good} trailing`, good.replace('mchid="1900007291"', 'mchid=1900007291'), good.replace('timestamp="1554208460"', 'timestamp=""'),
    `${good}${'x'.repeat(5000)}`,
  ];
  for (const h of bad) assert.equal(parseAuthorization(h), null, String(h).slice(0, 80));
  assert.equal(formatAuthorization(parseAuthorization(good)!), good);
});

test('JSAPI / mini program paySign: the official example, and negatives', () => {
  const v = paySignVector;
  const message = jsapiPayMessage(v['appId']!, v['timeStamp']!, v['nonceStr']!, v['package']!);
  assert.equal(message.toString('utf8'), v['message']);
  assert.equal(rsaSign(message, testKey), v['expectedSignature']);
  const params = { appId: v['appId']!, timeStamp: v['timeStamp']!, nonceStr: v['nonceStr']!, package: v['package']!, signType: 'RSA', paySign: v['expectedSignature']! };
  assert.equal(verifyJsapiPayParams(params, testPub), true);
  assert.equal(verifyJsapiPayParams({ ...params, package: v['package']!.replace('wx2014', 'wx2015') }, testPub), false);
  assert.equal(verifyJsapiPayParams({ ...params, signType: 'HMAC-SHA256' }, testPub), false);
  assert.equal(verifyJsapiPayParams({ ...params, paySign: flipChar(params.paySign, 3) }, testPub), false);
  // buildJsapiPayParams at the example's instant and nonce gives the example's params exactly.
  const prepayId = v['package']!.slice('prepay_id='.length);
  const built = buildJsapiPayParams(v['appId']!, prepayId, testKey, new Date(Number(v['timeStamp']) * 1000), v['nonceStr']!);
  assert.deepEqual(built, params);
});

test('APP sign covers the bare prepay id, and verifies', () => {
  const p = buildAppPayParams('wxd678efh567hg6787', '1900007291', 'wx201410272009395522657a690389285100', testKey, new Date(1554208460_000), '593BEC0C930BF1AFEB40B4A08C8FB242');
  assert.equal(appPayMessage(p.appid, p.timestamp, p.noncestr, p.prepayid).toString(), 'wxd678efh567hg6787\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\nwx201410272009395522657a690389285100\n');
  assert.equal(p.package, 'Sign=WXPay');
  assert.equal(p.partnerid, '1900007291');
  assert.equal(verifyAppPayParams({ ...p }, testPub), true);
  assert.equal(verifyAppPayParams({ ...p, prepayid: 'wx201410272009395522657a690389285101' }, testPub), false);
  assert.equal(verifyAppPayParams({ ...p, package: 'prepay_id=x' }, testPub), false);
  // Signed with the JSAPI rule (prepay_id=…) it does not verify as APP.
  const jsapiStyle = rsaSign(appPayMessage(p.appid, p.timestamp, p.noncestr, `prepay_id=${p.prepayid}`), testKey);
  assert.equal(verifyAppPayParams({ ...p, sign: jsapiStyle }, testPub), false);
});

// ---- Responses (WeChat Pay → merchant) ---------------------------------------------------------------

const responseFixture = json('official-doc/response-verify.json') as { headers: Record<string, string>; body: string; message: string; publicKey: string };
const officialPub = createPublicKey(read(`official-doc/${responseFixture.publicKey}`));
const officialKeys = new Map([[responseFixture.headers['Wechatpay-Serial']!, officialPub]]);
const responseNow = Number(responseFixture.headers['Wechatpay-Timestamp']);

test('the official signed response verifies (PUB_KEY_ID mode), with the clock pinned to its timestamp', () => {
  const h = readSignatureHeaders(responseFixture.headers)!;
  assert.equal(responseMessage(h.timestamp, h.nonce, responseFixture.body).toString('utf8'), responseFixture.message);
  assert.deepEqual(verifyWechatpaySignature(h, Buffer.from(responseFixture.body, 'utf8'), officialKeys, responseNow), { ok: true });
  assert.deepEqual(verifyWechatpaySignature(h, responseFixture.body, officialKeys, responseNow + 300), { ok: true }, 'inside the window');
  assert.deepEqual(verifyWechatpaySignature(h, responseFixture.body, officialKeys, responseNow - 300), { ok: true }, 'inside the window');
});

test('the official signed response: one byte changed, trailing space, stale clock, unknown serial all fail', () => {
  const h = readSignatureHeaders(responseFixture.headers)!;
  const body = Buffer.from(responseFixture.body, 'utf8');
  for (let at = 0; at < body.length; at += 7) {
    assert.deepEqual(verifyWechatpaySignature(h, flipByte(body, at), officialKeys, responseNow), { ok: false, reason: 'invalid signature' }, `byte ${at}`);
  }
  assert.equal(verifyWechatpaySignature(h, responseFixture.body + ' ', officialKeys, responseNow).ok, false);
  assert.equal(verifyWechatpaySignature({ ...h, nonce: flipChar(h.nonce, 0) }, body, officialKeys, responseNow).ok, false);
  assert.equal(verifyWechatpaySignature({ ...h, timestamp: String(responseNow + 1) }, body, officialKeys, responseNow).ok, false);
  assert.equal(verifyWechatpaySignature({ ...h, signature: flipChar(h.signature, 10) }, body, officialKeys, responseNow).ok, false);
  assert.match(String((verifyWechatpaySignature(h, body, officialKeys, responseNow + 301) as { reason: string }).reason), /301 s away/);
  assert.match(String((verifyWechatpaySignature(h, body, officialKeys, responseNow - 301) as { reason: string }).reason), /301 s away/);
  assert.match(String((verifyWechatpaySignature(h, body, officialKeys, Math.floor(Date.now() / 1000)) as { reason: string }).reason), /away from now/, 'replayed today');
  assert.match(String((verifyWechatpaySignature({ ...h, serial: 'PUB_KEY_ID_0000000000000024101100397200000007' }, body, officialKeys, responseNow) as { reason: string }).reason), /unknown Wechatpay-Serial/);
  assert.match(String((verifyWechatpaySignature({ ...h, timestamp: '1722850421.0' }, body, officialKeys, responseNow) as { reason: string }).reason), /malformed/);
  assert.match(String((verifyWechatpaySignature({ ...h, signatureType: 'WECHATPAY2-SM2-WITH-SM3' }, body, officialKeys, responseNow) as { reason: string }).reason), /signature type/);
  // The right signature checked against another key.
  const other = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey;
  assert.equal(verifyWechatpaySignature(h, body, new Map([[h.serial, other]]), responseNow).ok, false);
});

test('readSignatureHeaders is case-insensitive and refuses missing or repeated headers', () => {
  const lower = Object.fromEntries(Object.entries(responseFixture.headers).map(([k, v]) => [k.toLowerCase(), v]));
  assert.deepEqual(readSignatureHeaders(lower), readSignatureHeaders(responseFixture.headers));
  for (const name of ['wechatpay-timestamp', 'wechatpay-nonce', 'wechatpay-signature', 'wechatpay-serial']) {
    const { [name]: _dropped, ...rest } = lower;
    assert.equal(readSignatureHeaders(rest), null, name);
    assert.equal(readSignatureHeaders({ ...lower, [name]: [lower[name]!, lower[name]!] }), null, `${name} twice`);
  }
});

// ---- Callbacks (Go SDK vector) and AES-GCM --------------------------------------------------------------

const notification = json('go-sdk/notification.json') as {
  headers: Record<string, string>; message: string; apiV3Key: string; expectedPlaintext: string; mockedNow: number; expectedFields: Record<string, string>;
};
const notificationBody = fs.readFileSync(path.join(fixtures, 'go-sdk/notification.body.txt'));
const goCertKeys = new Map([['D7CE59D1F522D701', loadPlatformKey('D7CE59D1F522D701', read('go-sdk/wechatpay_cert_D7CE59D1F522D701.pem'))]]);

test('the Go SDK\'s signed callback verifies (platform certificate mode) and decrypts to the expected plaintext', () => {
  const h = readSignatureHeaders(notification.headers)!;
  assert.equal(responseMessage(h.timestamp, h.nonce, notificationBody).toString('utf8'), notification.message);
  assert.deepEqual(verifyWechatpaySignature(h, notificationBody, goCertKeys, notification.mockedNow), { ok: true });
  const body = JSON.parse(notificationBody.toString('utf8'));
  for (const [k, v] of Object.entries(notification.expectedFields)) {
    const actual = k.split('.').reduce<any>((o, p) => o?.[p], body);
    assert.equal(actual, v, k);
  }
  // The Go tests use a 16-byte key (AES-128-GCM); the algorithm label is AEAD_AES_256_GCM all the same.
  const plaintext = decryptResource(body.resource, Buffer.from(notification.apiV3Key, 'utf8'));
  assert.equal(plaintext?.toString('utf8'), notification.expectedPlaintext);
});

test('the Go SDK\'s callback: one byte changed in body or headers, a stale clock or another key all fail', () => {
  const h = readSignatureHeaders(notification.headers)!;
  for (const at of [0, 10, 100, notificationBody.length - 1]) {
    assert.equal(verifyWechatpaySignature(h, flipByte(notificationBody, at), goCertKeys, notification.mockedNow).ok, false, `byte ${at}`);
  }
  assert.equal(verifyWechatpaySignature({ ...h, nonce: flipChar(h.nonce, 5) }, notificationBody, goCertKeys, notification.mockedNow).ok, false);
  assert.equal(verifyWechatpaySignature(h, notificationBody, goCertKeys, notification.mockedNow + 301).ok, false);
  const samePublicKeyOtherSerial = new Map([['F5765756002FDD77', goCertKeys.get('D7CE59D1F522D701')!]]);
  assert.equal(verifyWechatpaySignature(h, notificationBody, samePublicKeyOtherSerial, notification.mockedNow).ok, false, 'serial must be known');
  assert.equal(verifyWechatpaySignature(h, notificationBody, officialKeys, notification.mockedNow).ok, false);
  // Decryption: wrong key, changed AAD, changed nonce, changed ciphertext byte, truncated tag.
  const r = JSON.parse(notificationBody.toString('utf8')).resource;
  const key = Buffer.from(notification.apiV3Key, 'utf8');
  assert.equal(decryptResource(r, Buffer.from('testMchAPIv3Key1')), null);
  assert.equal(decryptResource({ ...r, associated_data: 'payscorE' }, key), null);
  assert.equal(decryptResource({ ...r, nonce: 'Kj7QIyUiYx1Q' }, key), null);
  const ct = Buffer.from(r.ciphertext, 'base64');
  assert.equal(decryptResource({ ...r, ciphertext: flipByte(ct, 3).toString('base64') }, key), null);
  assert.equal(decryptResource({ ...r, ciphertext: ct.subarray(0, ct.length - 1).toString('base64') }, key), null);
  assert.equal(decryptResource({ ...r, algorithm: 'AEAD_AES_128_GCM' }, key), null);
  assert.equal(decryptResource({ ...r, ciphertext: 'not base64!' }, key), null);
});

test('the Go SDK AES-GCM vector decrypts to Hello World; tampering fails', () => {
  const v = json('go-sdk/aes-gcm.json') as { apiV3Key: string; nonce: string; associatedData: string; ciphertext: string; plaintext: string };
  const key = Buffer.from(v.apiV3Key, 'utf8');
  assert.equal(decryptAead(key, v.nonce, v.associatedData, v.ciphertext)?.toString('utf8'), v.plaintext);
  assert.equal(encryptAead(key, v.nonce, v.associatedData, v.plaintext), v.ciphertext, 'GCM is deterministic for a given key and nonce');
  assert.equal(decryptAead(key, v.nonce, v.associatedData + 'x', v.ciphertext), null);
  assert.equal(decryptAead(key, 'wCq51qZv4YfG', v.associatedData, v.ciphertext), null);
  assert.equal(decryptAead(Buffer.from('testAPIv3Key0001'), v.nonce, v.associatedData, v.ciphertext), null);
  assert.equal(decryptAead(key, v.nonce, v.associatedData, flipByte(Buffer.from(v.ciphertext, 'base64'), 0).toString('base64')), null);
  assert.throws(() => encryptAead(Buffer.from('short'), v.nonce, '', 'x'), /32 \(or 16\) bytes/);
  assert.equal(decryptAead(Buffer.from('short'), v.nonce, '', v.ciphertext), null, 'never throws');
});

test('the Go SDK "source" signature verifies with its certificate and its public key; "wrong source" fails', () => {
  const v = json('go-sdk/sign-source.json') as { signature: string; cases: Array<{ message: string; expect: boolean }> };
  const fromCert = loadPlatformKey('F5765756002FDD77', read('go-sdk/wechatpay_cert_F5765756002FDD77.pem'));
  const fromPub = loadPlatformKey('PUB_KEY_ID_F5765756002FDD77', read('go-sdk/wechatpay_pub_key_F5765756002FDD77.pem'));
  for (const c of v.cases) {
    assert.equal(rsaVerify(c.message, v.signature, fromCert), c.expect, c.message);
    assert.equal(rsaVerify(c.message, v.signature, fromPub), c.expect, c.message);
  }
});

test('loadPlatformKey checks a certificate\'s serial and validity', () => {
  const pem = read('go-sdk/wechatpay_cert_D7CE59D1F522D701.pem');
  assert.ok(loadPlatformKey('d7ce59d1f522d701', pem), 'serial comparison is case-insensitive');
  assert.throws(() => loadPlatformKey('F5765756002FDD77', pem), /does not match/);
  assert.throws(() => loadPlatformKey('D7CE59D1F522D701', pem, new Date('2032-01-01T00:00:00Z')), /not valid now/);
  assert.throws(() => loadPlatformKey('D7CE59D1F522D701', pem, new Date('2020-01-01T00:00:00Z')), /not valid now/);
});

// ---- Round trips (our own keys) ----------------------------------------------------------------------------

const own = generateKeyPairSync('rsa', { modulusLength: 2048 });

test('round trip: any body signed by signatureHeaders verifies; any other body does not (property)', () => {
  const keys = new Map([['PUB_KEY_ID_0000000000000000000000000000000001', own.publicKey]]);
  fc.assert(
    fc.property(fc.string({ maxLength: 200 }), fc.string({ minLength: 1, maxLength: 200 }), (body, suffix) => {
      const headers = signatureHeaders(body, 'PUB_KEY_ID_0000000000000000000000000000000001', own.privateKey, 1_700_000_000);
      const h = readSignatureHeaders(headers)!;
      assert.deepEqual(verifyWechatpaySignature(h, body, keys, 1_700_000_100), { ok: true });
      assert.equal(verifyWechatpaySignature(h, body + suffix, keys, 1_700_000_100).ok, false);
    }),
    { numRuns: 40 },
  );
});

test('round trip: encryptResource / decryptResource with a 32-byte key (property)', () => {
  const key = Buffer.from('0123456789abcdef0123456789abcdef', 'utf8');
  fc.assert(
    fc.property(fc.string({ maxLength: 300 }), fc.string({ maxLength: 32 }), (plaintext, aad) => {
      const r = encryptResource(plaintext, key, 'transaction', aad);
      assert.equal(r.algorithm, 'AEAD_AES_256_GCM');
      assert.equal(r.nonce.length, 12);
      assert.equal(decryptResource(r, key)?.toString('utf8'), plaintext);
      assert.equal(decryptResource({ ...r, associated_data: aad + 'x' }, key), null);
    }),
    { numRuns: 60 },
  );
});
