-- Conversation features (SPEC §5): edits and tombstones, read markers,
-- presence leases and full-text search. Safe on a database already holding
-- messages: nothing here rewrites `messages` or scans it under a lock (the
-- search index is built CONCURRENTLY by the next migration).

-- Edits and deletes. A deleted message keeps its row (id, seq, author, time)
-- but its text is gone: `body` becomes ''. Adding nullable columns touches
-- only the catalog; the body rule is replaced by one that allows exactly
-- that, NOT VALID so it is enforced on every write from now on without
-- scanning the existing rows (none of which is deleted). An instance of the
-- previous version reads a tombstone as an empty message.
ALTER TABLE messages
    ADD COLUMN edited_at  TIMESTAMPTZ,
    ADD COLUMN deleted_at TIMESTAMPTZ,
    DROP CONSTRAINT messages_body_check,
    ADD CONSTRAINT messages_body_check CHECK (
        CASE WHEN deleted_at IS NULL THEN char_length(body) BETWEEN 1 AND 4000
             ELSE body = '' END
    ) NOT VALID;

-- Read markers: per user and room, the highest seq read. A separate table,
-- not a column of room_members, because agents and admins read rooms they do
-- not belong to. `GET /api/rooms` reads it by primary key.
CREATE TABLE read_markers (
    user_id       BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    room_id       BIGINT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    last_read_seq BIGINT NOT NULL CHECK (last_read_seq >= 0),
    PRIMARY KEY (user_id, room_id)
);
CREATE INDEX read_markers_room_id_idx ON read_markers (room_id);
-- Members of rooms that held messages before read markers existed have read
-- them: an upgrade does not light up every old room as unread.
INSERT INTO read_markers (user_id, room_id, last_read_seq)
SELECT m.user_id, m.room_id, r.last_seq
FROM room_members m JOIN rooms r ON r.id = m.room_id
WHERE r.last_seq > 0;

-- Presence: each instance's share (who has a socket joined to which room
-- there) under a lease the instance renews. A crashed instance stops
-- renewing; the others delete its share once the lease has expired.
CREATE TABLE presence_leases (
    instance_id BIGINT      PRIMARY KEY,
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE TABLE presence (
    room_id     BIGINT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    instance_id BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id, instance_id)
);
CREATE INDEX presence_instance_id_idx ON presence (instance_id);
CREATE INDEX presence_user_id_idx ON presence (user_id);

-- Search: language-neutral full-text search. `simple` splits words and
-- lower-cases them without stemming or stop words (right for any language);
-- `unaccent` first folds accents, so "reunión" and "reunion" are one word
-- (only words with non-ASCII letters go through it: ASCII ones have none).
-- unaccent is a trusted extension: the database owner may create it.
-- The extension may already live in another schema (`public`, or another
-- chatpool schema of the same database): its dictionary is named with the
-- schema it is in.
CREATE EXTENSION IF NOT EXISTS unaccent;
DO $$
DECLARE
    home text;
BEGIN
    SELECT n.nspname INTO home
    FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'unaccent';
    CREATE TEXT SEARCH CONFIGURATION chatpool_search (COPY = pg_catalog.simple);
    EXECUTE format(
        'ALTER TEXT SEARCH CONFIGURATION chatpool_search '
        'ALTER MAPPING FOR word, hword, hword_part WITH %I.unaccent, pg_catalog.simple',
        home);
END
$$;
