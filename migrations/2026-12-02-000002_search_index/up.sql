-- The search index (SPEC §5), built CONCURRENTLY so that sends go on while
-- it is built on a database already holding messages. A concurrent build
-- cannot run in a transaction, hence its own migration (see metadata.toml),
-- and it must be the only statement here. Deleted messages have an empty
-- body and so no words.
CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_search_idx
    ON messages USING gin (to_tsvector('chatpool_search', body));
