/**
 * The Google Play sandbox's purchases and access tokens in PostgreSQL (migration
 * 0014_google_sandbox.sql). Every state change is one conditional UPDATE (compare-and-set on the
 * purchase state or on `version`), so several service processes can share the database.
 * Times come from the database clock.
 */
import { createHash, randomBytes, randomInt } from 'node:crypto';
import type { Queryable } from '../../store/db.ts';
import { PURCHASE_STATE } from './transformers.ts';

export interface SandboxPurchase {
  purchaseToken: string;
  packageName: string;
  productId: string;
  quantity: number;
  obfuscatedAccountId: string;
  obfuscatedProfileId: string | null;
  orderId: string;
  purchaseState: number;
  consumptionState: number;
  acknowledgementState: number;
  purchaseType: number | null;
  regionCode: string;
  developerPayload: string | null;
  purchaseTime: Date;
  settledAt: Date | null;
  /** When Google voided (refunded) the purchase; it then reads as CANCELED (migration 0024). */
  voidedAt: Date | null;
  /** Voided Purchases API numbers: source 0 user, 1 developer, 2 Google; reason 0..8. */
  voidedSource: number | null;
  voidedReason: number | null;
  version: number;
}

export type NewPurchase = Pick<SandboxPurchase, 'packageName' | 'productId' | 'quantity' | 'obfuscatedAccountId' | 'obfuscatedProfileId' | 'purchaseType'>;

interface PurchaseRow {
  purchase_token: string;
  package_name: string;
  product_id: string;
  quantity: number;
  obfuscated_account_id: string;
  obfuscated_profile_id: string | null;
  order_id: string;
  purchase_state: number;
  consumption_state: number;
  acknowledgement_state: number;
  purchase_type: number | null;
  region_code: string;
  developer_payload: string | null;
  purchase_time: Date;
  settled_at: Date | null;
  voided_at: Date | null;
  voided_source: number | null;
  voided_reason: number | null;
  version: number;
}

const COLUMNS = `purchase_token, package_name, product_id, quantity, obfuscated_account_id, obfuscated_profile_id, order_id,
  purchase_state, consumption_state, acknowledgement_state, purchase_type, region_code, developer_payload, purchase_time,
  settled_at, voided_at, voided_source, voided_reason, version`;

function fromRow(r: PurchaseRow): SandboxPurchase {
  return {
    purchaseToken: r.purchase_token,
    packageName: r.package_name,
    productId: r.product_id,
    quantity: r.quantity,
    obfuscatedAccountId: r.obfuscated_account_id,
    obfuscatedProfileId: r.obfuscated_profile_id,
    orderId: r.order_id,
    purchaseState: r.purchase_state,
    consumptionState: r.consumption_state,
    acknowledgementState: r.acknowledgement_state,
    purchaseType: r.purchase_type,
    regionCode: r.region_code,
    developerPayload: r.developer_payload,
    purchaseTime: r.purchase_time,
    settledAt: r.settled_at,
    voidedAt: r.voided_at,
    voidedSource: r.voided_source,
    voidedReason: r.voided_reason,
    version: r.version,
  };
}

/** Insert a PENDING purchase unless the app already has one for this account id; null then. */
export async function insertPurchase(db: Queryable, p: NewPurchase): Promise<SandboxPurchase | null> {
  const { rows } = await db.query<PurchaseRow>(
    `INSERT INTO sandbox_google_play_purchases
       (purchase_token, package_name, product_id, quantity, obfuscated_account_id, obfuscated_profile_id, order_id, purchase_state, purchase_type)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
     ON CONFLICT (package_name, obfuscated_account_id) DO NOTHING
     RETURNING ${COLUMNS}`,
    [newPurchaseToken(), p.packageName, p.productId, p.quantity, p.obfuscatedAccountId, p.obfuscatedProfileId, newOrderId(), PURCHASE_STATE.PENDING, p.purchaseType],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

export async function getPurchaseByToken(db: Queryable, packageName: string, token: string): Promise<SandboxPurchase | null> {
  const { rows } = await db.query<PurchaseRow>(`SELECT ${COLUMNS} FROM sandbox_google_play_purchases WHERE package_name = $1 AND purchase_token = $2`, [packageName, token]);
  return rows[0] ? fromRow(rows[0]) : null;
}

export async function getPurchaseByReference(db: Queryable, packageName: string, obfuscatedAccountId: string): Promise<SandboxPurchase | null> {
  const { rows } = await db.query<PurchaseRow>(
    `SELECT ${COLUMNS} FROM sandbox_google_play_purchases WHERE package_name = $1 AND obfuscated_account_id = $2`,
    [packageName, obfuscatedAccountId],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

export async function getPurchaseByOrderId(db: Queryable, packageName: string, orderId: string): Promise<SandboxPurchase | null> {
  const { rows } = await db.query<PurchaseRow>(`SELECT ${COLUMNS} FROM sandbox_google_play_purchases WHERE package_name = $1 AND order_id = $2`, [packageName, orderId]);
  return rows[0] ? fromRow(rows[0]) : null;
}

// ---- Prices ---------------------------------------------------------------------------------------

/**
 * What a sandbox purchase cost the buyer. Google knows the price it charged from Play Console's
 * price list; this sandbox keeps no price list and the device call names no price. So the sandbox's
 * "Play Console" charges what Knowpay priced: the amount and currency of the Knowpay payment whose
 * reference the purchase carries (obfuscated account id = payments.channel_reference), read from
 * the shared database. A purchase no payment of ours started (made straight through
 * POST /purchase) costs SANDBOX_DEFAULT_UNIT_PRICE per unit.
 */
export interface SandboxPrice { amountMinor: bigint; currency: string; source: 'payment' | 'default' }

/** Play Console's lowest US price tier, per unit: the price of a purchase without a Knowpay payment. */
export const SANDBOX_DEFAULT_UNIT_PRICE = { amountMinor: 99n, currency: 'USD' } as const;

const priceOf = (quantity: number, amount: string | null, currency: string | null): SandboxPrice =>
  amount !== null && currency !== null
    ? { amountMinor: BigInt(amount), currency, source: 'payment' }
    : { amountMinor: SANDBOX_DEFAULT_UNIT_PRICE.amountMinor * BigInt(quantity), currency: SANDBOX_DEFAULT_UNIT_PRICE.currency, source: 'default' };

export async function priceOfPurchase(db: Queryable, p: SandboxPurchase): Promise<SandboxPrice> {
  const { rows } = await db.query<{ amount: string; currency: string }>(
    `SELECT amount, currency FROM payments WHERE channel = 'google_play' AND channel_reference = $1`, [p.obfuscatedAccountId]);
  return priceOf(p.quantity, rows[0]?.amount ?? null, rows[0]?.currency ?? null);
}

/** One money movement of the earnings report: a purchase paid, or a paid purchase voided (refunded in full). */
export interface EarningsEvent {
  kind: 'payment' | 'refund';
  orderId: string;
  productId: string;
  quantity: number;
  at: Date;
  regionCode: string;
  price: SandboxPrice;
}

/**
 * The app's payments (PURCHASED purchases, and voided ones, which were paid first: by purchase
 * time) and refunds (by voided time) in [from, to), oldest first, priced as priceOfPurchase does.
 */
export async function listEarningsEvents(db: Queryable, q: { packageName: string; from: Date; to: Date }): Promise<EarningsEvent[]> {
  const { rows } = await db.query<{ kind: 'payment' | 'refund'; order_id: string; product_id: string; quantity: number; at: Date; region_code: string; amount: string | null; currency: string | null }>(
    `SELECT e.kind, g.order_id, g.product_id, g.quantity, e.at, g.region_code, p.amount, p.currency
       FROM sandbox_google_play_purchases g
       CROSS JOIN LATERAL (VALUES ('payment', CASE WHEN g.purchase_state = ${PURCHASE_STATE.PURCHASED} OR g.voided_at IS NOT NULL THEN g.purchase_time END),
                                  ('refund', g.voided_at)) AS e (kind, at)
       LEFT JOIN payments p ON p.channel = 'google_play' AND p.channel_reference = g.obfuscated_account_id
      WHERE g.package_name = $1 AND e.at >= $2 AND e.at < $3
      ORDER BY e.at, g.order_id, e.kind`,
    [q.packageName, q.from, q.to],
  );
  return rows.map((r) => ({
    kind: r.kind, orderId: r.order_id, productId: r.product_id, quantity: r.quantity, at: r.at, regionCode: r.region_code,
    price: priceOf(r.quantity, r.amount, r.currency),
  }));
}

/** PENDING → PURCHASED or CANCELED, only if nobody settled it meanwhile. Null when it moved. */
export async function settlePurchase(db: Queryable, expected: SandboxPurchase, to: 0 | 1): Promise<SandboxPurchase | null> {
  const { rows } = await db.query<PurchaseRow>(
    `UPDATE sandbox_google_play_purchases
        SET purchase_state = $3::smallint, settled_at = clock_timestamp(),
            purchase_time = CASE WHEN $3::smallint = 0 THEN clock_timestamp() ELSE purchase_time END,
            version = version + 1, updated_at = clock_timestamp()
      WHERE purchase_token = $1 AND version = $2 AND purchase_state = ${PURCHASE_STATE.PENDING}
      RETURNING ${COLUMNS}`,
    [expected.purchaseToken, expected.version, to],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

/**
 * Google voids a PURCHASED purchase (a full refund): purchaseState becomes CANCELED and
 * refundableQuantity 0; only if nobody changed it meanwhile. Null when it moved or was voided.
 * voided_at is kept to the millisecond: it is voidedTimeMillis, and the list's page cursor.
 */
export async function voidPurchase(db: Queryable, expected: SandboxPurchase, v: { source: number; reason: number }): Promise<SandboxPurchase | null> {
  const { rows } = await db.query<PurchaseRow>(
    `UPDATE sandbox_google_play_purchases
        SET purchase_state = ${PURCHASE_STATE.CANCELED}, voided_at = date_trunc('milliseconds', clock_timestamp()), voided_source = $3, voided_reason = $4,
            version = version + 1, updated_at = clock_timestamp()
      WHERE purchase_token = $1 AND version = $2 AND purchase_state = ${PURCHASE_STATE.PURCHASED} AND voided_at IS NULL
      RETURNING ${COLUMNS}`,
    [expected.purchaseToken, expected.version, v.source, v.reason],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

/** Voided purchases of an app in [from, to), oldest first, after a (voided_at, order_id) cursor; bounded. */
export async function listVoidedPurchases(
  db: Queryable,
  q: { packageName: string; from: Date; to: Date; after: { voidedAt: Date; orderId: string } | null; limit: number },
): Promise<SandboxPurchase[]> {
  const { rows } = await db.query<PurchaseRow>(
    `SELECT ${COLUMNS} FROM sandbox_google_play_purchases
      WHERE package_name = $1 AND voided_at IS NOT NULL AND voided_at >= $2 AND voided_at < $3
        AND ($4::timestamptz IS NULL OR (voided_at, order_id) > ($4::timestamptz, $5::text))
      ORDER BY voided_at, order_id
      LIMIT $6`,
    [q.packageName, q.from, q.to, q.after?.voidedAt ?? null, q.after?.orderId ?? null, Math.max(1, Math.min(q.limit, 1000))],
  );
  return rows.map(fromRow);
}

export type AcknowledgeResult = 'acknowledged' | 'already_acknowledged' | 'not_purchased' | 'not_found';

/** Acknowledge a PURCHASED purchase; acknowledging again changes nothing. */
export async function acknowledgePurchase(db: Queryable, packageName: string, token: string, developerPayload: string | null): Promise<AcknowledgeResult> {
  const { rowCount } = await db.query(
    `UPDATE sandbox_google_play_purchases
        SET acknowledgement_state = 1, developer_payload = COALESCE($3, developer_payload),
            version = version + 1, updated_at = clock_timestamp()
      WHERE package_name = $1 AND purchase_token = $2 AND purchase_state = ${PURCHASE_STATE.PURCHASED} AND acknowledgement_state = 0`,
    [packageName, token, developerPayload],
  );
  if (rowCount === 1) return 'acknowledged';
  const p = await getPurchaseByToken(db, packageName, token);
  if (!p) return 'not_found';
  if (p.purchaseState !== PURCHASE_STATE.PURCHASED) return 'not_purchased';
  return 'already_acknowledged';
}

// ---- Access tokens ------------------------------------------------------------------------------

export function sha256Hex(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

/** Store a newly issued token (by hash) and sweep a bounded number of long-expired ones. */
export async function insertAccessToken(db: Queryable, t: { token: string; clientEmail: string; scope: string; ttlSeconds: number }): Promise<void> {
  await db.query(
    `INSERT INTO sandbox_google_play_access_tokens (token_sha256, client_email, scope, expires_at)
     VALUES ($1, $2, $3, clock_timestamp() + make_interval(secs => $4))`,
    [sha256Hex(t.token), t.clientEmail, t.scope, t.ttlSeconds],
  );
  await db.query(
    `DELETE FROM sandbox_google_play_access_tokens WHERE token_sha256 IN (
       SELECT token_sha256 FROM sandbox_google_play_access_tokens WHERE expires_at < clock_timestamp() - interval '1 day' LIMIT 100)`,
  );
}

export interface AccessTokenRecord {
  clientEmail: string;
  scope: string;
  expired: boolean;
}

export async function findAccessToken(db: Queryable, token: string): Promise<AccessTokenRecord | null> {
  const { rows } = await db.query<{ client_email: string; scope: string; expired: boolean }>(
    `SELECT client_email, scope, expires_at <= clock_timestamp() AS expired FROM sandbox_google_play_access_tokens WHERE token_sha256 = $1`,
    [sha256Hex(token)],
  );
  return rows[0] ? { clientEmail: rows[0].client_email, scope: rows[0].scope, expired: rows[0].expired } : null;
}

// ---- Identifiers shaped like Google's -----------------------------------------------------------

function digits(n: number): string {
  let out = '';
  for (let i = 0; i < n; i++) out += String(randomInt(10));
  return out;
}

/** Like `veduehxdiekpzbeximftmfne.AO-J1OyKHFkc…`: 24 lowercase letters, '.', 'AO-J1O', 120 base64url chars. */
export function newPurchaseToken(): string {
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  let head = '';
  for (let i = 0; i < 24; i++) head += letters[randomInt(26)];
  return `${head}.AO-J1O${randomBytes(90).toString('base64url')}`;
}

/** GPA.1234-5678-9012-34567 */
export function newOrderId(): string {
  return `GPA.${digits(4)}-${digits(4)}-${digits(4)}-${digits(5)}`;
}

/** Pub/Sub message ids are decimal strings of about 16 digits, stable across redeliveries. */
export function newMessageId(): string {
  return `${1 + randomInt(9)}${digits(15)}`;
}

/** OAuth access tokens look like `ya29.…`. */
export function newAccessToken(): string {
  return `ya29.${randomBytes(48).toString('base64url')}`;
}
