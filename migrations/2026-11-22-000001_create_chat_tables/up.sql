-- Accounts, tokens, rooms, membership and messages (SPEC §1, §2).

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    username      TEXT        NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9_.-]{3,32}$'),
    display_name  TEXT        NOT NULL,
    role          TEXT        NOT NULL DEFAULT 'member' CHECK (role IN ('member', 'agent', 'admin')),
    password_hash TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- `GET /api/users?prefix=` is a range scan whatever the database collation.
CREATE INDEX users_username_prefix_idx ON users (username text_pattern_ops);

-- Bearer tokens are stored only as SHA-256 hashes; logout deletes the row.
CREATE TABLE auth_tokens (
    id         BIGSERIAL PRIMARY KEY,
    user_id    BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash BYTEA       NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX auth_tokens_user_id_idx ON auth_tokens (user_id);

-- `last_seq` is the room's message counter: the send path bumps it with
-- `UPDATE ... RETURNING`, which serialises senders per room and keeps seq gapless.
CREATE TABLE rooms (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    created_by BIGINT      NOT NULL REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seq   BIGINT      NOT NULL DEFAULT 0 CHECK (last_seq >= 0)
);

CREATE TABLE room_members (
    room_id   BIGINT      NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id   BIGINT      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_members_user_id_idx ON room_members (user_id);

CREATE TABLE messages (
    id         BIGSERIAL PRIMARY KEY,
    room_id    BIGINT      NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq        BIGINT      NOT NULL CHECK (seq >= 1),
    author_id  BIGINT      NOT NULL REFERENCES users (id),
    client_id  TEXT        CHECK (char_length(client_id) BETWEEN 1 AND 64),
    body       TEXT        NOT NULL CHECK (char_length(body) BETWEEN 1 AND 4000),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- History pages and join replays are range scans on this index.
    CONSTRAINT messages_room_seq_key UNIQUE (room_id, seq),
    -- Idempotent sends: one message per (author, client_id); NULLs never clash.
    CONSTRAINT messages_author_client_key UNIQUE (author_id, client_id)
);
