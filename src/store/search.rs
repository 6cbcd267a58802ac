//! Full-text search over messages (SPEC §5 `GET /api/search`).
//!
//! The `chatpool_search` text-search configuration (`simple` after
//! `unaccent`: no stemming, no stop words, accents folded) makes it work the
//! same for any language, and `messages_search_idx`, a GIN index on
//! `to_tsvector('chatpool_search', body)`, serves the match. Permissions are
//! part of the statement: a row is kept only if the caller may read its
//! room. Deleted messages have an empty body, so no words and no match.

use chrono::{DateTime, Utc};
use diesel::result::Error;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::CacheStatement;
use crate::domain::{AuthorView, MessageView, Role};
use crate::ids::{MessageId, RoomId, Seq, UserId};

#[derive(QueryableByName)]
struct HitRow {
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
}

/// Matches ranked per search at most: the newest ones. Ranking computes each
/// candidate's `to_tsvector` again (about 5 µs a row); ranking every match
/// of a common word in a big room cost 47 ms of PostgreSQL CPU per search on
/// 8,429 matches (docs/benchmarks.md, scenario f).
pub const CANDIDATES: i64 = 1000;

/// The search statement; `{ROOM}` is the optional room filter: the newest
/// [`CANDIDATES`] matches the caller may read, best first.
const SEARCH_SQL: &str = "\
WITH hits AS (
    SELECT m.id, m.room_id, m.seq, m.author_id, m.body, m.client_id, m.created_at, m.edited_at
    FROM messages m
    WHERE to_tsvector('chatpool_search', m.body) @@ websearch_to_tsquery('chatpool_search', $1)
      AND m.deleted_at IS NULL {ROOM}
      AND {VISIBLE}
    ORDER BY m.id DESC
    LIMIT {CANDIDATES}
)
SELECT h.id, h.room_id, h.seq, h.author_id, u.username, u.display_name, h.body, h.client_id,
       h.created_at, h.edited_at
FROM hits h
JOIN users u ON u.id = h.author_id
ORDER BY ts_rank(to_tsvector('chatpool_search', h.body), websearch_to_tsquery('chatpool_search', $1)) DESC,
         h.id DESC
LIMIT $4";

/// The statement, with or without a room filter (`$5`).
pub fn search_sql(in_room: bool) -> &'static str {
    static SQL: [std::sync::OnceLock<String>; 2] =
        [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    SQL[usize::from(in_room)].get_or_init(|| {
        SEARCH_SQL
            .replace("{CANDIDATES}", &CANDIDATES.to_string())
            .replace("{ROOM}", if in_room { "AND m.room_id = $5" } else { "" })
            .replace(
                "{VISIBLE}",
                &super::rooms::visible_sql("m.room_id", "$2", "$3"),
            )
    })
}

/// The best `limit` of the newest [`CANDIDATES`] matches of `query`
/// (web-search syntax) that `caller` may read, best first, in `room` when
/// given.
pub async fn messages(
    conn: &mut AsyncPgConnection,
    caller: UserId,
    query: &str,
    room: Option<RoomId>,
    limit: i64,
) -> Result<Vec<MessageView>, Error> {
    let statement = diesel::sql_query(search_sql(room.is_some()))
        .bind::<Text, _>(query)
        .bind::<BigInt, _>(caller)
        .bind::<Array<Text>, _>(Role::seeing_every_room())
        .bind::<BigInt, _>(limit);
    let rows: Vec<HitRow> = match room {
        Some(room) => {
            statement
                .bind::<BigInt, _>(room)
                .cached()
                .load(conn)
                .await?
        }
        None => statement.cached().load(conn).await?,
    };
    Ok(rows
        .into_iter()
        .map(|r| MessageView {
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
            deleted_at: None,
        })
        .collect())
}
