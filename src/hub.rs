//! The hub: fans committed messages and session events out to the sockets
//! that should see them.
//!
//! Producers call it after a commit (the send path, and the cross-instance
//! listener for every instance's commits), when a token is revoked (logout)
//! or when a user's access may have shrunk (a role change, a removal from a
//! room: the user's sessions are woken to re-check their rooms). It never
//! touches the database and never waits on a socket: each session has a
//! bounded queue ([`QUEUE_CAPACITY`] deliveries) that the hub fills with
//! `try_send`. A message that does not fit closes that session as a slow
//! consumer (the client resumes with `join` + `after_seq`); a typing event
//! that does not fit is dropped. Sessions drop seqs they have already
//! delivered, so publishing a message twice (from any source) is harmless.
//!
//! Edits, read receipts and presence changes (SPEC §5) fan out the same
//! way ([`conversation`]): a receipt and a presence change also reach the
//! user's own sockets, once per socket, and the copy of such an event that
//! returns through this process's own listener is dropped ([`recent`]).
//!
//! The hub knows events, not wire frames: what it queues is a [`Delivery`]
//! holding the committed data (the message; the room and the typing user),
//! and how a session turns that into bytes, or a [`CloseReason`] into a close
//! code, is the WebSocket layer's business. Every outgoing frame is still
//! serialised once, and the same bytes are shared by every socket it goes to:
//! one publish makes one [`Shared`] entry, and every queue it goes to gets an
//! `Arc` of it. The entry caches its encoding in a `OnceLock`, filled by the
//! first session that delivers it, through the encoder that session passes
//! to [`Shared::encoded`]; every later session gets a cheap clone of those
//! bytes (`Utf8Bytes` is reference-counted). An entry no session delivers (a
//! second publish of a message the sockets already have, a room left
//! meanwhile) is never encoded at all.

mod conversation;
mod delivery;
mod presence;
mod recent;

pub use self::delivery::{Delivery, Shared, Typing};
pub use self::presence::Pair;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::domain::MessageView;
use crate::ids::{RoomId, Seq, TokenId, UserId};
use crate::metrics as m;
use crate::tokens::TokenCache;

/// Deliveries a session's queue holds before it counts as a slow consumer.
pub const QUEUE_CAPACITY: usize = 256;
/// Typing events are only queued while the queue has at least this much room,
/// so they are the first to go under pressure and never close a session.
const TYPING_HEADROOM: usize = QUEUE_CAPACITY / 2;
/// How long a revoked token is remembered, so a session that authenticated
/// just before the logout and registers just after it is still closed.
const REVOKED_MEMORY: Duration = Duration::from_secs(300);
/// At most this many recent revocations are remembered.
const REVOKED_MAX: usize = 65_536;

/// Why the hub closes a session (the WebSocket layer picks the close code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its token was revoked (logout).
    Revoked,
    /// Its queue was full when a message had to go in.
    SlowConsumer,
}

/// The hub's side of one session: its queue, its close signal and its
/// access-changed signal.
#[derive(Debug)]
struct Link {
    id: u64,
    token_id: TokenId,
    user_id: UserId,
    queue: mpsc::Sender<Delivery>,
    /// Holds one permit when the user's access may have shrunk: never
    /// blocks, never lost, repeated signals coalesce.
    access: Arc<Notify>,
    close: CancellationToken,
    reason: OnceLock<CloseReason>,
}

impl Link {
    fn close(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.close.cancel();
    }
}

/// Counters the hub keeps about itself (tests and `/api/admin/stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Sessions registered right now.
    pub sessions: usize,
    /// Sessions closed as slow consumers since start.
    pub slow_consumer_closes: u64,
    /// Most deliveries ever waiting in one session's queue (never above [`QUEUE_CAPACITY`]).
    pub queue_high_water: usize,
}

#[derive(Default)]
struct Inner {
    /// Who each bearer token belongs to; revocations and access changes
    /// reach it with the sockets.
    token_cache: TokenCache,
    rooms: RwLock<HashMap<RoomId, HashMap<u64, Arc<Link>>>>,
    /// Per subscribed room, the highest seq this process has published or a
    /// join has read: where the listener's catch-up starts after a reconnect.
    watermarks: Mutex<HashMap<RoomId, Seq>>,
    tokens: Mutex<HashMap<TokenId, HashMap<u64, Arc<Link>>>>,
    users: Mutex<HashMap<UserId, HashMap<u64, Arc<Link>>>>,
    revoked: Mutex<VecDeque<(Instant, TokenId)>>,
    next_id: AtomicU64,
    admitted: AtomicUsize,
    /// Admitted sessions per user (only users with at least one).
    admitted_per_user: Mutex<HashMap<UserId, usize>>,
    registered: AtomicUsize,
    slow_closes: AtomicU64,
    high_water: AtomicUsize,
    /// Who has a socket joined to which room here.
    ledger: Mutex<presence::Ledger>,
    /// Holds a permit when the ledger has changes.
    presence_changed: Notify,
    /// Edits, receipts and presence changes fanned out lately.
    recent: Mutex<recent::Recent>,
}

/// Shared fan-out point; cheap to clone.
#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Delivers a committed message to every socket joined to its room: the
    /// single entry point for committed messages, whatever their source.
    /// Makes one shared entry for every recipient; never blocks.
    pub fn publish_message(&self, message: &MessageView) {
        let rooms = self.inner.rooms.read().expect("hub lock");
        let Some(subscribers) = rooms.get(&message.room_id) else {
            return;
        };
        self.observe(message.room_id, message.seq);
        let shared = Shared::new(message.clone());
        for link in subscribers.values() {
            self.must_deliver(link, Delivery::Message(shared.clone()));
        }
    }

    /// Queues `delivery` for `link`, closing it as a slow consumer when its
    /// queue is full.
    fn must_deliver(&self, link: &Link, delivery: Delivery) {
        match link.queue.try_send(delivery) {
            Ok(()) => self.note_depth(link),
            Err(mpsc::error::TrySendError::Full(_)) => {
                if link.reason.get().is_none() {
                    self.inner.slow_closes.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(session = link.id, "slow consumer: closing the session");
                }
                link.close(CloseReason::SlowConsumer);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Tells the room's other subscribers that `user` is typing. Dropped for a
    /// session whose queue is more than half full.
    pub fn publish_typing(
        &self,
        room_id: RoomId,
        from_session: u64,
        user_id: UserId,
        username: &str,
    ) {
        let rooms = self.inner.rooms.read().expect("hub lock");
        let Some(subscribers) = rooms.get(&room_id) else {
            return;
        };
        if subscribers.len() < 2 {
            return;
        }
        let shared = Shared::new(Typing {
            room_id,
            user_id,
            username: username.to_owned(),
        });
        for link in subscribers.values() {
            if link.id == from_session || link.queue.capacity() < TYPING_HEADROOM {
                continue;
            }
            if link
                .queue
                .try_send(Delivery::Typing(shared.clone()))
                .is_ok()
            {
                self.note_depth(link);
            }
        }
    }

    /// Closes every socket authenticated by `token_id` ([`CloseReason::Revoked`]).
    pub fn revoke_token(&self, token_id: TokenId) {
        self.inner.token_cache.revoke(token_id);
        {
            let mut revoked = self.inner.revoked.lock().expect("hub lock");
            let now = Instant::now();
            while revoked
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > REVOKED_MEMORY)
                || revoked.len() >= REVOKED_MAX
            {
                revoked.pop_front();
            }
            revoked.push_back((now, token_id));
        }
        let tokens = self.inner.tokens.lock().expect("hub lock");
        if let Some(links) = tokens.get(&token_id) {
            for link in links.values() {
                link.close(CloseReason::Revoked);
            }
            tracing::info!(
                token_id = token_id.0,
                sockets = links.len(),
                "token revoked: closing its sockets"
            );
        }
    }

    /// Wakes every session of `user_id` to re-check the rooms it joined (its
    /// role changed or it left a room). Never blocks, never reads the database.
    pub fn access_changed(&self, user_id: UserId) {
        self.inner.token_cache.user_changed(user_id);
        let users = self.inner.users.lock().expect("hub lock");
        if let Some(links) = users.get(&user_id) {
            for link in links.values() {
                link.access.notify_one();
            }
            tracing::debug!(
                user_id = user_id.0,
                sockets = links.len(),
                "access changed: re-checking joined rooms"
            );
        }
    }

    /// Wakes every session to re-check its joined rooms: after the listener
    /// (re)connects, for access changes it may have missed meanwhile.
    pub fn access_changed_for_all(&self) {
        let users = self.inner.users.lock().expect("hub lock");
        for link in users.values().flat_map(HashMap::values) {
            link.access.notify_one();
        }
    }

    /// Reserves one of `max` session slots, or `None` when all are taken. The
    /// slot is freed when the returned guard drops.
    pub fn admit(&self, max: usize) -> Option<Admission> {
        let admitted = &self.inner.admitted;
        let mut current = admitted.load(Ordering::Relaxed);
        loop {
            if current >= max {
                return None;
            }
            match admitted.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(Admission {
                        hub: self.clone(),
                        user: None,
                    })
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// Registers a session of `user_id` authenticated by `token_id`: its
    /// queue and its signals. Fails when the token was revoked in the meantime.
    pub fn register(&self, token_id: TokenId, user_id: UserId) -> Option<Registration> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let link = Arc::new(Link {
            id,
            token_id,
            user_id,
            queue: tx,
            access: Arc::new(Notify::new()),
            close: CancellationToken::new(),
            reason: OnceLock::new(),
        });
        {
            // Checked under the tokens lock: a revoke either sees this link or
            // has already recorded the token.
            let mut tokens = self.inner.tokens.lock().expect("hub lock");
            let revoked = self.inner.revoked.lock().expect("hub lock");
            if revoked.iter().any(|(_, t)| *t == token_id) {
                return None;
            }
            drop(revoked);
            tokens.entry(token_id).or_default().insert(id, link.clone());
            self.inner
                .users
                .lock()
                .expect("hub lock")
                .entry(user_id)
                .or_default()
                .insert(id, link.clone());
        }
        self.inner.registered.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(m::WS_SESSIONS).increment(1.0);
        Some(Registration {
            hub: self.clone(),
            link,
            rooms: Vec::new(),
            queue: rx,
        })
    }

    /// Tokens of this process's open sessions.
    pub fn session_tokens(&self) -> Vec<TokenId> {
        self.inner
            .tokens
            .lock()
            .expect("hub lock")
            .keys()
            .copied()
            .collect()
    }

    /// Raises the room's watermark to `seq` (see [`Hub::room_cursors`]).
    pub fn observe(&self, room_id: RoomId, seq: Seq) {
        let mut marks = self.inner.watermarks.lock().expect("hub lock");
        let mark = marks.entry(room_id).or_insert(seq);
        *mark = (*mark).max(seq);
    }

    /// Rooms with joined sockets and the highest seq this process has
    /// published or read for each: everything at or below it reached the
    /// sockets or will be read back by their own hole filling; the listener
    /// catches up from here after a reconnect.
    pub fn room_cursors(&self) -> Vec<(RoomId, Seq)> {
        let rooms = self.inner.rooms.read().expect("hub lock");
        let marks = self.inner.watermarks.lock().expect("hub lock");
        rooms
            .keys()
            .filter_map(|room| marks.get(room).map(|seq| (*room, *seq)))
            .collect()
    }

    fn forget_room(&self, room_id: RoomId) {
        self.inner
            .watermarks
            .lock()
            .expect("hub lock")
            .remove(&room_id);
    }

    /// The bearer-token cache, kept right by the events the hub hears.
    pub fn tokens(&self) -> &TokenCache {
        &self.inner.token_cache
    }

    /// Counters for tests and stats.
    pub fn stats(&self) -> HubStats {
        HubStats {
            sessions: self.inner.registered.load(Ordering::Relaxed),
            slow_consumer_closes: self.inner.slow_closes.load(Ordering::Relaxed),
            queue_high_water: self.inner.high_water.load(Ordering::Relaxed),
        }
    }

    /// Open WebSocket sessions of this process.
    pub fn session_count(&self) -> usize {
        self.inner.registered.load(Ordering::Relaxed)
    }

    fn note_depth(&self, link: &Link) {
        let depth = link.queue.max_capacity() - link.queue.capacity();
        self.inner.high_water.fetch_max(depth, Ordering::Relaxed);
    }
}

/// One of the `CHATPOOL_MAX_SOCKETS` slots, held from the upgrade request
/// until the session ends, so upgrades in progress count too.
pub struct Admission {
    hub: Hub,
    /// The user whose per-user slot this also holds, once claimed.
    user: Option<UserId>,
}

impl Admission {
    /// Also takes one of `max` slots of `user_id` (`CHATPOOL_MAX_SOCKETS_PER_USER`);
    /// `false` when the user holds them all.
    pub fn claim_user(&mut self, user_id: UserId, max: usize) -> bool {
        debug_assert!(self.user.is_none(), "claimed twice");
        let mut per_user = self.hub.inner.admitted_per_user.lock().expect("hub lock");
        let held = per_user.entry(user_id).or_insert(0);
        if *held >= max {
            if *held == 0 {
                per_user.remove(&user_id);
            }
            return false;
        }
        *held += 1;
        self.user = Some(user_id);
        true
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.hub.inner.admitted.fetch_sub(1, Ordering::AcqRel);
        if let Some(user_id) = self.user {
            let mut per_user = self.hub.inner.admitted_per_user.lock().expect("hub lock");
            if let Some(held) = per_user.get_mut(&user_id) {
                *held -= 1;
                if *held == 0 {
                    per_user.remove(&user_id);
                }
            }
        }
    }
}

/// A session's membership in the hub: its queue, its close signal and the
/// rooms it subscribed to. The guard of the `chatpool_ws_sessions` gauge:
/// dropping it unsubscribes everything and decrements the gauge.
pub struct Registration {
    hub: Hub,
    link: Arc<Link>,
    rooms: Vec<RoomId>,
    /// Deliveries for this session, in publish order.
    pub queue: mpsc::Receiver<Delivery>,
}

impl Registration {
    /// This session's id (typing events skip their sender).
    pub fn id(&self) -> u64 {
        self.link.id
    }

    /// Cancelled when the hub closes this session (then see [`Self::close_reason`]).
    pub fn close_signal(&self) -> CancellationToken {
        self.link.close.clone()
    }

    /// Notified when the user's access may have shrunk ([`Hub::access_changed`]);
    /// a signal sent while nobody waits is kept for the next wait.
    pub fn access_signal(&self) -> Arc<Notify> {
        self.link.access.clone()
    }

    /// Why the hub closed this session, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.link.reason.get().copied()
    }

    /// Tells the room's other subscribers that this session's user is typing
    /// (see [`Hub::publish_typing`]).
    pub fn publish_typing(&self, room_id: RoomId, user_id: UserId, username: &str) {
        self.hub
            .publish_typing(room_id, self.link.id, user_id, username);
    }

    /// Starts queueing the room's events for this session (idempotent).
    pub fn subscribe(&mut self, room_id: RoomId) {
        if self.rooms.contains(&room_id) {
            return;
        }
        self.hub
            .inner
            .rooms
            .write()
            .expect("hub lock")
            .entry(room_id)
            .or_default()
            .insert(self.link.id, self.link.clone());
        self.rooms.push(room_id);
        self.hub.ledger(room_id, self.link.user_id, true);
    }

    /// Stops queueing the room's events (events already queued stay).
    pub fn unsubscribe(&mut self, room_id: RoomId) {
        let Some(at) = self.rooms.iter().position(|r| *r == room_id) else {
            return;
        };
        self.rooms.swap_remove(at);
        let mut rooms = self.hub.inner.rooms.write().expect("hub lock");
        if let Some(subscribers) = rooms.get_mut(&room_id) {
            subscribers.remove(&self.link.id);
            if subscribers.is_empty() {
                rooms.remove(&room_id);
                self.hub.forget_room(room_id);
            }
        }
        drop(rooms);
        self.hub.ledger(room_id, self.link.user_id, false);
    }

    /// Records that this session's join read the room up to `seq`.
    pub fn observe(&self, room_id: RoomId, seq: Seq) {
        self.hub.observe(room_id, seq);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.rooms.is_empty() {
            let mut rooms = self.hub.inner.rooms.write().expect("hub lock");
            for room_id in &self.rooms {
                if let Some(subscribers) = rooms.get_mut(room_id) {
                    subscribers.remove(&self.link.id);
                    if subscribers.is_empty() {
                        rooms.remove(room_id);
                        self.hub.forget_room(*room_id);
                    }
                }
            }
            drop(rooms);
            for room_id in std::mem::take(&mut self.rooms) {
                self.hub.ledger(room_id, self.link.user_id, false);
            }
        }
        let mut tokens = self.hub.inner.tokens.lock().expect("hub lock");
        if let Some(links) = tokens.get_mut(&self.link.token_id) {
            links.remove(&self.link.id);
            if links.is_empty() {
                tokens.remove(&self.link.token_id);
            }
        }
        drop(tokens);
        let mut users = self.hub.inner.users.lock().expect("hub lock");
        if let Some(links) = users.get_mut(&self.link.user_id) {
            links.remove(&self.link.id);
            if links.is_empty() {
                users.remove(&self.link.user_id);
            }
        }
        self.hub.inner.registered.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(m::WS_SESSIONS).decrement(1.0);
    }
}

#[cfg(test)]
mod tests;
