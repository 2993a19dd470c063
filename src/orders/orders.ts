/**
 * Orders: priced at creation (pricing.ts), coupon redemption reserved atomically, moved through
 * the order state machine with compare-and-set and a transition row per change.
 */
import type { Client, Pool, Queryable } from '../store/db.ts';
import { inTransaction } from '../store/db.ts';
import { newId } from '../domain/ids.ts';
import { ApiError, invalid, notFound } from '../domain/errors.ts';
import { normalizeCurrency, toJsonAmount } from '../domain/money.ts';
import { priceOrder, type PricedLine, type PricingCoupon } from '../domain/pricing.ts';
import { orderMachine, type OrderStatus } from '../domain/state-machine.ts';
import { assert } from '../domain/assert.ts';
import type { ClientPlatform } from '../channels/types.ts';
import type { CouponRow } from '../catalog/catalog.ts';
import { grantEntitlementsForOrder } from '../entitlements/entitlements.ts';
import { enqueueJob } from '../jobs/queue.ts';

export interface OrderRow {
  id: string; customer_id: string; currency: string; status: OrderStatus;
  subtotal_amount: string; discount_amount: string; total_amount: string;
  coupon_id: string | null; coupon_released: boolean; client_platform: ClientPlatform;
  expires_at: Date; paid_at: Date | null; paid_payment_id: string | null; created_at: Date; updated_at: Date;
}
interface ItemRow {
  order_id: string; line: number; product_id: string; quantity: number; unit_amount: string;
  subtotal_amount: string; discount_amount: string; total_amount: string;
}

const unix = (d: Date | null) => (d ? Math.floor(d.getTime() / 1000) : null);
const amt = (s: string) => toJsonAmount(BigInt(s));

export function orderJson(o: OrderRow, items: ItemRow[], couponCode: string | null) {
  return {
    id: o.id, object: 'order', customer_id: o.customer_id, status: o.status, currency: o.currency,
    subtotal_amount: amt(o.subtotal_amount), discount_amount: amt(o.discount_amount), total_amount: amt(o.total_amount),
    coupon_code: couponCode, client_platform: o.client_platform,
    items: items.map((i) => ({
      product_id: i.product_id, quantity: i.quantity, unit_amount: amt(i.unit_amount),
      subtotal_amount: amt(i.subtotal_amount), discount_amount: amt(i.discount_amount), total_amount: amt(i.total_amount),
    })),
    paid_payment_id: o.paid_payment_id,
    expires_at: unix(o.expires_at), paid_at: unix(o.paid_at), created: unix(o.created_at),
  };
}

export interface CreateOrderInput {
  customer_id: string; currency: string; items: { product_id: string; quantity?: number }[];
  coupon_code?: string; client_platform: ClientPlatform;
}

interface ProductPrice { id: string; active: boolean; unit_amount: string | null }

/** Reserve one redemption of a coupon, or explain exactly why it cannot be used. */
async function reserveCoupon(tx: Client, code: string, currency: string, productIds: string[]): Promise<CouponRow> {
  const { rows } = await tx.query<CouponRow>('SELECT * FROM coupons WHERE code = $1', [code]);
  const c = rows[0];
  if (!c) throw invalid('coupon_not_found', `No coupon with code '${code}'`, 'coupon_code');
  const now = Date.now();
  if (c.expires_at && c.expires_at.getTime() <= now) throw invalid('coupon_expired', `Coupon '${code}' has expired`, 'coupon_code');
  if (c.valid_from && c.valid_from.getTime() > now) throw invalid('coupon_not_yet_valid', `Coupon '${code}' is not valid yet`, 'coupon_code');
  if (c.amount_off_currency && c.amount_off_currency !== currency) {
    throw invalid('coupon_currency_mismatch', `Coupon '${code}' is in ${c.amount_off_currency}, the order in ${currency}`, 'coupon_code');
  }
  if (c.product_ids && !productIds.some((p) => c.product_ids!.includes(p))) {
    throw invalid('coupon_not_applicable', `Coupon '${code}' does not apply to these products`, 'coupon_code');
  }
  // Compare-and-set on the counter: concurrent reservations serialise on the row and re-check.
  const reserved = await tx.query<CouponRow>(
    `UPDATE coupons SET times_reserved = times_reserved + 1
      WHERE id = $1 AND (max_redemptions IS NULL OR times_reserved < max_redemptions) RETURNING *`,
    [c.id],
  );
  if (!reserved.rows[0]) throw invalid('coupon_exhausted', `Coupon '${code}' has no redemptions left`, 'coupon_code');
  return reserved.rows[0];
}

function priceWithCoupon(currency: string, lines: { productId: string; unitAmount: bigint; quantity: number }[], coupon: CouponRow | null): PricedLine[] {
  const pc: PricingCoupon | null = coupon
    ? { percentOffBps: coupon.percent_off_bps, amountOff: coupon.amount_off ? BigInt(coupon.amount_off) : null }
    : null;
  if (!coupon?.product_ids) return priceOrder({ currency, items: lines, coupon: pc }).lines;
  // A scoped coupon discounts only the lines it names; the others are priced without it.
  const inScope = lines.map((l) => coupon.product_ids!.includes(l.productId));
  const scoped = priceOrder({ currency, items: lines.filter((_, i) => inScope[i]), coupon: pc }).lines;
  const rest = priceOrder({ currency, items: lines.filter((_, i) => !inScope[i]), coupon: null }).lines;
  return inScope.map((s) => (s ? scoped.shift()! : rest.shift()!));
}

export async function createOrder(db: Pool, input: CreateOrderInput, opts: { orderTtlMs: number }) {
  const currency = normalizeCurrency(input.currency);
  if (!currency) throw invalid('currency_not_supported', `Unknown or unsupported currency '${input.currency}'`, 'currency');
  if (input.items.length === 0) throw invalid('parameter_missing', 'An order needs at least one item', 'items');
  return inTransaction(db, async (tx) => {
    const ids = input.items.map((i) => i.product_id);
    const { rows: found } = await tx.query<ProductPrice>(
      `SELECT p.id, p.active, pp.unit_amount FROM products p
         LEFT JOIN product_prices pp ON pp.product_id = p.id AND pp.currency = $2
        WHERE p.id = ANY($1)`,
      [ids, currency],
    );
    const byId = new Map(found.map((p) => [p.id, p]));
    const lines = input.items.map((item, i) => {
      const p = byId.get(item.product_id);
      if (!p) throw invalid('resource_missing', `No such product: '${item.product_id}'`, `items[${i}].product_id`);
      if (!p.active) throw invalid('product_inactive', `Product '${item.product_id}' is not for sale`, `items[${i}].product_id`);
      if (p.unit_amount === null) {
        throw invalid('price_not_available', `Product '${item.product_id}' has no price in ${currency}`, `items[${i}].product_id`);
      }
      return { productId: item.product_id, unitAmount: BigInt(p.unit_amount), quantity: item.quantity ?? 1 };
    });
    const coupon = input.coupon_code ? await reserveCoupon(tx, input.coupon_code, currency, ids) : null;
    const priced = priceWithCoupon(currency, lines, coupon);
    const subtotal = priced.reduce((s, l) => s + l.subtotal, 0n);
    const discount = priced.reduce((s, l) => s + l.discount, 0n);
    const total = subtotal - discount;
    assert(total >= 0n && total <= subtotal, 'order total out of range');
    if (total > 10n ** 15n) throw invalid('amount_too_large', 'The order total is too large', 'items');

    const id = newId('ord');
    const expiresAt = new Date(Date.now() + opts.orderTtlMs);
    const { rows } = await tx.query<OrderRow>(
      `INSERT INTO orders (id, customer_id, currency, status, subtotal_amount, discount_amount, total_amount, coupon_id, client_platform, expires_at)
       VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9) RETURNING *`,
      [id, input.customer_id, currency, subtotal.toString(), discount.toString(), total.toString(), coupon?.id ?? null, input.client_platform, expiresAt],
    );
    const items: ItemRow[] = [];
    for (const [line, l] of priced.entries()) {
      const r = await tx.query<ItemRow>(
        `INSERT INTO order_items (order_id, line, product_id, quantity, unit_amount, subtotal_amount, discount_amount, total_amount)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *`,
        [id, line, l.productId, l.quantity, l.unitAmount.toString(), l.subtotal.toString(), l.discount.toString(), l.total.toString()],
      );
      items.push(r.rows[0]!);
    }
    await recordTransition(tx, id, 'none', 'pending', 'created', null);
    let order = rows[0]!;
    if (total === 0n) {
      // Nothing to collect: the order completes at once, without any channel.
      order = await markOrderPaid(tx, order, null, 'zero_amount');
    } else {
      await enqueueJob(tx, 'order_expire', { order_id: id }, { runAt: expiresAt, jobKey: `expire:${id}` });
    }
    return orderJson(order, items, input.coupon_code ?? null);
  });
}

export async function recordTransition(tx: Queryable, orderId: string, from: string, to: string, reason: string, paymentId: string | null) {
  await tx.query(
    'INSERT INTO order_transitions (order_id, from_status, to_status, reason, payment_id) VALUES ($1, $2, $3, $4, $5)',
    [orderId, from, to, reason, paymentId],
  );
}

/** Lock an order row for the rest of the transaction. */
export async function lockOrder(tx: Client, orderId: string): Promise<OrderRow | null> {
  const { rows } = await tx.query<OrderRow>('SELECT * FROM orders WHERE id = $1 FOR UPDATE', [orderId]);
  return rows[0] ?? null;
}

/**
 * pending → paid, compare-and-set, with access granted in the same transaction. The caller holds
 * the order's row lock. Returns the updated row.
 */
export async function markOrderPaid(tx: Client, order: OrderRow, paymentId: string | null, reason: string): Promise<OrderRow> {
  orderMachine.assertTransition(order.status, 'paid');
  const { rows } = await tx.query<OrderRow>(
    `UPDATE orders SET status = 'paid', paid_at = now(), paid_payment_id = $2, updated_at = now()
      WHERE id = $1 AND status = 'pending' RETURNING *`,
    [order.id, paymentId],
  );
  assert(rows.length === 1, `order ${order.id} was not pending under its lock`);
  await recordTransition(tx, order.id, 'pending', 'paid', reason, paymentId);
  await grantEntitlementsForOrder(tx, order.id, order.customer_id);
  return rows[0]!;
}

/**
 * pending → expired | canceled, compare-and-set; releases the coupon reservation once. The
 * caller must already have closed the order's open trades at their channels.
 */
export async function endUnpaidOrder(tx: Client, order: OrderRow, to: 'expired' | 'canceled', reason: string): Promise<OrderRow> {
  orderMachine.assertTransition(order.status, to);
  const { rows } = await tx.query<OrderRow>(
    `UPDATE orders SET status = $2, updated_at = now(), coupon_released = (coupon_id IS NOT NULL)
      WHERE id = $1 AND status = 'pending' RETURNING *`,
    [order.id, to],
  );
  assert(rows.length === 1, `order ${order.id} was not pending under its lock`);
  if (order.coupon_id && !order.coupon_released) {
    await tx.query('UPDATE coupons SET times_reserved = times_reserved - 1 WHERE id = $1 AND times_reserved > 0', [order.coupon_id]);
  }
  await recordTransition(tx, order.id, 'pending', to, reason, null);
  return rows[0]!;
}

export async function getOrder(db: Queryable, id: string) {
  const { rows } = await db.query<OrderRow & { coupon_code: string | null }>(
    'SELECT o.*, c.code AS coupon_code FROM orders o LEFT JOIN coupons c ON c.id = o.coupon_id WHERE o.id = $1',
    [id],
  );
  if (!rows[0]) throw notFound('order', id);
  const items = await db.query<ItemRow>('SELECT * FROM order_items WHERE order_id = $1 ORDER BY line', [id]);
  return orderJson(rows[0], items.rows, rows[0].coupon_code);
}

export async function getOrderRow(db: Queryable, id: string): Promise<OrderRow> {
  const { rows } = await db.query<OrderRow>('SELECT * FROM orders WHERE id = $1', [id]);
  if (!rows[0]) throw notFound('order', id);
  return rows[0];
}

/** Orders of one customer, newest first, cursor-paginated by id. */
export async function listOrders(db: Queryable, q: { customer_id?: string; status?: string; limit: number; starting_after?: string }) {
  const params: unknown[] = [];
  const where: string[] = [];
  if (q.customer_id) { params.push(q.customer_id); where.push(`o.customer_id = $${params.length}`); }
  if (q.status) { params.push(q.status); where.push(`o.status = $${params.length}`); }
  if (q.starting_after) { params.push(q.starting_after); where.push(`o.id < $${params.length}`); }
  params.push(q.limit + 1);
  const { rows } = await db.query<OrderRow & { coupon_code: string | null }>(
    `SELECT o.*, c.code AS coupon_code FROM orders o LEFT JOIN coupons c ON c.id = o.coupon_id
      ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY o.id DESC LIMIT $${params.length}`,
    params,
  );
  const page = rows.slice(0, q.limit);
  const items = page.length
    ? (await db.query<ItemRow>('SELECT * FROM order_items WHERE order_id = ANY($1) ORDER BY order_id, line', [page.map((o) => o.id)])).rows
    : [];
  return {
    object: 'list' as const,
    data: page.map((o) => orderJson(o, items.filter((i) => i.order_id === o.id), o.coupon_code)),
    has_more: rows.length > q.limit,
  };
}

export function assertPayable(order: OrderRow): void {
  if (order.status !== 'pending') {
    throw new ApiError(400, 'invalid_request_error', 'order_not_payable', `Order ${order.id} is ${order.status}`, 'order_id');
  }
  if (order.expires_at.getTime() <= Date.now()) {
    throw new ApiError(400, 'invalid_request_error', 'order_expired', `Order ${order.id} has expired`, 'order_id');
  }
}
