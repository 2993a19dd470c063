-- Up Migration
-- Recent channel calls and payments by channel and time: routing reads success rates and health.
CREATE INDEX channel_calls_recent_idx ON channel_calls (channel, created_at);
CREATE INDEX payments_channel_recent_idx ON payments (channel, created_at);

-- Down Migration
DROP INDEX channel_calls_recent_idx;
DROP INDEX payments_channel_recent_idx;
