/**
 * Declarative state machines (Vendure style): a table maps each state to the states it may move to.
 * A state with no outgoing transitions is final. The tables below are the single source of truth
 * for order and payment status changes; stores and handlers ask `canTransition` (an operating
 * error, e.g. refunding a pending order, becomes a 409) and call `assertTransition` right before
 * writing (a failure there is a bug).
 */
import { assert } from './assert.ts';

export type TransitionTable<S extends string> = { readonly [K in S]: { readonly to: readonly S[] } };

export interface StateMachine<S extends string> {
  readonly name: string;
  /** Every state, in table order. */
  readonly states: readonly S[];
  /** Type guard for values read from outside (database rows, requests). */
  isState(value: unknown): value is S;
  /** The states `from` may move to (empty for a final state or an unknown value). */
  next(from: S): readonly S[];
  /** False for any unknown state, including strings that are not in the table. */
  canTransition(from: S, to: S): boolean;
  /** Throws AssertionError exactly when `canTransition(from, to)` is false. */
  assertTransition(from: S, to: S): void;
  /** A state with no outgoing transitions. */
  isFinal(state: S): boolean;
}

export function defineStateMachine<S extends string>(table: TransitionTable<S>, name = 'state machine'): StateMachine<S> {
  const states = Object.freeze(Object.keys(table) as S[]);
  assert(states.length > 0, `${name}: a state machine needs at least one state`);
  const stateSet = new Set<string>(states);
  const edges = new Map<string, ReadonlySet<string>>();
  for (const from of states) {
    const entry = table[from];
    assert(entry != null && Array.isArray(entry.to), `${name}: state ${from} has no 'to' list`);
    for (const to of entry.to) {
      assert(stateSet.has(to), `${name}: ${from} → ${to} targets a state that is not in the table`);
    }
    edges.set(from, new Set(entry.to));
  }

  const isState = (value: unknown): value is S => typeof value === 'string' && stateSet.has(value);
  const canTransition = (from: S, to: S): boolean => isState(to) && (edges.get(from)?.has(to) ?? false);

  return Object.freeze({
    name,
    states,
    isState,
    next: (from: S): readonly S[] => (isState(from) ? Object.freeze([...table[from].to]) : Object.freeze([])),
    canTransition,
    assertTransition(from: S, to: S): void {
      assert(canTransition(from, to), `${name}: illegal transition ${String(from)} → ${String(to)}`);
    },
    isFinal: (state: S): boolean => {
      assert(isState(state), `${name}: unknown state ${String(state)}`);
      return edges.get(state)!.size === 0;
    },
  });
}

export type OrderStatus = 'pending' | 'paid' | 'canceled' | 'expired' | 'partially_refunded' | 'refunded';

export const orderMachine: StateMachine<OrderStatus> = defineStateMachine<OrderStatus>(
  {
    pending: { to: ['paid', 'canceled', 'expired'] },
    paid: { to: ['partially_refunded', 'refunded'] },
    // Back towards paid only when the channel takes back a refund it had made (refund.failed).
    partially_refunded: { to: ['partially_refunded', 'refunded', 'paid'] },
    canceled: { to: [] },
    expired: { to: [] },
    refunded: { to: ['partially_refunded', 'paid'] },
  },
  'order',
);

export type PaymentStatus = 'requires_action' | 'processing' | 'succeeded' | 'failed' | 'canceled';

export const paymentMachine: StateMachine<PaymentStatus> = defineStateMachine<PaymentStatus>(
  {
    requires_action: { to: ['processing', 'succeeded', 'failed', 'canceled'] },
    processing: { to: ['succeeded', 'failed', 'canceled'] },
    succeeded: { to: [] },
    // The channel's word wins over ours: a declined card retried with another card succeeds on
    // the same PaymentIntent; a store purchase completes after we gave up on it. Money moved, so
    // the payment records it (and is refunded if its order ended meanwhile).
    failed: { to: ['succeeded'] },
    canceled: { to: ['succeeded'] },
  },
  'payment',
);

export const ORDER_STATUSES: readonly OrderStatus[] = orderMachine.states;
export const PAYMENT_STATUSES: readonly PaymentStatus[] = paymentMachine.states;
