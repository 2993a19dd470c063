-- Up Migration

-- Google Play sandbox: the purchases Google keeps for an app, and the OAuth access tokens its
-- token endpoint issued to the service account. Notifications go through sandbox_notifications.

-- One purchase of a one-time product. A device purchase starts PENDING (purchase_state 2); the
-- buyer's outcome makes it PURCHASED (0) or CANCELED (1). One purchase per obfuscated account id
-- (our payment reference) and app.
CREATE TABLE sandbox_google_play_purchases (
  purchase_token        text PRIMARY KEY CHECK (length(purchase_token) BETWEEN 1 AND 1024),
  package_name          text NOT NULL,
  product_id            text NOT NULL,
  quantity              int NOT NULL DEFAULT 1 CHECK (quantity BETWEEN 1 AND 100),
  obfuscated_account_id text NOT NULL CHECK (length(obfuscated_account_id) BETWEEN 1 AND 64),
  obfuscated_profile_id text CHECK (length(obfuscated_profile_id) <= 64),
  order_id              text NOT NULL UNIQUE,
  purchase_state        smallint NOT NULL CHECK (purchase_state IN (0, 1, 2)),
  consumption_state     smallint NOT NULL DEFAULT 0 CHECK (consumption_state IN (0, 1)),
  acknowledgement_state smallint NOT NULL DEFAULT 0 CHECK (acknowledgement_state IN (0, 1)),
  purchase_type         smallint CHECK (purchase_type IN (0, 1, 2)),
  region_code           text NOT NULL DEFAULT 'US',
  developer_payload     text,
  purchase_time         timestamptz NOT NULL DEFAULT clock_timestamp(),
  settled_at            timestamptz,
  version               int NOT NULL DEFAULT 0,
  created_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
  updated_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
  UNIQUE (package_name, obfuscated_account_id),
  CHECK (acknowledgement_state = 0 OR purchase_state = 0),
  CHECK ((purchase_state = 2) = (settled_at IS NULL))
);

-- Access tokens issued by the sandbox's token endpoint; only their SHA-256 is kept.
CREATE TABLE sandbox_google_play_access_tokens (
  token_sha256 text PRIMARY KEY,
  client_email text NOT NULL,
  scope        text NOT NULL,
  expires_at   timestamptz NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX sandbox_google_play_access_tokens_expiry_idx ON sandbox_google_play_access_tokens (expires_at);

-- Down Migration
DROP TABLE sandbox_google_play_access_tokens, sandbox_google_play_purchases;
