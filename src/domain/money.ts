/**
 * Money: integer minor units (bigint) plus an ISO 4217 currency. Floats never touch an amount.
 * Conversion to a channel's decimal string happens only at the channel edge, through this module.
 */
import { assert } from './assert.ts';

/** ISO 4217 minor-unit exponents. A currency not in this table is refused, never guessed. */
export const CURRENCY_EXPONENTS: Readonly<Record<string, number>> = Object.freeze({
  CNY: 2, USD: 2, EUR: 2, GBP: 2, HKD: 2, TWD: 2, SGD: 2, AUD: 2, CAD: 2, NZD: 2, CHF: 2,
  SEK: 2, NOK: 2, DKK: 2, PLN: 2, CZK: 2, MXN: 2, BRL: 2, INR: 2, THB: 2, MYR: 2, PHP: 2,
  IDR: 2, RUB: 2, TRY: 2, ZAR: 2, AED: 2, SAR: 2, ILS: 2, MOP: 2,
  JPY: 0, KRW: 0, VND: 0, CLP: 0, ISK: 0, HUF: 2, UGX: 0, XAF: 0, XOF: 0, PYG: 0,
  KWD: 3, BHD: 3, OMR: 3, JOD: 3, TND: 3, LYD: 3, IQD: 3,
});

/** Largest amount accepted in any single amount field, in minor units (keeps JSON numbers exact). */
export const MAX_AMOUNT_MINOR = 1_000_000_000_000n; // 10^12
export const MAX_AMOUNT_MINOR_NUMBER = 1_000_000_000_000;

export function normalizeCurrency(input: string): string | null {
  if (typeof input !== 'string') return null;
  const upper = input.trim().toUpperCase();
  return Object.prototype.hasOwnProperty.call(CURRENCY_EXPONENTS, upper) ? upper : null;
}

export function currencyExponent(currency: string): number {
  const exp = CURRENCY_EXPONENTS[currency];
  assert(exp !== undefined, `unknown currency ${currency}`);
  return exp;
}

/** 9000n CNY → "90.00"; 5n JPY → "5"; 1234n KWD → "1.234". */
export function formatDecimal(amountMinor: bigint, currency: string): string {
  const exp = currencyExponent(currency);
  const negative = amountMinor < 0n;
  const abs = negative ? -amountMinor : amountMinor;
  const digits = abs.toString().padStart(exp + 1, '0');
  const whole = exp === 0 ? digits : digits.slice(0, digits.length - exp);
  const frac = exp === 0 ? '' : '.' + digits.slice(digits.length - exp);
  return (negative ? '-' : '') + whole + frac;
}

/**
 * "90.00" CNY → 9000n. Accepts at most the currency's exponent of fraction digits (fewer are
 * padded: "90.5" → 9050n). Returns null for anything that is not a plain decimal number.
 */
export function parseDecimal(text: string, currency: string): bigint | null {
  const exp = currencyExponent(currency);
  const trimmed = text.trim();
  const match = /^(-?)(\d{1,18})(?:\.(\d+))?$/.exec(trimmed);
  if (!match) return null;
  const [, sign, whole, fracRaw = ''] = match;
  if (fracRaw.length > exp) {
    // Extra digits are only acceptable when they are zeros ("90.000" for CNY).
    if (!/^0*$/.test(fracRaw.slice(exp))) return null;
  }
  const frac = fracRaw.slice(0, exp).padEnd(exp, '0');
  const value = BigInt(whole! + frac);
  return sign === '-' ? -value : value;
}

/** bigint minor units → JSON number, asserting it is exactly representable. */
export function toJsonAmount(amountMinor: bigint): number {
  const n = Number(amountMinor);
  assert(Number.isSafeInteger(n), `amount ${amountMinor} is not a safe integer`);
  return n;
}
