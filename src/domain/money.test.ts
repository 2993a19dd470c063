import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { formatDecimal, parseDecimal, normalizeCurrency, CURRENCY_EXPONENTS } from './money.ts';

test('formats minor units per ISO 4217 exponent', () => {
  assert.equal(formatDecimal(9000n, 'CNY'), '90.00');
  assert.equal(formatDecimal(1n, 'CNY'), '0.01');
  assert.equal(formatDecimal(5n, 'JPY'), '5');
  assert.equal(formatDecimal(1234n, 'KWD'), '1.234');
  assert.equal(formatDecimal(-5n, 'USD'), '-0.05');
});

test('parses channel decimals exactly, refusing excess precision and junk', () => {
  assert.equal(parseDecimal('90.00', 'CNY'), 9000n);
  assert.equal(parseDecimal('90.5', 'CNY'), 9050n);
  assert.equal(parseDecimal('90', 'CNY'), 9000n);
  assert.equal(parseDecimal('0.10 \t', 'CNY'), 10n);
  assert.equal(parseDecimal('90.001', 'CNY'), null);
  assert.equal(parseDecimal('90.000', 'CNY'), 9000n);
  assert.equal(parseDecimal('1e3', 'CNY'), null);
  assert.equal(parseDecimal('', 'CNY'), null);
  assert.equal(parseDecimal('abc', 'CNY'), null);
  assert.equal(parseDecimal('1.5', 'JPY'), null);
});

test('currency codes are case-insensitive and unknown ones refused', () => {
  assert.equal(normalizeCurrency('cny'), 'CNY');
  assert.equal(normalizeCurrency('XXX'), null);
  assert.equal(normalizeCurrency('toString'), null);
});

test('property: parse(format(x)) = x for every currency', () => {
  const currencies = Object.keys(CURRENCY_EXPONENTS);
  fc.assert(
    fc.property(fc.bigInt({ min: -(10n ** 15n), max: 10n ** 15n }), fc.constantFrom(...currencies), (amount, currency) => {
      assert.equal(parseDecimal(formatDecimal(amount, currency), currency), amount);
    }),
    { numRuns: 2000 },
  );
});
