//! `messages`: the send path's insert and the history queries.
//!
//! Every read is a range scan on `UNIQUE (room_id, seq)`; none scans a room.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::domain::{AuthorView, MessageView};
use crate::ids::{MessageId, RoomId, Seq, UserId};
use crate::schema::messages;

#[derive(QueryableByName)]
struct MessageRow {
    #[diesel(sql_type = BigInt)]
    id: MessageId,
    #[diesel(sql_type = BigInt)]
    room_id: RoomId,
    #[diesel(sql_type = BigInt)]
    seq: Seq,
    #[diesel(sql_type = BigInt)]
    author_id: UserId,
    #[diesel(sql_type = Text)]
    username: String,
    #[diesel(sql_type = Text)]
    display_name: String,
    #[diesel(sql_type = Text)]
    body: String,
    #[diesel(sql_type = Nullable<Text>)]
    client_id: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
}

impl From<MessageRow> for MessageView {
    fn from(r: MessageRow) -> Self {
        MessageView {
            id: r.id,
            room_id: r.room_id,
            seq: r.seq,
            author: AuthorView {
                id: r.author_id,
                username: r.username,
                display_name: r.display_name,
            },
            body: r.body,
            client_id: r.client_id,
            created_at: r.created_at,
        }
    }
}

const MESSAGE_SELECT: &str = "SELECT m.id, m.room_id, m.seq, m.author_id, u.username, \
     u.display_name, m.body, m.client_id, m.created_at \
     FROM messages m JOIN users u ON u.id = m.author_id";

/// Where a history page starts (SPEC §2 `GET /api/rooms/{id}/messages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// The latest messages.
    Latest,
    /// The first messages with seq above this.
    After(Seq),
    /// The messages just below this seq.
    Before(Seq),
}

/// A page of history in ascending seq order, and whether more exist beyond it
/// in the paging direction (older for `Latest`/`Before`, newer for `After`).
pub async fn page(
    conn: &mut AsyncPgConnection,
    room_id: RoomId,
    cursor: Cursor,
    limit: i64,
) -> Result<(Vec<MessageView>, bool), Error> {
    // Every seq is at least 1, so "latest" is "newest above 0".
    let (filter, order, bound) = match cursor {
        Cursor::Latest => ("AND m.seq > $3", "DESC", Seq(0)),
        Cursor::After(n) => ("AND m.seq > $3", "ASC", n),
        Cursor::Before(n) => ("AND m.seq < $3", "DESC", n),
    };
    let mut rows: Vec<MessageRow> = diesel::sql_query(format!(
        "{MESSAGE_SELECT} WHERE m.room_id = $1 {filter} \
         ORDER BY m.seq {order} LIMIT $2"
    ))
    .bind::<BigInt, _>(room_id)
    .bind::<BigInt, _>(limit + 1)
    .bind::<BigInt, _>(bound)
    .load(conn)
    .await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    if order == "DESC" {
        rows.reverse();
    }
    Ok((rows.into_iter().map(Into::into).collect(), has_more))
}

/// Up to `limit` messages with seq above `after_seq`, ascending (join replay).
pub async fn since(
    conn: &mut AsyncPgConnection,
    room_id: RoomId,
    after_seq: Seq,
    limit: i64,
) -> Result<Vec<MessageView>, Error> {
    Ok(page(conn, room_id, Cursor::After(after_seq), limit)
        .await?
        .0)
}

/// The message at `(room_id, seq)`, if any.
pub async fn by_seq(
    conn: &mut AsyncPgConnection,
    room_id: RoomId,
    seq: Seq,
) -> Result<Option<MessageView>, Error> {
    diesel::sql_query(format!(
        "{MESSAGE_SELECT} WHERE m.room_id = $1 AND m.seq = $2"
    ))
    .bind::<BigInt, _>(room_id)
    .bind::<BigInt, _>(seq)
    .get_result::<MessageRow>(conn)
    .await
    .optional()
    .map(|r| r.map(Into::into))
}

/// Number of messages.
pub async fn count(conn: &mut AsyncPgConnection) -> Result<i64, Error> {
    messages::table.count().get_result(conn).await
}
