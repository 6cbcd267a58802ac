-- The unaccent extension stays: other schemas may use it.
DROP TEXT SEARCH CONFIGURATION chatpool_search;
DROP TABLE presence;
DROP TABLE presence_leases;
DROP TABLE read_markers;
ALTER TABLE messages DROP CONSTRAINT messages_tombstone_check;
-- The old schema has no tombstones: a deleted message keeps a placeholder.
UPDATE messages SET body = '(deleted)' WHERE body IS NULL;
ALTER TABLE messages
    ALTER COLUMN body SET NOT NULL,
    DROP COLUMN deleted_at,
    DROP COLUMN edited_at;
