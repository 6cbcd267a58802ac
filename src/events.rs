//! What a committed transaction announces: the events every instance's hub
//! must hear about.
//!
//! They are produced by the send path and the account and room handlers
//! through [`crate::announce::commit_and_announce`], travel to the other
//! instances as `NOTIFY` payloads (`store::events`), and reach this
//! instance's hub directly after the commit.

use crate::domain::MessageView;
use crate::ids::{RoomId, Seq, TokenId, UserId};

/// A read marker that moved forward (SPEC §5 read receipts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadReceipt {
    /// The room.
    pub room_id: RoomId,
    /// Whose marker.
    pub user_id: UserId,
    /// Their login name.
    pub username: String,
    /// The marker now.
    pub last_read_seq: Seq,
}

/// A user's first socket joined a room, or their last one left it, counted
/// over every instance (SPEC §5 presence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// The room.
    pub room_id: RoomId,
    /// Who.
    pub user_id: UserId,
    /// Their login name.
    pub username: String,
    /// Online (first socket joined) or offline (last one gone).
    pub online: bool,
    /// Unique per change, so the copy that returns through this instance's
    /// own listener is told apart from a later change with the same content.
    pub nonce: u64,
}

/// A committed change that sockets (on any instance) must react to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A stored message: delivered to every socket joined to its room.
    Message(MessageView),
    /// A revoked token: its sockets close with 1008 everywhere.
    Revoked {
        /// The token's id.
        token_id: TokenId,
    },
    /// A user's access may have shrunk (role changed, removed from a room):
    /// their sockets re-check the rooms they joined.
    AccessChanged {
        /// The user's id.
        user_id: UserId,
    },
    /// A message was edited or deleted: its new state, for every socket
    /// joined to its room.
    Updated(MessageView),
    /// A read marker moved forward: for the room's sockets and the user's.
    Read(ReadReceipt),
    /// A user came online in a room or went offline there.
    Presence(PresenceChange),
}
