//! `rooms` and `room_members`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{Array, BigInt, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::CacheStatement;
use crate::domain::{Role, RoomView};
use crate::ids::{RoomId, Seq, UserId};
use crate::schema::{room_members, rooms};

#[derive(QueryableByName)]
struct RoomRow {
    #[diesel(sql_type = BigInt)]
    id: RoomId,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = BigInt)]
    created_by: UserId,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    member_count: i64,
    #[diesel(sql_type = BigInt)]
    last_seq: Seq,
    #[diesel(sql_type = BigInt)]
    last_read_seq: Seq,
}

impl From<RoomRow> for RoomView {
    fn from(r: RoomRow) -> Self {
        RoomView {
            id: r.id,
            name: r.name,
            created_by: r.created_by,
            created_at: r.created_at,
            member_count: r.member_count,
            last_seq: r.last_seq,
            last_read_seq: r.last_read_seq,
            unread: r.last_seq - r.last_read_seq,
        }
    }
}

/// A room object as the user `$1` sees it: one statement for any number of
/// rooms (the member count and the caller's marker are index lookups per row).
const ROOM_SELECT: &str = "SELECT r.id, r.name, r.created_by, r.created_at, r.last_seq, \
     (SELECT count(*) FROM room_members m WHERE m.room_id = r.id) AS member_count, \
     coalesce((SELECT k.last_read_seq FROM read_markers k \
               WHERE k.user_id = $1 AND k.room_id = r.id), 0) AS last_read_seq \
     FROM rooms r";

/// Creates a room with its creator and `member_ids` as members (ids that name
/// no user are ignored: the caller validates them first when it cares).
pub async fn create(
    conn: &mut AsyncPgConnection,
    name: &str,
    created_by: UserId,
    member_ids: &[UserId],
) -> Result<RoomView, Error> {
    let id: RoomId = diesel::insert_into(rooms::table)
        .values((rooms::name.eq(name), rooms::created_by.eq(created_by)))
        .returning(rooms::id)
        .get_result(conn)
        .await?;
    let mut members: Vec<UserId> = member_ids.to_vec();
    members.push(created_by);
    diesel::sql_query(
        "INSERT INTO room_members (room_id, user_id) \
         SELECT $1, u.id FROM users u WHERE u.id = ANY($2) ON CONFLICT DO NOTHING",
    )
    .bind::<BigInt, _>(id)
    .bind::<Array<BigInt>, _>(&members)
    .execute(conn)
    .await?;
    Ok(get(conn, id, created_by)
        .await?
        .expect("room inserted in this transaction"))
}

/// The room, with its member count and `caller`'s read marker.
pub async fn get(
    conn: &mut AsyncPgConnection,
    id: RoomId,
    caller: UserId,
) -> Result<Option<RoomView>, Error> {
    diesel::sql_query(format!("{ROOM_SELECT} WHERE r.id = $2"))
        .bind::<BigInt, _>(caller)
        .bind::<BigInt, _>(id)
        .cached()
        .get_result::<RoomRow>(conn)
        .await
        .optional()
        .map(|r| r.map(Into::into))
}

/// Rooms `user_id` belongs to, by id, with their read markers.
pub async fn for_member(
    conn: &mut AsyncPgConnection,
    user_id: UserId,
) -> Result<Vec<RoomView>, Error> {
    diesel::sql_query(format!(
        "{ROOM_SELECT} WHERE r.id IN (SELECT room_id FROM room_members WHERE user_id = $1) ORDER BY r.id"
    ))
    .bind::<BigInt, _>(user_id)
    .cached().load::<RoomRow>(conn)
    .await
    .map(|rows| rows.into_iter().map(Into::into).collect())
}

/// Every room, by id (the CRM view), with `caller`'s read markers.
pub async fn all(conn: &mut AsyncPgConnection, caller: UserId) -> Result<Vec<RoomView>, Error> {
    diesel::sql_query(format!("{ROOM_SELECT} ORDER BY r.id"))
        .bind::<BigInt, _>(caller)
        .cached()
        .load::<RoomRow>(conn)
        .await
        .map(|rows| rows.into_iter().map(Into::into).collect())
}

/// The room's latest seq, or `None` when there is no such room.
pub async fn last_seq(conn: &mut AsyncPgConnection, room_id: RoomId) -> Result<Option<Seq>, Error> {
    rooms::table
        .find(room_id)
        .select(rooms::last_seq)
        .first(conn)
        .await
        .optional()
}

/// Adds a member; adding one twice is not an error.
pub async fn add_member(
    conn: &mut AsyncPgConnection,
    room_id: RoomId,
    user_id: UserId,
) -> Result<(), Error> {
    diesel::insert_into(room_members::table)
        .values((
            room_members::room_id.eq(room_id),
            room_members::user_id.eq(user_id),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await
        .map(drop)
}

/// Removes a member; returns whether they were one.
pub async fn remove_member(
    conn: &mut AsyncPgConnection,
    room_id: RoomId,
    user_id: UserId,
) -> Result<bool, Error> {
    let n = diesel::delete(room_members::table.find((room_id, user_id)))
        .execute(conn)
        .await?;
    Ok(n > 0)
}

/// Number of rooms.
pub async fn count(conn: &mut AsyncPgConnection) -> Result<i64, Error> {
    rooms::table.count().get_result(conn).await
}

/// Whether `user_id` may see `room_id`: the room exists and the user is a
/// member, or (by their role as stored right now) an agent or admin. Reading
/// the role here makes a role change apply at once, to open sockets too.
/// The SQL condition "user `user` may see room `room`": a role in `roles`
/// (bound to [`Role::seeing_every_room`]) or a membership. The one SQL form of
/// the rule, for every query that checks visibility.
pub fn visible_sql(room: &str, user: &str, roles: &str) -> String {
    format!(
        "(EXISTS (SELECT 1 FROM users vu WHERE vu.id = {user} AND vu.role = ANY({roles})) \
         OR EXISTS (SELECT 1 FROM room_members vm WHERE vm.room_id = {room} AND vm.user_id = {user}))"
    )
}

pub async fn visible_to(
    conn: &mut AsyncPgConnection,
    room_id: RoomId,
    user_id: UserId,
) -> Result<bool, Error> {
    #[derive(QueryableByName)]
    struct Visible {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        visible: bool,
    }
    let row: Visible = diesel::sql_query(format!(
        "SELECT EXISTS (SELECT 1 FROM rooms r WHERE r.id = $1 AND {}) AS visible",
        visible_sql("r.id", "$2", "$3")
    ))
    .bind::<BigInt, _>(room_id)
    .bind::<BigInt, _>(user_id)
    .bind::<Array<Text>, _>(Role::seeing_every_room())
    .cached()
    .get_result(conn)
    .await?;
    Ok(row.visible)
}
