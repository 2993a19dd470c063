-- Up Migration

-- PayPal connector (used with real PayPal too): every refund we ask PayPal for, written BEFORE the
-- refund call, and PayPal's refund id once PayPal answers. The refund contract's query gives only
-- our refund reference: this row holds the capture, amount and note needed to ask (or re-send the
-- same idempotent request), and lets a refund webhook be matched to our refund and trade number.
-- See channels/paypal/refund-refs.ts.
CREATE TABLE paypal_refund_refs (
  client_id         text NOT NULL,
  refund_reference  text NOT NULL,
  channel_reference text NOT NULL,
  capture_id        text NOT NULL,
  currency          text NOT NULL,
  amount_minor      bigint NOT NULL CHECK (amount_minor > 0),
  note_to_payer     text,
  refund_id         text,
  status            text,
  created_at        timestamptz NOT NULL DEFAULT now(),
  updated_at        timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (client_id, refund_reference),
  UNIQUE (client_id, refund_id)
);
CREATE INDEX paypal_refund_refs_capture_idx ON paypal_refund_refs (client_id, capture_id);

-- The PayPal sandbox: a capture becomes PARTIALLY_REFUNDED / REFUNDED as its refunds complete, and
-- each order says how its refunds start (COMPLETED at once, or PENDING until /refunds/simulate).
ALTER TABLE sandbox_paypal_orders DROP CONSTRAINT sandbox_paypal_orders_capture_status_check;
ALTER TABLE sandbox_paypal_orders ADD CONSTRAINT sandbox_paypal_orders_capture_status_check
  CHECK (capture_status IN ('COMPLETED', 'DECLINED', 'PARTIALLY_REFUNDED', 'REFUNDED'));
ALTER TABLE sandbox_paypal_orders ADD COLUMN refund_mode text NOT NULL DEFAULT 'COMPLETED'
  CHECK (refund_mode IN ('COMPLETED', 'PENDING'));

-- The PayPal sandbox's refunds of captures (REFUND: through the API; REVERSAL: PayPal took the
-- money back, PAYMENT.CAPTURE.REVERSED). Amounts in minor units of the capture's currency.
CREATE TABLE sandbox_paypal_refunds (
  id                   text PRIMARY KEY,
  client_id            text NOT NULL,
  order_id             text NOT NULL REFERENCES sandbox_paypal_orders (id),
  capture_id           text NOT NULL,
  request_id           text,
  kind                 text NOT NULL CHECK (kind IN ('REFUND', 'REVERSAL')),
  status               text NOT NULL CHECK (status IN ('PENDING', 'COMPLETED', 'FAILED', 'CANCELLED')),
  currency             text NOT NULL,
  amount_minor         bigint NOT NULL CHECK (amount_minor > 0),
  invoice_id           text,
  custom_id            text,
  note_to_payer        text,
  -- The capture's completed refunds, this one included, when this one completed.
  total_refunded_minor bigint CHECK (total_refunded_minor > 0),
  version              int NOT NULL DEFAULT 0,
  created_at           timestamptz NOT NULL DEFAULT now(),
  updated_at           timestamptz NOT NULL DEFAULT now(),
  completed_at         timestamptz,
  UNIQUE (client_id, request_id),
  CHECK ((status = 'COMPLETED') = (total_refunded_minor IS NOT NULL AND completed_at IS NOT NULL))
);
CREATE INDEX sandbox_paypal_refunds_capture_idx ON sandbox_paypal_refunds (capture_id, created_at);
CREATE INDEX sandbox_paypal_refunds_invoice_idx ON sandbox_paypal_refunds (client_id, invoice_id, created_at DESC);

-- Down Migration
DROP TABLE sandbox_paypal_refunds;
ALTER TABLE sandbox_paypal_orders DROP COLUMN refund_mode;
UPDATE sandbox_paypal_orders SET capture_status = 'COMPLETED' WHERE capture_status IN ('PARTIALLY_REFUNDED', 'REFUNDED');
ALTER TABLE sandbox_paypal_orders DROP CONSTRAINT sandbox_paypal_orders_capture_status_check;
ALTER TABLE sandbox_paypal_orders ADD CONSTRAINT sandbox_paypal_orders_capture_status_check
  CHECK (capture_status IN ('COMPLETED', 'DECLINED'));
DROP TABLE paypal_refund_refs;
