//! `messages`: the send path's insert and the history queries.
//!
//! Every read is a range scan on `UNIQUE (room_id, seq)`; none scans a room.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::CacheStatement;
use crate::domain::{AuthorView, MessageView, Role};
use crate::ids::{MessageId, RoomId, Seq, UserId};
use crate::schema::messages;

/// A message object's row (the columns of [`MESSAGE_SELECT`]).
#[derive(QueryableByName)]
pub(super) struct MessageRow {
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
    #[diesel(sql_type = Nullable<Timestamptz>)]
    edited_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    deleted_at: Option<DateTime<Utc>>,
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
            edited_at: r.edited_at,
            deleted_at: r.deleted_at,
        }
    }
}

/// The seq filter (on `$3`), the order and the bound of a page.
fn page_bounds(cursor: Cursor) -> (&'static str, &'static str, Seq) {
    // Every seq is at least 1, so "latest" is "newest above 0".
    match cursor {
        Cursor::Latest => ("AND m.seq > $3", "DESC", Seq(0)),
        Cursor::After(n) => ("AND m.seq > $3", "ASC", n),
        Cursor::Before(n) => ("AND m.seq < $3", "DESC", n),
    }
}

const MESSAGE_SELECT: &str = "SELECT m.id, m.room_id, m.seq, m.author_id, u.username, \
     u.display_name, m.body, m.client_id, m.created_at, m.edited_at, m.deleted_at \
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
    let (filter, order, bound) = page_bounds(cursor);
    let mut rows: Vec<MessageRow> = diesel::sql_query(format!(
        "{MESSAGE_SELECT} WHERE m.room_id = $1 {filter} \
         ORDER BY m.seq {order} LIMIT $2"
    ))
    .bind::<BigInt, _>(room_id)
    .bind::<BigInt, _>(limit + 1)
    .bind::<BigInt, _>(bound)
    .cached()
    .load(conn)
    .await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    if order == "DESC" {
        rows.reverse();
    }
    Ok((rows.into_iter().map(Into::into).collect(), has_more))
}

/// A row of [`visible_page`]: the room's `last_seq`, and one message of the
/// page or, for an empty page, none.
#[derive(QueryableByName)]
struct PageRow {
    #[diesel(sql_type = BigInt)]
    room_last_seq: Seq,
    #[diesel(sql_type = Nullable<BigInt>)]
    id: Option<MessageId>,
    #[diesel(sql_type = Nullable<BigInt>)]
    seq: Option<Seq>,
    #[diesel(sql_type = Nullable<BigInt>)]
    author_id: Option<UserId>,
    #[diesel(sql_type = Nullable<Text>)]
    username: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    display_name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    body: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    client_id: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    created_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    edited_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    deleted_at: Option<DateTime<Utc>>,
}

/// A history page as `user` may read it, in one statement: `None` when the
/// room does not exist or `user` may not see it; else the page (ascending),
/// whether more exist beyond it, and the room's `last_seq` read in the same
/// snapshot (so never below a seq of the page).
pub async fn visible_page(
    conn: &mut AsyncPgConnection,
    room_id: RoomId,
    user_id: UserId,
    cursor: Cursor,
    limit: i64,
) -> Result<Option<(Vec<MessageView>, bool, Seq)>, Error> {
    let (filter, order, bound) = page_bounds(cursor);
    let rows: Vec<PageRow> = diesel::sql_query(format!(
        "SELECT r.last_seq AS room_last_seq, p.id, p.seq, p.author_id, p.username, \
                p.display_name, p.body, p.client_id, p.created_at, p.edited_at, p.deleted_at \
         FROM rooms r LEFT JOIN LATERAL ( \
             {MESSAGE_SELECT} WHERE m.room_id = r.id {filter} ORDER BY m.seq {order} LIMIT $2 \
         ) p ON true \
         WHERE r.id = $1 AND {visible}",
        visible = super::rooms::visible_sql("r.id", "$4", "$5"),
    ))
    .bind::<BigInt, _>(room_id)
    .bind::<BigInt, _>(limit + 1)
    .bind::<BigInt, _>(bound)
    .bind::<BigInt, _>(user_id)
    .bind::<Array<Text>, _>(Role::seeing_every_room())
    .cached()
    .load(conn)
    .await?;
    let Some(last_seq) = rows.as_slice().first().map(|r| r.room_last_seq) else {
        return Ok(None);
    };
    let mut messages: Vec<MessageView> = rows
        .into_iter()
        .filter_map(|r| {
            Some(MessageView {
                id: r.id?,
                room_id,
                seq: r.seq?,
                author: AuthorView {
                    id: r.author_id?,
                    username: r.username?,
                    display_name: r.display_name?,
                },
                body: r.body?,
                client_id: r.client_id,
                created_at: r.created_at?,
                edited_at: r.edited_at,
                deleted_at: r.deleted_at,
            })
        })
        .collect();
    // Sorted here, not by the statement: a sort node there cost PostgreSQL
    // more than this costs chatpool. Nearest to the cursor first, so the
    // extra row that says "more" is the one cut.
    if order == "DESC" {
        messages.sort_unstable_by_key(|m| std::cmp::Reverse(m.seq));
    } else {
        messages.sort_unstable_by_key(|m| m.seq);
    }
    let has_more = messages.len() as i64 > limit;
    messages.truncate(limit as usize);
    if order == "DESC" {
        messages.reverse();
    }
    Ok(Some((messages, has_more, last_seq)))
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
    .cached()
    .get_result::<MessageRow>(conn)
    .await
    .optional()
    .map(|r| r.map(Into::into))
}

/// A message about to change, locked until the transaction ends.
#[derive(Debug, Clone, Copy, QueryableByName)]
pub struct Target {
    /// Who wrote it.
    #[diesel(sql_type = BigInt)]
    pub author_id: UserId,
    /// Whether it is a tombstone already.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub deleted: bool,
}

/// Locks the message at `(room_id, seq)` for an edit or delete; `None` when
/// there is none.
pub async fn lock(
    conn: &mut AsyncPgConnection,
    room_id: RoomId,
    seq: Seq,
) -> Result<Option<Target>, Error> {
    diesel::sql_query(
        "SELECT author_id, deleted_at IS NOT NULL AS deleted FROM messages \
         WHERE room_id = $1 AND seq = $2 FOR UPDATE",
    )
    .bind::<BigInt, _>(room_id)
    .bind::<BigInt, _>(seq)
    .cached()
    .get_result(conn)
    .await
    .optional()
}

/// What [`change`] does to a message.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// A new body; `edited_at` becomes now.
    Edit(&'a str),
    /// The body is erased (`""`); `deleted_at` becomes now.
    Delete,
}

/// Edits or deletes the message at `(room_id, seq)`.
pub async fn change(
    conn: &mut AsyncPgConnection,
    room_id: RoomId,
    seq: Seq,
    change: Change<'_>,
) -> Result<(), Error> {
    let changed = match change {
        Change::Edit(body) => {
            diesel::sql_query(
                "UPDATE messages SET body = $3, edited_at = clock_timestamp() \
             WHERE room_id = $1 AND seq = $2",
            )
            .bind::<BigInt, _>(room_id)
            .bind::<BigInt, _>(seq)
            .bind::<Text, _>(body)
            .cached()
            .execute(conn)
            .await?
        }
        Change::Delete => {
            diesel::sql_query(
                "UPDATE messages SET body = $3, deleted_at = clock_timestamp() \
             WHERE room_id = $1 AND seq = $2",
            )
            .bind::<BigInt, _>(room_id)
            .bind::<BigInt, _>(seq)
            .bind::<Text, _>("")
            .cached()
            .execute(conn)
            .await?
        }
    };
    debug_assert_eq!(changed, 1, "the message was locked");
    Ok(())
}

/// Number of messages.
pub async fn count(conn: &mut AsyncPgConnection) -> Result<i64, Error> {
    messages::table.count().get_result(conn).await
}
