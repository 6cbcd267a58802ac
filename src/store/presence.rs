//! `presence` and `presence_leases`: each instance's share of presence
//! under a lease (SPEC §5).
//!
//! An instance writes only its own rows, in batches ([`flush`]), renewing
//! its lease with every batch; any instance deletes the rows of instances
//! whose lease expired ([`sweep`]). Every statement that changes presence
//! runs after [`lock`], so instances take turns and "is anyone else
//! showing this user in this room?" has one answer: a user goes online (or
//! offline) exactly once, however many instances they are on.

use diesel::result::Error;
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::CacheStatement;
use crate::ids::{RoomId, UserId};

/// Advisory-lock key that serialises presence changes across instances.
const LOCK_KEY: i64 = 0x0063_6861_7470_7072;

/// A user whose presence in a room changed, counted over every instance.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct Transition {
    /// The room.
    #[diesel(sql_type = BigInt)]
    pub room_id: RoomId,
    /// Who.
    #[diesel(sql_type = BigInt)]
    pub user_id: UserId,
    /// Their login name.
    #[diesel(sql_type = Text)]
    pub username: String,
    /// Online now (else offline).
    #[diesel(sql_type = Bool)]
    pub online: bool,
}

/// Takes the presence lock until the transaction ends.
pub async fn lock(conn: &mut AsyncPgConnection) -> Result<(), Error> {
    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
        .bind::<BigInt, _>(LOCK_KEY)
        .cached()
        .execute(conn)
        .await
        .map(drop)
}

/// "Nobody else live shows `c.user_id` in `c.room_id`."
const ALONE: &str = "NOT EXISTS (SELECT 1 FROM presence o \
     JOIN presence_leases l ON l.instance_id = o.instance_id AND l.expires_at > now() \
     WHERE o.room_id = c.room_id AND o.user_id = c.user_id AND o.instance_id <> $1)";

#[derive(QueryableByName)]
struct FlushRow {
    #[diesel(sql_type = Bool)]
    fresh: bool,
    #[diesel(sql_type = Nullable<BigInt>)]
    room_id: Option<RoomId>,
    #[diesel(sql_type = Nullable<BigInt>)]
    user_id: Option<UserId>,
    #[diesel(sql_type = Nullable<Text>)]
    username: Option<String>,
    #[diesel(sql_type = Nullable<Bool>)]
    online: Option<bool>,
}

/// What a [`flush`] did.
#[derive(Debug, Default)]
pub struct Flushed {
    /// The lease did not exist: this instance's rows were swept (it was
    /// presumed dead) or this is its first flush.
    pub fresh_lease: bool,
    /// Users who came online or went offline because of this batch.
    pub transitions: Vec<Transition>,
}

/// Renews `instance`'s lease for `lease_ms` and applies its batch: `added`
/// pairs are now shown by it, `removed` ones no longer. Run after [`lock`].
pub async fn flush(
    conn: &mut AsyncPgConnection,
    instance: i64,
    lease_ms: i64,
    added: &[(RoomId, UserId)],
    removed: &[(RoomId, UserId)],
) -> Result<Flushed, Error> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        format!(
            "WITH lease AS ( \
                 INSERT INTO presence_leases (instance_id, expires_at) \
                 VALUES ($1, now() + $2 * interval '1 millisecond') \
                 ON CONFLICT (instance_id) DO UPDATE SET expires_at = excluded.expires_at \
                 RETURNING (xmax = 0) AS fresh \
             ), gone AS ( \
                 DELETE FROM presence p USING unnest($5::bigint[], $6::bigint[]) AS d(room_id, user_id) \
                 WHERE p.instance_id = $1 AND p.room_id = d.room_id AND p.user_id = d.user_id \
                 RETURNING p.room_id, p.user_id \
             ), came AS ( \
                 INSERT INTO presence (room_id, user_id, instance_id) \
                 SELECT a.room_id, a.user_id, $1 FROM unnest($3::bigint[], $4::bigint[]) AS a(room_id, user_id) \
                 WHERE EXISTS (SELECT 1 FROM rooms r WHERE r.id = a.room_id) \
                   AND EXISTS (SELECT 1 FROM users u WHERE u.id = a.user_id) \
                 ON CONFLICT DO NOTHING \
                 RETURNING room_id, user_id \
             ), changes AS ( \
                 SELECT room_id, user_id, true AS online FROM came \
                 UNION ALL SELECT room_id, user_id, false FROM gone \
             ) \
             SELECT l.fresh, x.room_id, x.user_id, x.username, x.online \
             FROM lease l LEFT JOIN ( \
                 SELECT c.room_id, c.user_id, u.username, c.online \
                 FROM changes c JOIN users u ON u.id = c.user_id WHERE {ALONE} \
             ) x ON true"
        )
    });
    let (add_rooms, add_users): (Vec<RoomId>, Vec<UserId>) = added.iter().copied().unzip();
    let (del_rooms, del_users): (Vec<RoomId>, Vec<UserId>) = removed.iter().copied().unzip();
    let rows: Vec<FlushRow> = diesel::sql_query(sql.as_str())
        .bind::<BigInt, _>(instance)
        .bind::<BigInt, _>(lease_ms)
        .bind::<Array<BigInt>, _>(&add_rooms)
        .bind::<Array<BigInt>, _>(&add_users)
        .bind::<Array<BigInt>, _>(&del_rooms)
        .bind::<Array<BigInt>, _>(&del_users)
        .cached()
        .load(conn)
        .await?;
    let fresh_lease = rows.as_slice().first().is_some_and(|r| r.fresh);
    let transitions = rows
        .into_iter()
        .filter_map(|r| {
            Some(Transition {
                room_id: r.room_id?,
                user_id: r.user_id?,
                username: r.username?,
                online: r.online?,
            })
        })
        .collect();
    Ok(Flushed {
        fresh_lease,
        transitions,
    })
}

/// Deletes the rows of every instance whose lease expired (it crashed or
/// lost the database for longer than a lease): the users it showed, and
/// nobody else does, go offline. Run after [`lock`].
pub async fn sweep(conn: &mut AsyncPgConnection) -> Result<Vec<Transition>, Error> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        let alone = ALONE.replace(" AND o.instance_id <> $1", "");
        format!(
            "WITH dead AS ( \
                 DELETE FROM presence_leases WHERE expires_at <= now() RETURNING instance_id \
             ), gone AS ( \
                 DELETE FROM presence p USING dead d WHERE p.instance_id = d.instance_id \
                 RETURNING p.room_id, p.user_id \
             ) \
             SELECT DISTINCT c.room_id, c.user_id, u.username, false AS online \
             FROM gone c JOIN users u ON u.id = c.user_id WHERE {alone}"
        )
    });
    diesel::sql_query(sql.as_str()).cached().load(conn).await
}

/// Deletes `instance`'s lease and rows (a clean shutdown): the users only it
/// showed go offline. Run after [`lock`].
pub async fn retire(conn: &mut AsyncPgConnection, instance: i64) -> Result<Vec<Transition>, Error> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        format!(
            "WITH lease AS ( \
                 DELETE FROM presence_leases WHERE instance_id = $1 \
             ), gone AS ( \
                 DELETE FROM presence WHERE instance_id = $1 RETURNING room_id, user_id \
             ) \
             SELECT c.room_id, c.user_id, u.username, false AS online \
             FROM gone c JOIN users u ON u.id = c.user_id WHERE {ALONE}"
        )
    });
    diesel::sql_query(sql.as_str())
        .bind::<BigInt, _>(instance)
        .cached()
        .load(conn)
        .await
}

/// A user in a presence list.
#[derive(Debug, Clone, QueryableByName)]
pub struct Online {
    /// User id.
    #[diesel(sql_type = BigInt)]
    pub id: UserId,
    /// Login name.
    #[diesel(sql_type = Text)]
    pub username: String,
}

/// Users with a socket joined to `room_id` on any live instance, by id.
pub async fn online_in(
    conn: &mut AsyncPgConnection,
    room_id: RoomId,
) -> Result<Vec<Online>, Error> {
    diesel::sql_query(
        "SELECT DISTINCT u.id, u.username FROM presence p \
         JOIN presence_leases l ON l.instance_id = p.instance_id AND l.expires_at > now() \
         JOIN users u ON u.id = p.user_id WHERE p.room_id = $1 ORDER BY u.id",
    )
    .bind::<BigInt, _>(room_id)
    .cached()
    .load(conn)
    .await
}

#[derive(QueryableByName)]
struct IsOnline {
    #[diesel(sql_type = Bool)]
    online: bool,
}

/// Whether `user_id` has a socket joined to `room_id` on any live instance.
pub async fn is_online(
    conn: &mut AsyncPgConnection,
    room_id: RoomId,
    user_id: UserId,
) -> Result<bool, Error> {
    let row: IsOnline = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM presence p \
         JOIN presence_leases l ON l.instance_id = p.instance_id AND l.expires_at > now() \
         WHERE p.room_id = $1 AND p.user_id = $2) AS online",
    )
    .bind::<BigInt, _>(room_id)
    .bind::<BigInt, _>(user_id)
    .cached()
    .get_result(conn)
    .await?;
    Ok(row.online)
}
