import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { AssertionError } from './assert.ts';
import {
  defineStateMachine,
  orderMachine,
  paymentMachine,
  type OrderStatus,
  type PaymentStatus,
  type StateMachine,
  type TransitionTable,
} from './state-machine.ts';

const RUNS = { numRuns: 2000 };

function allowedPairs<S extends string>(m: StateMachine<S>): string[] {
  const out: string[] = [];
  for (const from of m.states) for (const to of m.states) if (m.canTransition(from, to)) out.push(`${from}→${to}`);
  return out.sort();
}

test('order machine: exactly the documented transitions', () => {
  assert.deepEqual(
    [...orderMachine.states].sort(),
    ['canceled', 'expired', 'paid', 'partially_refunded', 'pending', 'refunded'],
  );
  assert.deepEqual(
    allowedPairs(orderMachine),
    [
      'paid→partially_refunded',
      'paid→refunded',
      'partially_refunded→paid',
      'partially_refunded→partially_refunded',
      'partially_refunded→refunded',
      'pending→canceled',
      'pending→expired',
      'pending→paid',
      'refunded→paid',
      'refunded→partially_refunded',
    ],
  );
  const finals = orderMachine.states.filter((s) => orderMachine.isFinal(s)).sort();
  assert.deepEqual(finals, ['canceled', 'expired']);
  assert.equal(orderMachine.canTransition('pending', 'pending'), false);
  assert.equal(orderMachine.canTransition('pending', 'refunded'), false);
  assert.equal(orderMachine.canTransition('paid', 'pending'), false);
  assert.equal(orderMachine.canTransition('expired', 'paid'), false);
  assert.deepEqual(orderMachine.next('pending'), ['paid', 'canceled', 'expired']);
  assert.deepEqual(orderMachine.next('refunded'), ['partially_refunded', 'paid']);
  assert.deepEqual(orderMachine.next('expired'), []);
});

test('payment machine: exactly the documented transitions', () => {
  assert.deepEqual([...paymentMachine.states].sort(), ['canceled', 'failed', 'processing', 'requires_action', 'succeeded']);
  assert.deepEqual(
    allowedPairs(paymentMachine),
    [
      'canceled→succeeded',
      'failed→succeeded',
      'processing→canceled',
      'processing→failed',
      'processing→succeeded',
      'requires_action→canceled',
      'requires_action→failed',
      'requires_action→processing',
      'requires_action→succeeded',
    ],
  );
  const finals = paymentMachine.states.filter((s) => paymentMachine.isFinal(s)).sort();
  assert.deepEqual(finals, ['succeeded']);
  assert.equal(paymentMachine.canTransition('succeeded', 'failed'), false);
  assert.equal(paymentMachine.canTransition('failed', 'canceled'), false);
  assert.equal(paymentMachine.canTransition('processing', 'requires_action'), false);
});

test('assertTransition throws AssertionError on an illegal transition, with both states in the message', () => {
  assert.doesNotThrow(() => orderMachine.assertTransition('pending', 'paid'));
  assert.throws(() => orderMachine.assertTransition('expired', 'paid'), (e: unknown) => {
    assert.ok(e instanceof AssertionError);
    assert.match(e.message, /order: illegal transition expired → paid/);
    return true;
  });
  assert.throws(() => paymentMachine.assertTransition('succeeded', 'failed'), AssertionError);
});

test('values from outside the table: isState guards, canTransition is false, assertTransition throws', () => {
  assert.equal(orderMachine.isState('pending'), true);
  assert.equal(orderMachine.isState('PENDING'), false);
  assert.equal(orderMachine.isState('toString'), false);
  assert.equal(orderMachine.isState(42), false);
  assert.equal(orderMachine.isState(undefined), false);
  const bogus = 'shipped' as OrderStatus;
  assert.equal(orderMachine.canTransition(bogus, 'paid'), false);
  assert.equal(orderMachine.canTransition('pending', bogus), false);
  assert.equal(orderMachine.canTransition('constructor' as OrderStatus, 'paid'), false);
  assert.throws(() => orderMachine.assertTransition(bogus, 'paid'), AssertionError);
  assert.throws(() => orderMachine.isFinal(bogus), AssertionError);
  assert.deepEqual(orderMachine.next(bogus), []);
});

test('defineStateMachine refuses a table whose transitions leave the table', () => {
  const broken = { a: { to: ['b'] }, b: { to: ['c'] } } as unknown as TransitionTable<'a' | 'b'>;
  assert.throws(() => defineStateMachine(broken, 'broken'), AssertionError);
  assert.throws(() => defineStateMachine({} as TransitionTable<never>), AssertionError);
  const m = defineStateMachine({ on: { to: ['off'] }, off: { to: ['on'] } });
  assert.equal(m.canTransition('on', 'off'), true);
  assert.equal(m.isFinal('on'), false);
});

test('machines and their lists cannot be mutated from outside', () => {
  assert.throws(() => (orderMachine.states as OrderStatus[]).push('paid'));
  assert.throws(() => (orderMachine.next('pending') as OrderStatus[]).push('refunded'));
  assert.equal(orderMachine.canTransition('pending', 'refunded'), false);
});

function walkProperty<S extends string>(machine: StateMachine<S>, initial: S) {
  // Requested targets are mostly table states, sometimes junk strings a caller might pass.
  const target = fc.oneof(
    { weight: 9, arbitrary: fc.constantFrom(...machine.states) },
    { weight: 1, arbitrary: fc.constantFrom('', 'unknown', 'PAID', 'toString', '__proto__') as fc.Arbitrary<string> },
  );
  return fc.property(fc.constantFrom(initial, ...machine.states), fc.array(target, { maxLength: 40 }), (start, requests) => {
    let state: S = start;
    for (const requested of requests) {
      const to = requested as S;
      const allowed = machine.canTransition(state, to);
      // assertTransition throws exactly when canTransition is false.
      let threw = false;
      try {
        machine.assertTransition(state, to);
      } catch (e) {
        assert.ok(e instanceof AssertionError);
        threw = true;
      }
      assert.equal(threw, !allowed);
      assert.equal(allowed, machine.next(state).includes(to));

      const before = state;
      const wasFinal = machine.isFinal(state);
      if (allowed) {
        assert.ok(!wasFinal, `a final state ${state} allowed a transition to ${to}`);
        state = to;
      }
      assert.ok(machine.isState(state), `walk left the table at ${state}`);
      if (wasFinal) assert.equal(state, before, `left final state ${before}`);
    }
    return true;
  });
}

test('property: random walks over the order machine stay in the table and never leave a final state', () => {
  fc.assert(walkProperty<OrderStatus>(orderMachine, 'pending'), RUNS);
});

test('property: random walks over the payment machine stay in the table and never leave a final state', () => {
  fc.assert(walkProperty<PaymentStatus>(paymentMachine, 'requires_action'), RUNS);
});

test('property: once a walk reaches a final state, every later request is refused', () => {
  for (const machine of [orderMachine, paymentMachine] as StateMachine<string>[]) {
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...machine.states), { maxLength: 40 }), (requests) => {
        let state = machine.states[0]!;
        let finalSeen: string | null = null;
        for (const to of requests) {
          if (machine.canTransition(state, to)) state = to;
          if (finalSeen !== null) assert.equal(state, finalSeen, `left final state ${finalSeen}`);
          else if (machine.isFinal(state)) finalSeen = state;
        }
      }),
      RUNS,
    );
  }
});
