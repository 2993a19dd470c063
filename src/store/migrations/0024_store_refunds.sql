-- Up Migration

-- Refunds the app stores start themselves, in the Apple and Google Play sandboxes
-- (src/channels/apple/, src/channels/google/). Merchants cannot refund through these stores: the
-- buyer asks Apple or Google, and the store tells the app's server afterwards.

-- Apple: a refunded transaction still exists (status stays 'purchased'); Apple adds
-- revocationDate and revocationReason (0 other, 1 an issue in the app) to it, and every signed copy
-- of the transaction carries them from then on. refund_reversed_at records a REFUND_REVERSED
-- (Apple took the refund back and charged the buyer again); the sandbox then refunds no more.
ALTER TABLE sandbox_apple_purchases
  ADD COLUMN revocation_date    timestamptz,
  ADD COLUMN revocation_reason  smallint CHECK (revocation_reason IN (0, 1)),
  ADD COLUMN refund_reversed_at timestamptz,
  ADD CONSTRAINT sandbox_apple_purchases_revocation_check CHECK ((revocation_date IS NULL) = (revocation_reason IS NULL)),
  ADD CONSTRAINT sandbox_apple_purchases_revoked_paid_check CHECK ((revocation_date IS NULL AND refund_reversed_at IS NULL) OR status = 'purchased');

-- Google Play: a voided (refunded) purchase. A refunded one-time purchase reads back as
-- purchaseState 1 (CANCELED) with refundableQuantity 0 (the sandbox's reading of Google's
-- documents; see sandbox.ts). It was acknowledged before, so the rule "only a PURCHASED purchase is
-- acknowledged" gains an exception for voided ones. voided_source and voided_reason use the
-- Voided Purchases API's numbers (source 0 user, 1 developer, 2 Google; reason 0..8).
ALTER TABLE sandbox_google_play_purchases
  ADD COLUMN voided_at     timestamptz,
  ADD COLUMN voided_source smallint CHECK (voided_source IN (0, 1, 2)),
  ADD COLUMN voided_reason smallint CHECK (voided_reason BETWEEN 0 AND 8),
  DROP CONSTRAINT sandbox_google_play_purchases_check,
  ADD CONSTRAINT sandbox_google_play_purchases_ack_check CHECK (acknowledgement_state = 0 OR purchase_state = 0 OR voided_at IS NOT NULL),
  ADD CONSTRAINT sandbox_google_play_purchases_voided_check CHECK ((voided_at IS NULL) = (voided_source IS NULL) AND (voided_at IS NULL) = (voided_reason IS NULL)),
  ADD CONSTRAINT sandbox_google_play_purchases_voided_state_check CHECK (voided_at IS NULL OR purchase_state = 1);

-- purchases.voidedpurchases.list reads voided purchases of one app by time.
CREATE INDEX sandbox_google_play_purchases_voided_idx ON sandbox_google_play_purchases (package_name, voided_at, order_id) WHERE voided_at IS NOT NULL;

-- Down Migration
DROP INDEX sandbox_google_play_purchases_voided_idx;
ALTER TABLE sandbox_google_play_purchases
  DROP CONSTRAINT sandbox_google_play_purchases_voided_state_check,
  DROP CONSTRAINT sandbox_google_play_purchases_voided_check,
  DROP CONSTRAINT sandbox_google_play_purchases_ack_check;
-- A voided purchase was PURCHASED before the void: restore that, so the old rule holds again.
UPDATE sandbox_google_play_purchases SET purchase_state = 0 WHERE voided_at IS NOT NULL;
ALTER TABLE sandbox_google_play_purchases
  DROP COLUMN voided_reason,
  DROP COLUMN voided_source,
  DROP COLUMN voided_at,
  ADD CONSTRAINT sandbox_google_play_purchases_check CHECK (acknowledgement_state = 0 OR purchase_state = 0);
ALTER TABLE sandbox_apple_purchases
  DROP CONSTRAINT sandbox_apple_purchases_revoked_paid_check,
  DROP CONSTRAINT sandbox_apple_purchases_revocation_check,
  DROP COLUMN refund_reversed_at,
  DROP COLUMN revocation_reason,
  DROP COLUMN revocation_date;
