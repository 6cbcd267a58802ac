//! The one send path, shared by `POST /api/rooms/{id}/messages` and the
//! WebSocket `send` frame.

use futures_util::FutureExt;

use crate::announce::commit_and_announce;
use crate::auth::AuthUser;
use crate::db::DbError;
use crate::domain::{ClientId, MessageBody, MessageView};
use crate::error::ApiError;
use crate::events::Event;
use crate::metrics as m;
use crate::state::AppState;
use crate::store;

/// The outcome of a send.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The stored message (the original one for a repeated `client_id`).
    pub message: MessageView,
    /// False when the `client_id` had been used before and nothing was stored.
    pub created: bool,
}

enum Attempt {
    Failed(ApiError),
    /// A concurrent send with the same `client_id` committed first.
    Raced,
}

impl From<DbError> for Attempt {
    fn from(e: DbError) -> Self {
        Attempt::Failed(e.into())
    }
}

impl From<diesel::result::Error> for Attempt {
    fn from(e: diesel::result::Error) -> Self {
        Attempt::Failed(e.into())
    }
}

impl From<ApiError> for Attempt {
    fn from(e: ApiError) -> Self {
        Attempt::Failed(e)
    }
}

/// Stores a message in `room_id` from `user` and announces it once committed.
///
/// In one transaction: check the room is visible to the user, return the
/// original for a repeated `(author, client_id)`, else take the next seq and
/// insert; [`commit_and_announce`] tells every instance. The connection is
/// released before this process publishes to its own hub, so no pooled
/// connection is held while sockets are written.
///
/// # Errors
/// `not_found` for a room the user may not see; `db_busy`, `db_timeout`,
/// `db_unavailable` from the database. A failed send stored nothing and may be
/// retried with the same `client_id`.
pub async fn send_message(
    state: &AppState,
    user: &AuthUser,
    room_id: i64,
    body: MessageBody,
    client_id: Option<ClientId>,
) -> Result<Sent, ApiError> {
    let author = user.author();
    let mut raced_once = false;
    loop {
        let (author, body, client_id) = (author.clone(), body.clone(), client_id.clone());
        let attempt = commit_and_announce(state, move |conn, outbox| {
            async move {
                if !store::rooms::visible_to(conn, room_id, author.id).await? {
                    return Err(Attempt::Failed(no_room()));
                }
                let client_id = client_id.as_ref().map(ClientId::as_str);
                if let Some(cid) = client_id {
                    if let Some(original) =
                        store::messages::by_client_id(conn, author.id, cid).await?
                    {
                        return Ok(Sent {
                            message: original,
                            created: false,
                        });
                    }
                }
                let inserted =
                    store::messages::insert_next(conn, room_id, &author, body.as_str(), client_id)
                        .await;
                match inserted {
                    Ok(Some(message)) => {
                        outbox.announce(Event::Message(message.clone()));
                        Ok(Sent {
                            message,
                            created: true,
                        })
                    }
                    Ok(None) => Err(Attempt::Failed(no_room())),
                    Err(e) if store::is_unique_violation(&e) => Err(Attempt::Raced),
                    Err(e) => Err(e.into()),
                }
            }
            .boxed()
        })
        .await;
        match attempt {
            Ok(sent) => {
                if sent.created {
                    metrics::counter!(m::MESSAGES_TOTAL).increment(1);
                }
                return Ok(sent);
            }
            // The other send committed; the retry finds and returns it.
            Err(Attempt::Raced) if !raced_once => raced_once = true,
            Err(Attempt::Raced) => {
                return Err(ApiError::Conflict(
                    "client_id is being used concurrently".into(),
                ))
            }
            Err(Attempt::Failed(e)) => return Err(e),
        }
    }
}

fn no_room() -> ApiError {
    ApiError::NotFound("no such room".into())
}
