-- Up Migration

-- The Apple App Store sandbox (src/channels/apple/): the App Store's side of an in-app purchase,
-- kept here so several service processes sharing one database see the same purchases.
-- One row per purchase attempt, keyed by the app account token the app passed to StoreKit
-- (Knowpay's channel_reference). It exists once the device started the purchase
-- (POST /sandbox/apple_iap/purchase, or simulate with the product and price).
CREATE TABLE sandbox_apple_purchases (
  bundle_id               text NOT NULL,
  app_account_token       uuid NOT NULL,
  product_id              text NOT NULL,
  product_type            text NOT NULL CHECK (product_type IN ('Consumable', 'Non-Consumable', 'Non-Renewing Subscription')),
  quantity                int NOT NULL CHECK (quantity BETWEEN 1 AND 10),
  -- What the App Store charges for the whole quantity, in minor units of currency.
  amount_minor            bigint NOT NULL CHECK (amount_minor > 0),
  currency                text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  storefront              text NOT NULL,
  storefront_id           text NOT NULL,
  status                  text NOT NULL CHECK (status IN ('pending', 'purchased', 'failed', 'canceled')),
  transaction_id          text UNIQUE,
  purchase_date           timestamptz,
  version                 int NOT NULL DEFAULT 0,
  created_at              timestamptz NOT NULL DEFAULT now(),
  updated_at              timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (bundle_id, app_account_token),
  CHECK ((status = 'purchased') = (transaction_id IS NOT NULL AND purchase_date IS NOT NULL))
);

-- Sandbox transaction ids look like Apple's sandbox ones: 16 digits starting 2000000.
CREATE SEQUENCE sandbox_apple_transaction_seq MINVALUE 1 MAXVALUE 999999999 NO CYCLE;

-- Down Migration
DROP SEQUENCE sandbox_apple_transaction_seq;
DROP TABLE sandbox_apple_purchases;
