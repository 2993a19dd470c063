-- Up Migration

-- Refunds in the Stripe sandbox (src/channels/stripe/sandbox-refunds.ts): `POST /v1/refunds` on a
-- paid PaymentIntent. The refundable remainder lives on the PaymentIntent's charge
-- (sandbox_stripe_payment_intents.latest_charge: amount_captured − amount_refunded) and changes by
-- compare-and-set on that row's version, so concurrent refunds never exceed it.

-- A Refund as the API answers it (`object`), plus the columns listed and checked. Every change is
-- a compare-and-set on `version`. `settle_at`/`settle_status`: when and how the sandbox finishes
-- the refund by itself (Stripe's pending-then-succeeded and succeeded-then-failed test cards).
CREATE TABLE sandbox_stripe_refunds (
  id             text PRIMARY KEY CHECK (id ~ '^re_[A-Za-z0-9]+$'),
  account_id     text NOT NULL,
  payment_intent text NOT NULL REFERENCES sandbox_stripe_payment_intents (id),
  charge         text NOT NULL CHECK (charge ~ '^(ch|py)_[A-Za-z0-9]+$'),
  status         text NOT NULL CHECK (status IN ('pending', 'requires_action', 'succeeded', 'failed', 'canceled')),
  amount         bigint NOT NULL CHECK (amount BETWEEN 1 AND 99999999),
  currency       text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
  -- Unix seconds, as Stripe reports `created`.
  created        bigint NOT NULL,
  object         jsonb NOT NULL CHECK (object->>'id' = id AND object->>'status' = status
                                       AND object->>'payment_intent' = payment_intent AND (object->>'amount')::bigint = amount),
  settle_at      timestamptz,
  settle_status  text CHECK (settle_status IN ('succeeded', 'failed')),
  version        int NOT NULL DEFAULT 0,
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now(),
  CHECK ((settle_at IS NULL) = (settle_status IS NULL))
);
CREATE INDEX sandbox_stripe_refunds_pi_idx ON sandbox_stripe_refunds (account_id, payment_intent, created DESC, id DESC);
CREATE INDEX sandbox_stripe_refunds_charge_idx ON sandbox_stripe_refunds (account_id, charge, created DESC, id DESC);
CREATE INDEX sandbox_stripe_refunds_list_idx ON sandbox_stripe_refunds (account_id, created DESC, id DESC);
CREATE INDEX sandbox_stripe_refunds_metadata_idx ON sandbox_stripe_refunds USING gin ((object->'metadata') jsonb_path_ops);
CREATE INDEX sandbox_stripe_refunds_settle_idx ON sandbox_stripe_refunds (settle_at) WHERE settle_at IS NOT NULL;

-- Down Migration
DROP TABLE sandbox_stripe_refunds;
