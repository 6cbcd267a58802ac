//! What a test may look at or poke inside a running [`TestApp`].
//!
//! Some properties cannot be seen through the HTTP or WebSocket API: the
//! pool's size, the hub's queues, a transaction that outlives its timeout, a
//! flood of sends faster than any client could make. Each is one small,
//! named method here, so tests need none of the crate's internal modules and
//! those internals are reached from this file only.

use diesel::sql_types::{Bool, Double, Text};
use diesel_async::RunQueryDsl;
use futures_util::FutureExt;

use crate::auth::AuthUser;
use crate::db::{migrations, PooledConn};
use crate::domain::{ClientId, MessageBody};
use crate::ids::{RoomId, TokenId, UserId};
use crate::state::AppState;

/// Why work through the server's pool failed, as the server classifies it
/// (tests match on `Busy` and `Timeout`).
pub use crate::db::DbError;
/// The hub's own counters (sessions, slow-consumer closes, queue high water).
pub use crate::hub::HubStats;
/// How many events a session's queue holds before the session is closed
/// with 1013: the bound a slow-consumer test checks the high water against.
pub use crate::hub::QUEUE_CAPACITY;

use super::app::TestApp;
use super::seed::Seeded;

/// A pooled connection a test holds on purpose (to exhaust the pool);
/// returned to the pool when dropped.
pub struct HeldConnection {
    _conn: PooledConn,
}

#[derive(diesel::QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    value: bool,
}

/// The statement of `GET /api/search` (parameters: query, caller, the roles
/// that see every room, limit, and with `in_room` the room), for `EXPLAIN`.
pub fn search_sql(in_room: bool) -> &'static str {
    crate::store::search::search_sql(in_room)
}

/// The OpenAPI document the handlers generate, as JSON: what
/// `/api/openapi.json` must serve.
pub fn openapi_document() -> serde_json::Value {
    serde_json::to_value(crate::http::openapi::document()).expect("the document serialises")
}

impl TestApp {
    /// `body` signed with this database's notification key, as another
    /// chatpool instance would send it on the channel.
    pub fn signed_notification(&self, body: &str) -> String {
        self.state.db().channel_key().sign(body)
    }

    /// What the listener would deliver of the notification `body` if its
    /// sender could not be looked up (it had disconnected): each event as
    /// `message <seq> <body>`, `revoked <token id>`, `access <user id>`,
    /// `updated <seq> <body>`, `read <user id> <seq>` or
    /// `presence <user id> <online>`.
    pub async fn events_from_an_unknown_sender(&self, body: &str) -> Vec<String> {
        let items = crate::store::events::unpack(body).expect("a notification body");
        crate::listener::verified(self.state.db(), items)
            .await
            .into_iter()
            .map(|event| match event {
                crate::events::Event::Message(m) => format!("message {} {}", m.seq.0, m.body),
                crate::events::Event::Revoked { token_id } => format!("revoked {}", token_id.0),
                crate::events::Event::AccessChanged { user_id } => format!("access {}", user_id.0),
                crate::events::Event::Updated(m) => format!("updated {} {}", m.seq.0, m.body),
                crate::events::Event::Read(r) => {
                    format!("read {} {}", r.user_id.0, r.last_read_seq.0)
                }
                crate::events::Event::Presence(p) => {
                    format!("presence {} {}", p.user_id.0, p.online)
                }
            })
            .collect()
    }

    /// The pool's current status (`max_size`, `size`, `available`, `waiting`),
    /// to check what `connection_limit` became and that connections came back.
    pub fn pool_status(&self) -> deadpool::Status {
        self.state.db().pool().status()
    }

    /// Checks a connection out of the server's pool, within its wait limit,
    /// as a request would: to hold the pool busy or see `db_busy`.
    pub async fn acquire_connection(&self) -> Result<HeldConnection, DbError> {
        let conn = self.state.db().acquire().await?;
        Ok(HeldConnection { _conn: conn })
    }

    /// Runs `SELECT pg_sleep(secs)` in a transaction through the server's one
    /// database entry point, to see its transaction timeout at work.
    pub async fn sleep_in_transaction(&self, secs: f64) -> Result<(), DbError> {
        self.sleep(secs, false).await
    }

    /// Like [`Self::sleep_in_transaction`], but with the server's own
    /// `statement_timeout` lifted inside it: only chatpool's timer and its
    /// cancel request can stop the sleep.
    pub async fn sleep_past_the_server_timeout(&self, secs: f64) -> Result<(), DbError> {
        self.sleep(secs, true).await
    }

    async fn sleep(&self, secs: f64, lift_server_timeout: bool) -> Result<(), DbError> {
        self.state
            .db()
            .transaction(move |conn| {
                async move {
                    if lift_server_timeout {
                        diesel::sql_query("SET LOCAL statement_timeout = 0")
                            .execute(conn)
                            .await?;
                    }
                    diesel::sql_query("SELECT pg_sleep($1)")
                        .bind::<Double, _>(secs)
                        .execute(conn)
                        .await?;
                    Ok::<_, DbError>(())
                }
                .boxed()
            })
            .await
    }

    /// Whether `table` (e.g. `public.messages`) exists, asked through the
    /// server's pool: to see migrations applied or reverted.
    pub async fn table_exists(&self, table: &str) -> bool {
        let table = table.to_owned();
        self.state
            .db()
            .transaction(move |conn| {
                async move {
                    let flag: Flag =
                        diesel::sql_query("SELECT to_regclass($1) IS NOT NULL AS value")
                            .bind::<Text, _>(table)
                            .get_result(conn)
                            .await?;
                    Ok::<_, DbError>(flag.value)
                }
                .boxed()
            })
            .await
            .expect("table lookup")
    }

    /// Reverts the latest `n` migrations; returns their names.
    pub async fn revert_latest_migrations(&self, n: usize) -> anyhow::Result<Vec<String>> {
        migrations::revert_latest(self.state.db(), n).await
    }

    /// Applies the pending migrations as start-up does; returns their names.
    pub async fn run_pending_migrations(&self) -> anyhow::Result<Vec<String>> {
        migrations::run_pending(self.state.db()).await
    }

    /// Reverts every migration (the down scripts); returns their names.
    pub async fn revert_all_migrations(&self) -> anyhow::Result<Vec<String>> {
        migrations::revert_all(self.state.db()).await
    }

    /// Bearer tokens this instance resolves from its cache right now.
    pub fn cached_tokens(&self) -> usize {
        self.state.hub().tokens().len()
    }

    /// WebSocket sessions the hub holds right now: to see a closed or dropped
    /// socket leave the server.
    pub fn ws_sessions(&self) -> usize {
        self.state.hub().session_count()
    }

    /// The hub's counters, e.g. whether it closed a slow consumer.
    pub fn hub_stats(&self) -> HubStats {
        self.state.hub().stats()
    }

    /// Starts the server's graceful shutdown as a signal would, without
    /// waiting for it (see [`TestApp::shutdown`] for that).
    pub fn begin_shutdown(&self) {
        self.state.shutdown().trigger();
    }

    /// A handle that sends messages as `user` through the server's own send
    /// path, skipping HTTP and WebSocket.
    pub fn direct_sender(&self, user: &Seeded) -> DirectSender {
        DirectSender {
            state: self.state.clone(),
            user: AuthUser {
                id: UserId(user.id),
                username: user.username.clone(),
                display_name: user.username.clone(),
                role: user.role,
                token_id: TokenId(user.token_id),
            },
        }
    }
}

/// Sends messages as one user through the server's send path (the one both
/// HTTP and WebSocket use): lets a test push messages faster than a client
/// could, e.g. to flood a socket that never reads. Cheap to clone into tasks.
#[derive(Clone)]
pub struct DirectSender {
    state: AppState,
    user: AuthUser,
}

impl DirectSender {
    /// Stores `body` in `room` under `client_id` and publishes it; the SPEC
    /// error code when the send failed. Panics on a body or client id the API
    /// would refuse (a mistake in the test, not the server).
    pub async fn send(&self, room: i64, body: &str, client_id: &str) -> Result<(), String> {
        let body = MessageBody::parse(body).expect("a valid message body");
        let client_id = ClientId::parse(client_id).expect("a valid client id");
        crate::chat::send_message(
            self.state.committer(),
            self.state.limits(),
            self.user.author(),
            RoomId(room),
            body,
            Some(client_id),
        )
        .await
        .map(|_| ())
        .map_err(|e| e.code().to_owned())
    }
}
