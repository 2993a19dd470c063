-- Up Migration
-- A product's id in each app store ({"apple_iap": "com.example.course1", "google_play": "course1"}).
ALTER TABLE products ADD COLUMN store_product_ids jsonb NOT NULL DEFAULT '{}'::jsonb;

-- One channel transaction (an Apple transaction id, a Stripe PaymentIntent, an Alipay trade_no)
-- belongs to one payment: the same proof can never pay two orders.
CREATE UNIQUE INDEX payments_channel_transaction_uq ON payments (channel, channel_transaction_id)
  WHERE channel_transaction_id IS NOT NULL;

-- Down Migration
DROP INDEX payments_channel_transaction_uq;
ALTER TABLE products DROP COLUMN store_product_ids;
