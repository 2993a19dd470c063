-- Up Migration
-- The fee posted for a payment's capture (the channel's report or our estimate), kept on the
-- payment so reconciliation compares fees with a plain join.
ALTER TABLE payments ADD COLUMN fee_amount bigint;
CREATE INDEX payments_channel_succeeded_idx ON payments (channel, succeeded_at) WHERE status = 'succeeded';

CREATE TABLE reconciliations (
  id           text PRIMARY KEY,
  channel      text NOT NULL,
  bill_date    date NOT NULL,
  source       text NOT NULL CHECK (source IN ('upload', 'download')),
  status       text NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
  summary      jsonb,
  failure      text,
  created_at   timestamptz NOT NULL DEFAULT now(),
  completed_at timestamptz
);
CREATE INDEX reconciliations_channel_date_idx ON reconciliations (channel, bill_date);

-- A bill's lines, normalised: the evidence each classification points to.
CREATE TABLE recon_lines (
  recon_id               text NOT NULL,
  line_no                int NOT NULL,
  kind                   text NOT NULL CHECK (kind IN ('payment', 'refund')),
  channel_reference      text NOT NULL,
  channel_transaction_id text,
  refund_reference       text,
  amount                 bigint NOT NULL,
  fee                    bigint NOT NULL,
  currency               text NOT NULL,
  occurred_at            timestamptz
);
CREATE INDEX recon_lines_recon_idx ON recon_lines (recon_id, channel_reference);

CREATE TABLE recon_exceptions (
  id                bigserial PRIMARY KEY,
  recon_id          text NOT NULL REFERENCES reconciliations (id),
  kind              text NOT NULL CHECK (kind IN ('amount_mismatch', 'fee_mismatch', 'status_mismatch', 'missing_in_ledger', 'missing_in_channel', 'expected')),
  channel_reference text,
  line_no           int,
  payment_id        text,
  refund_id         text,
  expected_amount   bigint,
  actual_amount     bigint,
  evidence          jsonb NOT NULL DEFAULT '{}'::jsonb,
  resolution        text NOT NULL DEFAULT 'open' CHECK (resolution IN ('open', 'healed', 'accepted', 'ignored')),
  resolution_reason text,
  resolved_at       timestamptz
);
CREATE INDEX recon_exceptions_recon_idx ON recon_exceptions (recon_id, id);

-- Down Migration
DROP TABLE recon_exceptions, recon_lines, reconciliations;
DROP INDEX payments_channel_succeeded_idx;
ALTER TABLE payments DROP COLUMN fee_amount;
