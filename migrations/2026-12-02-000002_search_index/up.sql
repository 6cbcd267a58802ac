-- The search index (SPEC §5), built CONCURRENTLY so that sends go on while
-- it is built on a database already holding messages. A concurrent build
-- cannot run in a transaction, hence its own migration (see metadata.toml),
-- and it must be the only statement here. No IF NOT EXISTS: an interrupted
-- build leaves an invalid index, which must fail the next start loudly
-- rather than be taken for the index (docs/operations.md: drop it). Deleted messages have an empty
-- body and so no words.
CREATE INDEX CONCURRENTLY messages_search_idx
    ON messages USING gin (to_tsvector('chatpool_search', body));
