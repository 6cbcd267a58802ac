-- The key that signs chatpool's NOTIFY payloads (SPEC §4): any role that may
-- connect can NOTIFY on chatpool's channel, but only chatpool's own role (the
-- table's owner) can read this table, so only chatpool can sign. The first
-- instance to start stores a random key; every instance reads the same one.
CREATE TABLE notify_key (
    id  BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    key BYTEA   NOT NULL CHECK (octet_length(key) = 32)
);
REVOKE ALL ON notify_key FROM PUBLIC;

-- Tokens expire CHATPOOL_TOKEN_TTL after they were issued; the cleanup job
-- deletes the expired ones by age.
CREATE INDEX auth_tokens_created_at_idx ON auth_tokens (created_at);
