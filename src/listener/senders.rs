//! Who sent a notification (SPEC §4, "Several instances").
//!
//! The channel key ([`crate::db::channel`]) keeps out every role that cannot
//! read chatpool's tables. A role that may read them all (`pg_read_all_data`,
//! `GRANT SELECT ON ALL TABLES`) but not write them could still read the key
//! and sign, so the sender is checked too: PostgreSQL stamps every
//! notification with the process id of the backend that sent it, and
//! `pg_stat_activity` names that backend's role. A notification from a role
//! that may not insert into `messages` is dropped.
//!
//! A sender that has disconnected since (an instance closing a pooled
//! connection right after its commit, or stopping) cannot be looked up: its
//! notification is then only a hint, checked against the tables by the
//! listener (a message is read back by seq, a revocation stands only if the
//! token is gone).
//!
//! The lookup runs on the listener's own connection (a session of its own,
//! outside the pool), so a busy pool never delays or fails it. Answers are
//! cached per process id for [`TTL`]: about one query per pooled connection
//! of each instance every few seconds, not one per notification. A process
//! id is reused only after the kernel has handed out every other one, far
//! more than a few seconds' worth of new connections.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use diesel_async::AsyncPgConnection;

use crate::store;

/// How long a sender's role check is believed.
pub const TTL: Duration = Duration::from_secs(5);
/// Longest the lookup may take on the listener's connection.
const LOOKUP_LIMIT: Duration = Duration::from_secs(2);
/// Senders remembered at most (beyond it, stale ones are forgotten first).
const CAPACITY: usize = 4096;

/// What the check found out about a notification's sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A backend whose role may write chatpool's tables.
    Writer,
    /// A backend whose role may not: the notification is forged.
    NotWriter,
    /// No such backend any more, or the check itself failed: verify the
    /// notification against the tables.
    Unknown,
}

/// The per-process-id cache of role checks; owned by the listener task.
#[derive(Default)]
pub struct Senders {
    known: HashMap<i32, (bool, Instant)>,
}

impl Senders {
    /// Whether the backend `pid` may write chatpool's tables, asked on
    /// `conn` (the listener's own connection).
    pub async fn check(&mut self, conn: &mut AsyncPgConnection, pid: i32) -> Sender {
        if let Some(&(can_write, at)) = self.known.get(&pid) {
            if at.elapsed() < TTL {
                return verdict(can_write);
            }
        }
        let lookup = store::events::sender_can_write(conn, pid);
        match tokio::time::timeout(LOOKUP_LIMIT, lookup)
            .await
            .unwrap_or_else(|_| Err(diesel::result::Error::BrokenTransactionManager))
        {
            Ok(Some(can_write)) => {
                self.remember(pid, can_write);
                verdict(can_write)
            }
            Ok(None) => {
                self.known.remove(&pid);
                Sender::Unknown
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check who sent a notification");
                Sender::Unknown
            }
        }
    }

    fn remember(&mut self, pid: i32, can_write: bool) {
        if self.known.len() >= CAPACITY {
            self.known.retain(|_, (_, at)| at.elapsed() < TTL);
            if self.known.len() >= CAPACITY {
                self.known.clear();
            }
        }
        self.known.insert(pid, (can_write, Instant::now()));
    }
}

fn verdict(can_write: bool) -> Sender {
    if can_write {
        Sender::Writer
    } else {
        Sender::NotWriter
    }
}
