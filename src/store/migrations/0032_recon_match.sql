-- Up Migration
-- A bill may not state the fee (Apple's notification history): the line's fee is then unknown
-- and not compared. A Play earnings report names no reference of ours: its refund lines are
-- matched on the channel's refund id, which needs an index of its own.
ALTER TABLE recon_lines ALTER COLUMN fee DROP NOT NULL;
CREATE INDEX refunds_channel_refund_id_idx ON refunds (channel_refund_id) WHERE channel_refund_id IS NOT NULL;

-- Down Migration
DROP INDEX refunds_channel_refund_id_idx;
UPDATE recon_lines SET fee = 0 WHERE fee IS NULL;
ALTER TABLE recon_lines ALTER COLUMN fee SET NOT NULL;
