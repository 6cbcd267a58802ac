//! Editing and deleting messages (`PATCH` / `DELETE
//! /api/rooms/{id}/messages/{seq}`).
//!
//! Errors come in the SPEC's order: a room the caller may not see or a seq
//! that does not exist is 404; not the author (for a delete: nor an agent or
//! admin) is 403; editing a deleted message is 409. A delete erases the
//! text in the table (the row stays as a tombstone, so seqs stay gapless);
//! deleting again is a no-op. Every change is announced as
//! `message_updated` to the room's sockets on every instance.

use futures_util::FutureExt;

use super::no_room;
use crate::announce::commit_and_announce;
use crate::auth::AuthUser;
use crate::db::Db;
use crate::domain::{MessageBody, MessageView};
use crate::error::ApiError;
use crate::events::Event;
use crate::hub::Hub;
use crate::ids::{RoomId, Seq};
use crate::store;
use crate::store::messages::Change;

fn no_message() -> ApiError {
    ApiError::NotFound("no such message".into())
}

/// Replaces the body of the caller's own message.
///
/// # Errors
/// `not_found`, `forbidden` (someone else's), `conflict` (deleted), the
/// database's.
pub async fn edit(
    db: &Db,
    hub: &Hub,
    editor: &AuthUser,
    room_id: RoomId,
    seq: Seq,
    body: MessageBody,
) -> Result<MessageView, ApiError> {
    let editor = editor.id;
    commit_and_announce(db, hub, move |conn, outbox| {
        async move {
            if !store::rooms::visible_to(conn, room_id, editor).await? {
                return Err(no_room());
            }
            let target = store::messages::lock(conn, room_id, seq)
                .await?
                .ok_or_else(no_message)?;
            if target.author_id != editor {
                return Err(ApiError::Forbidden(
                    "only the author edits a message".into(),
                ));
            }
            if target.deleted {
                return Err(ApiError::Conflict("the message was deleted".into()));
            }
            store::messages::change(conn, room_id, seq, Change::Edit(body.as_str())).await?;
            let message = store::messages::by_seq(conn, room_id, seq)
                .await?
                .ok_or_else(no_message)?;
            outbox.announce(Event::Updated(message.clone()));
            Ok(message)
        }
        .boxed()
    })
    .await
}

/// Deletes a message: the author's own, or any as an agent or admin.
///
/// # Errors
/// `not_found`, `forbidden`, the database's.
pub async fn delete(
    db: &Db,
    hub: &Hub,
    caller: &AuthUser,
    room_id: RoomId,
    seq: Seq,
) -> Result<(), ApiError> {
    let (caller_id, moderator) = (caller.id, caller.role.sees_every_room());
    commit_and_announce(db, hub, move |conn, outbox| {
        async move {
            if !store::rooms::visible_to(conn, room_id, caller_id).await? {
                return Err(no_room());
            }
            let target = store::messages::lock(conn, room_id, seq)
                .await?
                .ok_or_else(no_message)?;
            if target.author_id != caller_id && !moderator {
                return Err(ApiError::Forbidden(
                    "only the author, an agent or an admin deletes a message".into(),
                ));
            }
            if target.deleted {
                return Ok(());
            }
            store::messages::change(conn, room_id, seq, Change::Delete).await?;
            let message = store::messages::by_seq(conn, room_id, seq)
                .await?
                .ok_or_else(no_message)?;
            outbox.announce(Event::Updated(message));
            Ok(())
        }
        .boxed()
    })
    .await
}
