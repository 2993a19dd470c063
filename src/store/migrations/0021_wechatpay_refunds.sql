-- Up Migration

-- WeChat Pay's side of a refund, for the built-in sandbox (src/channels/wechatpay/sandbox-refunds.ts).
-- A refund exists from POST /v3/refund/domestic/refunds on, in PROCESSING, until the sandbox finishes
-- it by itself at settle_at (SUCCESS) or /sandbox/wechatpay/refunds/simulate ends it (SUCCESS,
-- ABNORMAL or CLOSED). out_refund_no is the merchant's number: one refund per number per merchant.
CREATE TABLE sandbox_wechatpay_refunds (
  mchid              text NOT NULL,
  out_refund_no      text NOT NULL,
  refund_id          text NOT NULL UNIQUE,
  out_trade_no       text NOT NULL,
  transaction_id     text NOT NULL,
  status             text NOT NULL CHECK (status IN ('PROCESSING', 'SUCCESS', 'CLOSED', 'ABNORMAL')),
  reason             text,
  notify_url         text,
  funds_account      text NOT NULL DEFAULT 'AVAILABLE',
  amount_refund_fen  bigint NOT NULL CHECK (amount_refund_fen > 0 AND amount_refund_fen <= 2147483647),
  amount_total_fen   bigint NOT NULL CHECK (amount_total_fen > 0 AND amount_total_fen <= 2147483647),
  currency           text NOT NULL DEFAULT 'CNY',
  -- When the sandbox finishes a PROCESSING refund by itself (NULL: only /refunds/simulate does).
  settle_at          timestamptz,
  success_time       timestamptz,
  version            int NOT NULL DEFAULT 0,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (mchid, out_refund_no),
  FOREIGN KEY (mchid, out_trade_no) REFERENCES sandbox_wechatpay_trades (mchid, out_trade_no),
  CHECK (amount_refund_fen <= amount_total_fen),
  CHECK (status <> 'SUCCESS' OR success_time IS NOT NULL)
);
CREATE INDEX sandbox_wechatpay_refunds_trade_idx ON sandbox_wechatpay_refunds (mchid, out_trade_no);
CREATE INDEX sandbox_wechatpay_refunds_settle_idx ON sandbox_wechatpay_refunds (settle_at) WHERE status = 'PROCESSING' AND settle_at IS NOT NULL;

-- Down Migration
DROP TABLE sandbox_wechatpay_refunds;
