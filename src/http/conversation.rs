//! SPEC §5 over HTTP: read markers, edits and deletes, presence.
//!
//! The work is `crate::conversation`'s (shared with the WebSocket `read`
//! frame); these handlers parse and answer.

use axum::extract::State;
use axum::http::StatusCode;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

use super::extract::Path;
use super::Json;
use crate::auth::AuthUser;
use crate::conversation::{edits, reads};
use crate::domain::{MessageBody, MessageView};
use crate::error::{ApiError, AuthErrors, ErrorBody, PublicErrors};
use crate::ids::{RoomId, Seq, UserId};
use crate::state::AppState;
use crate::store;

/// `POST /api/rooms/{id}/read` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ReadRequest {
    /// The seq read up to; above the room's `last_seq` it counts as `last_seq`.
    #[schema(value_type = i64, minimum = 0)]
    seq: Seq,
}

/// The caller's read marker in a room.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReadResponse {
    /// The room.
    #[schema(value_type = i64)]
    pub room_id: RoomId,
    /// The marker now (it never moves backwards).
    #[schema(value_type = i64)]
    pub last_read_seq: Seq,
}

/// `POST /api/rooms/{id}/read`: moves the caller's read marker forward (never
/// past `last_seq`); a move is announced as a `read` event to the room's
/// sockets and the caller's own, on every instance.
#[utoipa::path(post, path = "/api/rooms/{id}/read", tag = "conversation",
    params(("id" = i64, Path, description = "Room id")),
    request_body = ReadRequest,
    responses(
        (status = 200, description = "The marker now", body = ReadResponse),
        (status = 404, description = "`not_found`", body = ErrorBody),
        PublicErrors, AuthErrors,
    ),
    security(("bearer" = [])))]
pub async fn read(
    State(state): State<AppState>,
    user: AuthUser,
    Path(room_id): Path<RoomId>,
    Json(body): Json<ReadRequest>,
) -> Result<Json<ReadResponse>, ApiError> {
    let marked = reads::mark_read(state.db(), state.hub(), &user, room_id, body.seq).await?;
    Ok(Json(ReadResponse {
        room_id,
        last_read_seq: marked.last_read_seq,
    }))
}

/// `PATCH /api/rooms/{id}/messages/{seq}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EditRequest {
    #[schema(min_length = 1, max_length = 4000)]
    body: String,
}

/// `PATCH /api/rooms/{id}/messages/{seq}`: the author replaces the body;
/// `edited_at` is set and every socket joined to the room gets
/// `message_updated`.
#[utoipa::path(patch, path = "/api/rooms/{id}/messages/{seq}", tag = "conversation",
    params(("id" = i64, Path, description = "Room id"), ("seq" = i64, Path, description = "Message seq")),
    request_body = EditRequest,
    responses(
        (status = 200, description = "The edited message", body = MessageView),
        (status = 403, description = "`forbidden`: someone else's message", body = ErrorBody),
        (status = 404, description = "`not_found`: no such room or message", body = ErrorBody),
        (status = 409, description = "`conflict`: the message was deleted", body = ErrorBody),
        PublicErrors, AuthErrors,
    ),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(user_id = user.id.0, room_id = room_id.0))]
pub async fn edit(
    State(state): State<AppState>,
    user: AuthUser,
    Path((room_id, seq)): Path<(RoomId, Seq)>,
    Json(req): Json<EditRequest>,
) -> Result<Json<MessageView>, ApiError> {
    let body = MessageBody::parse(&req.body)?;
    let message = edits::edit(state.db(), state.hub(), &user, room_id, seq, body).await?;
    Ok(Json(message))
}

/// `DELETE /api/rooms/{id}/messages/{seq}`: the author, an agent or an admin
/// deletes a message; it stays as a tombstone (body `""`, `deleted_at` set),
/// its text is erased, and every socket joined to the room gets
/// `message_updated`. Deleting again is 204.
#[utoipa::path(delete, path = "/api/rooms/{id}/messages/{seq}", tag = "conversation",
    params(("id" = i64, Path, description = "Room id"), ("seq" = i64, Path, description = "Message seq")),
    responses(
        (status = 204, description = "Deleted (now or before)"),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        PublicErrors, AuthErrors,
    ),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(user_id = user.id.0, room_id = room_id.0))]
pub async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    Path((room_id, seq)): Path<(RoomId, Seq)>,
) -> Result<StatusCode, ApiError> {
    edits::delete(state.db(), state.hub(), &user, room_id, seq).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A user in a presence list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OnlineUser {
    /// User id.
    #[schema(value_type = i64)]
    pub id: UserId,
    /// Login name.
    pub username: String,
}

/// `GET /api/rooms/{id}/presence` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PresenceResponse {
    /// Users with a socket joined to the room on any instance, by id.
    pub online: Vec<OnlineUser>,
}

/// `GET /api/rooms/{id}/presence`: who has a socket joined to the room, on
/// any instance (as of the last presence batch, at most 50 ms behind).
#[utoipa::path(get, path = "/api/rooms/{id}/presence", tag = "conversation",
    params(("id" = i64, Path, description = "Room id")),
    responses(
        (status = 200, description = "Who is online in the room", body = PresenceResponse),
        (status = 404, description = "`not_found`", body = ErrorBody),
        PublicErrors, AuthErrors,
    ),
    security(("bearer" = [])))]
pub async fn presence(
    State(state): State<AppState>,
    user: AuthUser,
    Path(room_id): Path<RoomId>,
) -> Result<Json<PresenceResponse>, ApiError> {
    let caller = user.id;
    let online = state
        .db()
        .transaction(move |conn| {
            async move {
                if !store::rooms::visible_to(conn, room_id, caller).await? {
                    return Err(ApiError::NotFound("no such room".into()));
                }
                Ok(store::presence::online_in(conn, room_id).await?)
            }
            .boxed()
        })
        .await?;
    let online = online
        .into_iter()
        .map(|o| OnlineUser {
            id: o.id,
            username: o.username,
        })
        .collect();
    Ok(Json(PresenceResponse { online }))
}
