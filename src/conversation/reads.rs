//! Read markers: `POST /api/rooms/{id}/read` and the WebSocket `read` frame.

use futures_util::FutureExt;

use super::no_room;
use crate::announce::commit_and_announce;
use crate::auth::AuthUser;
use crate::db::Db;
use crate::error::ApiError;
use crate::events::{Event, ReadReceipt};
use crate::hub::Hub;
use crate::ids::{RoomId, Seq};
use crate::store;

pub use crate::store::reads::Marked;

/// Moves `reader`'s marker in `room_id` up to `seq` (never backwards, never
/// past the room's `last_seq`); a marker that moved is announced as a read
/// receipt to the room's sockets and the reader's, on every instance.
///
/// # Errors
/// `bad_request` for a negative seq; `not_found` for a room the reader may
/// not see; the database's.
pub async fn mark_read(
    db: &Db,
    hub: &Hub,
    reader: &AuthUser,
    room_id: RoomId,
    seq: Seq,
) -> Result<Marked, ApiError> {
    if seq.0 < 0 {
        return Err(ApiError::BadRequest("seq must not be negative".into()));
    }
    let (user_id, username) = (reader.id, reader.username.clone());
    commit_and_announce(db, hub, move |conn, outbox| {
        async move {
            let marked = store::reads::mark(conn, room_id, user_id, seq)
                .await?
                .ok_or_else(no_room)?;
            if marked.moved {
                outbox.announce(Event::Read(ReadReceipt {
                    room_id,
                    user_id,
                    username,
                    last_read_seq: marked.last_read_seq,
                }));
            }
            Ok(marked)
        }
        .boxed()
    })
    .await
}
