//! The cross-instance listener: one dedicated `LISTEN` connection per process
//! that feeds the hub with what every instance commits.
//!
//! It lives outside the pool, in the one slot of `connection_limit` the pool
//! leaves free, and carries `application_name=chatpool` like every other
//! connection. When the connection drops it reconnects with backoff, then
//! catches up every room with joined sockets from the database, so nothing
//! committed while it was away is lost; the hub drops what a socket already
//! has, so nothing arrives twice. Access changes it may have missed are
//! covered by having every session re-check its joined rooms.
//!
//! A notification is believed only if chatpool's key signed it
//! ([`crate::db::channel`]) and its sender's role may write chatpool's tables
//! ([`senders`]).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::announce::deliver;
use crate::db::tls::Tls;
use crate::db::{pool, Db, DbError};
use crate::events::Event;
use crate::hub::Hub;
use crate::ids::{RoomId, Seq, TokenId};
use crate::metrics as m;
use crate::store;
use crate::store::events::{unpack, Payload, CHANNEL};

pub mod senders;

use senders::{Sender, Senders};

/// First pause after a failed connect; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Messages fetched per room when catching up (the join replay's cap too).
const CATCH_UP_LIMIT: i64 = 1000;

/// Handle to the running listener.
pub struct Listener {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Listener {
    /// Starts listening with `driver` (chatpool's session settings applied).
    pub fn spawn(
        driver: tokio_postgres::Config,
        tls: Tls,
        connect_timeout: Duration,
        db: Db,
        hub: Hub,
    ) -> Self {
        let stop = CancellationToken::new();
        let target = Target {
            driver,
            tls,
            connect_timeout,
        };
        let task = tokio::spawn(run(target, db, hub, stop.clone()));
        Self { stop, task }
    }

    /// Closes the connection and waits for the task to end.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
        tracing::info!("listener connection closed");
    }
}

/// Where the listener connects.
struct Target {
    driver: tokio_postgres::Config,
    tls: Tls,
    connect_timeout: Duration,
}

async fn run(target: Target, db: Db, hub: Hub, stop: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    let mut connected_before = false;
    // Where each room stood when the connection was lost.
    let mut at_loss: HashMap<RoomId, Seq> = HashMap::new();
    let mut senders = Senders::default();
    loop {
        let attempt = tokio::select! {
            () = stop.cancelled() => return,
            conn = listen(&target) => conn,
        };
        let mut conn = match attempt {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "listener cannot connect");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        metrics::gauge!(m::LISTENER_UP).set(1.0);
        if connected_before {
            metrics::counter!(m::LISTENER_RECONNECTS_TOTAL).increment(1);
            tracing::info!("listener reconnected");
        }
        connected_before = true;
        backoff = MIN_BACKOFF;
        // Anything committed while we were not listening is read back now;
        // notifications that arrive meanwhile queue up on the connection.
        catch_up(&db, &hub, &at_loss).await;
        revoke_missed(&db, &hub).await;
        // Access changes announced meanwhile are lost: every session re-checks
        // its joined rooms (those with none read nothing).
        hub.access_changed_for_all();
        // From here on every revocation and role change reaches the hub.
        hub.tokens().set_enabled(true);

        loop {
            // A stream per notification: it only borrows the connection's
            // queue (nothing is lost in between), and the sender check needs
            // the connection itself in between.
            let next = {
                let mut notifications = std::pin::pin!(conn.notifications_stream());
                tokio::select! {
                    () = stop.cancelled() => return,
                    next = notifications.next() => next,
                }
            };
            match next {
                Some(Ok(n)) => {
                    metrics::counter!(m::LISTENER_NOTIFICATIONS_TOTAL).increment(1);
                    handle(&db, &hub, &mut senders, &mut conn, n.process_id, &n.payload).await;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "listener connection failed");
                    break;
                }
                None => {
                    tracing::warn!("listener connection closed by the server");
                    break;
                }
            }
        }
        metrics::gauge!(m::LISTENER_UP).set(0.0);
        hub.tokens().set_enabled(false);
        at_loss = hub.room_cursors().into_iter().collect();
    }
}

/// Opens the dedicated connection and subscribes to the channel.
async fn listen(target: &Target) -> anyhow::Result<diesel_async::AsyncPgConnection> {
    use diesel_async::SimpleAsyncConnection;
    let mut conn = pool::connect(&target.driver, &target.tls, target.connect_timeout).await?;
    conn.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    Ok(conn)
}

/// Applies one notification (one or more events) to the hub if chatpool
/// signed it: access changes and cache evictions at once, then messages and
/// socket-closing revocations, in order, if its sender may write chatpool's
/// tables.
async fn handle(
    db: &Db,
    hub: &Hub,
    senders: &mut Senders,
    conn: &mut diesel_async::AsyncPgConnection,
    pid: i32,
    payload: &str,
) {
    let key = db.channel_key();
    let Some(body) = key.open(payload) else {
        metrics::counter!(m::LISTENER_FORGED_TOTAL).increment(1);
        return tracing::warn!(
            bytes = payload.len(),
            "ignoring a notification on chatpool's channel that chatpool did not sign"
        );
    };
    let Some(items) = unpack(body) else {
        return tracing::debug!(bytes = body.len(), "ignoring an unknown notification");
    };
    // What is safe to believe from anyone applies at once, before the sender
    // check's round trip: forgetting a cached token (the next request reads
    // the table) and an access re-check (sessions read the tables).
    let mut checked = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Payload::Revoked { token_id } => {
                hub.tokens().revoke(token_id);
                checked.push(item);
            }
            Payload::AccessChanged { user_id } => {
                deliver(hub, &Event::AccessChanged { user_id });
            }
            Payload::Message { .. }
            | Payload::Updated { .. }
            | Payload::Read { .. }
            | Payload::Presence { .. } => checked.push(item),
        }
    }
    if checked.is_empty() {
        return;
    }
    // What must come from a writer: a message shown, a socket closed.
    let events = match senders.check(conn, pid).await {
        Sender::Writer => resolve_all(db, checked).await,
        Sender::NotWriter => {
            metrics::counter!(m::LISTENER_FORGED_TOTAL).increment(1);
            return tracing::warn!(
                pid,
                "ignoring a notification sent by a role that cannot write chatpool's tables"
            );
        }
        Sender::Unknown => verified(db, checked).await,
    };
    for event in &events {
        deliver(hub, event);
    }
}

async fn resolve_all(db: &Db, items: Vec<Payload>) -> Vec<Event> {
    let mut events = Vec::with_capacity(items.len());
    for item in items {
        if let Some(event) = resolve(db, item).await {
            events.push(event);
        }
    }
    events
}

/// The events of a notification whose sender could not be checked, taken as
/// hints and checked against the tables: every message and update is read
/// back by seq (a forged one is not found, or the real one is delivered
/// instead), a read receipt carries the marker as stored, a presence change
/// stands only if the presence table agrees, and a revocation only for a
/// token that no longer exists. An access change needs no check: the
/// sessions re-read their access from the tables.
pub(crate) async fn verified(db: &Db, items: Vec<Payload>) -> Vec<Event> {
    let mut events = Vec::with_capacity(items.len());
    for item in items {
        let event = match item {
            Payload::Message { room_id, seq, .. } => Payload::Message {
                room_id,
                seq,
                message: None,
            },
            Payload::Updated { room_id, seq, .. } => Payload::Updated {
                room_id,
                seq,
                message: None,
            },
            Payload::Read {
                room_id,
                user_id,
                username,
                ..
            } => {
                let stored = db
                    .run(move |c| store::reads::marker(c, room_id, user_id).boxed())
                    .await;
                match stored {
                    Ok(seq) if seq > Seq(0) => Payload::Read {
                        room_id,
                        user_id,
                        username,
                        seq,
                    },
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot check an announced read receipt");
                        continue;
                    }
                }
            }
            Payload::Presence {
                room_id,
                user_id,
                online,
                ..
            } => {
                let stored = db
                    .run(move |c| store::presence::is_online(c, room_id, user_id).boxed())
                    .await;
                match stored {
                    Ok(now) if now == online => item,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot check an announced presence change");
                        continue;
                    }
                }
            }
            other => other,
        };
        events.push(event);
    }
    let mut events = resolve_all(db, events).await;
    let revoked: Vec<TokenId> = events
        .iter()
        .filter_map(|e| match e {
            Event::Revoked { token_id } => Some(*token_id),
            _ => None,
        })
        .collect();
    if !revoked.is_empty() {
        let alive = db
            .run(move |c| async move { store::tokens::existing(c, &revoked).await }.boxed())
            .await;
        // Unable to tell: keep the revocations. A wrongly closed socket
        // reconnects; a revoked token's socket left open would be worse.
        let alive = alive.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot check announced revocations");
            Vec::new()
        });
        events.retain(|e| !matches!(e, Event::Revoked { token_id } if alive.contains(token_id)));
    }
    events
}

/// The event a payload announces; a message or update too large to travel
/// inline is read back from the database.
async fn resolve(db: &Db, item: Payload) -> Option<Event> {
    let (room_id, seq, updated) = match item {
        Payload::Message {
            room_id,
            seq,
            message: None,
        } => (room_id, seq, false),
        Payload::Updated {
            room_id,
            seq,
            message: None,
        } => (room_id, seq, true),
        complete => return complete.into_event(),
    };
    match fetch(db, room_id, seq).await {
        Ok(Some(message)) if updated => Some(Event::Updated(message)),
        Ok(Some(message)) => Some(Event::Message(message)),
        Ok(None) => {
            tracing::warn!(
                room_id = room_id.0,
                seq = seq.0,
                "announced message not found"
            );
            None
        }
        // The room's next catch-up or a socket's rejoin recovers it.
        Err(e) => {
            tracing::warn!(
                room_id = room_id.0,
                seq = seq.0,
                error = %e,
                "cannot fetch an announced message"
            );
            None
        }
    }
}

async fn fetch(
    db: &Db,
    room_id: RoomId,
    seq: Seq,
) -> Result<Option<crate::domain::MessageView>, DbError> {
    db.run(move |c| store::messages::by_seq(c, room_id, seq).boxed())
        .await
}

/// Reads every room with joined sockets from where it stood when the
/// connection was lost (or, for a room joined since, from what its join read),
/// and publishes what is newer. Messages this process published itself in
/// the meantime raise the watermark but may sit above lost ones from other
/// instances, hence the snapshot.
async fn catch_up(db: &Db, hub: &Hub, at_loss: &HashMap<RoomId, Seq>) {
    for (room_id, now) in hub.room_cursors() {
        let after_seq = at_loss.get(&room_id).map_or(now, |then| (*then).min(now));
        let missed = db
            .run(move |c| store::messages::since(c, room_id, after_seq, CATCH_UP_LIMIT).boxed())
            .await;
        match missed {
            Ok(messages) => {
                metrics::counter!(m::LISTENER_CATCH_UP_MESSAGES_TOTAL)
                    .increment(messages.len() as u64);
                for message in &messages {
                    hub.publish_message(message);
                }
            }
            Err(e) => tracing::warn!(room_id = room_id.0, error = %e, "catch-up failed for a room"),
        }
    }
}

/// Closes the sessions whose token was revoked while this process was not
/// listening: a logout on another instance in that window sent its
/// revocation to nobody here.
async fn revoke_missed(db: &Db, hub: &Hub) {
    let tokens = hub.session_tokens();
    if tokens.is_empty() {
        return;
    }
    let asked = tokens.clone();
    let existing = db
        .run(move |c| async move { store::tokens::existing(c, &asked).await }.boxed())
        .await;
    match existing {
        Ok(existing) => {
            for token_id in tokens.into_iter().filter(|t| !existing.contains(t)) {
                hub.revoke_token(token_id);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot re-check session tokens after a reconnect"),
    }
}
