//! "Commit, then announce" as one call.
//!
//! A change that sockets must hear about is announced twice: a `NOTIFY`
//! inside the transaction, which PostgreSQL delivers to every instance's
//! listener only if it commits (and in commit order), and a publish to this
//! instance's hub right after the commit, so local sockets do not wait for
//! the round trip. Written by hand the two halves drift apart (forgetting
//! either silently delays delivery), so [`commit_and_announce`] is the only
//! way to do either: the work queues events in an [`Outbox`], and this
//! module sends them both ways. The hub drops the copy that comes back
//! through this process's own listener.

use diesel_async::AsyncPgConnection;
use futures_util::FutureExt;

use crate::db::{Db, DbError, TxFn};
use crate::events::Event;
use crate::hub::Hub;
use crate::store;

/// Events queued by a transaction; sent when (and only if) it commits.
#[derive(Debug, Default)]
pub struct Outbox {
    events: Vec<Event>,
}

impl Outbox {
    /// Queues `event` for every instance, this one included.
    pub fn announce(&mut self, event: Event) {
        self.events.push(event);
    }
}

/// Runs `work` in one transaction ([`Db::transaction`]: wait limit, time
/// limit, error mapping); `NOTIFY`s what it queued in its [`Outbox`] before
/// the commit (one statement for all of it), and publishes the same events
/// to this instance's hub after it.
///
/// # Errors
/// Whatever `work` returns, or a [`DbError`] converted into `E`. Nothing is
/// announced anywhere when it fails.
pub async fn commit_and_announce<T, E, F>(db: &Db, hub: &Hub, work: F) -> Result<T, E>
where
    F: for<'c> FnOnce(&'c mut AsyncPgConnection, &'c mut Outbox) -> TxFn<'c, T, E> + Send + 'static,
    E: From<DbError> + From<diesel::result::Error> + Send + 'static,
    T: Send + 'static,
{
    commit_and_announce_within(db, hub, None, work).await
}

/// [`commit_and_announce`] whose wait for a connection is at most `wait`
/// (see [`Db::transaction_within`]); `None` is the usual wait limit.
///
/// # Errors
/// As [`commit_and_announce`].
pub async fn commit_and_announce_within<T, E, F>(
    db: &Db,
    hub: &Hub,
    wait: Option<std::time::Duration>,
    work: F,
) -> Result<T, E>
where
    F: for<'c> FnOnce(&'c mut AsyncPgConnection, &'c mut Outbox) -> TxFn<'c, T, E> + Send + 'static,
    E: From<DbError> + From<diesel::result::Error> + Send + 'static,
    T: Send + 'static,
{
    let wait = wait.unwrap_or_else(|| db.max_wait());
    let key = db.channel_key();
    let (value, outbox) = db
        .transaction_within(wait, move |conn| {
            async move {
                let mut outbox = Outbox::default();
                let value = work(&mut *conn, &mut outbox).await?;
                store::events::notify(conn, &key, &outbox.events).await?;
                Ok::<_, E>((value, outbox))
            }
            .boxed()
        })
        .await?;
    for event in &outbox.events {
        deliver(hub, event);
    }
    Ok(value)
}

/// Hands a committed event to this instance's hub: after this process's own
/// commits, and for every event the listener hears from any instance.
pub fn deliver(hub: &Hub, event: &Event) {
    match event {
        Event::Message(message) => hub.publish_message(message),
        Event::Revoked { token_id } => hub.revoke_token(*token_id),
        Event::AccessChanged { user_id } => hub.access_changed(*user_id),
        Event::Updated(message) => hub.publish_update(message),
        Event::Read(read) => hub.publish_read(read),
        Event::Presence(change) => hub.publish_presence(change),
    }
}
