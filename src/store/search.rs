//! Full-text search over messages (SPEC §5 `GET /api/search`).
//!
//! The `chatpool_search` text-search configuration (`simple` after
//! `unaccent`: no stemming, no stop words, accents folded) makes it work the
//! same for any language, and `messages_search_idx`, a GIN index on
//! `to_tsvector('chatpool_search', body)`, serves the match. Permissions are
//! part of the statement: a row is kept only if the caller may read its
//! room. Deleted messages have an empty body, so no words and no match.

use diesel::result::Error;
use diesel::sql_types::{Array, BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::messages::MessageRow;
use super::CacheStatement;
use crate::domain::{MessageView, Role};
use crate::ids::{RoomId, UserId};

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
       h.created_at, h.edited_at, NULL::timestamptz AS deleted_at
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
    let rows: Vec<MessageRow> = match room {
        Some(room) => {
            statement
                .bind::<BigInt, _>(room)
                .cached()
                .load(conn)
                .await?
        }
        None => statement.cached().load(conn).await?,
    };
    Ok(rows.into_iter().map(Into::into).collect())
}
