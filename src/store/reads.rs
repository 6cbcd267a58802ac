//! `read_markers`: per user and room, the highest seq read (SPEC §5).
//!
//! A marker only moves forward and never past the room's `last_seq`. The
//! send path moves the sender's marker inside its own statement
//! ([`super::sends`]); this module is `POST /api/rooms/{id}/read` and the
//! WebSocket `read` frame.

use diesel::result::Error;
use diesel::sql_types::{Array, BigInt, Nullable, Text};
use diesel::{OptionalExtension, QueryableByName};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::CacheStatement;
use crate::domain::Role;
use crate::ids::{RoomId, Seq, UserId};

/// What setting a marker did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marked {
    /// The marker now.
    pub last_read_seq: Seq,
    /// Whether this call moved it forward (then it is announced).
    pub moved: bool,
}

#[derive(QueryableByName)]
struct MarkRow {
    /// The marker as it stood, or the asked seq when a concurrent read
    /// moved it at least that far meanwhile (its update then did not apply).
    #[diesel(sql_type = BigInt)]
    old: Seq,
    #[diesel(sql_type = Nullable<BigInt>)]
    moved: Option<Seq>,
}

/// Moves `user_id`'s marker in `room_id` up to `seq` (at most the room's
/// `last_seq`), in one statement with the visibility check: `None` when the
/// room does not exist or the user may not see it.
///
/// # Errors
/// The database's.
pub async fn mark(
    conn: &mut AsyncPgConnection,
    room_id: RoomId,
    user_id: UserId,
    seq: Seq,
) -> Result<Option<Marked>, Error> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        format!(
            "WITH target AS ( \
                 SELECT r.id, least($3, r.last_seq) AS seq, coalesce(k.last_read_seq, 0) AS old \
                 FROM rooms r \
                 LEFT JOIN read_markers k ON k.room_id = r.id AND k.user_id = $2 \
                 WHERE r.id = $1 AND {visible} \
             ), up AS ( \
                 INSERT INTO read_markers (user_id, room_id, last_read_seq) \
                 SELECT $2, t.id, t.seq FROM target t WHERE t.seq > t.old \
                 ON CONFLICT (user_id, room_id) DO UPDATE SET last_read_seq = excluded.last_read_seq \
                 WHERE read_markers.last_read_seq < excluded.last_read_seq \
                 RETURNING last_read_seq \
             ) \
             SELECT greatest(t.old, t.seq) AS old, (SELECT last_read_seq FROM up) AS moved \
             FROM target t",
            visible = super::rooms::visible_sql("r.id", "$2", "$4"),
        )
    });
    let row: Option<MarkRow> = diesel::sql_query(sql.as_str())
        .bind::<BigInt, _>(room_id)
        .bind::<BigInt, _>(user_id)
        .bind::<BigInt, _>(seq)
        .bind::<Array<Text>, _>(Role::seeing_every_room())
        .cached()
        .get_result(conn)
        .await
        .optional()?;
    Ok(row.map(|r| match r.moved {
        Some(moved) => Marked {
            last_read_seq: moved,
            moved: true,
        },
        None => Marked {
            last_read_seq: r.old,
            moved: false,
        },
    }))
}

#[derive(QueryableByName)]
struct MarkerRow {
    #[diesel(sql_type = BigInt)]
    last_read_seq: Seq,
}

/// `user_id`'s marker in `room_id` (0 when never set).
///
/// # Errors
/// The database's.
pub async fn marker(
    conn: &mut AsyncPgConnection,
    room_id: RoomId,
    user_id: UserId,
) -> Result<Seq, Error> {
    let row: Option<MarkerRow> = diesel::sql_query(
        "SELECT last_read_seq FROM read_markers WHERE user_id = $1 AND room_id = $2",
    )
    .bind::<BigInt, _>(user_id)
    .bind::<BigInt, _>(room_id)
    .cached()
    .get_result(conn)
    .await
    .optional()?;
    Ok(row.map_or(Seq(0), |r| r.last_read_seq))
}
