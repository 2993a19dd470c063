-- Up Migration

-- WeChat Pay's side of a trade, for the built-in sandbox (src/channels/wechatpay/sandbox*.ts). A trade
-- exists from the order call (prepay) on, in NOTPAY, until the buyer pays or it is closed.
CREATE TABLE sandbox_wechatpay_trades (
  mchid            text NOT NULL,
  out_trade_no     text NOT NULL,
  appid            text NOT NULL,
  trade_type       text NOT NULL CHECK (trade_type IN ('NATIVE', 'JSAPI', 'APP', 'MWEB')),
  trade_state      text NOT NULL CHECK (trade_state IN ('SUCCESS', 'REFUND', 'NOTPAY', 'CLOSED', 'REVOKED', 'USERPAYING', 'PAYERROR')),
  transaction_id   text UNIQUE,
  prepay_id        text NOT NULL UNIQUE,
  code_url         text UNIQUE,
  description      text NOT NULL,
  attach           text,
  notify_url       text NOT NULL,
  amount_total_fen bigint NOT NULL CHECK (amount_total_fen > 0 AND amount_total_fen <= 2147483647),
  currency         text NOT NULL DEFAULT 'CNY',
  payer_openid     text,
  payer_client_ip  text,
  time_expire      timestamptz,
  request_digest   text NOT NULL,
  success_time     timestamptz,
  closed_at        timestamptz,
  version          int NOT NULL DEFAULT 0,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (mchid, out_trade_no),
  CHECK (trade_state NOT IN ('SUCCESS', 'REFUND') OR (transaction_id IS NOT NULL AND success_time IS NOT NULL))
);

-- Down Migration
DROP TABLE sandbox_wechatpay_trades;
