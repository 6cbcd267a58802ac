-- The unaccent extension stays: other schemas may use it.
DROP TEXT SEARCH CONFIGURATION chatpool_search;
DROP TABLE presence;
DROP TABLE presence_leases;
DROP TABLE read_markers;
-- The old schema has no tombstones: a deleted message keeps a placeholder.
ALTER TABLE messages DROP CONSTRAINT messages_body_check;
UPDATE messages SET body = '(deleted)' WHERE deleted_at IS NOT NULL;
ALTER TABLE messages
    ADD CONSTRAINT messages_body_check CHECK (char_length(body) BETWEEN 1 AND 4000) NOT VALID,
    DROP COLUMN deleted_at,
    DROP COLUMN edited_at;
