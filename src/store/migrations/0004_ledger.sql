-- Up Migration
-- Double-entry ledger (ledger.md): accounts, immutable journal entries, postings that balance per
-- entry and currency (checked by a statement-level trigger over the inserted rows), no UPDATE or
-- DELETE. Balances are derived from postings, except accounts with a tracked balance row (wallets)
-- that may not go negative and must be checked under concurrency.

CREATE TABLE ledger_accounts (
  id              bigserial PRIMARY KEY,
  code            text NOT NULL UNIQUE,
  type            text NOT NULL CHECK (type IN ('asset', 'liability', 'revenue', 'expense', 'equity')),
  currency        text NOT NULL,
  may_go_negative boolean NOT NULL DEFAULT true,
  -- A tracked account keeps its balance in ledger_balances, updated in the posting transaction.
  tracked         boolean NOT NULL DEFAULT false,
  created_at      timestamptz NOT NULL DEFAULT now(),
  CHECK (may_go_negative OR tracked)
);

CREATE TABLE journal_entries (
  id              text PRIMARY KEY,
  idempotency_key text NOT NULL UNIQUE,
  content_hash    text NOT NULL,
  kind            text NOT NULL,
  reference       text,
  reverses        text REFERENCES journal_entries (id),
  memo            text,
  created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX journal_entries_reference_idx ON journal_entries (reference);

-- No foreign keys: a check takes FOR KEY SHARE on the referenced row, and shared accounts
-- (clearing, platform revenue) would become hot rows for every capture. Postings are written only
-- by the posting statement together with their entry, naming accounts the ledger created first
-- (asserted in code); the statement trigger checks that each entry balances; accounts and
-- entries are never deleted (triggers below).
CREATE TABLE postings (
  entry_id   text NOT NULL,
  line       smallint NOT NULL CHECK (line >= 0),
  account_id bigint NOT NULL,
  direction  text NOT NULL CHECK (direction IN ('debit', 'credit')),
  amount     bigint NOT NULL CHECK (amount > 0),
  currency   text NOT NULL,
  PRIMARY KEY (entry_id, line)
);
CREATE INDEX postings_account_idx ON postings (account_id);

-- Balance rows only for tracked accounts; credit-normal sign convention: balance = credits - debits
-- for liability/revenue/equity, debits - credits for asset/expense.
CREATE TABLE ledger_balances (
  account_id bigint PRIMARY KEY REFERENCES ledger_accounts (id),
  balance    bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- Per entry and currency, debits = credits, over every statement's inserted postings (a posting
-- statement writes whole entries). Kept to the one aggregate: it runs for every capture.
CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM new_postings n GROUP BY n.entry_id, n.currency
              HAVING sum(CASE WHEN n.direction = 'debit' THEN n.amount ELSE -n.amount END) <> 0) THEN
    RAISE EXCEPTION 'a journal entry does not balance (debits <> credits in one currency)' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER postings_balanced AFTER INSERT ON postings
  REFERENCING NEW TABLE AS new_postings FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_balanced();

CREATE FUNCTION ledger_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'ledger rows are immutable: post a correcting entry instead' USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER journal_entries_immutable BEFORE UPDATE OR DELETE ON journal_entries FOR EACH ROW EXECUTE FUNCTION ledger_immutable();
CREATE TRIGGER ledger_accounts_undeletable BEFORE DELETE ON ledger_accounts FOR EACH ROW EXECUTE FUNCTION ledger_immutable();
CREATE TRIGGER postings_immutable BEFORE UPDATE OR DELETE ON postings FOR EACH ROW EXECUTE FUNCTION ledger_immutable();

-- The creator's share of each captured payment (and its reversals), with when it matures: the
-- settlement source. Immutable; a refund adds a negative split.
CREATE TABLE creator_splits (
  entry_id     text NOT NULL, -- written in the same statement as its entry (see postings)
  creator_id   text NOT NULL,
  currency     text NOT NULL,
  gross_amount bigint NOT NULL,
  fee_amount   bigint NOT NULL,
  share_amount bigint NOT NULL,
  kind         text NOT NULL CHECK (kind IN ('sale', 'refund', 'adjustment')),
  matures_at   timestamptz NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (entry_id, creator_id, currency)
);
CREATE INDEX creator_splits_maturity_idx ON creator_splits (matures_at);

CREATE TRIGGER creator_splits_immutable BEFORE UPDATE OR DELETE ON creator_splits FOR EACH ROW EXECUTE FUNCTION ledger_immutable();

-- Settlement runs: each covers the splits maturing in (previous cut-off, as_of].
CREATE TABLE settlements (
  id         text PRIMARY KEY,
  as_of      timestamptz NOT NULL,
  covers_from timestamptz,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX settlements_as_of_uq ON settlements (as_of);

CREATE TABLE settlement_statements (
  settlement_id     text NOT NULL REFERENCES settlements (id),
  creator_id        text NOT NULL,
  currency          text NOT NULL,
  opening_amount    bigint NOT NULL,
  sales_amount      bigint NOT NULL,
  refunds_amount    bigint NOT NULL,
  fees_amount       bigint NOT NULL,
  commission_amount bigint NOT NULL,
  adjustments_amount bigint NOT NULL,
  closing_amount    bigint NOT NULL,
  payout_amount     bigint NOT NULL,
  payout_id         text,
  PRIMARY KEY (settlement_id, creator_id, currency)
);
CREATE TRIGGER settlement_statements_immutable BEFORE UPDATE OR DELETE ON settlement_statements FOR EACH ROW EXECUTE FUNCTION ledger_immutable();

CREATE TABLE payouts (
  id            text PRIMARY KEY,
  settlement_id text NOT NULL REFERENCES settlements (id),
  creator_id    text NOT NULL,
  currency      text NOT NULL,
  amount        bigint NOT NULL CHECK (amount > 0),
  status        text NOT NULL CHECK (status IN ('in_transit', 'paid', 'failed')),
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payouts_creator_idx ON payouts (creator_id);

ALTER TABLE creators ADD COLUMN min_payout_amount bigint NOT NULL DEFAULT 0 CHECK (min_payout_amount >= 0);

-- Down Migration
ALTER TABLE creators DROP COLUMN min_payout_amount;
DROP TABLE payouts, settlement_statements, settlements, creator_splits, ledger_balances, postings, journal_entries, ledger_accounts;
DROP FUNCTION ledger_immutable, ledger_check_balanced;
