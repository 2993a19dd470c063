-- Up Migration

-- Alipay's side of refunds (alipay.trade.refund), for the built-in sandbox
-- (src/channels/alipay/sandbox-refunds.ts). One row per out_request_no of a trade: Alipay makes the
-- refund request number unique per trade and refunds each one at most once.
-- status: REFUND_SUCCESS (the normal, synchronous case), REFUND_PROCESSING (a refund the sandbox was
-- told to hold, finished by POST /sandbox/alipay/refunds/simulate), REFUND_FAIL (finished as failed:
-- its amount no longer counts against the trade, and the same out_request_no may be sent again).
CREATE TABLE sandbox_alipay_refunds (
  app_id            text NOT NULL,
  out_trade_no      text NOT NULL,
  out_request_no    text NOT NULL,
  trade_no          text NOT NULL,
  refund_amount_fen bigint NOT NULL CHECK (refund_amount_fen > 0),
  refund_reason     text,
  status            text NOT NULL CHECK (status IN ('REFUND_PROCESSING', 'REFUND_SUCCESS', 'REFUND_FAIL')),
  gmt_refund        timestamptz,
  executions        int NOT NULL DEFAULT 1 CHECK (executions >= 1),
  created_at        timestamptz NOT NULL DEFAULT now(),
  updated_at        timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (app_id, out_trade_no, out_request_no),
  FOREIGN KEY (app_id, out_trade_no) REFERENCES sandbox_alipay_trades (app_id, out_trade_no),
  CHECK (status <> 'REFUND_SUCCESS' OR gmt_refund IS NOT NULL)
);
-- The simulate endpoint finds a refund by its out_request_no alone.
CREATE INDEX sandbox_alipay_refunds_request_idx ON sandbox_alipay_refunds (app_id, out_request_no);

-- How the sandbox processes refunds of a trade: 'sync' as Alipay does (success at once), or
-- 'pending' (answer fund_change=N and hold the refund until simulated).
ALTER TABLE sandbox_alipay_trades
  ADD COLUMN refund_mode text NOT NULL DEFAULT 'sync' CHECK (refund_mode IN ('sync', 'pending'));

-- Down Migration
ALTER TABLE sandbox_alipay_trades DROP COLUMN refund_mode;
DROP TABLE sandbox_alipay_refunds;
