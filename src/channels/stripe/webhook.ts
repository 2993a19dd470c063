/**
 * Stripe webhook signatures: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]`, v1 = hex(HMAC-SHA256(
 * key = the whole `whsec_…` string as UTF-8, msg = `${t}.${rawBody}`)), 300 s tolerance. Verified by
 * the official SDK's `constructEvent`; signed (sandbox) by its `generateTestHeaderString`.
 */
import Stripe from 'stripe';

/** Stripe's default tolerance (Webhook.DEFAULT_TOLERANCE). */
export const STRIPE_TOLERANCE_S = 300;
export const MAX_WEBHOOK_BYTES = 512 * 1024;
const MAX_HEADER_CHARS = 4096;

export type WebhookCheck = { ok: true; event: Record<string, unknown> } | { ok: false; reason: string };

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Verify THEN parse. `nowMs` is the receive time. Beyond the SDK (which checks only the past),
 * a timestamp more than the tolerance in the future is refused too: no genuine Stripe clock is
 * that far ahead, and a signature made for later must not be usable now.
 */
export function verifyStripeWebhook(
  rawBody: Buffer,
  header: string | string[] | undefined,
  secret: string,
  opts: { nowMs: number; toleranceS?: number },
): WebhookCheck {
  const toleranceS = opts.toleranceS ?? STRIPE_TOLERANCE_S;
  if (!(toleranceS > 0)) throw new TypeError('toleranceS must be > 0: a zero tolerance disables the replay check');
  if (!secret) throw new TypeError('webhook secret is required');
  if (Array.isArray(header)) return { ok: false, reason: 'more than one Stripe-Signature header' };
  if (typeof header !== 'string' || header === '') return { ok: false, reason: 'missing Stripe-Signature header' };
  if (header.length > MAX_HEADER_CHARS) return { ok: false, reason: 'Stripe-Signature header too long' };
  if (!Buffer.isBuffer(rawBody) || rawBody.length === 0) return { ok: false, reason: 'empty body' };
  if (rawBody.length > MAX_WEBHOOK_BYTES) return { ok: false, reason: `body larger than ${MAX_WEBHOOK_BYTES} bytes` };
  // The SDK decodes bytes leniently before hashing: two byte strings differing only in invalid
  // UTF-8 would share a signature. A genuine Stripe body is valid UTF-8 JSON.
  try {
    utf8.decode(rawBody);
  } catch {
    return { ok: false, reason: 'body is not valid UTF-8' };
  }
  const timestamp = headerTimestamp(header);
  // The SDK signs over `NaN.` for `t=` with no digits and then fails only on the HMAC; say why.
  if (timestamp === null) return { ok: false, reason: 'invalid signature: no usable timestamp (t=) in the Stripe-Signature header' };
  if (timestamp - Math.floor(opts.nowMs / 1000) > toleranceS) {
    return { ok: false, reason: 'timestamp too far in the future' };
  }
  let event: unknown;
  try {
    event = Stripe.webhooks.constructEvent(rawBody, header, secret, toleranceS, undefined, opts.nowMs);
  } catch (err) {
    const message = err instanceof Error ? err.message.split('\n')[0]!.trim() : String(err);
    if (err instanceof SyntaxError) return { ok: false, reason: 'body is not JSON' };
    return { ok: false, reason: `invalid signature: ${message}` };
  }
  if (!event || typeof event !== 'object' || Array.isArray(event)) return { ok: false, reason: 'body is not a JSON object' };
  return { ok: true, event: event as Record<string, unknown> };
}

/** The `t=` of a Stripe-Signature header (the last one wins, as in the SDK); null when absent or not plain digits. */
export function headerTimestamp(header: string): number | null {
  let found: number | null = null;
  for (const item of header.split(',')) {
    const [k, v] = item.split('=');
    if (k === 't') {
      found = v !== undefined && /^\d{1,12}$/.test(v) ? Number(v) : null;
    }
  }
  return found;
}

/** The header Stripe sends with a delivery, made by the official SDK (sandbox side). */
export function signStripeWebhook(payload: string, secret: string, timestampS: number): string {
  if (!secret) throw new TypeError('webhook secret is required');
  if (!Number.isSafeInteger(timestampS) || timestampS <= 0) throw new TypeError('timestamp must be positive unix seconds');
  return Stripe.webhooks.generateTestHeaderString({ payload, secret, timestamp: timestampS });
}
