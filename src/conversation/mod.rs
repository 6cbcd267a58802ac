//! What happens to a conversation after a message is sent (SPEC §5): read
//! markers ([`reads`]) and edits and deletes ([`edits`]). HTTP and WebSocket
//! call the same functions; each commits and announces in one call, so the
//! event reaches every instance's sockets.

pub mod edits;
pub mod reads;

use crate::error::ApiError;

fn no_room() -> ApiError {
    ApiError::NotFound("no such room".into())
}
