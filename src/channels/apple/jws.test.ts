/**
 * Known-answer tests on Apple's published test data (test/fixtures/apple, from the official
 * library's own tests) through the official SignedDataVerifier, plus the sandbox's signing side:
 * its generated chain passes the same checks, and nobody else's chain does.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import jsrsasign from 'jsrsasign';
import { AppStoreServerAPIClient, Environment, SignedDataVerifier, VerificationException, VerificationStatus } from '@apple/app-store-server-library';
import { appleRootCertificates, APPLE_ROOT_FINGERPRINTS_SHA256 } from './apple-roots.ts';
import {
  createVerifier, decodeJwsUnverified, generateApiKey, generateSandboxChain, INTERMEDIATE_MARKER_OID, LEAF_MARKER_OID, signAppStoreJws,
  verificationFailure, verificationStatusName, verifyApiToken, type AppleEnvironment,
} from './jws.ts';

const fixtures = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../test/fixtures/apple');
const read = (name: string) => fs.readFileSync(path.join(fixtures, name));
const readText = (name: string) => fs.readFileSync(path.join(fixtures, name), 'utf8');

interface ExpectedCase {
  id: string;
  file: string;
  mutate?: string;
  method: 'verifyAndDecodeNotification' | 'verifyAndDecodeRenewalInfo' | 'verifyAndDecodeTransaction';
  verifier: { roots: string[]; enableOnlineChecks: boolean; environment: AppleEnvironment; bundleId: string; appAppleId: number };
  expect: { ok: true; decoded?: Record<string, unknown> } | { ok: false; status: string; statusCode: number };
}
const expected = JSON.parse(readText('expected.json')) as { verificationStatusEnum: Record<string, number>; cases: ExpectedCase[] };

/** The one mutation expected.json describes: notificationType → REFUND, header and signature kept. */
function tamper(jws: string): string {
  const [h, p, s] = jws.split('.') as [string, string, string];
  const payload = JSON.parse(Buffer.from(p, 'base64url').toString('utf8')) as Record<string, unknown>;
  payload['notificationType'] = 'REFUND';
  return `${h}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${s}`;
}

/** A subset match: every key of `want` equals (deeply) the same key of `got`. */
function assertContains(got: Record<string, unknown>, want: Record<string, unknown>, label: string) {
  for (const [k, v] of Object.entries(want)) {
    if (v !== null && typeof v === 'object') assertContains(got[k] as Record<string, unknown>, v as Record<string, unknown>, `${label}.${k}`);
    else assert.deepEqual(got[k], v, `${label}.${k}`);
  }
}

test('the library\'s status enum is the one expected.json was written against', () => {
  for (const [name, code] of Object.entries(expected.verificationStatusEnum)) {
    assert.equal((VerificationStatus as unknown as Record<string, number>)[name], code, name);
    assert.equal(verificationStatusName(code as VerificationStatus), name);
  }
});

for (const c of expected.cases) {
  test(`expected.json ${c.id}: ${c.expect.ok ? 'verifies' : `fails with ${(c.expect as { status: string }).status}`}`, async () => {
    const verifier = createVerifier({
      rootCertificates: c.verifier.roots.map(read),
      enableOnlineChecks: c.verifier.enableOnlineChecks,
      environment: c.verifier.environment,
      bundleId: c.verifier.bundleId,
      appAppleId: c.verifier.appAppleId,
    });
    const jws = c.mutate ? tamper(readText(c.file)) : readText(c.file);
    assert.equal(readText(c.file).endsWith('\n'), false, 'fixture has no trailing newline');
    const run = () => (verifier[c.method] as (s: string) => Promise<Record<string, unknown>>).call(verifier, jws);
    if (c.expect.ok) {
      const decoded = await run();
      if (c.expect.decoded) assertContains(decoded, c.expect.decoded, c.id);
    } else {
      const want = c.expect;
      await assert.rejects(run(), (err: unknown) => {
        const failure = verificationFailure(err);
        assert.ok(failure, String(err));
        assert.equal(failure.status, want.statusCode);
        assert.equal(failure.name, want.status);
        return true;
      });
    }
  });
}

test('the decoded TEST notification is exactly the one SOURCE.md shows', async () => {
  const verifier = createVerifier({ rootCertificates: [read('testCA.der')], enableOnlineChecks: false, environment: 'Sandbox', bundleId: 'com.example', appAppleId: 1234 });
  assert.deepEqual(await verifier.verifyAndDecodeNotification(readText('testNotification.jws')), {
    data: { appAppleId: 1234, environment: 'Sandbox', bundleId: 'com.example' },
    notificationUUID: '9ad56bd2-0bc6-42e0-af24-fd996d87a1e6',
    signedDate: 1681314324000,
    notificationType: 'TEST',
  });
});

// ---- Chain vectors (jws_verification.test.ts "Chain Verification Checks") ----------------------------------

/** Exposes the library's protected chain check, as the upstream tests call it. */
class ChainProbe extends SignedDataVerifier {
  check(roots: Buffer[], leaf: Buffer, intermediate: Buffer, effectiveDate: Date): Promise<KeyObject> {
    return this.verifyCertificateChain(roots.map((r) => new X509Certificate(r)), new X509Certificate(leaf), new X509Certificate(intermediate), effectiveDate);
  }
}

interface ChainCase { id: string; root: string; intermediate: string; leaf: string; effectiveDate: number; expect: string }
const chainVectors = JSON.parse(readText('chain-vectors.json')) as { oids: { leafMarker: string; intermediateMarker: string }; cases: ChainCase[] };
const fileOf = (ref: string) => ref.split(' ')[0]!;

test('chain-vectors.json names the same marker OIDs as the code', () => {
  assert.equal(chainVectors.oids.leafMarker, LEAF_MARKER_OID);
  assert.equal(chainVectors.oids.intermediateMarker, INTERMEDIATE_MARKER_OID);
});

for (const c of chainVectors.cases) {
  test(`chain-vectors.json ${c.id}: ${c.expect.split(' ')[0]}`, async () => {
    const probe = new ChainProbe([read(fileOf(c.root))], false, Environment.PRODUCTION, 'com.example', 1234);
    const run = () => probe.check([read(fileOf(c.root))], read(fileOf(c.leaf)), read(fileOf(c.intermediate)), new Date(c.effectiveDate));
    if (c.expect.startsWith('valid')) {
      const key = await run();
      if (c.id === 'test-chain-valid') {
        assert.deepEqual(key.export({ type: 'spki', format: 'der' }), read('test-chain/leaf-public-key.spki.der'));
      } else {
        assert.deepEqual(key.export({ type: 'spki', format: 'der' }), new X509Certificate(read(fileOf(c.leaf))).publicKey.export({ type: 'spki', format: 'der' }));
      }
    } else {
      const status = c.expect.split(' ')[0]!;
      await assert.rejects(run(), (err: unknown) => {
        assert.ok(err instanceof VerificationException, String(err));
        assert.equal(verificationStatusName(err.status), status);
        return true;
      });
    }
  });
}

test('root.der of the test chain is testCA.der; the G3 root built into the code is the fixture\'s', () => {
  assert.deepEqual(read('test-chain/root.der'), read('testCA.der'));
  const [g3, g2] = appleRootCertificates();
  assert.deepEqual(g3, read('real-apple-chain/AppleRootCA-G3.der'));
  assert.equal(createHash('sha256').update(g3!).digest('hex'), APPLE_ROOT_FINGERPRINTS_SHA256['Apple Root CA - G3']);
  assert.equal(createHash('sha256').update(g2!).digest('hex'), APPLE_ROOT_FINGERPRINTS_SHA256['Apple Root CA - G2']);
  assert.match(new X509Certificate(g2!).subject, /CN=Apple Root CA - G2/);
  // The WWDR G6 intermediate of the real chain is signed by G3 and not by G2.
  const wwdr = new X509Certificate(read('real-apple-chain/AppleWWDRCA-G6.der'));
  assert.equal(wwdr.verify(new X509Certificate(g3!).publicKey), true);
  assert.equal(wwdr.verify(new X509Certificate(g2!).publicKey), false);
});

test('the real Apple chain verifies under the built-in roots and not under the test CA', async () => {
  const leaf = read('real-apple-chain/receipt-signing-leaf.der');
  const intermediate = read('real-apple-chain/AppleWWDRCA-G6.der');
  const at = new Date(1761962975000);
  const probe = new ChainProbe(appleRootCertificates(), false, Environment.PRODUCTION, 'com.example', 1234);
  await probe.check(appleRootCertificates(), leaf, intermediate, at);
  await assert.rejects(probe.check([read('testCA.der')], leaf, intermediate, at), (e: unknown) => e instanceof VerificationException && e.status === VerificationStatus.VERIFICATION_FAILURE);
  // Before the leaf's validity (2025-09-19): refused on dates.
  await assert.rejects(probe.check(appleRootCertificates(), leaf, intermediate, new Date('2025-01-01T00:00:00Z')), (e: unknown) => e instanceof VerificationException && e.status === VerificationStatus.INVALID_CERTIFICATE);
});

// ---- The verifier factory refuses what would skip checks -------------------------------------------------

test('createVerifier never builds an unchecked verifier', () => {
  const roots = [read('testCA.der')];
  for (const environment of ['LocalTesting', 'Xcode', 'sandbox', '']) {
    assert.throws(() => createVerifier({ rootCertificates: roots, enableOnlineChecks: false, environment: environment as AppleEnvironment, bundleId: 'com.example' }), /Production or Sandbox/, environment);
  }
  assert.throws(() => createVerifier({ rootCertificates: [], enableOnlineChecks: false, environment: 'Sandbox', bundleId: 'com.example' }), /root/);
  assert.throws(() => createVerifier({ rootCertificates: [read('test-chain/leaf.der')], enableOnlineChecks: false, environment: 'Sandbox', bundleId: 'com.example' }), /not a CA/);
  assert.throws(() => createVerifier({ rootCertificates: roots, enableOnlineChecks: false, environment: 'Production', bundleId: 'com.example' }), /appAppleId/);
  assert.throws(() => createVerifier({ rootCertificates: roots, enableOnlineChecks: false, environment: 'Sandbox', bundleId: '' }), /bundleId/);
  assert.ok(createVerifier({ rootCertificates: roots, enableOnlineChecks: false, environment: 'Production', bundleId: 'com.example', appAppleId: 1 }));
});

// ---- The sandbox's chain and signatures -----------------------------------------------------------------

const chainA = generateSandboxChain();
const chainB = generateSandboxChain();
const x5c = (c: typeof chainA) => [c.leafDer, c.intermediateDer, c.rootDer];

test('the generated chain has Apple\'s shape: CA flags, marker OIDs, issuers, signatures', () => {
  const root = new X509Certificate(chainA.rootDer);
  const intermediate = new X509Certificate(chainA.intermediateDer);
  const leaf = new X509Certificate(chainA.leafDer);
  assert.equal(root.ca, true);
  assert.equal(intermediate.ca, true);
  assert.equal(leaf.ca, false);
  assert.equal(root.verify(root.publicKey), true);
  assert.equal(intermediate.verify(root.publicKey), true);
  assert.equal(leaf.verify(intermediate.publicKey), true);
  assert.equal(leaf.verify(root.publicKey), false);
  assert.equal(intermediate.issuer, root.subject);
  assert.equal(leaf.issuer, intermediate.subject);
  const ext = (der: Buffer, oid: string) => {
    const x = new jsrsasign.X509();
    x.readCertHex(der.toString('hex'));
    return x.getExtInfo(oid);
  };
  assert.ok(ext(chainA.leafDer, LEAF_MARKER_OID));
  assert.ok(ext(chainA.intermediateDer, INTERMEDIATE_MARKER_OID));
  assert.equal(ext(chainA.leafDer, INTERMEDIATE_MARKER_OID), undefined);
  assert.equal(ext(chainA.intermediateDer, LEAF_MARKER_OID), undefined);
  assert.equal(ext(chainA.rootDer, LEAF_MARKER_OID), undefined);
  assert.equal(createPublicKey(createPrivateKey(chainA.leafPrivateKeyPem)).export({ type: 'spki', format: 'der' }).equals(leaf.publicKey.export({ type: 'spki', format: 'der' })), true);
  assert.ok(new Date(leaf.validTo).getTime() > Date.now() + 5 * 365 * 86_400_000);
});

test('a sandbox-signed JWS verifies under its own root only: not under Apple\'s roots, another sandbox, or the test CA', async () => {
  const payload = { notificationType: 'TEST', notificationUUID: '0b7b1d3e-8d39-4a0e-9f3c-1a2b3c4d5e6f', data: { bundleId: 'com.kp', environment: 'Sandbox' }, version: '2.0', signedDate: Date.now() };
  const jws = signAppStoreJws(payload, chainA.leafPrivateKeyPem, x5c(chainA));
  const decoded = decodeJwsUnverified(jws)!;
  assert.equal(decoded.header['alg'], 'ES256');
  assert.deepEqual(decoded.header['x5c'], x5c(chainA).map((d) => d.toString('base64')));
  assert.equal(Buffer.from(jws.split('.')[2]!, 'base64url').length, 64, 'raw r||s');
  const verifierFor = (roots: Buffer[]) => createVerifier({ rootCertificates: roots, enableOnlineChecks: false, environment: 'Sandbox', bundleId: 'com.kp' });
  assert.deepEqual(await verifierFor([chainA.rootDer]).verifyAndDecodeNotification(jws), payload);
  for (const [label, roots] of [['Apple roots', appleRootCertificates()], ['another sandbox', [chainB.rootDer]], ['test CA', [read('testCA.der')]]] as const) {
    await assert.rejects(verifierFor([...roots]).verifyAndDecodeNotification(jws), (e: unknown) => e instanceof VerificationException && e.status === VerificationStatus.VERIFICATION_FAILURE, label);
  }
  // Another sandbox's leaf signing with our chain in x5c: the signature fails.
  const forged = signAppStoreJws(payload, chainB.leafPrivateKeyPem, x5c(chainA));
  await assert.rejects(verifierFor([chainA.rootDer]).verifyAndDecodeNotification(forged), (e: unknown) => e instanceof VerificationException && e.status === VerificationStatus.VERIFICATION_FAILURE);
  // The leaf presented as intermediate (wrong order), and a 2-cert chain.
  const swapped = signAppStoreJws(payload, chainA.leafPrivateKeyPem, [chainA.intermediateDer, chainA.leafDer, chainA.rootDer]);
  await assert.rejects(verifierFor([chainA.rootDer]).verifyAndDecodeNotification(swapped), VerificationException);
  const [h, p] = jws.split('.');
  const header = JSON.parse(Buffer.from(h!, 'base64url').toString('utf8')) as { x5c: string[] };
  const short = `${Buffer.from(JSON.stringify({ alg: 'ES256', x5c: header.x5c.slice(0, 2) })).toString('base64url')}.${p}.${jws.split('.')[2]}`;
  // The library raises INVALID_CHAIN_LENGTH inside its x5c parsing and reports it as INVALID_CERTIFICATE.
  await assert.rejects(verifierFor([chainA.rootDer]).verifyAndDecodeNotification(short), (e: unknown) => e instanceof VerificationException && e.status === VerificationStatus.INVALID_CERTIFICATE);
  assert.throws(() => signAppStoreJws(payload, chainA.leafPrivateKeyPem, [chainA.leafDer, chainA.intermediateDer]), /x5c/);
});

test('decodeJwsUnverified refuses malformed input without throwing', () => {
  for (const bad of [undefined, 42, '', 'a.b', 'a.b.c.d', '!!.e30.x', `${Buffer.from('[]').toString('base64url')}.e30.x`, 'x'.repeat(70_000)]) {
    assert.equal(decodeJwsUnverified(bad), null, String(bad).slice(0, 20));
  }
  assert.deepEqual(decodeJwsUnverified('e30.e30.'), { header: {}, payload: {} });
});

// ---- App Store Server API bearer tokens --------------------------------------------------------------------

const apiKey = generateApiKey();
const expectedToken = { keyId: apiKey.keyId, issuerId: apiKey.issuerId, bundleId: 'com.kp', publicKeyPem: apiKey.publicKeyPem };

function es256Token(header: Record<string, unknown>, claims: Record<string, unknown>, privateKeyPem = apiKey.privateKeyPem): string {
  const input = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
  const sig = sign('sha256', Buffer.from(input), { key: createPrivateKey(privateKeyPem), dsaEncoding: 'ieee-p1363' });
  return `${input}.${sig.toString('base64url')}`;
}

test('the library\'s own bearer token passes the sandbox\'s check', () => {
  const client = new AppStoreServerAPIClient(apiKey.privateKeyPem, apiKey.keyId, apiKey.issuerId, 'com.kp', Environment.SANDBOX);
  const token = (client as unknown as { createBearerToken(): string }).createBearerToken();
  const check = verifyApiToken(`Bearer ${token}`, expectedToken);
  assert.ok(check.ok, !check.ok ? check.reason : '');
  assert.equal(check.claims['aud'], 'appstoreconnect-v1');
  assert.equal(check.claims['bid'], 'com.kp');
  assert.match(apiKey.keyId, /^[A-Z0-9]{10}$/);
});

test('bearer tokens: every way of getting it wrong is refused', () => {
  const now = Math.floor(Date.now() / 1000);
  const header = { alg: 'ES256', kid: apiKey.keyId, typ: 'JWT' };
  const claims = { iss: apiKey.issuerId, iat: now, exp: now + 300, aud: 'appstoreconnect-v1', bid: 'com.kp' };
  assert.equal(verifyApiToken(`Bearer ${es256Token(header, claims)}`, expectedToken).ok, true);
  const other = generateKeyPairSync('ec', { namedCurve: 'P-256', privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
  const cases: Array<[string, string | undefined, RegExp]> = [
    ['no header', undefined, /missing/],
    ['not bearer', `Basic ${es256Token(header, claims)}`, /missing/],
    ['garbage', 'Bearer abc', /missing/],
    ['other key', `Bearer ${es256Token(header, claims, other.privateKey)}`, /signature/],
    ['other kid', `Bearer ${es256Token({ ...header, kid: 'ZZZZZZZZZZ' }, claims)}`, /kid/],
    ['HS256', `Bearer ${es256Token({ ...header, alg: 'HS256' }, claims)}`, /alg/],
    ['none', `Bearer ${Buffer.from(JSON.stringify({ alg: 'none', kid: apiKey.keyId })).toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.`, /missing|alg/],
    ['wrong iss', `Bearer ${es256Token(header, { ...claims, iss: 'someone-else' })}`, /iss/],
    ['wrong aud', `Bearer ${es256Token(header, { ...claims, aud: 'appstoreconnect-v2' })}`, /aud/],
    ['wrong bid', `Bearer ${es256Token(header, { ...claims, bid: 'com.other' })}`, /bid/],
    ['expired', `Bearer ${es256Token(header, { ...claims, iat: now - 1000, exp: now - 400 })}`, /expired/],
    ['future iat', `Bearer ${es256Token(header, { ...claims, iat: now + 600, exp: now + 900 })}`, /future/],
    ['lifetime 2 h', `Bearer ${es256Token(header, { ...claims, exp: now + 7200 })}`, /60 minutes/],
    ['no exp', `Bearer ${es256Token(header, { ...claims, exp: undefined })}`, /iat\/exp/],
    ['tampered claims', `Bearer ${es256Token(header, claims).replace(/\.([^.]+)\./, (_m, p: string) => `.${Buffer.from(JSON.stringify({ ...claims, bid: 'com.kp2' })).toString('base64url')}.`)}`, /signature/],
  ];
  for (const [label, auth, reason] of cases) {
    const check = verifyApiToken(auth, expectedToken);
    assert.equal(check.ok, false, label);
    assert.match(!check.ok ? check.reason : '', reason, label);
  }
});
