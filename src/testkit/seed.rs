//! Test data written straight to the database: users with tokens, roles,
//! rooms, messages.
//!
//! Registering hundreds of users over HTTP would spend most of a test hashing
//! passwords, and would make every WebSocket test depend on the HTTP API. So
//! the kit seeds through the server's own pool and queries (the rows are the
//! ones the server itself would write), in as few transactions as it can.
//! Only the functions at the bottom of this file touch the crate's internals.

use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::FutureExt;

use crate::db::{DbError, TxFn};
use crate::ids::{TokenId, UserId};
use crate::store;

use super::app::TestApp;
use super::Role;

/// Users per seeding transaction: big batches, each well inside the
/// transaction timeout.
const SEED_BATCH: usize = 500;

/// A seeded user with a valid token.
#[derive(Debug, Clone)]
pub struct Seeded {
    /// User id.
    pub id: i64,
    /// Username (also the display name).
    pub username: String,
    /// Bearer token.
    pub token: String,
    /// The token's row id (what logout revokes).
    pub token_id: i64,
    /// Role at creation.
    pub role: Role,
}

/// Creates users `{prefix}{i}` (`i` from 0) with one token each.
pub async fn seed_users(app: &TestApp, prefix: &str, n: usize, role: Role) -> Vec<Seeded> {
    let names = (0..n).map(|i| format!("{prefix}{i}")).collect();
    seed_named(app, names, role).await
}

/// Creates the named users with one token each, [`SEED_BATCH`] per transaction.
pub async fn seed_named(app: &TestApp, names: Vec<String>, role: Role) -> Vec<Seeded> {
    let mut out = Vec::with_capacity(names.len());
    for batch in names.chunks(SEED_BATCH) {
        let batch = batch.to_vec();
        let seeded = in_transaction(app, "users seeded", move |conn| {
            async move {
                let mut seeded = Vec::with_capacity(batch.len());
                for username in batch {
                    let id = insert_user(conn, &username, role).await?;
                    let (token, token_id) = insert_token(conn, id).await?;
                    seeded.push(Seeded {
                        id,
                        username,
                        token,
                        token_id,
                        role,
                    });
                }
                Ok(seeded)
            }
            .boxed()
        })
        .await;
        out.extend(seeded);
    }
    out
}

/// One user with one token.
pub async fn seed_user(app: &TestApp, username: &str, role: Role) -> Seeded {
    seed_named(app, vec![username.to_owned()], role)
        .await
        .pop()
        .expect("one user seeded")
}

/// Members `owner` and `member` and a room of the two (created by `owner`),
/// seeded in that order: how most delivery tests begin. `(owner, member, room)`.
pub async fn two_in_a_room(app: &TestApp, owner: &str, member: &str) -> (Seeded, Seeded, i64) {
    let owner = seed_user(app, owner, Role::Member).await;
    let member = seed_user(app, member, Role::Member).await;
    let room = seed_room(app, owner.id, &[member.id]).await;
    (owner, member, room)
}

/// A second token for an existing user: `(token, token_id)`.
pub async fn new_token(app: &TestApp, user_id: i64) -> (String, i64) {
    in_transaction(app, "token", move |conn| {
        insert_token(conn, user_id).boxed()
    })
    .await
}

/// Deletes a token and tells the hub, as logout does.
pub async fn logout(app: &TestApp, token_id: i64) {
    in_transaction(app, "token deleted", move |conn| {
        async move {
            store::tokens::delete(conn, TokenId(token_id)).await?;
            Ok(())
        }
        .boxed()
    })
    .await;
    app.state.hub().revoke_token(TokenId(token_id));
}

/// Changes a user's role in the database (the way an admin's PATCH would,
/// minus the hub notification).
pub async fn set_role(app: &TestApp, user_id: i64, role: Role) {
    let updated = in_transaction(app, "role set", move |conn| {
        async move {
            Ok(store::users::set_role(conn, UserId(user_id), role)
                .await?
                .is_some())
        }
        .boxed()
    })
    .await;
    assert!(updated, "user {user_id} exists");
}

/// A room ("a room") created by `creator` with `members`; returns its id.
pub async fn seed_room(app: &TestApp, creator: i64, members: &[i64]) -> i64 {
    let members: Vec<UserId> = members.iter().copied().map(UserId).collect();
    in_transaction(app, "room seeded", move |conn| {
        async move {
            Ok(
                store::rooms::create(conn, "a room", UserId(creator), &members)
                    .await?
                    .id
                    .0,
            )
        }
        .boxed()
    })
    .await
}

/// Appends `n` messages by `author` to `room` in one SQL statement: a backlog
/// of any size in a moment.
pub async fn bulk_messages(app: &TestApp, room: i64, author: i64, n: i64) {
    in_transaction(app, "bulk messages", move |conn| {
        async move {
            diesel::sql_query(BULK_MESSAGES)
                .bind::<BigInt, _>(room)
                .bind::<BigInt, _>(author)
                .bind::<BigInt, _>(n)
                .execute(conn)
                .await?;
            Ok(())
        }
        .boxed()
    })
    .await;
}

/// [`bulk_messages`] on a harness connection instead of the app's pool: no
/// transaction timeout, for backlogs of a hundred thousand messages.
pub async fn bulk_messages_sql(client: &tokio_postgres::Client, room: i64, author: i64, n: i64) {
    client
        .execute(BULK_MESSAGES, &[&room, &author, &n])
        .await
        .expect("bulk messages");
}

/// One statement appending `$3` messages by `$2` to room `$1`, numbered on
/// from the room's `last_seq`.
const BULK_MESSAGES: &str = "WITH r AS (UPDATE rooms SET last_seq = last_seq + $3 WHERE id = $1 RETURNING last_seq) \
     INSERT INTO messages (room_id, seq, author_id, body, created_at) \
     SELECT $1, s, $2, 'bulk ' || s, now() FROM r, generate_series(r.last_seq - $3 + 1, r.last_seq) s";

/// The room's stored seqs, ascending.
pub async fn stored_seqs(app: &TestApp, room: i64) -> Vec<i64> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        seq: i64,
    }
    in_transaction(app, "seqs", move |conn| {
        async move {
            let rows: Vec<Row> =
                diesel::sql_query("SELECT seq FROM messages WHERE room_id = $1 ORDER BY seq")
                    .bind::<BigInt, _>(room)
                    .load(conn)
                    .await?;
            Ok(rows.into_iter().map(|r| r.seq).collect())
        }
        .boxed()
    })
    .await
}

/// Messages stored under `client_id`.
pub async fn count_client_id(app: &TestApp, client_id: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let client_id = client_id.to_owned();
    in_transaction(app, "count", move |conn| {
        async move {
            let row: Row =
                diesel::sql_query("SELECT count(*) AS n FROM messages WHERE client_id = $1")
                    .bind::<Text, _>(&client_id)
                    .get_result(conn)
                    .await?;
            Ok(row.n)
        }
        .boxed()
    })
    .await
}

/// A fresh bearer token and the hash the server stores for it, for seeding
/// a database that no app in this process serves (the real binary does).
pub fn token_and_hash() -> (String, [u8; 32]) {
    crate::auth::new_token()
}

// ------------------------------------------------ the crate internals used

/// Runs `work` in a transaction on the app's pool; panics with `what` on failure.
async fn in_transaction<T, F>(app: &TestApp, what: &str, work: F) -> T
where
    F: for<'c> FnOnce(&'c mut AsyncPgConnection) -> TxFn<'c, T, DbError> + Send + 'static,
    T: Send + 'static,
{
    app.state
        .db()
        .transaction(work)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Inserts a user who cannot log in with a password (tokens only); their id.
async fn insert_user(
    conn: &mut AsyncPgConnection,
    username: &str,
    role: Role,
) -> Result<i64, DbError> {
    let row = store::users::insert(
        conn,
        &store::users::NewUser {
            username,
            display_name: username,
            role,
            password_hash: "not-a-hash",
        },
    )
    .await?
    .ok_or_else(|| DbError::Unavailable(format!("username {username:?} is taken")))?;
    Ok(row.id.0)
}

/// Stores a new token for `user_id`: `(token, token_id)`.
async fn insert_token(
    conn: &mut AsyncPgConnection,
    user_id: i64,
) -> Result<(String, i64), DbError> {
    let (token, hash) = token_and_hash();
    let id = store::tokens::insert(conn, UserId(user_id), &hash).await?;
    Ok((token, id.0))
}
