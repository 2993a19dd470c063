/**
 * Order pricing: pure, integer-only (bigint minor units), no I/O.
 *
 * PUBLIC ROUNDING RULE (documented in the API; do not change without a version note):
 *
 *   1. Line subtotal  = unit_amount × quantity.           Order subtotal = Σ line subtotals.
 *   2. Percent coupon: discount = floor(subtotal × percent_off_bps / 10000).
 *      The discount is rounded DOWN to the minor unit, so the total is rounded UP:
 *      total = ceil(subtotal × (1 − percent_off)). The seed's `price × (1 − discount)` holds
 *      exactly whenever it is a whole number of minor units (10000 fen at 10% off → 9000 fen).
 *   3. Fixed coupon (amount_off, in the order currency): discount = min(amount_off, subtotal).
 *   4. total = subtotal − discount, so 0 ≤ discount ≤ subtotal and 0 ≤ total ≤ subtotal.
 *   5. The order discount is allocated across lines in proportion to line subtotals by the
 *      largest-remainder rule (see `allocateProportionally`): Σ line discounts = discount exactly,
 *      no line discount exceeds its line subtotal, and line total = line subtotal − line discount.
 *
 * Why floor and not round-half-up: a coupon grants the buyer a discount of *at most* the stated
 * percentage (short by less than one minor unit), so a campaign's cost is bounded by what was
 * advertised; it is plain bigint division with no half-way case to argue about; and it matches the
 * ledger's rule that shares are "rounded down to the minor unit". The difference from exact is
 * always < 1 minor unit (< 0.01 CNY, < 1 JPY).
 */
import { assert } from './assert.ts';
import { CURRENCY_EXPONENTS, MAX_AMOUNT_MINOR } from './money.ts';

export const MIN_QUANTITY = 1;
export const MAX_QUANTITY = 1000;
export const BPS_DENOMINATOR = 10_000n;

export interface PricingItem {
  productId: string;
  /** Price of one unit in minor units of the order currency, 0 ≤ unitAmount ≤ MAX_AMOUNT_MINOR. */
  unitAmount: bigint;
  /** Integer 1..1000. */
  quantity: number;
}

/** Exactly one of the two fields is set (a coupon is either percent-off or amount-off). */
export interface PricingCoupon {
  /** Integer 1..10000 (10000 = 100% off). */
  percentOffBps?: number | null;
  /** Minor units in the order currency, 0 ≤ amountOff ≤ MAX_AMOUNT_MINOR. */
  amountOff?: bigint | null;
}

export interface PricingInput {
  currency: string;
  items: PricingItem[];
  coupon?: PricingCoupon | null;
}

export interface PricedLine {
  productId: string;
  quantity: number;
  unitAmount: bigint;
  subtotal: bigint;
  discount: bigint;
  total: bigint;
}

export interface PricedOrder {
  currency: string;
  subtotal: bigint;
  discount: bigint;
  total: bigint;
  lines: PricedLine[];
}

/**
 * Split `total` into shares proportional to `weights`, by the largest-remainder (Hamilton) rule:
 * every share starts at floor(total × w_i / W); the units left over go one each to the shares with
 * the largest remainders, ties broken by the lower index. Deterministic; Σ shares = total exactly;
 * each share is strictly within 1 of its exact value total × w_i / W; a zero weight gets 0; and if
 * total ≤ W then no share exceeds its weight.
 *
 * Arguments: total ≥ 0, every weight ≥ 0, and Σ weights > 0 unless total = 0 (then all shares are 0).
 */
export function allocateProportionally(total: bigint, weights: readonly bigint[]): bigint[] {
  assert(typeof total === 'bigint' && total >= 0n, `allocation total must be a non-negative bigint, got ${String(total)}`);
  let weightSum = 0n;
  for (const [i, w] of weights.entries()) {
    assert(typeof w === 'bigint' && w >= 0n, `allocation weight ${i} must be a non-negative bigint, got ${String(w)}`);
    weightSum += w;
  }
  if (total === 0n) return weights.map(() => 0n);
  assert(weightSum > 0n, `cannot allocate ${total} over weights that sum to zero`);

  const shares: bigint[] = [];
  const remainders: bigint[] = [];
  let allocated = 0n;
  for (const w of weights) {
    const numerator = total * w;
    const share = numerator / weightSum; // floor: all operands non-negative
    shares.push(share);
    remainders.push(numerator % weightSum);
    allocated += share;
  }

  let leftover = total - allocated;
  // Σ remainders = leftover × W and each remainder < W, so leftover < weights.length.
  assert(leftover >= 0n && leftover < BigInt(weights.length), 'largest-remainder leftover out of range');
  const order = weights
    .map((_, i) => i)
    .sort((a, b) => {
      const ra = remainders[a]!;
      const rb = remainders[b]!;
      if (ra !== rb) return ra > rb ? -1 : 1;
      return a - b;
    });
  for (const i of order) {
    if (leftover === 0n) break;
    shares[i] = shares[i]! + 1n;
    leftover -= 1n;
  }

  return shares;
}

/** Price an order. Throws AssertionError on arguments the API layer should already have refused. */
export function priceOrder(input: PricingInput): PricedOrder {
  const { currency, items, coupon } = input;
  assert(
    typeof currency === 'string' && Object.prototype.hasOwnProperty.call(CURRENCY_EXPONENTS, currency),
    `unknown or non-normalized currency ${String(currency)}`,
  );
  assert(Array.isArray(items) && items.length > 0, 'an order has at least one item');

  const lineSubtotals: bigint[] = [];
  let subtotal = 0n;
  for (const [i, item] of items.entries()) {
    assert(typeof item.productId === 'string' && item.productId.length > 0, `item ${i}: productId must be a non-empty string`);
    assert(
      typeof item.unitAmount === 'bigint' && item.unitAmount >= 0n && item.unitAmount <= MAX_AMOUNT_MINOR,
      `item ${i}: unitAmount must be a bigint in 0..${MAX_AMOUNT_MINOR}, got ${String(item.unitAmount)}`,
    );
    assert(
      Number.isInteger(item.quantity) && item.quantity >= MIN_QUANTITY && item.quantity <= MAX_QUANTITY,
      `item ${i}: quantity must be an integer in ${MIN_QUANTITY}..${MAX_QUANTITY}, got ${String(item.quantity)}`,
    );
    const lineSubtotal = item.unitAmount * BigInt(item.quantity);
    lineSubtotals.push(lineSubtotal);
    subtotal += lineSubtotal;
  }

  const discount = orderDiscount(subtotal, coupon);
  assert(discount >= 0n && discount <= subtotal, 'discount out of range');
  const total = subtotal - discount;

  const lineDiscounts = allocateProportionally(discount, lineSubtotals);
  const lines: PricedLine[] = items.map((item, i) => {
    const lineSubtotal = lineSubtotals[i]!;
    const lineDiscount = lineDiscounts[i]!;
    assert(lineDiscount >= 0n && lineDiscount <= lineSubtotal, `line ${i}: discount exceeds its subtotal`);
    return {
      productId: item.productId,
      quantity: item.quantity,
      unitAmount: item.unitAmount,
      subtotal: lineSubtotal,
      discount: lineDiscount,
      total: lineSubtotal - lineDiscount,
    };
  });

  return { currency, subtotal, discount, total, lines };
}

function orderDiscount(subtotal: bigint, coupon: PricingCoupon | null | undefined): bigint {
  if (coupon == null) return 0n;
  const hasPercent = coupon.percentOffBps != null;
  const hasAmount = coupon.amountOff != null;
  assert(hasPercent !== hasAmount, 'a coupon has exactly one of percentOffBps and amountOff');

  if (hasPercent) {
    const bps = coupon.percentOffBps!;
    assert(Number.isInteger(bps) && bps >= 1 && bps <= 10_000, `percentOffBps must be an integer in 1..10000, got ${String(bps)}`);
    return (subtotal * BigInt(bps)) / BPS_DENOMINATOR; // floor: see the rounding rule above
  }

  const amountOff = coupon.amountOff!;
  assert(
    typeof amountOff === 'bigint' && amountOff >= 0n && amountOff <= MAX_AMOUNT_MINOR,
    `amountOff must be a bigint in 0..${MAX_AMOUNT_MINOR}, got ${String(amountOff)}`,
  );
  return amountOff < subtotal ? amountOff : subtotal;
}
