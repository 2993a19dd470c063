import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { AssertionError } from './assert.ts';
import { MAX_AMOUNT_MINOR } from './money.ts';
import { allocateProportionally, priceOrder, type PricingCoupon, type PricingInput } from './pricing.ts';

const RUNS = { numRuns: 2000 };

const sum = (xs: readonly bigint[]): bigint => xs.reduce((a, b) => a + b, 0n);

// ---------------------------------------------------------------- worked examples

test('seed example: 10000 fen at 10% off → discount 1000, total 9000', () => {
  const r = priceOrder({ currency: 'CNY', items: [{ productId: 'prod_a', unitAmount: 10000n, quantity: 1 }], coupon: { percentOffBps: 1000 } });
  assert.equal(r.subtotal, 10000n);
  assert.equal(r.discount, 1000n);
  assert.equal(r.total, 9000n);
  assert.equal(r.currency, 'CNY');
  assert.deepEqual(r.lines, [{ productId: 'prod_a', quantity: 1, unitAmount: 10000n, subtotal: 10000n, discount: 1000n, total: 9000n }]);
});

test('no coupon (absent or null): discount 0, total = subtotal', () => {
  const items = [{ productId: 'p1', unitAmount: 1999n, quantity: 3 }];
  for (const coupon of [undefined, null]) {
    const r = priceOrder({ currency: 'USD', items, coupon });
    assert.equal(r.subtotal, 5997n);
    assert.equal(r.discount, 0n);
    assert.equal(r.total, 5997n);
    assert.equal(r.lines[0]!.discount, 0n);
  }
});

test('percent discount is rounded down to the minor unit (total rounded up)', () => {
  // 999 × 15% = 149.85 → discount 149, total 850.
  const r = priceOrder({ currency: 'CNY', items: [{ productId: 'p', unitAmount: 999n, quantity: 1 }], coupon: { percentOffBps: 1500 } });
  assert.equal(r.discount, 149n);
  assert.equal(r.total, 850n);
  // Exactly half a unit (1 × 50%) is still rounded down: discount 0, total 1.
  const half = priceOrder({ currency: 'CNY', items: [{ productId: 'p', unitAmount: 1n, quantity: 1 }], coupon: { percentOffBps: 5000 } });
  assert.equal(half.discount, 0n);
  assert.equal(half.total, 1n);
  // 100% off is the whole subtotal.
  const all = priceOrder({ currency: 'CNY', items: [{ productId: 'p', unitAmount: 12345n, quantity: 7 }], coupon: { percentOffBps: 10000 } });
  assert.equal(all.discount, 86415n);
  assert.equal(all.total, 0n);
});

test('three lines with awkward proportions: largest remainder, ties to the lower index', () => {
  // Subtotals 100, 100, 100 (= 300); 10% of 300 = 30 → 10 each, exact.
  const even = priceOrder({
    currency: 'CNY',
    items: [
      { productId: 'a', unitAmount: 100n, quantity: 1 },
      { productId: 'b', unitAmount: 50n, quantity: 2 },
      { productId: 'c', unitAmount: 25n, quantity: 4 },
    ],
    coupon: { percentOffBps: 1000 },
  });
  assert.deepEqual(even.lines.map((l) => l.discount), [10n, 10n, 10n]);

  // Amount off 100 over 1 : 1 : 1 → 33.33 each; the leftover unit goes to line 0 (tie, lower index).
  const thirds = priceOrder({
    currency: 'CNY',
    items: [
      { productId: 'a', unitAmount: 333n, quantity: 1 },
      { productId: 'b', unitAmount: 333n, quantity: 1 },
      { productId: 'c', unitAmount: 333n, quantity: 1 },
    ],
    coupon: { amountOff: 100n },
  });
  assert.deepEqual(thirds.lines.map((l) => l.discount), [34n, 33n, 33n]);
  assert.deepEqual(thirds.lines.map((l) => l.total), [299n, 300n, 300n]);
  assert.equal(thirds.total, 899n);

  // Subtotals 1, 2, 4 (= 7), amount off 5: exact shares 5/7, 10/7, 20/7 = 0.714, 1.428, 2.857.
  // Floors 0, 1, 2 (= 3); two leftover units go to remainders .714 (line 0) and .857 (line 2).
  const sevenths = priceOrder({
    currency: 'CNY',
    items: [
      { productId: 'a', unitAmount: 1n, quantity: 1 },
      { productId: 'b', unitAmount: 2n, quantity: 1 },
      { productId: 'c', unitAmount: 1n, quantity: 4 },
    ],
    coupon: { amountOff: 5n },
  });
  assert.deepEqual(sevenths.lines.map((l) => l.discount), [1n, 1n, 3n]);
  assert.deepEqual(sevenths.lines.map((l) => l.total), [0n, 1n, 1n]);
  assert.equal(sevenths.discount, 5n);
  assert.equal(sevenths.total, 2n);
});

test('JPY (exponent 0): 1980 yen × 3 at 15% off', () => {
  // 5940 × 0.15 = 891 exactly.
  const r = priceOrder({ currency: 'JPY', items: [{ productId: 'p', unitAmount: 1980n, quantity: 3 }], coupon: { percentOffBps: 1500 } });
  assert.equal(r.subtotal, 5940n);
  assert.equal(r.discount, 891n);
  assert.equal(r.total, 5049n);
  // 1001 yen at 33.33% → 333.6333 → 333 off.
  const r2 = priceOrder({ currency: 'JPY', items: [{ productId: 'p', unitAmount: 1001n, quantity: 1 }], coupon: { percentOffBps: 3333 } });
  assert.equal(r2.discount, 333n);
  assert.equal(r2.total, 668n);
});

test('fixed discount larger than the subtotal is capped: total 0', () => {
  const r = priceOrder({
    currency: 'CNY',
    items: [
      { productId: 'a', unitAmount: 300n, quantity: 1 },
      { productId: 'b', unitAmount: 200n, quantity: 1 },
    ],
    coupon: { amountOff: 10_000n },
  });
  assert.equal(r.subtotal, 500n);
  assert.equal(r.discount, 500n);
  assert.equal(r.total, 0n);
  assert.deepEqual(r.lines.map((l) => l.discount), [300n, 200n]);
  assert.deepEqual(r.lines.map((l) => l.total), [0n, 0n]);
});

test('zero-price items: priced at 0, receive no share of the discount', () => {
  const r = priceOrder({
    currency: 'CNY',
    items: [
      { productId: 'free', unitAmount: 0n, quantity: 5 },
      { productId: 'paid', unitAmount: 1000n, quantity: 1 },
    ],
    coupon: { amountOff: 300n },
  });
  assert.equal(r.subtotal, 1000n);
  assert.deepEqual(r.lines.map((l) => [l.subtotal, l.discount, l.total]), [[0n, 0n, 0n], [1000n, 300n, 700n]]);

  const allFree = priceOrder({ currency: 'CNY', items: [{ productId: 'free', unitAmount: 0n, quantity: 1 }], coupon: { percentOffBps: 5000 } });
  assert.deepEqual([allFree.subtotal, allFree.discount, allFree.total], [0n, 0n, 0n]);
  const allFreeFixed = priceOrder({ currency: 'CNY', items: [{ productId: 'free', unitAmount: 0n, quantity: 1 }], coupon: { amountOff: 500n } });
  assert.deepEqual([allFreeFixed.subtotal, allFreeFixed.discount, allFreeFixed.total], [0n, 0n, 0n]);
});

test('allocateProportionally: worked examples', () => {
  assert.deepEqual(allocateProportionally(100n, [1n, 1n, 1n]), [34n, 33n, 33n]);
  assert.deepEqual(allocateProportionally(2n, [1n, 1n, 1n]), [1n, 1n, 0n]);
  assert.deepEqual(allocateProportionally(10n, [0n, 3n, 7n]), [0n, 3n, 7n]);
  assert.deepEqual(allocateProportionally(0n, [0n, 0n]), [0n, 0n]);
  assert.deepEqual(allocateProportionally(0n, []), []);
  assert.deepEqual(allocateProportionally(7n, [5n]), [7n]);
  // Total larger than the weights (e.g. a fee spread over items) still sums exactly.
  assert.deepEqual(allocateProportionally(1000n, [1n, 2n]), [333n, 667n]);
});

// ---------------------------------------------------------------- negative tests

const ok = (): PricingInput => ({ currency: 'CNY', items: [{ productId: 'p', unitAmount: 100n, quantity: 1 }] });

test('assertions fire on bad pricing arguments', () => {
  const bad: Array<[string, PricingInput]> = [
    ['unknown currency', { ...ok(), currency: 'XXX' }],
    ['lower-case currency', { ...ok(), currency: 'cny' }],
    ['no items', { ...ok(), items: [] }],
    ['negative unit amount', { ...ok(), items: [{ productId: 'p', unitAmount: -1n, quantity: 1 }] }],
    ['over-large unit amount', { ...ok(), items: [{ productId: 'p', unitAmount: MAX_AMOUNT_MINOR + 1n, quantity: 1 }] }],
    ['quantity 0', { ...ok(), items: [{ productId: 'p', unitAmount: 1n, quantity: 0 }] }],
    ['quantity 1001', { ...ok(), items: [{ productId: 'p', unitAmount: 1n, quantity: 1001 }] }],
    ['fractional quantity', { ...ok(), items: [{ productId: 'p', unitAmount: 1n, quantity: 1.5 }] }],
    ['NaN quantity', { ...ok(), items: [{ productId: 'p', unitAmount: 1n, quantity: Number.NaN }] }],
    ['empty productId', { ...ok(), items: [{ productId: '', unitAmount: 1n, quantity: 1 }] }],
    ['bps 0', { ...ok(), coupon: { percentOffBps: 0 } }],
    ['bps 10001', { ...ok(), coupon: { percentOffBps: 10001 } }],
    ['negative bps', { ...ok(), coupon: { percentOffBps: -100 } }],
    ['fractional bps', { ...ok(), coupon: { percentOffBps: 12.5 } }],
    ['negative amount off', { ...ok(), coupon: { amountOff: -1n } }],
    ['over-large amount off', { ...ok(), coupon: { amountOff: MAX_AMOUNT_MINOR + 1n } }],
    ['coupon with both kinds', { ...ok(), coupon: { percentOffBps: 1000, amountOff: 100n } }],
    ['coupon with neither kind', { ...ok(), coupon: {} }],
  ];
  for (const [name, input] of bad) {
    assert.throws(() => priceOrder(input), AssertionError, name);
  }
  assert.doesNotThrow(() => priceOrder(ok()));
});

test('assertions fire on bad allocation arguments', () => {
  assert.throws(() => allocateProportionally(-1n, [1n]), AssertionError);
  assert.throws(() => allocateProportionally(1n, [1n, -1n, 3n]), AssertionError);
  assert.throws(() => allocateProportionally(1n, [0n, 0n]), AssertionError);
  assert.throws(() => allocateProportionally(1n, []), AssertionError);
  assert.throws(() => allocateProportionally(1 as unknown as bigint, [1n]), AssertionError);
});

// ---------------------------------------------------------------- properties

const currencyArb = fc.constantFrom('CNY', 'USD', 'JPY', 'KWD', 'EUR');
const itemArb = fc.record({
  productId: fc.string({ minLength: 1, maxLength: 8 }),
  unitAmount: fc.oneof(
    fc.bigInt({ min: 0n, max: 100n }), // small, awkward remainders, many zeros
    fc.bigInt({ min: 0n, max: 1_000_000n }),
    fc.bigInt({ min: 0n, max: MAX_AMOUNT_MINOR }),
  ),
  quantity: fc.oneof(fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 1000 })),
});
const couponArb: fc.Arbitrary<PricingCoupon | null | undefined> = fc.oneof(
  fc.constant(undefined),
  fc.constant(null),
  fc.integer({ min: 1, max: 10_000 }).map((percentOffBps) => ({ percentOffBps })),
  fc.oneof(fc.bigInt({ min: 0n, max: 1000n }), fc.bigInt({ min: 0n, max: MAX_AMOUNT_MINOR })).map((amountOff) => ({ amountOff })),
);
const orderArb: fc.Arbitrary<PricingInput> = fc.record({
  currency: currencyArb,
  items: fc.array(itemArb, { minLength: 1, maxLength: 12 }),
  coupon: couponArb,
});

test('property: order totals stay within [0, subtotal] and match the rounding rule', () => {
  fc.assert(
    fc.property(orderArb, (input) => {
      const r = priceOrder(input);
      assert.equal(r.subtotal, sum(input.items.map((i) => i.unitAmount * BigInt(i.quantity))));
      assert.ok(r.total >= 0n, 'total never negative');
      assert.ok(r.total <= r.subtotal, 'total never more than subtotal');
      assert.ok(r.discount >= 0n && r.discount <= r.subtotal, 'discount within [0, subtotal]');
      assert.equal(r.total, r.subtotal - r.discount);
      const c = input.coupon;
      if (c == null) assert.equal(r.discount, 0n);
      else if (c.percentOffBps != null) {
        // floor: discount × 10000 ≤ subtotal × bps < (discount + 1) × 10000
        const exact = r.subtotal * BigInt(c.percentOffBps);
        assert.ok(r.discount * 10_000n <= exact && exact < (r.discount + 1n) * 10_000n);
      } else assert.equal(r.discount, c.amountOff! < r.subtotal ? c.amountOff! : r.subtotal);
    }),
    RUNS,
  );
});

test('property: lines sum exactly to the order and no line discount exceeds its subtotal', () => {
  fc.assert(
    fc.property(orderArb, (input) => {
      const r = priceOrder(input);
      assert.equal(r.lines.length, input.items.length);
      assert.equal(sum(r.lines.map((l) => l.subtotal)), r.subtotal);
      assert.equal(sum(r.lines.map((l) => l.discount)), r.discount, 'Σ line discounts = discount');
      assert.equal(sum(r.lines.map((l) => l.total)), r.total, 'Σ line totals = total');
      for (const [i, l] of r.lines.entries()) {
        assert.equal(l.productId, input.items[i]!.productId);
        assert.equal(l.subtotal, l.unitAmount * BigInt(l.quantity));
        assert.ok(l.discount >= 0n && l.discount <= l.subtotal, 'line discount within [0, line subtotal]');
        assert.equal(l.total, l.subtotal - l.discount);
      }
    }),
    RUNS,
  );
});

test('property: pricing is deterministic', () => {
  fc.assert(
    fc.property(orderArb, (input) => {
      assert.deepEqual(priceOrder(input), priceOrder(structuredClone(input)));
    }),
    RUNS,
  );
});

const weightsArb = fc.oneof(
  fc.array(fc.bigInt({ min: 0n, max: 10n }), { minLength: 1, maxLength: 20 }), // many ties and zeros
  fc.array(fc.bigInt({ min: 0n, max: 10n ** 15n }), { minLength: 1, maxLength: 20 }),
);
const allocationArb = fc
  .tuple(weightsArb, fc.oneof(fc.bigInt({ min: 0n, max: 100n }), fc.bigInt({ min: 0n, max: 10n ** 15n })))
  .filter(([weights, total]) => total === 0n || sum(weights) > 0n);

test('property: allocation sums exactly and each share is within 1 of its exact proportional value', () => {
  fc.assert(
    fc.property(allocationArb, ([weights, total]) => {
      const shares = allocateProportionally(total, weights);
      assert.equal(shares.length, weights.length);
      assert.equal(sum(shares), total);
      const W = sum(weights);
      for (const [i, s] of shares.entries()) {
        const w = weights[i]!;
        assert.ok(s >= 0n);
        if (W === 0n) {
          assert.equal(s, 0n);
          continue;
        }
        // |s − total·w/W| < 1  ⇔  |s·W − total·w| < W
        const diff = s * W - total * w;
        assert.ok((diff < 0n ? -diff : diff) < W, `share ${i} off by a unit or more`);
        if (w === 0n) assert.equal(s, 0n);
        if (total <= W) assert.ok(s <= w, 'share never exceeds its weight when total ≤ Σ weights');
      }
    }),
    RUNS,
  );
});

test('property: allocation is deterministic and ties go to the lower index', () => {
  fc.assert(
    fc.property(allocationArb, ([weights, total]) => {
      const a = allocateProportionally(total, weights);
      assert.deepEqual(allocateProportionally(total, [...weights]), a);
      // Equal weights with equal remainders: an earlier index never gets less than a later one.
      for (let i = 0; i < weights.length; i++) {
        for (let j = i + 1; j < weights.length; j++) {
          if (weights[i] === weights[j]) assert.ok(a[i]! >= a[j]! && a[i]! - a[j]! <= 1n);
        }
      }
    }),
    RUNS,
  );
});
