//! What the hub puts in a session's queue: the committed data, in one
//! [`Shared`] entry per publish that every recipient's queue holds an `Arc`
//! of, with the encoding the first delivering session makes through its own
//! encoder (see the hub's module doc).

use std::sync::{Arc, OnceLock};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::domain::MessageView;
use crate::events::{PresenceChange, ReadReceipt};
use crate::ids::{RoomId, UserId};

/// One published item, shared by every session it is queued for: the data,
/// and its encoding, made once by the first session that delivers it.
#[derive(Debug)]
pub struct Shared<T> {
    value: T,
    encoded: OnceLock<Utf8Bytes>,
}

impl<T> Shared<T> {
    pub(super) fn new(value: T) -> Arc<Self> {
        Arc::new(Self {
            value,
            encoded: OnceLock::new(),
        })
    }

    /// The published data.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The encoded form: the first caller computes it with `encode` (a racing
    /// caller waits for that one), every caller gets the same bytes.
    pub fn encoded(&self, encode: impl FnOnce(&T) -> Utf8Bytes) -> Utf8Bytes {
        self.encoded.get_or_init(|| encode(&self.value)).clone()
    }
}

/// Someone is typing in a room.
#[derive(Debug)]
pub struct Typing {
    /// The room.
    pub room_id: RoomId,
    /// Who is typing.
    pub user_id: UserId,
    /// Their login name.
    pub username: String,
}

/// What the hub puts in a session's queue.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A committed message of a room the session subscribed to (its room and
    /// seq order and de-duplicate it).
    Message(Arc<Shared<MessageView>>),
    /// Someone else is typing in a subscribed room.
    Typing(Arc<Shared<Typing>>),
    /// A message of a subscribed room was edited or deleted: its new state.
    Updated(Arc<Shared<MessageView>>),
    /// A read marker moved, in a subscribed room or of the session's user.
    Read(Arc<Shared<ReadReceipt>>),
    /// Someone came online or went offline in a subscribed room (or it is
    /// the session's user).
    Presence(Arc<Shared<PresenceChange>>),
}
