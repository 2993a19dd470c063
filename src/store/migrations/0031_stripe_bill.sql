-- Up Migration

-- Balance transactions of the Stripe sandbox (src/channels/stripe/sandbox-balance.ts): what Stripe
-- books for each successful charge (type charge, Stripe's fee), each refund (type refund, amount
-- negative, no fee returned) and each refund that later fails (type refund_failure, the money
-- back). `GET /v1/balance_transactions` lists them newest first by (created, id), the source
-- (charge or refund) expanded on request. `object` is the transaction as the API answers it,
-- except `status`, which follows `available_on` when it is read.
CREATE TABLE sandbox_stripe_balance_transactions (
  id             text PRIMARY KEY CHECK (id ~ '^txn_[A-Za-z0-9]+$'),
  account_id     text NOT NULL,
  type           text NOT NULL CHECK (type IN ('charge', 'refund', 'refund_failure')),
  -- The charge (ch_/py_) or refund (re_) it books, and that charge's PaymentIntent.
  source         text NOT NULL CHECK (source ~ '^(ch|py|re)_[A-Za-z0-9]+$'),
  payment_intent text NOT NULL REFERENCES sandbox_stripe_payment_intents (id),
  -- Unix seconds, as Stripe reports `created`.
  created        bigint NOT NULL,
  object         jsonb NOT NULL CHECK (object->>'id' = id AND object->>'type' = type AND object->>'source' = source),
  created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sandbox_stripe_bt_list_idx ON sandbox_stripe_balance_transactions (account_id, created DESC, id DESC);
-- One transaction of each type per source: recording twice (a replayed event) is a no-op.
CREATE UNIQUE INDEX sandbox_stripe_bt_source_idx ON sandbox_stripe_balance_transactions (account_id, source, type);

-- Down Migration
DROP TABLE sandbox_stripe_balance_transactions;
