/**
 * JWT and binding primitives, cross-checked against google-auth-library (an independent
 * implementation of the same RS256 JWT verification Google's clients use), plus property tests.
 * No Google-signed fixtures exist for this channel: Google publishes no sample RTDN push or
 * signed OIDC token to verify against.
 */
import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import fc from 'fast-check';
import { OAuth2Client } from 'google-auth-library';
import {
  bindingMatches, decodeJwt, deriveBindingSecret, keyIdOf, loadPrivateKey, loadPublicKey, purchaseBindingTag, signJwtRs256, verifyJwtRs256,
} from './sign.ts';
import { parseDeveloperNotification, parsePushEnvelope, oneTimeProductNotificationJson, voidedPurchaseNotificationJson } from './transformers.ts';

let privatePem = '';
let publicPem = '';

before(() => {
  const pair = generateKeyPairSync('rsa', { modulusLength: 2048, privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
  privatePem = pair.privateKey;
  publicPem = pair.publicKey;
});

test('google-auth-library verifies a token from signJwtRs256, and rejects it under another key', async () => {
  const kid = keyIdOf(loadPublicKey(publicPem));
  assert.match(kid, /^[0-9a-f]{40}$/);
  const iat = Math.floor(Date.now() / 1000);
  const token = signJwtRs256({ aud: 'https://a.example/x', iss: 'https://accounts.google.com', email: 'p@x.iam.gserviceaccount.com', email_verified: true, iat, exp: iat + 3600, sub: '1' }, loadPrivateKey(privatePem), kid);
  const ticket = await new OAuth2Client().verifySignedJwtWithCertsAsync(token, { [kid]: publicPem }, 'https://a.example/x', ['https://accounts.google.com']);
  assert.equal(ticket.getPayload()?.email, 'p@x.iam.gserviceaccount.com');
  const decoded = decodeJwt(token)!;
  assert.deepEqual(decoded.header, { alg: 'RS256', kid, typ: 'JWT' });
  assert.ok(verifyJwtRs256(decoded, loadPublicKey(publicPem)));
  const other = generateKeyPairSync('rsa', { modulusLength: 2048, publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } });
  assert.equal(verifyJwtRs256(decoded, loadPublicKey(other.publicKey)), false);
  await assert.rejects(new OAuth2Client().verifySignedJwtWithCertsAsync(token, { [kid]: other.publicKey }, 'https://a.example/x'), /Invalid token signature/);
});

test('verifyJwtRs256 refuses any alg but RS256 and any altered byte', () => {
  const key = loadPrivateKey(privatePem);
  const pub = loadPublicKey(publicPem);
  const token = signJwtRs256({ a: 1 }, key, 'k');
  const d = decodeJwt(token)!;
  assert.equal(verifyJwtRs256({ ...d, header: { ...d.header, alg: 'HS256' } }, pub), false);
  assert.equal(verifyJwtRs256({ ...d, header: { ...d.header, alg: 'none' } }, pub), false);
  fc.assert(
    fc.property(fc.integer({ min: 0, max: d.signature.length - 1 }), fc.integer({ min: 1, max: 255 }), (at, x) => {
      const sig = Buffer.from(d.signature);
      sig[at] = sig[at]! ^ x;
      return verifyJwtRs256({ ...d, signature: sig }, pub) === false;
    }),
    { numRuns: 50 },
  );
  fc.assert(
    fc.property(fc.integer({ min: 0, max: d.signingInput.length - 1 }), (at) => {
      const c = d.signingInput[at] === 'A' ? 'B' : 'A';
      return verifyJwtRs256({ ...d, signingInput: d.signingInput.slice(0, at) + c + d.signingInput.slice(at + 1) }, pub) === false;
    }),
    { numRuns: 50 },
  );
});

test('decodeJwt never throws and accepts only three base64url JSON-object parts', () => {
  fc.assert(fc.property(fc.string({ maxLength: 300 }), (s) => {
    const d = decodeJwt(s);
    return d === null || (typeof d.header === 'object' && typeof d.payload === 'object');
  }), { numRuns: 500 });
  const enc = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  assert.equal(decodeJwt(`${enc([1])}.${enc({})}.AA`), null, 'array header');
  assert.equal(decodeJwt(`${enc({})}.${enc('x')}.AA`), null, 'string payload');
  assert.equal(decodeJwt(`${enc({})}.${enc({})}.`), null, 'empty signature');
  assert.equal(decodeJwt(`${enc({})}.${enc({})}.AA.AA`), null, 'four parts');
  assert.equal(decodeJwt(`${enc({})}.${enc({})}.A+A`), null, 'not base64url');
  assert.equal(decodeJwt('a'.repeat(9000)), null, 'too long');
  assert.ok(decodeJwt(`${enc({})}.${enc({})}.AA`));
});

test('binding tags: 43 base64url characters that match exactly their own purchase', () => {
  const secret = 'binding-secret-0123456789';
  const arb = fc.record({
    packageName: fc.constantFrom('com.a.b', 'com.knowpay.app'),
    reference: fc.stringMatching(/^[A-Za-z0-9_-]{1,64}$/),
    productId: fc.stringMatching(/^[a-z0-9][a-z0-9._]{0,20}$/),
    quantity: fc.integer({ min: 1, max: 100 }),
  });
  fc.assert(fc.property(arb, arb, (a, b) => {
    const tag = purchaseBindingTag(secret, a);
    if (!/^[A-Za-z0-9_-]{43}$/.test(tag) || !bindingMatches(secret, a, tag)) return false;
    const same = a.packageName === b.packageName && a.reference === b.reference && a.productId === b.productId && a.quantity === b.quantity;
    return bindingMatches(secret, b, tag) === same;
  }), { numRuns: 300 });
  const b = { packageName: 'com.a.b', reference: 'KP1', productId: 'p', quantity: 1 };
  const tag = purchaseBindingTag(secret, b);
  assert.equal(bindingMatches('another-secret-0123456789', b, tag), false);
  for (const bad of [undefined, null, '', 5, tag.slice(1), tag + 'x', 'x'.repeat(65)]) assert.equal(bindingMatches(secret, b, bad), false, String(bad));
  // Field boundaries cannot be shifted: ("KP1\np", "") differs from ("KP1", "p\n").
  assert.notEqual(purchaseBindingTag(secret, { ...b, reference: 'KP', productId: '1p' }), purchaseBindingTag(secret, { ...b, reference: 'KP1', productId: 'p' }));
  assert.throws(() => purchaseBindingTag('short', b), /at least 16/);
  assert.throws(() => purchaseBindingTag(secret, { ...b, quantity: 0 }), /quantity/);
});

test('the derived binding secret is stable per key and differs between keys', () => {
  const other = generateKeyPairSync('rsa', { modulusLength: 2048, privateKeyEncoding: { type: 'pkcs1', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
  assert.equal(deriveBindingSecret(privatePem), deriveBindingSecret(privatePem));
  assert.notEqual(deriveBindingSecret(privatePem), deriveBindingSecret(other.privateKey));
  assert.ok(deriveBindingSecret(privatePem).length >= 43);
});

test('push envelope and developer notification parsers never throw and round-trip what the sandbox sends', () => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 400 }), (bytes) => {
    const b = Buffer.from(bytes);
    const e = parsePushEnvelope(b);
    const n = parseDeveloperNotification(b);
    return typeof e.ok === 'boolean' && typeof n.ok === 'boolean';
  }), { numRuns: 300 });
  fc.assert(fc.property(
    fc.stringMatching(/^[a-z]{4,24}\.AO-J1O[A-Za-z0-9_-]{10,120}$/), fc.stringMatching(/^[a-z0-9][a-z0-9._]{0,30}$/), fc.constantFrom(1, 2),
    (purchaseToken, sku, notificationType) => {
      const json = oneTimeProductNotificationJson({ packageName: 'com.a.b', eventTimeMillis: 1_700_000_000_123, notificationType, purchaseToken, sku });
      const body = Buffer.from(JSON.stringify({ message: { data: Buffer.from(json).toString('base64'), messageId: '123', publishTime: 't' }, subscription: 's' }));
      const env = parsePushEnvelope(body);
      if (!env.ok) return false;
      const n = parseDeveloperNotification(env.value.data);
      return n.ok && n.value.kind === 'one_time_product' && n.value.purchaseToken === purchaseToken && n.value.sku === sku && n.value.notificationType === notificationType && n.value.eventTimeMillis === '1700000000123';
    },
  ), { numRuns: 200 });
  fc.assert(fc.property(
    fc.stringMatching(/^[a-z]{4,24}\.AO-J1O[A-Za-z0-9_-]{10,120}$/), fc.stringMatching(/^GPA\.\d{4}-\d{4}-\d{4}-\d{5}(\.\.\d{1,3})?$/), fc.constantFrom(1, 2), fc.constantFrom(1, 2),
    (purchaseToken, orderId, productType, refundType) => {
      const n = parseDeveloperNotification(Buffer.from(voidedPurchaseNotificationJson({ packageName: 'com.a.b', eventTimeMillis: 1_700_000_000_123, purchaseToken, orderId, productType, refundType })));
      return n.ok && n.value.kind === 'voided' && n.value.purchaseToken === purchaseToken && n.value.orderId === orderId
        && n.value.productType === productType && n.value.refundType === refundType && n.value.eventTimeMillis === '1700000000123';
    },
  ), { numRuns: 200 });
});
