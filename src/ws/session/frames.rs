//! What one socket's conversation decides, without the socket: client
//! frames, hub deliveries and the answers of database jobs go in, frames to
//! send and jobs to start come out.
//!
//! [`Conversation`] owns the joined rooms (one [`RoomCursor`] each), the join
//! epoch, the typing allowance, when an access re-check is due and the
//! session's hub registration (subscribing is part of joining). It never
//! touches the socket or the database and takes the time as an argument, so
//! every rule of SPEC §3 here is unit-tested without either.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::jobs::{Filled, Finished, Hole, Job, JoinRead, RoomEpochs};
use crate::auth::AuthUser;
use crate::chat::Sent;
use crate::db::DbError;
use crate::domain::{MessageView, UserView};
use crate::error::ApiError;
use crate::events::ReadReceipt;
use crate::hub::{Delivery, Registration, Shared};
use crate::ids::{RoomId, Seq};
use crate::limits::MAX_ROOMS_PER_SOCKET;
use crate::ws::close::Close;
use crate::ws::cursor::{RoomCursor, GAP_WAIT};
use crate::ws::protocol::{self, Command, ServerFrame};

/// Typing events a session may send in a burst, then one per second.
const TYPING_BURST: f64 = 5.0;
/// Typing tokens regained per second.
const TYPING_PER_SECOND: f64 = 1.0;
/// Edits held per joining room at most (a join's read takes milliseconds).
const HELD_UPDATES: usize = 256;
/// Pause before retrying an access re-check that failed (pool busy, database down).
const RECHECK_RETRY: Duration = Duration::from_millis(500);

/// One socket's conversation state.
pub(super) struct Conversation {
    reg: Registration,
    user: Arc<AuthUser>,
    rooms: HashMap<RoomId, RoomCursor>,
    epoch: u64,
    typing: Bucket,
    /// When the next access re-check is due (set by the hub's signal).
    recheck_at: Option<Instant>,
    /// A `read` of this session in flight: its room, and the user's own
    /// receipts for that room that arrived meanwhile (held so the reply
    /// comes first and the socket gets the receipt once, as its reply).
    reading: Option<(RoomId, Vec<Arc<Shared<ReadReceipt>>>)>,
    /// Edits of rooms still joining, written after `joined` and the replay
    /// (whose read may predate them).
    held_updates: HashMap<RoomId, Vec<Arc<Shared<MessageView>>>>,
    /// Frames decided but not yet written.
    out: Vec<Utf8Bytes>,
}

impl Conversation {
    pub(super) fn new(reg: Registration, user: Arc<AuthUser>, now: Instant) -> Self {
        Self {
            reg,
            user,
            rooms: HashMap::new(),
            epoch: 0,
            typing: Bucket::new(now),
            recheck_at: None,
            reading: None,
            held_updates: HashMap::new(),
            out: Vec::new(),
        }
    }

    /// The session's hub registration (its id, close reason and signals).
    pub(super) fn registration(&self) -> &Registration {
        &self.reg
    }

    /// The session's hub queue.
    pub(super) fn queue(&mut self) -> &mut mpsc::Receiver<Delivery> {
        &mut self.reg.queue
    }

    /// The frames decided since the last call, in order.
    pub(super) fn take_frames(&mut self) -> Vec<Utf8Bytes> {
        std::mem::take(&mut self.out)
    }

    /// The session's first frame.
    pub(super) fn hello(&mut self, view: &UserView, heartbeat: Duration) {
        self.push(ServerFrame::Hello {
            user: view,
            heartbeat_ms: heartbeat.as_millis() as u64,
        });
    }

    /// A client's text frame: the reply, or the job that will produce it.
    pub(super) fn on_text(&mut self, text: &str, now: Instant) -> Option<Job> {
        let incoming = protocol::parse(text);
        match incoming.command {
            Ok(command) => self.on_command(incoming.reference, command, now),
            Err(rejected) => {
                let (reference, client_id) = (incoming.reference, rejected.client_id);
                self.push(ServerFrame::error(
                    &rejected.error,
                    reference.as_deref(),
                    client_id.as_deref(),
                ));
                None
            }
        }
    }

    /// A parsed client frame with its `ref`.
    pub(super) fn on_command(
        &mut self,
        reference: Option<String>,
        command: Command,
        now: Instant,
    ) -> Option<Job> {
        match command {
            Command::Ping => self.push(ServerFrame::Pong {
                reference: reference.as_deref(),
            }),
            Command::Leave { room_id } => {
                self.rooms.remove(&room_id);
                self.held_updates.remove(&room_id);
                self.reg.unsubscribe(room_id);
                self.push(ServerFrame::Left {
                    room_id,
                    reference: reference.as_deref(),
                });
            }
            Command::Typing { room_id } => self.on_typing(reference.as_deref(), room_id, now),
            Command::Read { room_id, seq } => {
                self.reading = Some((room_id, Vec::new()));
                return Some(Job::Read {
                    reference,
                    room_id,
                    seq,
                });
            }
            Command::Join { room_id, after_seq } => {
                if !self.rooms.contains_key(&room_id) && self.rooms.len() >= MAX_ROOMS_PER_SOCKET {
                    let error = ApiError::LimitReached(format!(
                        "at most {MAX_ROOMS_PER_SOCKET} rooms joined per socket; leave one first"
                    ));
                    self.push(ServerFrame::error(&error, reference.as_deref(), None));
                    return None;
                }
                self.epoch += 1;
                // Subscribe before reading the backlog: whatever commits after
                // the read is then sure to arrive live (held by the cursor).
                self.rooms.insert(room_id, RoomCursor::joining(self.epoch));
                self.reg.subscribe(room_id);
                return Some(Job::Join {
                    reference,
                    room_id,
                    epoch: self.epoch,
                    after_seq,
                });
            }
            Command::Send {
                room_id,
                body,
                client_id,
            } => {
                crate::faults::maybe_panic(body.as_str());
                return Some(Job::Send {
                    reference,
                    room_id,
                    body,
                    client_id,
                });
            }
        }
        None
    }

    fn on_typing(&mut self, reference: Option<&str>, room_id: RoomId, now: Instant) {
        let error = if !self.is_live(room_id) {
            ApiError::BadRequest(format!(
                "join room {room_id} before sending typing events to it"
            ))
        } else if !self.typing.take(now) {
            ApiError::RateLimited(1)
        } else {
            self.reg
                .publish_typing(room_id, self.user.id, &self.user.username);
            return;
        };
        self.push(ServerFrame::error(&error, reference, None));
    }

    /// What the hub queued for this session.
    pub(super) fn on_delivery(&mut self, delivery: Delivery, now: Instant) {
        match delivery {
            Delivery::Message(shared) => {
                let message = shared.value();
                // A seq already delivered is not worth encoding.
                let cursor = self.rooms.get_mut(&message.room_id);
                if let Some(cursor) = cursor.filter(|c| !c.delivered(message.seq)) {
                    let frame = shared.encoded(protocol::message_frame);
                    cursor.offer(message.seq, frame, now, &mut self.out);
                }
            }
            Delivery::Typing(shared) => {
                if self.is_live(shared.value().room_id) {
                    self.out.push(shared.encoded(protocol::typing_frame));
                }
            }
            Delivery::Updated(shared) => {
                let room_id = shared.value().room_id;
                if self.is_live(room_id) {
                    self.out.push(shared.encoded(protocol::updated_frame));
                } else if self.rooms.contains_key(&room_id) {
                    let held = self.held_updates.entry(room_id).or_default();
                    if held.len() < HELD_UPDATES {
                        held.push(shared);
                    }
                }
            }
            Delivery::Read(shared) => {
                let read = shared.value();
                match &mut self.reading {
                    Some((room, held)) if *room == read.room_id && read.user_id == self.user.id => {
                        held.push(shared);
                    }
                    _ => self
                        .out
                        .push(shared.encoded(|r| protocol::read_frame(r, None))),
                }
            }
            Delivery::Presence(shared) => {
                self.out.push(shared.encoded(protocol::presence_frame));
            }
        }
    }

    /// The reply to this session's `read`, then the user's own receipts for
    /// that room that arrived meanwhile and went further.
    fn on_read(
        &mut self,
        reference: Option<&str>,
        room_id: RoomId,
        result: Result<Seq, ApiError>,
    ) -> Result<(), Close> {
        let held = self
            .reading
            .take()
            .map(|(_, held)| held)
            .unwrap_or_default();
        let replied = match result {
            Ok(seq) => {
                let reply = ReadReceipt {
                    room_id,
                    user_id: self.user.id,
                    username: self.user.username.clone(),
                    last_read_seq: seq,
                };
                self.out.push(protocol::read_frame(&reply, reference));
                seq
            }
            Err(e) => {
                self.report(&e, reference, None)?;
                Seq(-1)
            }
        };
        for shared in held {
            if shared.value().last_read_seq > replied {
                self.out
                    .push(shared.encoded(|r| protocol::read_frame(r, None)));
            }
        }
        Ok(())
    }

    /// A job's answer. `Err` closes the session (an internal failure).
    pub(super) fn on_finished(&mut self, finished: Finished, now: Instant) -> Result<(), Close> {
        match finished {
            Finished::Joined {
                reference,
                room_id,
                epoch,
                result,
            } => self.on_joined(reference.as_deref(), room_id, epoch, result, now),
            Finished::Sent {
                reference,
                room_id,
                client_id,
                result,
            } => self.on_sent(reference.as_deref(), room_id, &client_id, result),
            Finished::Read {
                reference,
                room_id,
                result,
            } => self.on_read(reference.as_deref(), room_id, result),
            Finished::Crashed(e) => {
                tracing::error!(error = %e, "session task failed");
                Err(Close::Internal)
            }
            Finished::Filled { asked, filled } => {
                self.on_filled(&asked, filled, now);
                Ok(())
            }
            Finished::Rechecked(lost) => {
                self.on_rechecked(lost, now);
                Ok(())
            }
        }
    }

    fn on_joined(
        &mut self,
        reference: Option<&str>,
        room_id: RoomId,
        epoch: u64,
        result: Result<JoinRead, ApiError>,
        now: Instant,
    ) -> Result<(), Close> {
        if self.rooms.get(&room_id).map(|c| c.epoch) != Some(epoch) {
            return Ok(());
        }
        let read = match result {
            Ok(read) => read,
            Err(e) => {
                self.rooms.remove(&room_id);
                self.held_updates.remove(&room_id);
                self.reg.unsubscribe(room_id);
                return self.report(&e, reference, None);
            }
        };
        self.push(ServerFrame::Joined {
            room_id,
            last_seq: read.last_seq,
            truncated: read.truncated,
            reference,
        });
        let replay = read
            .replay
            .iter()
            .map(|m| (m.seq, protocol::message_frame(m)))
            .collect();
        // The listener's catch-up after a reconnect starts here at the latest.
        self.reg.observe(room_id, read.last_seq);
        if let Some(cursor) = self.rooms.get_mut(&room_id) {
            cursor.go_live(read.last_seq, replay, now, &mut self.out);
        }
        for shared in self.held_updates.remove(&room_id).unwrap_or_default() {
            self.out.push(shared.encoded(protocol::updated_frame));
        }
        Ok(())
    }

    fn on_sent(
        &mut self,
        reference: Option<&str>,
        room_id: RoomId,
        client_id: &str,
        result: Result<Sent, ApiError>,
    ) -> Result<(), Close> {
        match result {
            Ok(sent) => {
                self.push(ServerFrame::Ack {
                    client_id,
                    message: &sent.message,
                    reference,
                });
                Ok(())
            }
            Err(e) => {
                if matches!(e, ApiError::NotFound(_)) && self.rooms.remove(&room_id).is_some() {
                    // The user can no longer see a room this socket joined
                    // (role or membership changed): stop delivering it.
                    self.reg.unsubscribe(room_id);
                }
                self.report(&e, reference, Some(client_id))
            }
        }
    }

    /// An `error` frame, or [`Close::Internal`] for an internal failure.
    fn report(
        &mut self,
        error: &ApiError,
        reference: Option<&str>,
        client_id: Option<&str>,
    ) -> Result<(), Close> {
        if let ApiError::Internal(_) | ApiError::Db(DbError::Other(_)) = error {
            tracing::error!(error = ?error, "internal error in a WebSocket session");
            return Err(Close::Internal);
        }
        self.push(ServerFrame::error(error, reference, client_id));
        Ok(())
    }

    /// When the oldest open hole is due to be filled from the database.
    pub(super) fn gap_deadline(&self) -> Option<Instant> {
        self.rooms
            .values()
            .filter_map(|c| c.gap().map(|(_, _, since)| since + GAP_WAIT))
            .min()
    }

    /// The fill of every hole open for [`GAP_WAIT`] by `now`, if any.
    pub(super) fn fill(&self, now: Instant) -> Option<Job> {
        let holes: Vec<Hole> = self
            .rooms
            .iter()
            .filter_map(|(room_id, c)| {
                let (after, upto, since) = c.gap()?;
                (since + GAP_WAIT <= now).then_some(Hole {
                    room_id: *room_id,
                    epoch: c.epoch,
                    after,
                    upto,
                })
            })
            .collect();
        (!holes.is_empty()).then_some(Job::Fill(holes))
    }

    fn on_filled(&mut self, asked: &[RoomId], filled: Option<Filled>, now: Instant) {
        for (room_id, epoch, messages) in filled.unwrap_or_default() {
            let Some(cursor) = self.rooms.get_mut(&room_id) else {
                continue;
            };
            if cursor.epoch != epoch {
                continue;
            }
            for m in &messages {
                cursor.offer(m.seq, protocol::message_frame(m), now, &mut self.out);
            }
        }
        for room_id in asked {
            if let Some(cursor) = self.rooms.get_mut(room_id) {
                cursor.retry_gap(now);
            }
        }
    }

    /// The hub says the user's access may have shrunk: re-check now.
    pub(super) fn access_changed(&mut self, now: Instant) {
        self.recheck_at = Some(now);
    }

    /// When the access re-check is due. Not while a join's read is in
    /// flight: that read may predate the change, so the re-check waits for
    /// its answer.
    pub(super) fn recheck_deadline(&self) -> Option<Instant> {
        self.recheck_at
            .filter(|_| self.rooms.values().all(RoomCursor::is_live))
    }

    /// The re-check of every joined room (nothing to read when no room is joined).
    pub(super) fn recheck(&mut self) -> Option<Job> {
        self.recheck_at = None;
        let asked: RoomEpochs = self.rooms.iter().map(|(r, c)| (*r, c.epoch)).collect();
        (!asked.is_empty()).then_some(Job::Recheck(asked))
    }

    /// Leaves the rooms the re-check found invisible, unless they were left
    /// or joined again meanwhile (that join checked visibility itself).
    fn on_rechecked(&mut self, lost: Option<RoomEpochs>, now: Instant) {
        let Some(lost) = lost else {
            let retry = now + RECHECK_RETRY;
            // A signal that came meanwhile asks for a sooner one.
            self.recheck_at = Some(self.recheck_at.map_or(retry, |at| at.min(retry)));
            return;
        };
        for (room_id, epoch) in lost {
            if self.rooms.get(&room_id).map(|c| c.epoch) == Some(epoch) {
                self.leave_lost(room_id);
            }
        }
    }

    /// Stops delivering a room the user may no longer see and tells the
    /// client with the frame a `leave` gets.
    fn leave_lost(&mut self, room_id: RoomId) {
        self.rooms.remove(&room_id);
        self.held_updates.remove(&room_id);
        self.reg.unsubscribe(room_id);
        self.push(ServerFrame::Left {
            room_id,
            reference: None,
        });
        tracing::debug!(
            session = self.reg.id(),
            room_id = room_id.0,
            "room no longer visible: left"
        );
    }

    fn is_live(&self, room_id: RoomId) -> bool {
        self.rooms.get(&room_id).is_some_and(RoomCursor::is_live)
    }

    fn push(&mut self, frame: ServerFrame<'_>) {
        self.out.push(frame.encode());
    }
}

/// Per-session typing allowance: [`TYPING_BURST`], refilled at [`TYPING_PER_SECOND`].
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Self {
            tokens: TYPING_BURST,
            at: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let regained = now.saturating_duration_since(self.at).as_secs_f64() * TYPING_PER_SECOND;
        self.tokens = (self.tokens + regained).min(TYPING_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests;
