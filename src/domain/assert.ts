/**
 * Assertions guard invariants: a failure means the code is wrong, not the input (TigerBeetle's
 * second kind of error). Operating errors (bad input, a declined payment) are values or ApiErrors.
 */
export class AssertionError extends Error {
  override name = 'AssertionError';
}

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionError(message);
}
