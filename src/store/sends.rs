//! Group commit's one statement: a whole batch of sends, any rooms, any
//! authors, checked, de-duplicated, numbered and inserted at once.
//!
//! For each send, in input order: is the room visible to its author (the
//! same rule as [`super::rooms::visible_to`])? Did the author already store
//! a message with that `client_id` (then that original is the answer)? Is an
//! earlier send of the same batch using the same `(author, client_id)` (then
//! that one's message is the answer)? The rest are counted per room, each
//! room's `last_seq` is raised once by its count (rooms locked in id order,
//! so batches on several instances cannot deadlock; `FOR NO KEY UPDATE`, the
//! lock the update itself takes, so rows that merely reference a room
//! (members, markers, presence) are not blocked by it), the messages are
//! inserted with consecutive seqs in input order, and each author's read
//! marker in each room moves to their last message there. A refused send
//! never fails the others; a statement error (a `client_id` racing on another instance,
//! the time limit) fails the batch, which the caller retries or reports.

use chrono::{DateTime, Utc};
use diesel::result::Error;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::CacheStatement;
use crate::domain::Role;
use crate::ids::{MessageId, RoomId, Seq, UserId};

/// One send of a batch.
#[derive(Debug, Clone)]
pub struct NewSend {
    /// The room.
    pub room_id: RoomId,
    /// The author.
    pub author_id: UserId,
    /// The idempotency key, if any.
    pub client_id: Option<String>,
    /// The text (already validated).
    pub body: String,
}

/// What became of one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// The room does not exist or its author may not see it.
    NotVisible,
    /// Stored now.
    Created(StoredSend),
    /// The `(author, client_id)` was used before (or earlier in this batch):
    /// the original message, nothing new stored.
    Original(StoredSend),
}

/// The stored columns of a message the batch created or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSend {
    /// Message id.
    pub id: MessageId,
    /// Room id (an original may live in another room than the send asked for).
    pub room_id: RoomId,
    /// Seq in that room.
    pub seq: Seq,
    /// The stored text.
    pub body: String,
    /// Commit time.
    pub created_at: DateTime<Utc>,
    /// When an original was edited.
    pub edited_at: Option<DateTime<Utc>>,
    /// When an original was deleted (its body is `""` then).
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Integer)]
    ord: i32,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    id: Option<MessageId>,
    #[diesel(sql_type = Nullable<BigInt>)]
    room_id: Option<RoomId>,
    #[diesel(sql_type = Nullable<BigInt>)]
    seq: Option<Seq>,
    #[diesel(sql_type = Nullable<Text>)]
    body: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    created_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    edited_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    deleted_at: Option<DateTime<Utc>>,
}

/// The batch statement, with the visibility rule of
/// [`super::rooms::visible_sql`] filled in.
fn batch_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        BATCH_SQL.replace(
            "{VISIBLE}",
            &super::rooms::visible_sql("i.room_id", "i.author_id", "$6"),
        )
    })
}

const BATCH_SQL: &str = "\
WITH input AS (
    SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::text[], $5::text[])
        AS i(ord, room_id, author_id, client_id, body)
), checked AS (
    SELECT i.*,
        EXISTS (SELECT 1 FROM rooms r WHERE r.id = i.room_id AND {VISIBLE}) AS visible,
        (SELECT m.id FROM messages m
         WHERE m.author_id = i.author_id AND m.client_id = i.client_id) AS existing_id
    FROM input i
), candidates AS (
    SELECT c.*,
        CASE WHEN c.client_id IS NULL THEN c.ord
             ELSE min(c.ord) OVER (PARTITION BY c.author_id, c.client_id) END AS first_ord
    FROM checked c
    WHERE c.visible AND c.existing_id IS NULL
), fresh AS (
    SELECT c.*, row_number() OVER (PARTITION BY c.room_id ORDER BY c.ord) AS k
    FROM candidates c
    WHERE c.first_ord = c.ord
), counts AS (
    SELECT room_id, count(*) AS n FROM fresh GROUP BY room_id
), locked AS (
    SELECT r.id FROM rooms r WHERE r.id IN (SELECT room_id FROM counts) ORDER BY r.id FOR NO KEY UPDATE
), bumped AS (
    UPDATE rooms r SET last_seq = r.last_seq + c.n
    FROM counts c
    WHERE r.id = c.room_id AND r.id IN (SELECT id FROM locked)
    RETURNING r.id, r.last_seq
), numbered AS (
    SELECT f.ord, f.room_id, f.author_id, f.client_id, f.body, b.last_seq - c.n + f.k AS seq
    FROM fresh f JOIN bumped b ON b.id = f.room_id JOIN counts c ON c.room_id = f.room_id
), inserted AS (
    INSERT INTO messages (room_id, seq, author_id, client_id, body, created_at)
    SELECT room_id, seq, author_id, client_id, body, clock_timestamp()
    FROM numbered ORDER BY room_id, seq
    RETURNING id, room_id, seq, created_at
), marked AS (
    -- Sending moves the sender's read marker to their message: part of the
    -- same statement, so it costs no round trip.
    INSERT INTO read_markers (user_id, room_id, last_read_seq)
    SELECT author_id, room_id, max(seq) FROM numbered GROUP BY author_id, room_id
    ON CONFLICT (user_id, room_id) DO UPDATE SET last_read_seq = excluded.last_read_seq
    WHERE read_markers.last_read_seq < excluded.last_read_seq
), stored AS (
    SELECT n.ord, n.body, s.id, s.room_id, s.seq, s.created_at
    FROM numbered n JOIN inserted s ON s.room_id = n.room_id AND s.seq = n.seq
)
SELECT c.ord,
    CASE WHEN NOT c.visible THEN 'not_visible'
         WHEN c.existing_id IS NOT NULL OR mine.ord IS NULL THEN 'original'
         ELSE 'created' END AS status,
    coalesce(e.id, mine.id, first.id) AS id,
    coalesce(e.room_id, mine.room_id, first.room_id) AS room_id,
    coalesce(e.seq, mine.seq, first.seq) AS seq,
    coalesce(e.body, mine.body, first.body) AS body,
    coalesce(e.created_at, mine.created_at, first.created_at) AS created_at,
    e.edited_at, e.deleted_at
FROM checked c
LEFT JOIN messages e ON e.id = c.existing_id
LEFT JOIN stored mine ON mine.ord = c.ord
LEFT JOIN candidates cand ON cand.ord = c.ord
LEFT JOIN stored first ON first.ord = cand.first_ord AND cand.first_ord <> c.ord
ORDER BY c.ord";

/// Commits the checks, seqs and inserts of `sends` in one statement; the
/// outcomes come back in input order.
///
/// # Errors
/// The statement's failure (unique violation of a `client_id` racing on
/// another instance, a deadlock, the time limit, a lost connection): nothing
/// of the batch is stored then.
pub async fn commit_batch(
    conn: &mut AsyncPgConnection,
    sends: &[NewSend],
) -> Result<Vec<SendOutcome>, Error> {
    let ords: Vec<i32> = (0..sends.len() as i32).collect();
    let rooms: Vec<RoomId> = sends.iter().map(|s| s.room_id).collect();
    let authors: Vec<UserId> = sends.iter().map(|s| s.author_id).collect();
    let client_ids: Vec<Option<&str>> = sends.iter().map(|s| s.client_id.as_deref()).collect();
    let bodies: Vec<&str> = sends.iter().map(|s| s.body.as_str()).collect();
    let rows: Vec<Row> = diesel::sql_query(batch_sql())
        .bind::<Array<Integer>, _>(&ords)
        .bind::<Array<BigInt>, _>(&rooms)
        .bind::<Array<BigInt>, _>(&authors)
        .bind::<Array<Nullable<Text>>, _>(&client_ids)
        .bind::<Array<Text>, _>(&bodies)
        .bind::<Array<Text>, _>(Role::seeing_every_room())
        .cached()
        .load(conn)
        .await?;
    if rows.len() != sends.len() || rows.iter().enumerate().any(|(i, r)| r.ord != i as i32) {
        return Err(Error::DeserializationError(
            "group commit returned rows out of order".into(),
        ));
    }
    rows.into_iter().map(outcome).collect()
}

fn outcome(row: Row) -> Result<SendOutcome, Error> {
    if row.status == "not_visible" {
        return Ok(SendOutcome::NotVisible);
    }
    let (Some(id), Some(room_id), Some(seq), Some(body), Some(created_at)) =
        (row.id, row.room_id, row.seq, row.body, row.created_at)
    else {
        return Err(Error::DeserializationError(
            format!("group commit row {} has no message", row.ord).into(),
        ));
    };
    let stored = StoredSend {
        id,
        room_id,
        seq,
        body,
        created_at,
        edited_at: row.edited_at,
        deleted_at: row.deleted_at,
    };
    Ok(if row.status == "created" {
        SendOutcome::Created(stored)
    } else {
        SendOutcome::Original(stored)
    })
}
