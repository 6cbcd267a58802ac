//! Presence across instances (SPEC §5): the task that turns this process's
//! share of presence (the hub's ledger: who has a socket joined to which
//! room here) into rows of `presence`, and the changes into `presence`
//! events on every instance.
//!
//! Batched: a join or leave only wakes the task, which waits
//! [`BATCH_WINDOW`] for more and then writes the difference between what
//! the hub has and what it last stored, in one transaction (presence lock,
//! one statement, one `NOTIFY`). A socket's heartbeat costs nothing; the
//! instance's lease is renewed once per third of `CHATPOOL_PRESENCE_LEASE_MS`
//! (while it shows anyone), and the same transaction sweeps the shares of
//! instances whose lease expired, so a crashed instance's users go offline
//! within a lease and a third. At shutdown, once the sockets are closed, the
//! instance deletes its share (its users go offline at once) before the pool
//! closes.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;

use crate::announce::commit_and_announce;
use crate::db::{Db, DbError};
use crate::events::{Event, PresenceChange};
use crate::hub::{Hub, Pair};
use crate::state::AppState;
use crate::store;
use crate::store::presence::Transition;

/// How long a join or leave waits for others to share its batch.
const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// Pause after a failed batch (the database is busy or away).
const RETRY: Duration = Duration::from_secs(1);
/// Longest wait at shutdown for the sockets to close before the share is
/// deleted anyway.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// Starts the presence task on the shutdown tracker.
pub fn spawn(state: &AppState) {
    let state = state.clone();
    let tracker = state.shutdown().tracker().clone();
    tracker.spawn(async move {
        let instance: i64 = rand::random();
        let db = state.db().clone();
        let hub = state.hub().clone();
        let lease = state.settings().presence_lease;
        let mut task = Task {
            db,
            hub,
            instance,
            lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX),
            stored: HashSet::new(),
        };
        task.run(state.shutdown().token(), lease / 3).await;
        task.retire().await;
    });
}

struct Task {
    db: Db,
    hub: Hub,
    instance: i64,
    lease_ms: i64,
    /// The pairs this instance's rows show, as of the last batch.
    stored: HashSet<Pair>,
}

impl Task {
    async fn run(&mut self, stop: tokio_util::sync::CancellationToken, renew_every: Duration) {
        let mut renew_at = Instant::now() + renew_every;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.hub.presence_changed() => {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(BATCH_WINDOW) => {}
                    }
                }
                () = tokio::time::sleep_until(renew_at) => {}
            }
            let renew = Instant::now() >= renew_at;
            match self.batch(renew).await {
                Ok(()) if renew => renew_at = Instant::now() + renew_every,
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "presence batch failed; retrying");
                    renew_at = Instant::now() + RETRY.min(renew_every);
                }
            }
        }
    }

    /// Stores what changed since the last batch and announces who came
    /// online or went offline; with `renew`, also renews the lease and
    /// sweeps expired ones. Again at once when this instance's own share
    /// turned out to have been swept (it was presumed dead).
    async fn batch(&mut self, renew: bool) -> Result<(), DbError> {
        loop {
            let desired: HashSet<Pair> = self.hub.present_here().into_iter().collect();
            let added: Vec<Pair> = desired.difference(&self.stored).copied().collect();
            let removed: Vec<Pair> = self.stored.difference(&desired).copied().collect();
            let idle = added.is_empty() && removed.is_empty();
            if idle && (!renew || self.stored.is_empty()) {
                return Ok(());
            }
            let (instance, lease_ms) = (self.instance, self.lease_ms);
            let (add, remove) = (added.clone(), removed.clone());
            let fresh = commit_and_announce(&self.db, &self.hub, move |conn, outbox| {
                async move {
                    store::presence::lock(conn).await?;
                    // Expired shares first, so this batch's own changes are
                    // judged without them (and nobody goes offline twice).
                    let mut transitions = if renew {
                        store::presence::sweep(conn).await?
                    } else {
                        Vec::new()
                    };
                    let flushed =
                        store::presence::flush(conn, instance, lease_ms, &add, &remove).await?;
                    transitions.extend(flushed.transitions);
                    announce(outbox, transitions);
                    Ok::<_, DbError>(flushed.fresh_lease)
                }
                .boxed()
            })
            .await?;
            let swept = fresh && !self.stored.is_empty();
            self.stored.extend(added.iter().copied());
            for pair in &removed {
                self.stored.remove(pair);
            }
            if !swept {
                return Ok(());
            }
            tracing::warn!("this instance's presence was swept as expired; storing it again");
            self.stored.retain(|pair| added.contains(pair));
        }
    }

    /// At shutdown: waits for the sockets to close, then deletes this
    /// instance's share, so its users go offline now rather than at lease
    /// expiry.
    async fn retire(&mut self) {
        let deadline = Instant::now() + CLOSE_WAIT;
        while self.hub.session_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let instance = self.instance;
        let retired = commit_and_announce(&self.db, &self.hub, move |conn, outbox| {
            async move {
                store::presence::lock(conn).await?;
                announce(outbox, store::presence::retire(conn, instance).await?);
                Ok::<_, DbError>(())
            }
            .boxed()
        })
        .await;
        if let Err(e) = retired {
            tracing::warn!(error = %e, "cannot delete this instance's presence; it expires with its lease");
        }
    }
}

fn announce(outbox: &mut crate::announce::Outbox, transitions: Vec<Transition>) {
    for t in transitions {
        outbox.announce(Event::Presence(PresenceChange {
            room_id: t.room_id,
            user_id: t.user_id,
            username: t.username,
            online: t.online,
            nonce: rand::random(),
        }));
    }
}
