-- Up Migration

-- The Stripe sandbox (src/channels/stripe/sandbox*.ts): Stripe's side of PaymentIntents, the events
-- it emits, and its Idempotency-Key store, shared by every service process on this database.
-- Notifications themselves go through the shared sandbox_notifications queue (0002_sandbox.sql).

-- A PaymentIntent as the API answers it (`object`), plus the columns searched and checked.
-- Every change is a compare-and-set on `version`.
CREATE TABLE sandbox_stripe_payment_intents (
  id            text PRIMARY KEY CHECK (id ~ '^pi_[A-Za-z0-9]+$'),
  account_id    text NOT NULL,
  status        text NOT NULL CHECK (status IN ('requires_payment_method', 'requires_confirmation', 'requires_action',
                                                'processing', 'requires_capture', 'succeeded', 'canceled')),
  amount        bigint NOT NULL CHECK (amount BETWEEN 1 AND 99999999),
  currency      text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
  -- Unix seconds, as Stripe reports `created`.
  created       bigint NOT NULL,
  object        jsonb NOT NULL CHECK (object->>'id' = id AND object->>'status' = status),
  -- The last Charge made for it (succeeded or failed), kept for later reporting.
  latest_charge jsonb,
  version       int NOT NULL DEFAULT 0,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sandbox_stripe_pi_list_idx ON sandbox_stripe_payment_intents (account_id, created DESC, id DESC);
CREATE INDEX sandbox_stripe_pi_metadata_idx ON sandbox_stripe_payment_intents USING gin ((object->'metadata') jsonb_path_ops);

-- Every event the sandbox emitted (GET /v1/events/:id answers them; webhooks deliver them).
CREATE TABLE sandbox_stripe_events (
  id          text PRIMARY KEY CHECK (id ~ '^evt_[A-Za-z0-9]+$'),
  account_id  text NOT NULL,
  type        text NOT NULL,
  object_id   text NOT NULL,
  created     bigint NOT NULL,
  event       jsonb NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sandbox_stripe_events_object_idx ON sandbox_stripe_events (object_id, created);

-- Stripe's idempotency layer: the first response to a POST with an Idempotency-Key, replayed for
-- the same parameters for 24 hours. Concurrent use of one key is serialised by an advisory lock.
CREATE TABLE sandbox_stripe_idempotency_keys (
  account_id      text NOT NULL,
  key             text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
  request_method  text NOT NULL,
  request_path    text NOT NULL,
  params_sha256   text NOT NULL,
  response_status int NOT NULL,
  response_body   text NOT NULL,
  request_id      text NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account_id, key)
);

-- Down Migration
DROP TABLE sandbox_stripe_idempotency_keys, sandbox_stripe_events, sandbox_stripe_payment_intents;
