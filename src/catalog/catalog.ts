/** Creators, products (prices per currency) and coupons: the platform's catalog. */
import type { Pool, Queryable } from '../store/db.ts';
import { inTransaction } from '../store/db.ts';
import { newId } from '../domain/ids.ts';
import { invalid, notFound } from '../domain/errors.ts';
import { normalizeCurrency, toJsonAmount } from '../domain/money.ts';

export type ProductType = 'course' | 'column' | 'live' | 'membership' | 'coin_pack';

interface CreatorRow { id: string; name: string; revenue_share_bps: number; settlement_delay_days: number; min_payout_amount: string; created_at: Date }
interface ProductRow {
  id: string; title: string; type: ProductType; creator_id: string; access_days: number | null;
  wallet_credit_currency: string | null; wallet_credit_amount: string | null; active: boolean; created_at: Date;
  store_product_ids: Record<string, string>;
}
interface PriceRow { product_id: string; currency: string; unit_amount: string }
export interface CouponRow {
  id: string; code: string; percent_off_bps: number | null; amount_off: string | null; amount_off_currency: string | null;
  max_redemptions: number | null; times_reserved: number; valid_from: Date | null; expires_at: Date | null;
  product_ids: string[] | null; created_at: Date;
}

const unix = (d: Date | null) => (d ? Math.floor(d.getTime() / 1000) : null);

export function creatorJson(r: CreatorRow) {
  return {
    id: r.id, object: 'creator', name: r.name, revenue_share_bps: r.revenue_share_bps,
    settlement_delay_days: r.settlement_delay_days, min_payout_amount: toJsonAmount(BigInt(r.min_payout_amount)), created: unix(r.created_at),
  };
}

export function productJson(r: ProductRow, prices: PriceRow[]) {
  return {
    id: r.id, object: 'product', title: r.title, type: r.type, creator_id: r.creator_id,
    access_days: r.access_days, active: r.active,
    prices: prices.map((p) => ({ currency: p.currency, unit_amount: toJsonAmount(BigInt(p.unit_amount)) })),
    wallet_credit: r.wallet_credit_currency
      ? { currency: r.wallet_credit_currency, amount: toJsonAmount(BigInt(r.wallet_credit_amount!)) }
      : null,
    store_product_ids: r.store_product_ids,
    created: unix(r.created_at),
  };
}

export function couponJson(r: CouponRow) {
  return {
    id: r.id, object: 'coupon', code: r.code, percent_off_bps: r.percent_off_bps,
    amount_off: r.amount_off ? { currency: r.amount_off_currency, amount: toJsonAmount(BigInt(r.amount_off)) } : null,
    max_redemptions: r.max_redemptions, times_redeemed: r.times_reserved,
    valid_from: unix(r.valid_from), expires_at: unix(r.expires_at), product_ids: r.product_ids, created: unix(r.created_at),
  };
}

function currencyOrThrow(input: string, param: string): string {
  const c = normalizeCurrency(input);
  if (!c) throw invalid('currency_not_supported', `Unknown or unsupported currency '${input}'`, param);
  return c;
}

// ---------- creators ----------

export async function createCreator(db: Pool, input: { name: string; revenue_share_bps: number; settlement_delay_days?: number; min_payout_amount?: number }) {
  const { rows } = await db.query<CreatorRow>(
    `INSERT INTO creators (id, name, revenue_share_bps, settlement_delay_days, min_payout_amount) VALUES ($1, $2, $3, $4, $5) RETURNING *`,
    [newId('cr'), input.name, input.revenue_share_bps, input.settlement_delay_days ?? 7, input.min_payout_amount ?? 0],
  );
  return creatorJson(rows[0]!);
}

export async function getCreator(db: Queryable, id: string) {
  const { rows } = await db.query<CreatorRow>('SELECT * FROM creators WHERE id = $1', [id]);
  if (!rows[0]) throw notFound('creator', id);
  return creatorJson(rows[0]);
}

// ---------- products ----------

export interface CreateProductInput {
  title: string; type: ProductType; creator_id: string; prices: { currency: string; unit_amount: number }[];
  access_days?: number; wallet_credit?: { currency: string; amount: number };
  store_product_ids?: { apple_iap?: string; google_play?: string };
}

export async function createProduct(db: Pool, input: CreateProductInput) {
  if (input.prices.length === 0) throw invalid('parameter_missing', 'A product needs at least one price', 'prices');
  const prices = input.prices.map((p, i) => ({ currency: currencyOrThrow(p.currency, `prices[${i}].currency`), unit_amount: BigInt(p.unit_amount) }));
  if (new Set(prices.map((p) => p.currency)).size !== prices.length) {
    throw invalid('duplicate_currency', 'Each currency may have only one price', 'prices');
  }
  if (input.type === 'coin_pack' && !input.wallet_credit) {
    throw invalid('parameter_missing', 'A coin_pack product needs wallet_credit', 'wallet_credit');
  }
  if (input.type !== 'coin_pack' && input.wallet_credit) {
    throw invalid('parameter_invalid', 'Only coin_pack products carry wallet_credit', 'wallet_credit');
  }
  const wc = input.wallet_credit
    ? { currency: currencyOrThrow(input.wallet_credit.currency, 'wallet_credit.currency'), amount: BigInt(input.wallet_credit.amount) }
    : null;
  if (wc && wc.amount <= 0n) throw invalid('amount_invalid', 'wallet_credit.amount must be positive', 'wallet_credit.amount');
  return inTransaction(db, async (tx) => {
    const creator = await tx.query('SELECT 1 FROM creators WHERE id = $1', [input.creator_id]);
    if (creator.rowCount === 0) throw notFound('creator', input.creator_id, 'creator_id');
    const id = newId('prod');
    const { rows } = await tx.query<ProductRow>(
      `INSERT INTO products (id, title, type, creator_id, access_days, wallet_credit_currency, wallet_credit_amount, store_product_ids)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *`,
      [id, input.title, input.type, input.creator_id, input.access_days ?? null, wc?.currency ?? null, wc?.amount.toString() ?? null,
        JSON.stringify(input.store_product_ids ?? {})],
    );
    const priceRows: PriceRow[] = [];
    for (const p of prices) {
      const r = await tx.query<PriceRow>(
        'INSERT INTO product_prices (product_id, currency, unit_amount) VALUES ($1, $2, $3) RETURNING *',
        [id, p.currency, p.unit_amount.toString()],
      );
      priceRows.push(r.rows[0]!);
    }
    return productJson(rows[0]!, priceRows);
  });
}

export async function getProduct(db: Queryable, id: string) {
  const { rows } = await db.query<ProductRow>('SELECT * FROM products WHERE id = $1', [id]);
  if (!rows[0]) throw notFound('product', id);
  const prices = await db.query<PriceRow>('SELECT * FROM product_prices WHERE product_id = $1 ORDER BY currency', [id]);
  return productJson(rows[0], prices.rows);
}

// ---------- coupons ----------

export interface CreateCouponInput {
  code: string; percent_off_bps?: number; amount_off?: { currency: string; amount: number };
  max_redemptions?: number; valid_from?: number; expires_at?: number; product_ids?: string[];
}

export async function createCoupon(db: Pool, input: CreateCouponInput) {
  if ((input.percent_off_bps === undefined) === (input.amount_off === undefined)) {
    throw invalid('parameter_invalid', 'Give exactly one of percent_off_bps or amount_off', 'percent_off_bps');
  }
  const amountOff = input.amount_off
    ? { currency: currencyOrThrow(input.amount_off.currency, 'amount_off.currency'), amount: BigInt(input.amount_off.amount) }
    : null;
  if (amountOff && amountOff.amount <= 0n) throw invalid('amount_invalid', 'amount_off.amount must be positive', 'amount_off.amount');
  if (input.valid_from !== undefined && input.expires_at !== undefined && input.expires_at <= input.valid_from) {
    throw invalid('parameter_invalid', 'expires_at must be after valid_from', 'expires_at');
  }
  const toDate = (s?: number) => (s === undefined ? null : new Date(s * 1000));
  return inTransaction(db, async (tx) => {
    if (input.product_ids?.length) {
      const found = await tx.query('SELECT id FROM products WHERE id = ANY($1)', [input.product_ids]);
      if (found.rowCount !== new Set(input.product_ids).size) throw invalid('resource_missing', 'Unknown product in product_ids', 'product_ids');
    }
    const { rows } = await tx.query<CouponRow>(
      `INSERT INTO coupons (id, code, percent_off_bps, amount_off, amount_off_currency, max_redemptions, valid_from, expires_at, product_ids)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
       ON CONFLICT (code) DO NOTHING RETURNING *`,
      [newId('coupon'), input.code, input.percent_off_bps ?? null, amountOff?.amount.toString() ?? null, amountOff?.currency ?? null,
        input.max_redemptions ?? null, toDate(input.valid_from), toDate(input.expires_at), input.product_ids?.length ? input.product_ids : null],
    );
    if (!rows[0]) throw invalid('coupon_code_taken', `A coupon with code '${input.code}' already exists`, 'code');
    return couponJson(rows[0]);
  });
}

export async function getCoupon(db: Queryable, id: string) {
  const { rows } = await db.query<CouponRow>('SELECT * FROM coupons WHERE id = $1', [id]);
  if (!rows[0]) throw notFound('coupon', id);
  return couponJson(rows[0]);
}
