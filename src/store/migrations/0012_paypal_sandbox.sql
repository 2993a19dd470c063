-- Up Migration

-- PayPal connector (used with real PayPal too): our reference → PayPal's order id, and the one
-- decision we take about the order (capture it, or close it = never capture it). PayPal assigns
-- order ids and keeps PayPal-Request-Id replays for 6 hours only; see channels/paypal/order-refs.ts.
CREATE TABLE paypal_order_refs (
  client_id         text NOT NULL,
  channel_reference text NOT NULL,
  order_id          text NOT NULL,
  currency          text NOT NULL,
  amount_minor      bigint NOT NULL CHECK (amount_minor > 0),
  decision          text CHECK (decision IN ('capture', 'close')),
  decided_at        timestamptz,
  created_at        timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (client_id, channel_reference),
  UNIQUE (client_id, order_id),
  CHECK ((decision IS NULL) = (decided_at IS NULL))
);

-- The PayPal sandbox's side of an order (Orders v2). Amounts in minor units of the currency.
CREATE TABLE sandbox_paypal_orders (
  id                  text PRIMARY KEY,
  client_id           text NOT NULL,
  request_id          text,
  intent              text NOT NULL CHECK (intent = 'CAPTURE'),
  status              text NOT NULL CHECK (status IN ('CREATED', 'SAVED', 'APPROVED', 'VOIDED', 'COMPLETED', 'PAYER_ACTION_REQUIRED')),
  currency            text NOT NULL,
  amount_minor        bigint NOT NULL CHECK (amount_minor > 0),
  reference_id        text NOT NULL,
  custom_id           text,
  invoice_id          text,
  description         text,
  return_url          text,
  cancel_url          text,
  uses_payment_source boolean NOT NULL,
  payer_id            text,
  payer_email         text,
  -- What the buyer's funding source will do at capture (simulate: succeeded → COMPLETED, failed → DECLINED).
  capture_outcome     text CHECK (capture_outcome IN ('COMPLETED', 'DECLINED')),
  capture_id          text UNIQUE,
  capture_status      text CHECK (capture_status IN ('COMPLETED', 'DECLINED')),
  capture_request_id  text,
  fee_minor           bigint CHECK (fee_minor >= 0),
  approved_at         timestamptz,
  captured_at         timestamptz,
  voided_at           timestamptz,
  version             int NOT NULL DEFAULT 0,
  created_at          timestamptz NOT NULL DEFAULT now(),
  updated_at          timestamptz NOT NULL DEFAULT now(),
  UNIQUE (client_id, request_id),
  CHECK ((status = 'COMPLETED') = (capture_id IS NOT NULL)),
  CHECK (status NOT IN ('APPROVED', 'COMPLETED') OR (payer_id IS NOT NULL AND capture_outcome IS NOT NULL))
);
CREATE INDEX sandbox_paypal_orders_custom_idx ON sandbox_paypal_orders (client_id, custom_id, created_at DESC);

-- Down Migration
DROP TABLE sandbox_paypal_orders, paypal_order_refs;
