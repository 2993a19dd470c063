-- Up Migration
CREATE TABLE refunds (
  id                text PRIMARY KEY,
  payment_id        text NOT NULL REFERENCES payments (id),
  order_id          text NOT NULL REFERENCES orders (id),
  amount            bigint NOT NULL CHECK (amount > 0),
  currency          text NOT NULL,
  status            text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
  -- Our refund number at the channel (out_request_no / out_refund_no / idempotency key).
  refund_reference  text NOT NULL UNIQUE,
  channel_refund_id text,
  reason            text,
  -- Started by the store (Apple, Google) rather than through our API.
  initiated_by      text NOT NULL DEFAULT 'merchant' CHECK (initiated_by IN ('merchant', 'channel', 'automatic')),
  product_ids       text[],
  force             boolean NOT NULL DEFAULT false,
  failure_code      text,
  failure_message   text,
  created_at        timestamptz NOT NULL DEFAULT now(),
  updated_at        timestamptz NOT NULL DEFAULT now(),
  succeeded_at      timestamptz
);
CREATE INDEX refunds_payment_idx ON refunds (payment_id);
CREATE INDEX refunds_pending_idx ON refunds (created_at) WHERE status = 'pending';
CREATE UNIQUE INDEX refunds_channel_refund_uq ON refunds (payment_id, channel_refund_id) WHERE channel_refund_id IS NOT NULL;

CREATE TABLE refund_transitions (
  id          bigserial PRIMARY KEY,
  refund_id   text NOT NULL REFERENCES refunds (id),
  from_status text NOT NULL,
  to_status   text NOT NULL,
  reason      text NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refund_transitions_refund_idx ON refund_transitions (refund_id);

-- A refunded order's grants are revoked, not deleted: the entitlement keeps what other orders gave.
ALTER TABLE entitlement_grants ADD COLUMN revoked_at timestamptz;

-- Down Migration
ALTER TABLE entitlement_grants DROP COLUMN revoked_at;
DROP TABLE refund_transitions, refunds;
