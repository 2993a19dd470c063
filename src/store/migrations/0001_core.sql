-- Up Migration

CREATE TABLE settings (
  key        text PRIMARY KEY,
  value      jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
  id         text PRIMARY KEY,
  key_hash   text NOT NULL UNIQUE,
  key_prefix text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- Stored first responses of POSTs carrying an Idempotency-Key.
CREATE TABLE idempotency_keys (
  key             text PRIMARY KEY,
  fingerprint     text NOT NULL,
  state           text NOT NULL CHECK (state IN ('processing', 'done')),
  response_status int,
  response_body   text,
  locked_at       timestamptz NOT NULL DEFAULT now(),
  created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE creators (
  id                    text PRIMARY KEY,
  name                  text NOT NULL,
  revenue_share_bps     int NOT NULL CHECK (revenue_share_bps BETWEEN 0 AND 10000),
  settlement_delay_days int NOT NULL DEFAULT 7 CHECK (settlement_delay_days BETWEEN 0 AND 365),
  created_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE products (
  id                     text PRIMARY KEY,
  title                  text NOT NULL,
  type                   text NOT NULL CHECK (type IN ('course', 'column', 'live', 'membership', 'coin_pack')),
  creator_id             text NOT NULL REFERENCES creators (id),
  access_days            int CHECK (access_days IS NULL OR access_days BETWEEN 1 AND 36500),
  wallet_credit_currency text,
  wallet_credit_amount   bigint CHECK (wallet_credit_amount IS NULL OR wallet_credit_amount > 0),
  active                 boolean NOT NULL DEFAULT true,
  created_at             timestamptz NOT NULL DEFAULT now(),
  CHECK ((wallet_credit_currency IS NULL) = (wallet_credit_amount IS NULL))
);

CREATE TABLE product_prices (
  product_id  text NOT NULL REFERENCES products (id),
  currency    text NOT NULL,
  unit_amount bigint NOT NULL CHECK (unit_amount >= 0),
  PRIMARY KEY (product_id, currency)
);

CREATE TABLE coupons (
  id                  text PRIMARY KEY,
  code                text NOT NULL UNIQUE,
  percent_off_bps     int CHECK (percent_off_bps IS NULL OR percent_off_bps BETWEEN 1 AND 10000),
  amount_off          bigint CHECK (amount_off IS NULL OR amount_off > 0),
  amount_off_currency text,
  max_redemptions     int CHECK (max_redemptions IS NULL OR max_redemptions > 0),
  times_reserved      int NOT NULL DEFAULT 0 CHECK (times_reserved >= 0),
  valid_from          timestamptz,
  expires_at          timestamptz,
  product_ids         text[],
  created_at          timestamptz NOT NULL DEFAULT now(),
  CHECK ((percent_off_bps IS NULL) <> (amount_off IS NULL)),
  CHECK ((amount_off IS NULL) = (amount_off_currency IS NULL)),
  CHECK (max_redemptions IS NULL OR times_reserved <= max_redemptions)
);

CREATE TABLE orders (
  id              text PRIMARY KEY,
  customer_id     text NOT NULL,
  currency        text NOT NULL,
  status          text NOT NULL CHECK (status IN ('pending', 'paid', 'canceled', 'expired', 'partially_refunded', 'refunded')),
  subtotal_amount bigint NOT NULL CHECK (subtotal_amount >= 0),
  discount_amount bigint NOT NULL CHECK (discount_amount >= 0),
  total_amount    bigint NOT NULL CHECK (total_amount >= 0),
  coupon_id       text REFERENCES coupons (id),
  coupon_released boolean NOT NULL DEFAULT false,
  client_platform text NOT NULL,
  expires_at      timestamptz NOT NULL,
  paid_at         timestamptz,
  paid_payment_id text,
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  CHECK (total_amount = subtotal_amount - discount_amount)
);
CREATE INDEX orders_customer_idx ON orders (customer_id, id DESC);
CREATE INDEX orders_pending_expiry_idx ON orders (expires_at) WHERE status = 'pending';

CREATE TABLE order_items (
  order_id        text NOT NULL REFERENCES orders (id),
  line            int NOT NULL,
  product_id      text NOT NULL REFERENCES products (id),
  quantity        int NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
  unit_amount     bigint NOT NULL CHECK (unit_amount >= 0),
  subtotal_amount bigint NOT NULL CHECK (subtotal_amount >= 0),
  discount_amount bigint NOT NULL CHECK (discount_amount >= 0),
  total_amount    bigint NOT NULL CHECK (total_amount >= 0),
  PRIMARY KEY (order_id, line)
);

CREATE TABLE order_transitions (
  id          bigserial PRIMARY KEY,
  order_id    text NOT NULL REFERENCES orders (id),
  from_status text NOT NULL,
  to_status   text NOT NULL,
  reason      text NOT NULL,
  payment_id  text,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_transitions_order_idx ON order_transitions (order_id);

CREATE TABLE payments (
  id                     text PRIMARY KEY,
  order_id               text NOT NULL REFERENCES orders (id),
  channel                text NOT NULL,
  method                 text NOT NULL,
  status                 text NOT NULL CHECK (status IN ('requires_action', 'processing', 'succeeded', 'failed', 'canceled')),
  amount                 bigint NOT NULL CHECK (amount >= 0),
  currency               text NOT NULL,
  channel_reference      text NOT NULL UNIQUE,
  channel_transaction_id text,
  action                 jsonb,
  return_url             text,
  failure_code           text,
  failure_message        text,
  needs_refund           boolean NOT NULL DEFAULT false,
  refund_reason          text,
  created_at             timestamptz NOT NULL DEFAULT now(),
  updated_at             timestamptz NOT NULL DEFAULT now(),
  succeeded_at           timestamptz
);
CREATE INDEX payments_order_idx ON payments (order_id);
CREATE INDEX payments_open_idx ON payments (created_at) WHERE status IN ('requires_action', 'processing');
CREATE INDEX payments_needs_refund_idx ON payments (id) WHERE needs_refund;

CREATE TABLE payment_transitions (
  id          bigserial PRIMARY KEY,
  payment_id  text NOT NULL REFERENCES payments (id),
  from_status text NOT NULL,
  to_status   text NOT NULL,
  reason      text NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_transitions_payment_idx ON payment_transitions (payment_id);

-- Every notification received from a channel, accepted or not, kept for audit.
CREATE TABLE channel_notifications (
  id                bigserial PRIMARY KEY,
  channel           text NOT NULL,
  event_id          text,
  channel_reference text,
  payment_id        text,
  outcome           text NOT NULL CHECK (outcome IN ('applied', 'duplicate', 'rejected', 'ignored')),
  reason            text,
  headers           jsonb NOT NULL,
  raw_body          text NOT NULL,
  received_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX channel_notifications_ref_idx ON channel_notifications (channel, channel_reference);

-- Every call made to a channel (request and response, secrets redacted), kept for audit.
CREATE TABLE channel_calls (
  id                bigserial PRIMARY KEY,
  channel           text NOT NULL,
  operation         text NOT NULL,
  channel_reference text,
  request           jsonb,
  response          jsonb,
  error             text,
  duration_ms       int,
  created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX channel_calls_ref_idx ON channel_calls (channel, channel_reference);

CREATE TABLE entitlements (
  id          text PRIMARY KEY,
  customer_id text NOT NULL,
  product_id  text NOT NULL REFERENCES products (id),
  status      text NOT NULL CHECK (status IN ('active', 'revoked')),
  starts_at   timestamptz NOT NULL,
  expires_at  timestamptz,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  UNIQUE (customer_id, product_id)
);

-- One row per order line that granted or extended an entitlement: makes granting idempotent.
CREATE TABLE entitlement_grants (
  entitlement_id text NOT NULL REFERENCES entitlements (id),
  order_id       text NOT NULL REFERENCES orders (id),
  line           int NOT NULL,
  access_days    int,
  created_at     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (order_id, line)
);

-- Down Migration
DROP TABLE entitlement_grants, entitlements, channel_calls, channel_notifications, payment_transitions,
  payments, order_transitions, order_items, orders, coupons, product_prices, products, creators,
  idempotency_keys, api_keys, settings;
