//! What a committed transaction announces: the events every instance's hub
//! must hear about.
//!
//! They are produced by the send path and the account and room handlers
//! through [`crate::announce::commit_and_announce`], travel to the other
//! instances as `NOTIFY` payloads (`store::events`), and reach this
//! instance's hub directly after the commit.

use crate::domain::MessageView;
use crate::ids::{TokenId, UserId};

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
}
