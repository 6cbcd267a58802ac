//! Group commit: sends that arrive together, in any rooms, over WebSocket
//! and HTTP alike, are committed in one transaction.
//!
//! One task per process, the [`Committer`], owns a queue of sends. Whenever a
//! batch slot is free it takes every queued send whose room is not in a
//! batch already (at most [`CommitterLimits::max_batch`]) and commits them
//! with a constant number of round trips: `BEGIN`, the one statement of
//! [`store::sends::commit_batch`], one `NOTIFY` for the batch, `COMMIT`.
//! A lone send on an idle server starts at once; sends arriving while a
//! batch runs ride in the next one, so batches grow exactly when the
//! database is the bottleneck.
//!
//! Rooms of batches in flight are disjoint: a room's sends go in arrival
//! order, batch after batch, and no pooled connection ever waits on the room
//! row lock of another batch of this process. A send waits in the queue at
//! most the wait limit (then `db_busy`, like a pool wait).
//!
//! Failures: a refused send (room not visible) fails alone inside the
//! statement; a `client_id` racing on another instance or a deadlock with
//! another instance's batch aborts the statement, and the batch is retried
//! (the retry finds the other instance's message); the time limit, a busy
//! pool or a lost database fail every send of the batch, storing nothing;
//! any other statement error is retried send by send, so a bad message
//! fails alone.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{Id, JoinSet};

use super::Sent;
use crate::announce::commit_and_announce_within;
use crate::db::{Db, DbError};
use crate::domain::{AuthorView, MessageView};
use crate::error::ApiError;
use crate::events::Event;
use crate::hub::Hub;
use crate::ids::RoomId;
use crate::metrics as m;
use crate::store;
use crate::store::sends::{NewSend, SendOutcome, StoredSend};

/// Attempts of a batch whose statement lost a race with another instance.
const RACE_ATTEMPTS: usize = 3;

/// How big and how many batches may be.
#[derive(Debug, Clone, Copy)]
pub struct CommitterLimits {
    /// Sends per batch at most.
    pub max_batch: usize,
    /// Batches in flight at once (each holds one pooled connection).
    pub max_inflight: usize,
    /// Longest a send waits in the queue before failing with `db_busy`.
    pub max_wait: Duration,
}

impl CommitterLimits {
    /// Limits for a pool of `pool_size`: half of it for batches (at least
    /// one, at most four), the rest left to reads.
    pub fn for_pool(pool_size: usize, max_wait: Duration) -> Self {
        Self {
            max_batch: 128,
            max_inflight: (pool_size / 2).clamp(1, 4),
            max_wait,
        }
    }
}

/// A send waiting for its batch.
struct Pending {
    send: NewSend,
    author: AuthorView,
    /// When it was queued: its whole wait, queue and pool, stays within the
    /// wait limit.
    queued: Instant,
    reply: oneshot::Sender<Result<Sent, ApiError>>,
}

/// The process's group-commit queue; cheap to clone.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Committer {
    /// Starts the committer task; it ends when every handle is dropped and
    /// the last batch is answered.
    pub fn spawn(db: Db, hub: Hub, limits: CommitterLimits) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(db, hub, limits, rx));
        Self { queue }
    }

    /// Queues a send; the answer comes on `reply` after its batch.
    ///
    /// # Errors
    /// `shutting_down` when the committer has stopped.
    pub(super) fn submit(
        &self,
        send: NewSend,
        author: AuthorView,
        reply: oneshot::Sender<Result<Sent, ApiError>>,
    ) -> Result<(), ApiError> {
        self.queue
            .send(Pending {
                send,
                author,
                queued: Instant::now(),
                reply,
            })
            .map_err(|_| ApiError::ShuttingDown)
    }
}

/// The queue's order and the rooms in flight: which sends may go next.
/// Pure, so it is tested without a database or a clock.
struct Schedule<T> {
    waiting: VecDeque<(RoomId, Instant, T)>,
    busy: HashSet<RoomId>,
}

impl<T> Schedule<T> {
    fn new() -> Self {
        Self {
            waiting: VecDeque::new(),
            busy: HashSet::new(),
        }
    }

    fn push(&mut self, room: RoomId, at: Instant, item: T) {
        self.waiting.push_back((room, at, item));
    }

    /// The oldest waiting send's arrival.
    fn oldest(&self) -> Option<Instant> {
        self.waiting.front().map(|(_, at, _)| *at)
    }

    /// Removes the sends that arrived before `deadline`.
    fn expire(&mut self, deadline: Instant) -> Vec<T> {
        let mut expired = Vec::new();
        while self
            .waiting
            .front()
            .is_some_and(|(_, at, _)| *at <= deadline)
        {
            expired.extend(self.waiting.pop_front().map(|(_, _, item)| item));
        }
        expired
    }

    /// Takes up to `max` sends, in arrival order, of rooms not in flight,
    /// and marks their rooms busy. Empty when nothing may go.
    fn take(&mut self, max: usize) -> (Vec<RoomId>, Vec<T>) {
        let mut rooms = Vec::new();
        let mut batch = Vec::new();
        let mut rest = VecDeque::with_capacity(self.waiting.len());
        for (room, at, item) in self.waiting.drain(..) {
            if batch.len() < max && !self.busy.contains(&room) {
                if !rooms.contains(&room) {
                    rooms.push(room);
                }
                batch.push(item);
            } else {
                rest.push_back((room, at, item));
            }
        }
        self.waiting = rest;
        self.busy.extend(rooms.iter().copied());
        (rooms, batch)
    }

    /// A batch over `rooms` finished.
    fn release(&mut self, rooms: &[RoomId]) {
        for room in rooms {
            self.busy.remove(room);
        }
    }
}

async fn run(db: Db, hub: Hub, limits: CommitterLimits, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut schedule = Schedule::new();
    let mut inflight: JoinSet<()> = JoinSet::new();
    let mut rooms_of: HashMap<Id, Vec<RoomId>> = HashMap::new();
    let mut open = true;
    while open || !inflight.is_empty() || schedule.oldest().is_some() {
        let expiry = schedule.oldest().map(|at| at + limits.max_wait);
        tokio::select! {
            got = rx.recv(), if open => match got {
                Some(p) => {
                    schedule.push(p.send.room_id, p.queued, p);
                    while let Ok(p) = rx.try_recv() {
                        schedule.push(p.send.room_id, p.queued, p);
                    }
                }
                None => open = false,
            },
            Some(done) = inflight.join_next_with_id(), if !inflight.is_empty() => {
                let id = match &done {
                    Ok((id, ())) => *id,
                    Err(e) => {
                        tracing::error!(error = %e, "a group-commit batch task failed");
                        e.id()
                    }
                };
                if let Some(rooms) = rooms_of.remove(&id) {
                    schedule.release(&rooms);
                }
            }
            () = sleep_until(expiry), if expiry.is_some() => {}
        }
        if let Some(deadline) = Instant::now().checked_sub(limits.max_wait) {
            for late in schedule.expire(deadline) {
                metrics::counter!(m::DB_POOL_TIMEOUTS_TOTAL).increment(1);
                let _ = late.reply.send(Err(DbError::Busy.into()));
            }
        }
        while inflight.len() < limits.max_inflight {
            let (rooms, batch) = schedule.take(limits.max_batch);
            if batch.is_empty() {
                break;
            }
            let handle = inflight.spawn(commit(db.clone(), hub.clone(), limits.max_wait, batch));
            rooms_of.insert(handle.id(), rooms);
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Commits one batch and answers every send in it.
async fn commit(db: Db, hub: Hub, max_wait: Duration, batch: Vec<Pending>) {
    metrics::histogram!(m::SEND_BATCH_SIZE).record(batch.len() as f64);
    let oldest = batch
        .iter()
        .map(|p| p.queued)
        .min()
        .unwrap_or_else(Instant::now);
    let deadline = oldest + max_wait;
    let (items, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|p| ((p.send, p.author), p.reply))
        .unzip();
    let answers = match attempt(&db, &hub, deadline, &items).await {
        Ok(answers) => answers,
        Err(e) if items.len() > 1 && is_unexpected(&e) => {
            tracing::warn!(error = %e, sends = items.len(), "batch failed; committing its sends one by one");
            let mut answers = Vec::with_capacity(items.len());
            for item in &items {
                let one = attempt(&db, &hub, deadline, std::slice::from_ref(item)).await;
                answers.push(match one {
                    Ok(mut a) => a.pop().expect("one answer per send"),
                    Err(e) => Err(e.into()),
                });
            }
            answers
        }
        Err(e) => {
            let e = ApiError::from(e);
            items.iter().map(|_| Err(clone_error(&e))).collect()
        }
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

/// One transaction for `items`, retried while it loses races with other
/// instances; waiting for a connection only until `deadline` (the oldest
/// send's wait limit).
async fn attempt(
    db: &Db,
    hub: &Hub,
    deadline: Instant,
    items: &[(NewSend, AuthorView)],
) -> Result<Vec<Result<Sent, ApiError>>, DbError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let owned = items.to_vec();
        let wait = deadline.saturating_duration_since(Instant::now());
        let result = commit_and_announce_within(db, hub, Some(wait), move |conn, outbox| {
            async move {
                let sends: Vec<NewSend> = owned.iter().map(|(s, _)| s.clone()).collect();
                let outcomes = store::sends::commit_batch(conn, &sends).await?;
                let answers: Vec<Result<Sent, ApiError>> = outcomes
                    .into_iter()
                    .zip(owned)
                    .map(|(outcome, (send, author))| answer(outcome, send, author))
                    .collect();
                for sent in answers.iter().flatten().filter(|s| s.created) {
                    outbox.announce(Event::Message(sent.message.clone()));
                }
                Ok::<_, DbError>(answers)
            }
            .boxed()
        })
        .await;
        match result {
            Err(e) if tries < RACE_ATTEMPTS && is_race(&e) => continue,
            Ok(answers) => {
                let created = answers.iter().flatten().filter(|s| s.created).count();
                metrics::counter!(m::MESSAGES_TOTAL).increment(created as u64);
                return Ok(answers);
            }
            Err(e) => return Err(e),
        }
    }
}

fn answer(outcome: SendOutcome, send: NewSend, author: AuthorView) -> Result<Sent, ApiError> {
    let (stored, created) = match outcome {
        SendOutcome::NotVisible => return Err(ApiError::NotFound("no such room".into())),
        SendOutcome::Created(stored) => (stored, true),
        SendOutcome::Original(stored) => (stored, false),
    };
    let StoredSend {
        id,
        room_id,
        seq,
        body,
        created_at,
        edited_at,
        deleted_at,
    } = stored;
    Ok(Sent {
        message: MessageView {
            id,
            room_id,
            seq,
            author,
            body,
            client_id: send.client_id,
            created_at,
            edited_at,
            deleted_at,
        },
        created,
    })
}

/// A statement that lost to another instance: a `client_id` it inserted
/// first, or a deadlock on room rows.
fn is_race(e: &DbError) -> bool {
    match e {
        DbError::Other(DieselError::DatabaseError(kind, info)) => {
            matches!(
                kind,
                DatabaseErrorKind::UniqueViolation | DatabaseErrorKind::SerializationFailure
            ) || info.message().contains("deadlock detected")
        }
        _ => false,
    }
}

/// Not a limit and not an outage: something about the data.
fn is_unexpected(e: &DbError) -> bool {
    matches!(e, DbError::Other(_))
}

/// Every send of a failed batch gets the same answer.
fn clone_error(e: &ApiError) -> ApiError {
    match e {
        ApiError::Db(DbError::Busy) => DbError::Busy.into(),
        ApiError::Db(DbError::Timeout) => DbError::Timeout.into(),
        ApiError::Db(DbError::Unavailable(m)) => DbError::Unavailable(m.clone()).into(),
        ApiError::ShuttingDown => ApiError::ShuttingDown,
        other => ApiError::Internal(anyhow::anyhow!("group commit failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms(s: &Schedule<u32>) -> Vec<u32> {
        s.waiting.iter().map(|(_, _, i)| *i).collect()
    }

    #[test]
    fn a_batch_takes_every_waiting_send_of_rooms_not_in_flight_in_order() {
        let now = Instant::now();
        let mut s = Schedule::new();
        for (i, room) in [1, 2, 1, 3, 2].into_iter().enumerate() {
            s.push(RoomId(room), now, i as u32);
        }
        let (busy, first) = s.take(10);
        assert_eq!(first, vec![0, 1, 2, 3, 4]);
        assert_eq!(busy, vec![RoomId(1), RoomId(2), RoomId(3)]);
        // While rooms 1-3 are in flight, their new sends wait; room 4's go.
        s.push(RoomId(1), now, 5);
        s.push(RoomId(4), now, 6);
        s.push(RoomId(1), now, 7);
        let (_, second) = s.take(10);
        assert_eq!(second, vec![6]);
        assert_eq!(rooms(&s), vec![5, 7]);
        s.release(&busy);
        assert_eq!(s.take(10).1, vec![5, 7], "room 1 in arrival order");
    }

    #[test]
    fn batches_are_bounded_and_keep_each_rooms_order() {
        let now = Instant::now();
        let mut s = Schedule::new();
        for i in 0..5u32 {
            s.push(RoomId(1), now, i);
        }
        let (rooms, first) = s.take(3);
        assert_eq!(first, vec![0, 1, 2]);
        assert!(s.take(3).1.is_empty(), "room 1 is in flight");
        s.release(&rooms);
        assert_eq!(s.take(3).1, vec![3, 4]);
    }

    #[test]
    fn sends_that_waited_past_the_limit_expire_oldest_first() {
        let t0 = Instant::now();
        let mut s = Schedule::new();
        s.push(RoomId(1), t0, 1u32);
        s.push(RoomId(1), t0 + Duration::from_millis(10), 2);
        s.push(RoomId(2), t0 + Duration::from_millis(20), 3);
        assert_eq!(s.oldest(), Some(t0));
        assert_eq!(s.expire(t0 + Duration::from_millis(10)), vec![1, 2]);
        assert_eq!(rooms(&s), vec![3]);
    }
}
