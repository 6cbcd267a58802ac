//! A session's background database work: the join's replay read, the send
//! of a `send` frame, a `read`'s marker, the gap fill and the access re-check.
//!
//! Each runs in its own task on the shutdown tracker, so a connection is
//! never held while a socket is written and a slow socket never stalls a
//! transaction. [`Jobs`] holds the three slots (the client frame's job, a
//! fill, a re-check: at most one of each) and the loop waits on all of them
//! through one [`Jobs::next`], which reports whichever finished as a
//! [`Finished`] for the conversation to apply.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use tokio::task::{JoinError, JoinHandle};

use crate::auth::AuthUser;
use crate::chat::{self, Sent};
use crate::conversation::reads;
use crate::domain::{ClientId, MessageBody, MessageView};
use crate::error::ApiError;
use crate::ids::{RoomId, Seq, UserId};
use crate::state::AppState;
use crate::store;

/// Messages replayed by one `join` at most (SPEC: the latest 1000).
pub(super) const REPLAY_LIMIT: i64 = 1000;

/// Database work the conversation asks for.
#[derive(Debug)]
pub(super) enum Job {
    /// A `join`'s read: visibility, the room's last seq and the backlog.
    Join {
        reference: Option<String>,
        room_id: RoomId,
        epoch: u64,
        after_seq: Option<Seq>,
    },
    /// A `send`: the shared send path.
    Send {
        reference: Option<String>,
        room_id: RoomId,
        body: MessageBody,
        client_id: ClientId,
    },
    /// A `read`: move the user's marker.
    Read {
        reference: Option<String>,
        room_id: RoomId,
        seq: Seq,
    },
    /// Read the missing seqs of these rooms' holes.
    Fill(Vec<Hole>),
    /// Re-check these joined rooms (with their join epoch) are still visible.
    Recheck(RoomEpochs),
}

/// A hole in one room's delivered seqs: the messages above `after`, up to `upto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Hole {
    pub room_id: RoomId,
    pub epoch: u64,
    pub after: Seq,
    pub upto: Seq,
}

/// A join's read.
#[derive(Debug)]
pub(super) struct JoinRead {
    pub last_seq: Seq,
    pub replay: Vec<MessageView>,
    pub truncated: bool,
}

/// A fill's answer: per room asked, its join epoch and the messages read.
pub(super) type Filled = Vec<(RoomId, u64, Vec<MessageView>)>;

/// Rooms with their join epoch: what a re-check asks about, and the ones it
/// finds the user may no longer see.
pub(super) type RoomEpochs = Vec<(RoomId, u64)>;

/// A background read's task.
type Task<T> = JoinHandle<Result<T, ApiError>>;

/// What a job reports back.
#[derive(Debug)]
pub(super) enum Finished {
    /// A join's read, for the join of `epoch`.
    Joined {
        reference: Option<String>,
        room_id: RoomId,
        epoch: u64,
        result: Result<JoinRead, ApiError>,
    },
    /// A send's outcome.
    Sent {
        reference: Option<String>,
        room_id: RoomId,
        client_id: String,
        result: Result<Sent, ApiError>,
    },
    /// A `read`'s outcome: the marker now.
    Read {
        reference: Option<String>,
        room_id: RoomId,
        result: Result<Seq, ApiError>,
    },
    /// A client frame's task failed (it panicked): the session closes as internal.
    Crashed(JoinError),
    /// A fill: the rooms asked for, and what was read (`None`: it failed and
    /// was logged; the holes are retried).
    Filled {
        asked: Vec<RoomId>,
        filled: Option<Filled>,
    },
    /// A re-check: the rooms (with their join epoch) the user may no longer
    /// see (`None`: it failed and was logged; it is retried).
    Rechecked(Option<RoomEpochs>),
}

/// The tasks of one session's database work.
pub(super) struct Jobs {
    state: AppState,
    user: Arc<AuthUser>,
    /// The client frame being executed.
    frame: Option<JoinHandle<Finished>>,
    /// A hole fill: the rooms asked for and the task.
    fill: Option<(Vec<RoomId>, Task<Filled>)>,
    /// An access re-check in flight.
    recheck: Option<Task<RoomEpochs>>,
}

impl Jobs {
    pub(super) fn new(state: AppState, user: Arc<AuthUser>) -> Self {
        Self {
            state,
            user,
            frame: None,
            fill: None,
            recheck: None,
        }
    }

    /// Whether a client frame's job runs (the socket is not read meanwhile).
    pub(super) fn frame_in_flight(&self) -> bool {
        self.frame.is_some()
    }

    /// Whether a fill runs.
    pub(super) fn filling(&self) -> bool {
        self.fill.is_some()
    }

    /// Whether a re-check runs.
    pub(super) fn rechecking(&self) -> bool {
        self.recheck.is_some()
    }

    /// Starts `job` in its slot, which must be free.
    pub(super) fn start(&mut self, job: Job) {
        let tracker = self.state.shutdown().tracker();
        let state = self.state.clone();
        match job {
            Job::Join {
                reference,
                room_id,
                epoch,
                after_seq,
            } => {
                debug_assert!(self.frame.is_none());
                let user_id = self.user.id;
                self.frame = Some(tracker.spawn(async move {
                    let result = read_join(&state, user_id, room_id, after_seq).await;
                    Finished::Joined {
                        reference,
                        room_id,
                        epoch,
                        result,
                    }
                }));
            }
            Job::Send {
                reference,
                room_id,
                body,
                client_id,
            } => {
                debug_assert!(self.frame.is_none());
                let user = self.user.clone();
                self.frame = Some(tracker.spawn(async move {
                    let key = client_id.as_str().to_owned();
                    let result = chat::send_message(
                        state.committer(),
                        state.limits(),
                        user.author(),
                        room_id,
                        body,
                        Some(client_id),
                    )
                    .await;
                    Finished::Sent {
                        reference,
                        room_id,
                        client_id: key,
                        result,
                    }
                }));
            }
            Job::Read {
                reference,
                room_id,
                seq,
            } => {
                debug_assert!(self.frame.is_none());
                let user = self.user.clone();
                self.frame = Some(tracker.spawn(async move {
                    let result =
                        reads::mark_read(state.db(), state.hub(), &user, room_id, seq).await;
                    Finished::Read {
                        reference,
                        room_id,
                        result: result.map(|m| m.last_read_seq),
                    }
                }));
            }
            Job::Fill(holes) => {
                debug_assert!(self.fill.is_none());
                let rooms = holes.iter().map(|h| h.room_id).collect();
                self.fill = Some((rooms, tracker.spawn(fill(state, holes))));
            }
            Job::Recheck(asked) => {
                debug_assert!(self.recheck.is_none());
                let user_id = self.user.id;
                self.recheck = Some(tracker.spawn(recheck(state, user_id, asked)));
            }
        }
    }

    /// Waits until a job finishes (forever when none runs). Checked in this
    /// order: re-check, client frame, fill. Cancel-safe: a job's answer is
    /// taken from its slot only when it is returned.
    pub(super) async fn next(&mut self) -> Finished {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// At shutdown: waits for the client frame's job, if one runs (a send
    /// commits regardless, so its ack is still worth writing).
    pub(super) async fn frame_finished(&mut self) -> Option<Finished> {
        let task = self.frame.take()?;
        Some(task.await.unwrap_or_else(Finished::Crashed))
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Finished> {
        if let Some(Poll::Ready(done)) = self.recheck.as_mut().map(|t| Pin::new(t).poll(cx)) {
            self.recheck = None;
            return Poll::Ready(Finished::Rechecked(answer(done, "access re-check")));
        }
        if let Some(Poll::Ready(done)) = self.frame.as_mut().map(|t| Pin::new(t).poll(cx)) {
            self.frame = None;
            return Poll::Ready(done.unwrap_or_else(Finished::Crashed));
        }
        if let Some(Poll::Ready(done)) = self.fill.as_mut().map(|(_, t)| Pin::new(t).poll(cx)) {
            let (asked, _) = self.fill.take().expect("polled only when set");
            return Poll::Ready(Finished::Filled {
                asked,
                filled: answer(done, "gap fill"),
            });
        }
        Poll::Pending
    }
}

/// A background read's answer, or `None` (logged) when it failed; the
/// session retries later either way. `what` names the job in the log.
fn answer<T>(done: Result<Result<T, ApiError>, JoinError>, what: &str) -> Option<T> {
    match done {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, job = what, "background read failed; will retry");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, job = what, "background task failed; will retry");
            None
        }
    }
}

/// The join's database read: visibility (role read fresh), the room's last
/// seq and the backlog after `after_seq` (the latest [`REPLAY_LIMIT`] at most).
async fn read_join(
    state: &AppState,
    user_id: UserId,
    room_id: RoomId,
    after_seq: Option<Seq>,
) -> Result<JoinRead, ApiError> {
    state
        .db()
        .transaction(move |conn| {
            async move {
                if !store::rooms::visible_to(conn, room_id, user_id).await? {
                    return Err(ApiError::NotFound("no such room".into()));
                }
                let last_seq = store::rooms::last_seq(conn, room_id)
                    .await?
                    .ok_or_else(|| ApiError::NotFound("no such room".into()))?;
                let Some(after) = after_seq else {
                    return Ok(JoinRead {
                        last_seq,
                        replay: Vec::new(),
                        truncated: false,
                    });
                };
                let truncated = last_seq - after > REPLAY_LIMIT;
                let from = if truncated {
                    last_seq - REPLAY_LIMIT
                } else {
                    after
                };
                let replay = if from < last_seq {
                    store::messages::since(conn, room_id, from, REPLAY_LIMIT).await?
                } else {
                    Vec::new()
                };
                Ok(JoinRead {
                    last_seq,
                    replay,
                    truncated,
                })
            }
            .boxed()
        })
        .await
}

/// Reads every hole's missing messages in one transaction.
async fn fill(state: AppState, holes: Vec<Hole>) -> Result<Filled, ApiError> {
    state
        .db()
        .transaction(move |conn| {
            async move {
                let mut filled = Vec::with_capacity(holes.len());
                for hole in holes {
                    let limit = (hole.upto - hole.after).clamp(1, REPLAY_LIMIT);
                    let messages =
                        store::messages::since(conn, hole.room_id, hole.after, limit).await?;
                    filled.push((hole.room_id, hole.epoch, messages));
                }
                Ok::<_, ApiError>(filled)
            }
            .boxed()
        })
        .await
}

/// Re-checks every joined room's visibility in one transaction: the rooms
/// (with their join epoch) the user may no longer see.
async fn recheck(
    state: AppState,
    user_id: UserId,
    asked: RoomEpochs,
) -> Result<RoomEpochs, ApiError> {
    state
        .db()
        .transaction(move |conn| {
            async move {
                let mut lost = Vec::new();
                for (room_id, epoch) in asked {
                    if !store::rooms::visible_to(conn, room_id, user_id).await? {
                        lost.push((room_id, epoch));
                    }
                }
                Ok::<_, ApiError>(lost)
            }
            .boxed()
        })
        .await
}
