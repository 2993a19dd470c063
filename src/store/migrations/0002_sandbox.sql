-- Up Migration

-- Channel sandboxes: state that a real channel keeps on its side, kept here so that several service
-- processes sharing one database see the same trades, notifications and faults.

-- Alipay's side of a trade. A precreated (QR) trade has no trade_no until the buyer scans it.
CREATE TABLE sandbox_alipay_trades (
  app_id          text NOT NULL,
  out_trade_no    text NOT NULL,
  trade_no        text UNIQUE,
  method          text NOT NULL,
  product_code    text NOT NULL,
  status          text NOT NULL CHECK (status IN ('PRECREATED', 'WAIT_BUYER_PAY', 'TRADE_SUCCESS', 'TRADE_FINISHED', 'TRADE_CLOSED')),
  amount_fen      bigint NOT NULL CHECK (amount_fen > 0),
  subject         text NOT NULL,
  body            text,
  passback_params text,
  notify_url      text,
  return_url      text,
  time_expire     timestamptz,
  qr_code         text UNIQUE,
  buyer_id        text,
  buyer_logon_id  text,
  gmt_create      timestamptz,
  gmt_payment     timestamptz,
  gmt_close       timestamptz,
  version         int NOT NULL DEFAULT 0,
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (app_id, out_trade_no),
  CHECK (status = 'PRECREATED' OR status = 'TRADE_CLOSED' OR trade_no IS NOT NULL)
);

-- Outbound notification queue shared by every channel sandbox. One row per logical delivery
-- (a duplicate injected by the faults is a second row with duplicate_of set).
CREATE TABLE sandbox_notifications (
  id                bigserial PRIMARY KEY,
  channel           text NOT NULL,
  channel_reference text NOT NULL,
  event_id          text NOT NULL,
  url               text NOT NULL,
  payload           jsonb NOT NULL,
  status            text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed', 'dropped')),
  attempts          int NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  max_attempts      int NOT NULL CHECK (max_attempts BETWEEN 1 AND 100),
  next_attempt_at   timestamptz NOT NULL DEFAULT now(),
  lease_token       text,
  lease_until       timestamptz,
  last_status_code  int,
  last_error        text,
  delivered_at      timestamptz,
  duplicate_of      bigint REFERENCES sandbox_notifications (id),
  created_at        timestamptz NOT NULL DEFAULT now(),
  updated_at        timestamptz NOT NULL DEFAULT now(),
  CHECK (attempts <= max_attempts)
);
CREATE INDEX sandbox_notifications_due_idx ON sandbox_notifications (channel, next_attempt_at) WHERE status = 'pending';
CREATE INDEX sandbox_notifications_ref_idx ON sandbox_notifications (channel, channel_reference);

-- Every delivery attempt, for tests and for people debugging their notify endpoint.
CREATE TABLE sandbox_notification_attempts (
  id              bigserial PRIMARY KEY,
  notification_id bigint NOT NULL REFERENCES sandbox_notifications (id),
  attempt         int NOT NULL,
  started_at      timestamptz NOT NULL,
  finished_at     timestamptz NOT NULL,
  request_body    text NOT NULL,
  status_code     int,
  response_body   text,
  error           text,
  acknowledged    boolean NOT NULL,
  UNIQUE (notification_id, attempt)
);

-- Fault injection on notifications. channel '*' applies to every channel without its own row.
CREATE TABLE sandbox_faults (
  channel        text PRIMARY KEY,
  drop_rate      double precision NOT NULL DEFAULT 0 CHECK (drop_rate BETWEEN 0 AND 1),
  duplicate_rate double precision NOT NULL DEFAULT 0 CHECK (duplicate_rate BETWEEN 0 AND 1),
  delay_ms       int NOT NULL DEFAULT 0 CHECK (delay_ms BETWEEN 0 AND 600000),
  reorder        boolean NOT NULL DEFAULT false,
  updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Down Migration
DROP TABLE sandbox_faults, sandbox_notification_attempts, sandbox_notifications, sandbox_alipay_trades;
