/**
 * Entitlements: a customer's access to a product, granted in the transaction that marks the
 * order paid. One row per (customer, product); buying again extends a timed one. Grants are
 * idempotent per order line (entitlement_grants primary key).
 */
import type { Client, Queryable } from '../store/db.ts';
import { newId } from '../domain/ids.ts';

interface EntRow { id: string; customer_id: string; product_id: string; status: 'active' | 'revoked'; starts_at: Date; expires_at: Date | null; created_at: Date }

const unix = (d: Date | null) => (d ? Math.floor(d.getTime() / 1000) : null);

export function entitlementStatus(r: Pick<EntRow, 'status' | 'expires_at'>, now = Date.now()): 'active' | 'revoked' | 'expired' {
  if (r.status === 'revoked') return 'revoked';
  if (r.expires_at && r.expires_at.getTime() <= now) return 'expired';
  return 'active';
}

function entJson(r: EntRow) {
  return {
    id: r.id, object: 'entitlement', customer_id: r.customer_id, product_id: r.product_id,
    status: entitlementStatus(r), starts_at: unix(r.starts_at), expires_at: unix(r.expires_at), created: unix(r.created_at),
  };
}

/** Grant (or extend) access for every content line of a paid order. Caller holds the order lock. */
export async function grantEntitlementsForOrder(tx: Client, orderId: string, customerId: string): Promise<void> {
  const { rows: lines } = await tx.query<{ line: number; product_id: string; quantity: number; type: string; access_days: number | null }>(
    `SELECT i.line, i.product_id, i.quantity, p.type, p.access_days
       FROM order_items i JOIN products p ON p.id = i.product_id
      WHERE i.order_id = $1 ORDER BY i.product_id, i.line`,
    [orderId],
  );
  for (const l of lines) {
    if (l.type === 'coin_pack') continue; // coins go to the wallet, not to an entitlement
    const days = l.access_days === null ? null : l.access_days * l.quantity;
    // Lifetime access wins over any timed access; timed access extends from the later of now
    // and the current end (a lapsed or revoked one starts again from now).
    const { rows } = await tx.query<{ id: string }>(
      `INSERT INTO entitlements (id, customer_id, product_id, status, starts_at, expires_at)
       VALUES ($1, $2, $3, 'active', now(), CASE WHEN $4::int IS NULL THEN NULL ELSE now() + make_interval(days => $4::int) END)
       ON CONFLICT (customer_id, product_id) DO UPDATE SET
         expires_at = CASE
           WHEN $4::int IS NULL THEN NULL
           WHEN entitlements.status = 'active' AND entitlements.expires_at IS NULL THEN NULL
           WHEN entitlements.status = 'active' AND entitlements.expires_at > now()
             THEN entitlements.expires_at + make_interval(days => $4::int)
           ELSE now() + make_interval(days => $4::int) END,
         starts_at = CASE WHEN entitlements.status = 'active' AND (entitlements.expires_at IS NULL OR entitlements.expires_at > now())
                          THEN entitlements.starts_at ELSE now() END,
         status = 'active', updated_at = now()
       RETURNING id`,
      [newId('ent'), customerId, l.product_id, days],
    );
    const grant = await tx.query(
      `INSERT INTO entitlement_grants (entitlement_id, order_id, line, access_days) VALUES ($1, $2, $3, $4)
       ON CONFLICT (order_id, line) DO NOTHING`,
      [rows[0]!.id, orderId, l.line, days],
    );
    // The order lock makes a second grant for the same line impossible; a conflict means a bug.
    if (grant.rowCount !== 1) throw new Error(`order ${orderId} line ${l.line} was granted twice`);
  }
}

export async function listEntitlements(db: Queryable, customerId: string, q: { limit: number; starting_after?: string }) {
  const params: unknown[] = [customerId];
  let where = 'customer_id = $1';
  if (q.starting_after) { params.push(q.starting_after); where += ` AND id > $${params.length}`; }
  params.push(q.limit + 1);
  const { rows } = await db.query<EntRow>(`SELECT * FROM entitlements WHERE ${where} ORDER BY id LIMIT $${params.length}`, params);
  return { object: 'list' as const, data: rows.slice(0, q.limit).map(entJson), has_more: rows.length > q.limit };
}

/** One indexed read (the (customer_id, product_id) unique index). */
export async function checkAccess(db: Queryable, customerId: string, productId: string) {
  const { rows } = await db.query<Pick<EntRow, 'status' | 'expires_at'>>(
    'SELECT status, expires_at FROM entitlements WHERE customer_id = $1 AND product_id = $2',
    [customerId, productId],
  );
  const r = rows[0];
  const status = r ? entitlementStatus(r) : null;
  return {
    object: 'access', customer_id: customerId, product_id: productId,
    has_access: status === 'active', status, expires_at: r ? unix(r.expires_at) : null,
  };
}

/**
 * Take back the access an order granted (all its lines, or those of the given products). An
 * entitlement that other orders still back keeps their part: a timed one is shortened by the
 * revoked days; one backed by nothing else is revoked. Caller holds the order lock.
 */
export async function revokeEntitlements(tx: Client, orderId: string, productIds: string[] | null): Promise<number> {
  const { rows: grants } = await tx.query<{ entitlement_id: string; line: number; access_days: number | null }>(
    `UPDATE entitlement_grants g SET revoked_at = now()
       FROM order_items i
      WHERE g.order_id = $1 AND i.order_id = g.order_id AND i.line = g.line AND g.revoked_at IS NULL
        AND ($2::text[] IS NULL OR i.product_id = ANY($2))
      RETURNING g.entitlement_id, g.line, g.access_days`,
    [orderId, productIds],
  );
  const byEntitlement = [...new Set(grants.map((g) => g.entitlement_id))].sort();
  for (const id of byEntitlement) {
    const { rows: ents } = await tx.query<EntRow>('SELECT * FROM entitlements WHERE id = $1 FOR UPDATE', [id]);
    const ent = ents[0]!;
    const still = await tx.query<{ n: string; lifetime: string }>(
      `SELECT count(*) AS n, count(*) FILTER (WHERE access_days IS NULL) AS lifetime FROM entitlement_grants WHERE entitlement_id = $1 AND revoked_at IS NULL`, [id]);
    const remaining = Number(still.rows[0]!.n);
    if (remaining === 0) {
      await tx.query(`UPDATE entitlements SET status = 'revoked', updated_at = now() WHERE id = $1`, [id]);
    } else if (Number(still.rows[0]!.lifetime) === 0 && ent.expires_at) {
      const days = grants.filter((g) => g.entitlement_id === id).reduce((s, g) => s + (g.access_days ?? 0), 0);
      await tx.query(`UPDATE entitlements SET expires_at = expires_at - make_interval(days => $2), updated_at = now() WHERE id = $1`, [id, days]);
    }
  }
  return grants.length;
}
