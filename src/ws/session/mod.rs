//! One socket's life: `hello`, then a loop over client frames, hub
//! deliveries, finished database jobs, heartbeats and shutdown, then a close
//! handshake.
//!
//! The loop owns the socket and does all writing, so frames leave in the
//! order they were decided. What to answer is decided by the socket-free
//! [`frames::Conversation`]; database work (join reads, sends, hole fills,
//! access re-checks) runs in its own tracked task ([`jobs`]) and the loop
//! waits for its answer alongside everything else: a connection is never
//! held while a socket is written, a slow socket never stalls a transaction,
//! and hub deliveries keep draining while a send waits for the pool. Client
//! frames are handled one at a time: the next one is read only after the
//! previous one's reply is decided.
//!
//! When the hub says the user's access may have shrunk (a role change, a
//! removal from a room, on any instance), a job re-checks every joined room
//! and the session leaves those it may no longer see with a `left` frame.

mod frames;
mod jobs;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Interval;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use self::frames::Conversation;
use self::jobs::Jobs;
use super::close::Close;
use crate::auth::AuthUser;
use crate::domain::UserView;
use crate::hub::{Admission, CloseReason, Delivery, Registration};
use crate::state::AppState;

/// Hub deliveries handled per write batch (one flush per batch).
const EVENT_BATCH: usize = 64;
/// Bound on writing the final frames (an ack at shutdown, the close frame).
const FINAL_WRITE_LIMIT: Duration = Duration::from_secs(5);
/// How long to wait for the peer's reply to our close frame.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);
/// A write that stays blocked this long marks a slow consumer, whatever the heartbeat.
const MIN_WRITE_LIMIT: Duration = Duration::from_secs(10);

/// How the loop ended, and so how the socket is closed.
#[derive(Debug)]
enum End {
    /// Send this close frame, then wait briefly for the reply (for
    /// [`Close::TooBig`]: discard what is left of the oversized frame).
    Close(Close),
    /// The peer started the close handshake: answer it.
    PeerClosed,
    /// The connection is gone or silent: just drop it.
    Gone,
}

/// Runs a session on an upgraded socket until it ends.
///
/// Built synchronously so the returned future holds only what an idle
/// socket needs (the session and the loop's state): the whole future is the
/// socket's memory while it waits, so the paths taken once (the close
/// handshake, a registration refused) are boxed and cost nothing until taken
/// (docs/benchmarks.md, scenario c).
pub(super) fn run<S>(
    state: AppState,
    ws: WebSocketStream<S>,
    user: AuthUser,
    view: UserView,
    admission: Admission,
) -> impl std::future::Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let user_id = user.id;
    // Boxed, so moving them into the future below moves a pointer and the
    // future holds no second copy.
    let session = match state.hub().register(user.token_id, user.id) {
        Some(reg) => Ok(Box::new(Session::new(state, ws, user, reg))),
        None => Err(Box::new(ws)),
    };
    async move {
        let _admission = admission;
        let mut session = match session {
            Ok(session) => session,
            Err(mut ws) => {
                // Logged out between the token check and now.
                let frame = Close::from(CloseReason::Revoked).frame();
                let close = tokio::time::timeout(
                    CLOSE_REPLY_WAIT,
                    WebSocketStream::close(&mut ws, Some(frame)),
                );
                let _ = Box::pin(close).await;
                return;
            }
        };
        let id = session.conv.registration().id();
        tracing::debug!(user_id = user_id.0, session = id, "session opened");
        let end = session.serve(&view).await;
        tracing::debug!(session = id, ?end, "session ending");
        Box::pin(session.finish(end)).await;
    }
}

struct Session<S> {
    ws: WebSocketStream<S>,
    /// What to answer: rooms, cursors, typing allowance, the hub registration.
    conv: Conversation,
    /// The database work in flight.
    jobs: Jobs,
    signals: Signals,
    liveness: Liveness,
    /// Frames of the loop's own (heartbeat pings), written after the
    /// conversation's.
    out: Vec<Message>,
    /// Shutdown has started; writes no longer watch for it.
    finishing: bool,
}

/// What can interrupt a session from outside.
#[derive(Clone)]
struct Signals {
    shutdown: CancellationToken,
    /// Cancelled when the hub closes the session.
    closed: CancellationToken,
    /// Notified when the user's access may have shrunk.
    access: Arc<Notify>,
}

/// Heartbeats and the write limit.
struct Liveness {
    every: Duration,
    write_limit: Duration,
    last_heard: Instant,
}

/// Why [`Signals::stopped`] returned.
enum Stop {
    Shutdown,
    Hub,
}

/// What [`Signals::access_or`] saw.
enum Wake {
    /// The hub's access signal.
    Signal,
    /// The re-check is due.
    Due,
}

/// Which timer fired.
enum Timer {
    Heartbeat,
    /// A hole in some room's seqs is due to be filled.
    Gap,
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn new(state: AppState, ws: WebSocketStream<S>, user: AuthUser, reg: Registration) -> Self {
        let heartbeat = state.settings().heartbeat;
        let user = Arc::new(user);
        Session {
            signals: Signals {
                shutdown: state.shutdown().token(),
                closed: reg.close_signal(),
                access: reg.access_signal(),
            },
            liveness: Liveness {
                every: heartbeat,
                write_limit: heartbeat.saturating_mul(3).max(MIN_WRITE_LIMIT),
                last_heard: Instant::now(),
            },
            jobs: Jobs::new(state, user.clone()),
            conv: Conversation::new(reg, user, Instant::now()),
            ws,
            out: Vec::new(),
            finishing: false,
        }
    }

    async fn serve(&mut self, view: &UserView) -> End {
        self.conv.hello(view, self.liveness.every);
        if let Err(end) = self.flush().await {
            return end;
        }
        let every = self.liveness.every;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let signals = self.signals.clone();

        loop {
            let recheck_at = (!self.jobs.rechecking())
                .then(|| self.conv.recheck_deadline())
                .flatten();
            let gap_at = (!self.jobs.filling())
                .then(|| self.conv.gap_deadline())
                .flatten();
            let reading = !self.jobs.frame_in_flight();
            // Biased, in this order: shutdown, then the hub's close; the
            // access signal, then a due re-check; hub deliveries; a finished
            // job (re-check, client frame, fill); a client frame, read only
            // when no frame's job is in flight; the heartbeat, then a due gap
            // fill. Hub deliveries already queued go out before the reply to
            // a client frame read later, so a reply also tells the client
            // that everything published before it was delivered.
            let result = tokio::select! {
                biased;
                stop = signals.stopped() => return End::Close(match stop {
                    Stop::Shutdown => Close::GoingAway,
                    Stop::Hub => hub_close(self.conv.registration()),
                }),
                wake = signals.access_or(recheck_at) => {
                    self.on_wake(wake);
                    Ok(())
                }
                Some(delivery) = self.conv.queue().recv() => {
                    self.on_deliveries(delivery);
                    Ok(())
                }
                finished = self.jobs.next() => {
                    self.conv.on_finished(finished, Instant::now()).map_err(End::Close)
                }
                frame = self.ws.next(), if reading => self.on_frame(frame),
                timer = next_timer(&mut ticks, gap_at) => self.on_timer(timer),
            };
            if let Err(end) = result {
                return end;
            }
            if let Err(end) = self.flush().await {
                return end;
            }
        }
    }

    /// A delivery and those queued behind it, up to [`EVENT_BATCH`].
    fn on_deliveries(&mut self, first: Delivery) {
        let now = Instant::now();
        self.conv.on_delivery(first, now);
        for _ in 1..EVENT_BATCH {
            match self.conv.queue().try_recv() {
                Ok(delivery) => self.conv.on_delivery(delivery, now),
                Err(_) => break,
            }
        }
    }

    fn on_wake(&mut self, wake: Wake) {
        match wake {
            Wake::Signal => self.conv.access_changed(Instant::now()),
            Wake::Due => {
                if let Some(job) = self.conv.recheck() {
                    self.jobs.start(job);
                }
            }
        }
    }

    fn on_frame(&mut self, frame: Option<Result<Message, WsError>>) -> Result<(), End> {
        let message = match frame {
            None => return Err(End::Gone),
            Some(Ok(message)) => message,
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                return Err(End::Close(Close::TooBig))
            }
            Some(Err(WsError::Utf8(_))) => return Err(End::Close(Close::InvalidPayload)),
            Some(Err(WsError::Protocol(e))) => {
                tracing::debug!(error = %e, "WebSocket protocol error");
                return Err(End::Close(Close::ProtocolError));
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket read failed");
                return Err(End::Gone);
            }
        };
        let now = Instant::now();
        self.liveness.last_heard = now;
        match message {
            Message::Text(text) => {
                // A bug in one frame's handling closes this socket with 1011
                // (the conversation may be half-updated); the process and the
                // other sockets go on.
                let conv = &mut self.conv;
                let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    conv.on_text(text.as_str(), now)
                }));
                match handled {
                    Ok(Some(job)) => self.jobs.start(job),
                    Ok(None) => {}
                    Err(_) => {
                        tracing::error!("a client frame's handling panicked; closing with 1011");
                        return Err(End::Close(Close::Internal));
                    }
                }
                Ok(())
            }
            Message::Binary(_) => Err(End::Close(Close::Unsupported)),
            Message::Close(_) => Err(End::PeerClosed),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
        }
    }

    fn on_timer(&mut self, timer: Timer) -> Result<(), End> {
        match timer {
            Timer::Heartbeat => {
                // While a frame's database work runs the socket is not read,
                // so silence is only counted when the loop is listening.
                let silent =
                    self.liveness.last_heard.elapsed() >= self.liveness.every.saturating_mul(3);
                if !self.jobs.frame_in_flight() && silent {
                    let session = self.conv.registration().id();
                    tracing::debug!(session, "peer silent for three heartbeats");
                    return Err(End::Gone);
                }
                self.out.push(Message::Ping(Bytes::new()));
            }
            Timer::Gap => {
                if let Some(job) = self.conv.fill(Instant::now()) {
                    self.jobs.start(job);
                }
            }
        }
        Ok(())
    }

    /// Writes every decided frame with one flush. Gives up when the hub
    /// closes the session or the write stays blocked past the write limit
    /// (a slow consumer); at shutdown the write gets [`FINAL_WRITE_LIMIT`].
    async fn flush(&mut self) -> Result<(), End> {
        let mut frames: Vec<Message> = self
            .conv
            .take_frames()
            .into_iter()
            .map(Message::Text)
            .collect();
        frames.append(&mut self.out);
        if frames.is_empty() {
            return Ok(());
        }
        let finishing = self.finishing;
        let limit = if finishing {
            FINAL_WRITE_LIMIT
        } else {
            self.liveness.write_limit
        };
        let signals = self.signals.clone();
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
            () = signals.closed.cancelled(), if !finishing => {
                return Err(End::Close(hub_close(self.conv.registration())))
            }
            () = signals.shutdown.cancelled(), if !finishing => {
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
            Err(_) => Err(End::Close(Close::TryAgainLater)),
        }
    }

    /// Closes the socket the way `end` says. At shutdown the frame in hand is
    /// finished first: an in-flight send is awaited (it commits regardless)
    /// and its ack written.
    async fn finish(mut self, end: End) {
        match end {
            End::Close(Close::GoingAway) => {
                self.finishing = true;
                if let Some(finished) = self.jobs.frame_finished().await {
                    if self.conv.on_finished(finished, Instant::now()).is_ok() {
                        let _ = self.flush().await;
                    }
                }
                self.close_handshake(Close::GoingAway).await;
            }
            End::Close(Close::TooBig) => self.close_too_big().await,
            End::Close(close) => self.close_handshake(close).await,
            End::PeerClosed => {
                // tungstenite queued the reply; this writes it.
                let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, self.ws.close(None)).await;
            }
            End::Gone => {}
        }
    }

    async fn close_handshake(&mut self, close: Close) {
        let sent =
            tokio::time::timeout(FINAL_WRITE_LIMIT, self.ws.close(Some(close.frame()))).await;
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

    /// [`Close::TooBig`], then read and discard (bounded) the rest of the oversized
    /// frame, which is still arriving, so the peer sees our close frame
    /// rather than a reset.
    async fn close_too_big(&mut self) {
        let frame = Close::TooBig.frame();
        let _ = tokio::time::timeout(FINAL_WRITE_LIMIT, self.ws.close(Some(frame))).await;
        let stream = self.ws.get_mut();
        // On the heap: a buffer in this future would enlarge every idle socket's.
        let mut sink = vec![0u8; 4096];
        let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

impl Signals {
    /// Waits for shutdown, then for the hub closing the session (in that order).
    async fn stopped(&self) -> Stop {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Stop::Shutdown,
            () = self.closed.cancelled() => Stop::Hub,
        }
    }

    /// Waits for the hub's access signal, then for `due`, the re-check's
    /// deadline (in that order).
    async fn access_or(&self, due: Option<Instant>) -> Wake {
        tokio::select! {
            biased;
            () = self.access.notified() => Wake::Signal,
            () = sleep_until(due), if due.is_some() => Wake::Due,
        }
    }
}

/// Waits for the next heartbeat, then for `gap_at`, a hole's fill deadline
/// (in that order).
async fn next_timer(ticks: &mut Interval, gap_at: Option<Instant>) -> Timer {
    tokio::select! {
        biased;
        _ = ticks.tick() => Timer::Heartbeat,
        () = sleep_until(gap_at), if gap_at.is_some() => Timer::Gap,
    }
}

/// The close the hub asked for (token revoked, or slow consumer).
fn hub_close(reg: &Registration) -> Close {
    reg.close_reason()
        .unwrap_or(CloseReason::SlowConsumer)
        .into()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
