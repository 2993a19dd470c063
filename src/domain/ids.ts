/** Prefixed, sortable, unguessable ids (Stripe style): `ord_` + 12 time chars + 14 random chars. */
import { randomBytes } from 'node:crypto';

export type IdPrefix = 'cr' | 'prod' | 'coupon' | 'ord' | 'pay' | 're' | 'ent' | 'stl' | 'po' | 'recon' | 'key' | 'je' | 'wtx';

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'; // Crockford base32: sorts like the time it encodes

function encodeTime(ms: number): string {
  let out = '';
  let n = ms;
  for (let i = 0; i < 10; i++) {
    out = ALPHABET[n % 32] + out;
    n = Math.floor(n / 32);
  }
  return out;
}

function encodeRandom(length: number): string {
  const bytes = randomBytes(length);
  let out = '';
  for (const b of bytes) out += ALPHABET[b % 32];
  return out;
}

export function newId(prefix: IdPrefix): string {
  return `${prefix}_${encodeTime(Date.now())}${encodeRandom(14)}`;
}

/** A channel-facing trade number: letters and digits only, ≤ 32 chars (Alipay 64, WeChat 32). */
export function newTradeNumber(): string {
  return 'KP' + encodeTime(Date.now()) + encodeRandom(18);
}
