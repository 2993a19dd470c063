/**
 * The App Store sandbox's purchases in PostgreSQL (table sandbox_apple_purchases, migration 0013).
 * Every change is a compare-and-set on `version`: read, decide, update only if nobody changed the
 * row meanwhile, else read again (bounded). Transaction ids come from a database sequence, so
 * several processes never hand out the same one.
 */
import type { Queryable } from '../../store/db.ts';

export type PurchaseStatus = 'pending' | 'purchased' | 'failed' | 'canceled';
export type ProductType = 'Consumable' | 'Non-Consumable' | 'Non-Renewing Subscription';
export const PRODUCT_TYPES: readonly ProductType[] = ['Consumable', 'Non-Consumable', 'Non-Renewing Subscription'];

export interface SandboxPurchase {
  bundleId: string;
  appAccountToken: string;
  productId: string;
  productType: ProductType;
  quantity: number;
  amountMinor: bigint;
  currency: string;
  storefront: string;
  storefrontId: string;
  status: PurchaseStatus;
  transactionId: string | null;
  purchaseDate: Date | null;
  /** Set when Apple refunded the transaction (migration 0024); the transaction stays purchased. */
  revocationDate: Date | null;
  /** 0: refunded for another reason, 1: refunded because of an issue in the app. */
  revocationReason: 0 | 1 | null;
  /** Set when Apple reversed the refund (REFUND_REVERSED): the sandbox refunds it no more. */
  refundReversedAt: Date | null;
  version: number;
  createdAt: Date;
}

/** What the device asks the App Store for (product, quantity, the storefront's price). */
export interface PurchaseSpec {
  productId: string;
  productType: ProductType;
  quantity: number;
  amountMinor: bigint;
  currency: string;
}

export interface PurchaseKey {
  bundleId: string;
  appAccountToken: string;
}

interface PurchaseRow {
  bundle_id: string;
  app_account_token: string;
  product_id: string;
  product_type: ProductType;
  quantity: number;
  amount_minor: string;
  currency: string;
  storefront: string;
  storefront_id: string;
  status: PurchaseStatus;
  transaction_id: string | null;
  purchase_date: Date | null;
  revocation_date: Date | null;
  revocation_reason: 0 | 1 | null;
  refund_reversed_at: Date | null;
  version: number;
  created_at: Date;
}

const COLUMNS = `bundle_id, app_account_token::text AS app_account_token, product_id, product_type, quantity, amount_minor, currency,
  storefront, storefront_id, status, transaction_id, purchase_date, revocation_date, revocation_reason, refund_reversed_at, version, created_at`;

function fromRow(r: PurchaseRow): SandboxPurchase {
  return {
    bundleId: r.bundle_id,
    appAccountToken: r.app_account_token,
    productId: r.product_id,
    productType: r.product_type,
    quantity: r.quantity,
    amountMinor: BigInt(r.amount_minor),
    currency: r.currency,
    storefront: r.storefront,
    storefrontId: r.storefront_id,
    status: r.status,
    transactionId: r.transaction_id,
    purchaseDate: r.purchase_date,
    revocationDate: r.revocation_date,
    revocationReason: r.revocation_reason,
    refundReversedAt: r.refund_reversed_at,
    version: r.version,
    createdAt: r.created_at,
  };
}

/** App Store storefronts (ISO 3166-1 alpha-3 and Apple's storefront id) for a price's currency. */
const STOREFRONTS: Readonly<Record<string, readonly [string, string]>> = {
  USD: ['USA', '143441'], CNY: ['CHN', '143465'], JPY: ['JPN', '143462'], EUR: ['DEU', '143443'], GBP: ['GBR', '143444'],
  HKD: ['HKG', '143463'], TWD: ['TWN', '143470'], KRW: ['KOR', '143466'], SGD: ['SGP', '143464'], AUD: ['AUS', '143460'],
  CAD: ['CAN', '143455'],
};

export function storefrontFor(currency: string): readonly [string, string] {
  return STOREFRONTS[currency] ?? STOREFRONTS['USD']!;
}

export function sameSpec(p: SandboxPurchase, s: PurchaseSpec): boolean {
  return p.productId === s.productId && p.productType === s.productType && p.quantity === s.quantity && p.amountMinor === s.amountMinor && p.currency === s.currency;
}

export async function getPurchase(db: Queryable, key: PurchaseKey): Promise<SandboxPurchase | null> {
  const { rows } = await db.query<PurchaseRow>(`SELECT ${COLUMNS} FROM sandbox_apple_purchases WHERE bundle_id = $1 AND app_account_token = $2`, [key.bundleId, key.appAccountToken]);
  return rows[0] ? fromRow(rows[0]) : null;
}

export async function getPurchaseByTransactionId(db: Queryable, bundleId: string, transactionId: string): Promise<SandboxPurchase | null> {
  const { rows } = await db.query<PurchaseRow>(`SELECT ${COLUMNS} FROM sandbox_apple_purchases WHERE bundle_id = $1 AND transaction_id = $2`, [bundleId, transactionId]);
  return rows[0] ? fromRow(rows[0]) : null;
}

/** Insert a pending purchase unless the key exists; null when it already did. */
export async function insertPurchase(db: Queryable, key: PurchaseKey, spec: PurchaseSpec): Promise<SandboxPurchase | null> {
  const [storefront, storefrontId] = storefrontFor(spec.currency);
  const { rows } = await db.query<PurchaseRow>(
    `INSERT INTO sandbox_apple_purchases (bundle_id, app_account_token, product_id, product_type, quantity, amount_minor, currency, storefront, storefront_id, status)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending')
     ON CONFLICT (bundle_id, app_account_token) DO NOTHING
     RETURNING ${COLUMNS}`,
    [key.bundleId, key.appAccountToken, spec.productId, spec.productType, spec.quantity, spec.amountMinor.toString(), spec.currency, storefront, storefrontId],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

export interface PurchasePatch {
  status: PurchaseStatus;
  /** Assign a transaction id from the sequence and stamp purchase_date (status purchased). */
  purchase?: boolean;
}

/** Compare-and-set on version; null when the row moved meanwhile. */
export async function updatePurchase(db: Queryable, expected: SandboxPurchase, patch: PurchasePatch): Promise<SandboxPurchase | null> {
  const { rows } = await db.query<PurchaseRow>(
    `UPDATE sandbox_apple_purchases SET
        status = $4,
        transaction_id = CASE WHEN $5 THEN '2000000' || lpad(nextval('sandbox_apple_transaction_seq')::text, 9, '0') ELSE transaction_id END,
        purchase_date = CASE WHEN $5 THEN clock_timestamp() ELSE purchase_date END,
        version = version + 1,
        updated_at = clock_timestamp()
      WHERE bundle_id = $1 AND app_account_token = $2 AND version = $3
      RETURNING ${COLUMNS}`,
    [expected.bundleId, expected.appAccountToken, expected.version, patch.status, patch.purchase === true],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

/**
 * Apple refunds a purchased transaction (`revoke`: revocationDate now, the given reason) or
 * reverses that refund (`reverse`: revocation cleared, refund_reversed_at stamped). Compare-and-set
 * on version; null when the row moved meanwhile.
 */
export async function updateRevocation(db: Queryable, expected: SandboxPurchase, change: { revoke: 0 | 1 } | { reverse: true }): Promise<SandboxPurchase | null> {
  const revoke = 'revoke' in change;
  const { rows } = await db.query<PurchaseRow>(
    `UPDATE sandbox_apple_purchases SET
        revocation_date = CASE WHEN $4 THEN clock_timestamp() ELSE NULL END,
        revocation_reason = CASE WHEN $4 THEN $5::smallint ELSE NULL END,
        refund_reversed_at = CASE WHEN $4 THEN refund_reversed_at ELSE clock_timestamp() END,
        version = version + 1,
        updated_at = clock_timestamp()
      WHERE bundle_id = $1 AND app_account_token = $2 AND version = $3 AND status = 'purchased'
      RETURNING ${COLUMNS}`,
    [expected.bundleId, expected.appAccountToken, expected.version, revoke, revoke ? change.revoke : null],
  );
  return rows[0] ? fromRow(rows[0]) : null;
}

const MAX_CAS_ROUNDS = 5;

/** Read-decide-write until the compare-and-set holds (bounded). */
export async function mutatePurchase<T>(
  db: Queryable,
  key: PurchaseKey,
  decide: (purchase: SandboxPurchase | null) => { patch: PurchasePatch; then: (updated: SandboxPurchase) => T } | { answer: T },
): Promise<T> {
  for (let round = 0; round < MAX_CAS_ROUNDS; round++) {
    const purchase = await getPurchase(db, key);
    const decision = decide(purchase);
    if ('answer' in decision) return decision.answer;
    const updated = await updatePurchase(db, purchase!, decision.patch);
    if (updated) return decision.then(updated);
  }
  throw new Error(`purchase ${key.appAccountToken} kept changing while being updated`);
}
