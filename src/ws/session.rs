//! One socket's life: `hello`, then a loop over client frames, hub events,
//! heartbeats and shutdown, then a close handshake.
//!
//! The loop owns the socket and does all writing, so frames leave in the
//! order they were decided. Database work (join reads, sends, hole fills)
//! runs in its own tracked task and the loop waits for its answer alongside
//! everything else: a connection is never held while a socket is written, a
//! slow socket never stalls a transaction, and hub events keep draining
//! while a send waits for the pool. Client frames are handled one at a time:
//! the next one is read only after the previous one's reply is decided.
//!
//! When the hub says the user's access may have shrunk (a role change, a
//! removal from a room, on any instance), a task re-checks every joined room
//! and the session leaves those it may no longer see with a `left` frame.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::Notify;
use tokio::task::{JoinError, JoinHandle};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::cursor::{RoomCursor, GAP_WAIT};
use super::protocol::{self, Command, ServerFrame};
use crate::auth::AuthUser;
use crate::chat::{self, Sent};
use crate::domain::{MessageView, UserView};
use crate::error::ApiError;
use crate::hub::{Admission, CloseReason, Event, Registration};
use crate::schema::rooms;
use crate::state::AppState;
use crate::store;

/// Messages replayed by one `join` at most (SPEC: the latest 1000).
const REPLAY_LIMIT: i64 = 1000;
/// Hub events handled per write batch (one flush per batch).
const EVENT_BATCH: usize = 64;
/// Typing events a session may send in a burst, then one per second.
const TYPING_BURST: f64 = 5.0;
/// Typing tokens regained per second.
const TYPING_PER_SECOND: f64 = 1.0;
/// Bound on writing the final frames (an ack at shutdown, the close frame).
const FINAL_WRITE_LIMIT: Duration = Duration::from_secs(5);
/// How long to wait for the peer's reply to our close frame.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);
/// A write that stays blocked this long marks a slow consumer, whatever the heartbeat.
const MIN_WRITE_LIMIT: Duration = Duration::from_secs(10);
/// Pause before retrying an access re-check that failed (pool busy, database down).
const RECHECK_RETRY: Duration = Duration::from_millis(500);

/// How the loop ended, and so how the socket is closed.
#[derive(Debug)]
enum End {
    /// Send this close frame, then wait briefly for the reply.
    Close(u16, &'static str),
    /// The peer sent a frame over 64 KiB: close 1009 and discard what is left of it.
    TooBig,
    /// The peer started the close handshake: answer it.
    PeerClosed,
    /// The connection is gone or silent: just drop it.
    Gone,
}

/// What a task of database work reports back.
enum Done {
    Joined {
        room_id: i64,
        epoch: u64,
        result: Result<JoinRead, ApiError>,
    },
    Sent {
        room_id: i64,
        client_id: String,
        result: Result<Sent, ApiError>,
    },
}

struct JoinRead {
    last_seq: i64,
    replay: Vec<MessageView>,
    truncated: bool,
}

type Filled = Result<Vec<(i64, u64, Vec<MessageView>)>, ApiError>;
/// An access re-check's answer: the rooms (with their join epoch) the user
/// may no longer see.
type Rechecked = Result<Vec<(i64, u64)>, ApiError>;

/// Runs a session on an upgraded socket until it ends.
pub(super) async fn run<S>(
    state: AppState,
    ws: WebSocketStream<S>,
    user: AuthUser,
    view: UserView,
    admission: Admission,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _admission = admission;
    let mut ws = ws;
    let Some(registration) = state.hub().register(user.token_id, user.id) else {
        // Logged out between the token check and now.
        let (code, reason) = CloseReason::Revoked.close_frame();
        let _ =
            tokio::time::timeout(CLOSE_REPLY_WAIT, ws.close(Some(close_frame(code, reason)))).await;
        return;
    };
    let heartbeat = state.settings().heartbeat;
    let mut session = Session {
        close_signal: registration.close_signal(),
        access_signal: registration.access_signal(),
        shutdown: state.shutdown().token(),
        write_limit: (heartbeat * 3).max(MIN_WRITE_LIMIT),
        heartbeat,
        state,
        user: Arc::new(user),
        ws,
        reg: registration,
        rooms: HashMap::new(),
        epoch: 0,
        out: Vec::new(),
        inflight: None,
        fill: None,
        recheck: None,
        recheck_at: None,
        last_heard: Instant::now(),
        typing: Bucket::new(),
        finishing: false,
    };
    tracing::debug!(
        user_id = session.user.id,
        session = session.reg.id(),
        "session opened"
    );
    let end = session.serve(&view).await;
    tracing::debug!(session = session.reg.id(), ?end, "session ending");
    session.finish(end).await;
}

struct Session<S> {
    state: AppState,
    user: Arc<AuthUser>,
    ws: WebSocketStream<S>,
    reg: Registration,
    close_signal: CancellationToken,
    /// Notified when the user's access may have shrunk.
    access_signal: Arc<Notify>,
    shutdown: CancellationToken,
    rooms: HashMap<i64, RoomCursor>,
    epoch: u64,
    /// Frames decided but not yet written.
    out: Vec<Message>,
    /// The client frame being executed: its `ref` and its database task.
    inflight: Option<(Option<String>, JoinHandle<Done>)>,
    /// A hole fill: the rooms asked for and the task.
    fill: Option<(Vec<i64>, JoinHandle<Filled>)>,
    /// An access re-check in flight.
    recheck: Option<((), JoinHandle<Rechecked>)>,
    /// When the next access re-check is due (set by the hub's signal).
    recheck_at: Option<Instant>,
    last_heard: Instant,
    heartbeat: Duration,
    write_limit: Duration,
    typing: Bucket,
    /// Shutdown has started; writes no longer watch for it.
    finishing: bool,
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn serve(&mut self, view: &UserView) -> End {
        self.push(ServerFrame::Hello {
            user: view,
            heartbeat_ms: self.heartbeat.as_millis() as u64,
        });
        if let Err(end) = self.flush().await {
            return end;
        }
        let start = tokio::time::Instant::now() + self.heartbeat;
        let mut ticks = tokio::time::interval_at(start, self.heartbeat);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.shutdown.clone();
        let closed = self.close_signal.clone();
        let access = self.access_signal.clone();

        loop {
            let gap_at = self.next_gap_deadline();
            // Not while a join's read is in flight: that read may predate the
            // change, so the re-check waits for its answer.
            let recheck_due = self.recheck_at.is_some()
                && self.recheck.is_none()
                && self.rooms.values().all(RoomCursor::is_live);
            let recheck_at = self.recheck_at;
            // Biased: hub events already queued go out before the reply to a
            // client frame read later, so a reply also tells the client that
            // everything published before it was delivered.
            let result = tokio::select! {
                biased;
                () = shutdown.cancelled() => return End::Close(1001, "server shutting down"),
                () = closed.cancelled() => return hub_close(&self.reg),
                () = access.notified() => {
                    self.recheck_at = Some(Instant::now());
                    Ok(())
                }
                () = sleep_until(recheck_at), if recheck_due => {
                    self.start_recheck();
                    Ok(())
                }
                rechecked = wait_slot(&mut self.recheck) => {
                    self.recheck = None;
                    self.on_rechecked(rechecked);
                    Ok(())
                }
                Some(event) = self.reg.queue.recv() => {
                    self.on_event(event);
                    for _ in 1..EVENT_BATCH {
                        match self.reg.queue.try_recv() {
                            Ok(event) => self.on_event(event),
                            Err(_) => break,
                        }
                    }
                    Ok(())
                }
                done = wait_slot(&mut self.inflight) => {
                    let (reference, _) = self.inflight.take().expect("polled only when set");
                    self.on_done(reference.as_deref(), done)
                }
                filled = wait_slot(&mut self.fill) => {
                    let (asked, _) = self.fill.take().expect("polled only when set");
                    self.on_filled(asked, filled);
                    Ok(())
                }
                frame = self.ws.next(), if self.inflight.is_none() => self.on_frame(frame),
                _ = ticks.tick() => self.on_tick(),
                () = sleep_until(gap_at), if gap_at.is_some() && self.fill.is_none() => {
                    self.start_fill();
                    Ok(())
                }
            };
            if let Err(end) = result {
                return end;
            }
            if let Err(end) = self.flush().await {
                return end;
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Message {
                room_id,
                seq,
                frame,
            } => {
                if let Some(cursor) = self.rooms.get_mut(&room_id) {
                    let mut frames = Vec::new();
                    cursor.offer(seq, frame, Instant::now(), &mut frames);
                    self.out.extend(frames.into_iter().map(Message::Text));
                }
            }
            Event::Typing { room_id, frame } => {
                if self.rooms.get(&room_id).is_some_and(RoomCursor::is_live) {
                    self.out.push(Message::Text(frame));
                }
            }
        }
    }

    fn on_frame(&mut self, frame: Option<Result<Message, WsError>>) -> Result<(), End> {
        let message = match frame {
            None => return Err(End::Gone),
            Some(Ok(message)) => message,
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                return Err(End::TooBig)
            }
            Some(Err(WsError::Utf8(_))) => return Err(End::Close(1007, "invalid UTF-8")),
            Some(Err(WsError::Protocol(e))) => {
                tracing::debug!(error = %e, "WebSocket protocol error");
                return Err(End::Close(1002, "protocol error"));
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket read failed");
                return Err(End::Gone);
            }
        };
        self.last_heard = Instant::now();
        match message {
            Message::Text(text) => {
                self.on_text(text.as_str());
                Ok(())
            }
            Message::Binary(_) => Err(End::Close(1003, "binary frames are not supported")),
            Message::Close(_) => Err(End::PeerClosed),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
        }
    }

    fn on_text(&mut self, text: &str) {
        let incoming = protocol::parse(text);
        let reference = incoming.reference;
        let command = match incoming.command {
            Ok(command) => command,
            Err(rejected) => {
                self.push(ServerFrame::error(
                    &rejected.error,
                    reference.as_deref(),
                    rejected.client_id.as_deref(),
                ));
                return;
            }
        };
        match command {
            Command::Ping => self.push(ServerFrame::Pong {
                reference: reference.as_deref(),
            }),
            Command::Leave { room_id } => {
                self.rooms.remove(&room_id);
                self.reg.unsubscribe(room_id);
                self.push(ServerFrame::Left {
                    room_id,
                    reference: reference.as_deref(),
                });
            }
            Command::Typing { room_id } => {
                let error = if !self.rooms.get(&room_id).is_some_and(RoomCursor::is_live) {
                    Some(ApiError::BadRequest(format!(
                        "join room {room_id} before sending typing events to it"
                    )))
                } else if !self.typing.take() {
                    Some(ApiError::RateLimited(1))
                } else {
                    None
                };
                match error {
                    Some(e) => self.push(ServerFrame::error(&e, reference.as_deref(), None)),
                    None => self.state.hub().publish_typing(
                        room_id,
                        self.reg.id(),
                        self.user.id,
                        &self.user.username,
                    ),
                }
            }
            Command::Join { room_id, after_seq } => {
                self.epoch += 1;
                let epoch = self.epoch;
                // Subscribe before reading the backlog: whatever commits after
                // the read is then sure to arrive live (held by the cursor).
                self.rooms.insert(room_id, RoomCursor::joining(epoch));
                self.reg.subscribe(room_id);
                let state = self.state.clone();
                let user_id = self.user.id;
                let task = self.state.shutdown().tracker().spawn(async move {
                    let result = read_join(&state, user_id, room_id, after_seq).await;
                    Done::Joined {
                        room_id,
                        epoch,
                        result,
                    }
                });
                self.inflight = Some((reference, task));
            }
            Command::Send {
                room_id,
                body,
                client_id,
            } => {
                let state = self.state.clone();
                let user = self.user.clone();
                let task = self.state.shutdown().tracker().spawn(async move {
                    let key = client_id.as_str().to_owned();
                    let result =
                        chat::send_message(&state, &user, room_id, body, Some(client_id)).await;
                    Done::Sent {
                        room_id,
                        client_id: key,
                        result,
                    }
                });
                self.inflight = Some((reference, task));
            }
        }
    }

    fn on_done(
        &mut self,
        reference: Option<&str>,
        done: Result<Done, JoinError>,
    ) -> Result<(), End> {
        let done = done.map_err(|e| {
            tracing::error!(error = %e, "session task failed");
            End::Close(1011, "internal error")
        })?;
        match done {
            Done::Joined {
                room_id,
                epoch,
                result,
            } => {
                if self.rooms.get(&room_id).map(|c| c.epoch) != Some(epoch) {
                    return Ok(());
                }
                match result {
                    Ok(read) => {
                        self.push(ServerFrame::Joined {
                            room_id,
                            last_seq: read.last_seq,
                            truncated: read.truncated,
                            reference,
                        });
                        let replay = read
                            .replay
                            .iter()
                            .map(|m| (m.seq, ServerFrame::Message { message: m }.encode()))
                            .collect();
                        // The listener's catch-up after a reconnect starts here at the latest.
                        self.reg.observe(room_id, read.last_seq);
                        let mut frames = Vec::new();
                        if let Some(cursor) = self.rooms.get_mut(&room_id) {
                            cursor.go_live(read.last_seq, replay, Instant::now(), &mut frames);
                        }
                        self.out.extend(frames.into_iter().map(Message::Text));
                        Ok(())
                    }
                    Err(e) => {
                        self.rooms.remove(&room_id);
                        self.reg.unsubscribe(room_id);
                        self.report(&e, reference, None)
                    }
                }
            }
            Done::Sent {
                room_id,
                client_id,
                result,
            } => match result {
                Ok(sent) => {
                    self.push(ServerFrame::Ack {
                        client_id: &client_id,
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
                    self.report(&e, reference, Some(&client_id))
                }
            },
        }
    }

    /// An `error` frame, or close 1011 for an internal failure.
    fn report(
        &mut self,
        error: &ApiError,
        reference: Option<&str>,
        client_id: Option<&str>,
    ) -> Result<(), End> {
        if error.code() == "internal" {
            tracing::error!(error = ?error, "internal error in a WebSocket session");
            return Err(End::Close(1011, "internal error"));
        }
        self.push(ServerFrame::error(error, reference, client_id));
        Ok(())
    }

    fn on_tick(&mut self) -> Result<(), End> {
        // While a frame's database work runs the socket is not read, so
        // silence is only counted when the loop is listening.
        if self.inflight.is_none() && self.last_heard.elapsed() >= self.heartbeat * 3 {
            tracing::debug!(session = self.reg.id(), "peer silent for three heartbeats");
            return Err(End::Gone);
        }
        self.out.push(Message::Ping(Bytes::new()));
        Ok(())
    }

    fn next_gap_deadline(&self) -> Option<Instant> {
        self.rooms
            .values()
            .filter_map(|c| c.gap().map(|(_, _, since)| since + GAP_WAIT))
            .min()
    }

    fn start_fill(&mut self) {
        let now = Instant::now();
        let asked: Vec<(i64, u64, i64, i64)> = self
            .rooms
            .iter()
            .filter_map(|(room_id, c)| {
                let (after, upto, since) = c.gap()?;
                (since + GAP_WAIT <= now).then_some((*room_id, c.epoch, after, upto))
            })
            .collect();
        if asked.is_empty() {
            return;
        }
        let rooms = asked.iter().map(|(room_id, ..)| *room_id).collect();
        let state = self.state.clone();
        let task = self.state.shutdown().tracker().spawn(async move {
            state
                .db()
                .transaction(move |conn| {
                    async move {
                        let mut filled = Vec::with_capacity(asked.len());
                        for (room_id, epoch, after, upto) in asked {
                            let limit = (upto - after).clamp(1, REPLAY_LIMIT);
                            let messages =
                                store::messages::since(conn, room_id, after, limit).await?;
                            filled.push((room_id, epoch, messages));
                        }
                        Ok::<_, ApiError>(filled)
                    }
                    .boxed()
                })
                .await
        });
        self.fill = Some((rooms, task));
    }

    fn on_filled(&mut self, asked: Vec<i64>, filled: Result<Filled, JoinError>) {
        let now = Instant::now();
        match filled {
            Ok(Ok(rooms)) => {
                let mut frames = Vec::new();
                for (room_id, epoch, messages) in rooms {
                    let Some(cursor) = self.rooms.get_mut(&room_id) else {
                        continue;
                    };
                    if cursor.epoch != epoch {
                        continue;
                    }
                    for m in &messages {
                        let frame = ServerFrame::Message { message: m }.encode();
                        cursor.offer(m.seq, frame, now, &mut frames);
                    }
                }
                self.out.extend(frames.into_iter().map(Message::Text));
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not fill a gap in delivery; will retry")
            }
            Err(e) => tracing::error!(error = %e, "gap fill task failed; will retry"),
        }
        for room_id in asked {
            if let Some(cursor) = self.rooms.get_mut(&room_id) {
                cursor.retry_gap(now);
            }
        }
    }

    /// Starts re-checking every joined room's visibility in one transaction
    /// (nothing to read when no room is joined).
    fn start_recheck(&mut self) {
        self.recheck_at = None;
        let asked: Vec<(i64, u64)> = self.rooms.iter().map(|(r, c)| (*r, c.epoch)).collect();
        if asked.is_empty() {
            return;
        }
        let state = self.state.clone();
        let user_id = self.user.id;
        let task = self.state.shutdown().tracker().spawn(async move {
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
        });
        self.recheck = Some(((), task));
    }

    /// Leaves the rooms the re-check found invisible, unless they were left
    /// or joined again meanwhile (that join checked visibility itself).
    fn on_rechecked(&mut self, rechecked: Result<Rechecked, JoinError>) {
        match rechecked {
            Ok(Ok(lost)) => {
                for (room_id, epoch) in lost {
                    if self.rooms.get(&room_id).map(|c| c.epoch) == Some(epoch) {
                        self.leave_lost(room_id);
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not re-check joined rooms; will retry");
                self.retry_recheck();
            }
            Err(e) => {
                tracing::error!(error = %e, "access re-check task failed; will retry");
                self.retry_recheck();
            }
        }
    }

    fn retry_recheck(&mut self) {
        let retry = Instant::now() + RECHECK_RETRY;
        // A signal that came meanwhile asks for a sooner one.
        self.recheck_at = Some(self.recheck_at.map_or(retry, |at| at.min(retry)));
    }

    /// Stops delivering a room the user may no longer see and tells the
    /// client with the frame a `leave` gets.
    fn leave_lost(&mut self, room_id: i64) {
        self.rooms.remove(&room_id);
        self.reg.unsubscribe(room_id);
        self.push(ServerFrame::Left {
            room_id,
            reference: None,
        });
        tracing::debug!(
            session = self.reg.id(),
            room_id,
            "room no longer visible: left"
        );
    }

    fn push(&mut self, frame: ServerFrame<'_>) {
        self.out.push(Message::Text(frame.encode()));
    }

    /// Writes every decided frame with one flush. Gives up when the hub
    /// closes the session or the write stays blocked past the write limit
    /// (a slow consumer); at shutdown the write gets [`FINAL_WRITE_LIMIT`].
    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let frames = std::mem::take(&mut self.out);
        let limit = if self.finishing {
            FINAL_WRITE_LIMIT
        } else {
            self.write_limit
        };
        let closed = self.close_signal.clone();
        let shutdown = self.shutdown.clone();
        let finishing = self.finishing;
        let ws = &mut self.ws;
        let write = tokio::time::timeout(limit, async move {
            for frame in frames {
                ws.feed(frame).await?;
            }
            ws.flush().await
        });
        tokio::pin!(write);
        let written = tokio::select! {
            biased;
            written = &mut write => written,
            () = closed.cancelled(), if !finishing => return Err(hub_close(&self.reg)),
            () = shutdown.cancelled(), if !finishing => {
                // Let this batch (it may hold an ack) out, briefly.
                tokio::time::timeout(FINAL_WRITE_LIMIT, write)
                    .await
                    .unwrap_or(Ok(Ok(())))
            }
        };
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket write failed");
                Err(End::Gone)
            }
            Err(_) => Err(End::Close(1013, "slow consumer")),
        }
    }

    /// Closes the socket the way `end` says. At shutdown the frame in hand is
    /// finished first: an in-flight send is awaited (it commits regardless)
    /// and its ack written.
    async fn finish(mut self, end: End) {
        match end {
            End::Close(code, reason) => {
                if code == 1001 {
                    self.finishing = true;
                    if let Some((reference, task)) = self.inflight.take() {
                        let done = task.await;
                        if self.on_done(reference.as_deref(), done).is_ok() {
                            let _ = self.flush().await;
                        }
                    }
                }
                self.close_handshake(code, reason).await;
            }
            End::TooBig => {
                let frame = close_frame(1009, "frame larger than 64 KiB");
                let _ = tokio::time::timeout(FINAL_WRITE_LIMIT, self.ws.close(Some(frame))).await;
                // The rest of the oversized frame is still arriving: read and
                // discard it (bounded), so the peer sees our close frame rather
                // than a reset.
                let stream = self.ws.get_mut();
                let mut sink = [0u8; 4096];
                let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
            }
            End::PeerClosed => {
                // tungstenite queued the reply; this writes it.
                let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, self.ws.close(None)).await;
            }
            End::Gone => {}
        }
    }

    async fn close_handshake(&mut self, code: u16, reason: &'static str) {
        let sent = tokio::time::timeout(
            FINAL_WRITE_LIMIT,
            self.ws.close(Some(close_frame(code, reason))),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
            while let Some(Ok(message)) = self.ws.next().await {
                if message.is_close() {
                    break;
                }
            }
        })
        .await;
    }
}

/// The join's database read: visibility (role read fresh), the room's last
/// seq and the backlog after `after_seq` (the latest [`REPLAY_LIMIT`] at most).
async fn read_join(
    state: &AppState,
    user_id: i64,
    room_id: i64,
    after_seq: Option<i64>,
) -> Result<JoinRead, ApiError> {
    state
        .db()
        .transaction(move |conn| {
            async move {
                if !store::rooms::visible_to(conn, room_id, user_id).await? {
                    return Err(ApiError::NotFound("no such room".into()));
                }
                let last_seq: i64 = rooms::table
                    .find(room_id)
                    .select(rooms::last_seq)
                    .first(conn)
                    .await
                    .optional()?
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

/// The close the hub asked for (1008 or 1013).
fn hub_close(reg: &Registration) -> End {
    let (code, reason) = reg
        .close_reason()
        .unwrap_or(CloseReason::SlowConsumer)
        .close_frame();
    End::Close(code, reason)
}

/// Waits for the task in `slot`, or forever when there is none (the select
/// arm is disabled then anyway).
async fn wait_slot<K, T>(slot: &mut Option<(K, JoinHandle<T>)>) -> Result<T, JoinError> {
    match slot {
        Some((_, task)) => task.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn close_frame(code: u16, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from_static(reason),
    }
}

/// Per-session typing allowance: [`TYPING_BURST`], refilled at [`TYPING_PER_SECOND`].
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new() -> Self {
        Self {
            tokens: TYPING_BURST,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let regained = now.duration_since(self.at).as_secs_f64() * TYPING_PER_SECOND;
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
