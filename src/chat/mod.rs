//! The one send path, shared by `POST /api/rooms/{id}/messages` and the
//! WebSocket `send` frame.
//!
//! A send is handed to the process's [`Committer`] (group commit, see
//! [`batch`]) and answered once its batch has committed: the ack of every
//! send means durable, whichever batch it rode in.

mod batch;

use tokio::sync::oneshot;

use crate::domain::{AuthorView, ClientId, MessageBody, MessageView};
use crate::error::ApiError;
use crate::ids::RoomId;
use crate::limits::Limits;
use crate::store::sends::NewSend;

pub use batch::{Committer, CommitterLimits};

/// The outcome of a send.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The stored message (the original one for a repeated `client_id`).
    pub message: MessageView,
    /// False when the `client_id` had been used before and nothing was stored.
    pub created: bool,
}

/// Stores a message in `room_id` from `author` and announces it once committed.
///
/// The send joins the next batch of the group commit: the room's visibility,
/// the `(author, client_id)` check, the next seq and the insert for the
/// whole batch are one statement, its announcement one `NOTIFY`, and no
/// pooled connection is held while sockets are written.
///
/// # Errors
/// `rate_limited` past the author's send rate (`CHATPOOL_SEND_RATE`, HTTP and
/// WebSocket together); `not_found` for a room the user may not see; `db_busy`, `db_timeout`,
/// `db_unavailable` from the database; `shutting_down` once the committer
/// has stopped. A failed send stored nothing and may be retried with the
/// same `client_id`.
pub async fn send_message(
    committer: &Committer,
    limits: &Limits,
    author: AuthorView,
    room_id: RoomId,
    body: MessageBody,
    client_id: Option<ClientId>,
) -> Result<Sent, ApiError> {
    limits
        .send
        .check(&author.id)
        .map_err(ApiError::RateLimited)?;
    let (reply, answer) = oneshot::channel();
    let send = NewSend {
        room_id,
        author_id: author.id,
        client_id: client_id.map(|c| c.as_str().to_owned()),
        body: body.as_str().to_owned(),
    };
    committer.submit(send, author, reply)?;
    answer.await.unwrap_or(Err(ApiError::ShuttingDown))
}
