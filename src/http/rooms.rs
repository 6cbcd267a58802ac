//! Rooms, members and messages.
//!
//! A room the caller may not see answers 404 exactly like a room that does
//! not exist, so ids leak nothing. Visibility is read fresh in the same
//! transaction as the work (`store::rooms::visible_to`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

use super::accounts::limit_in;
use super::extract::Path;
use super::{Json, Query};
use crate::announce::commit_and_announce;
use crate::auth::AuthUser;
use crate::chat;
use crate::domain::{ClientId, MessageBody, MessageView, Role, RoomName, RoomView};
use crate::error::{ApiError, AuthErrors, ErrorBody, PublicErrors};
use crate::events::Event;
use crate::ids::{RoomId, Seq, UserId};
use crate::state::AppState;
use crate::store;
use crate::store::messages::Cursor;

/// Most `member_ids` a room may be created with in one request.
const MAX_INITIAL_MEMBERS: usize = 1000;

fn no_room() -> ApiError {
    ApiError::NotFound("no such room".into())
}

/// `POST /api/rooms` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateRoomRequest {
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    #[serde(default)]
    member_ids: Vec<UserId>,
}

/// `POST /api/rooms`: a new room with the caller and `member_ids` as members.
/// Unknown member ids are a 400: the client named someone who is not there.
#[utoipa::path(post, path = "/api/rooms", tag = "rooms",
    request_body = CreateRoomRequest,
    responses((status = 201, description = "The new room", body = RoomView), PublicErrors, AuthErrors),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(user_id = user.id.0))]
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    Json(body): Json<CreateRoomRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let name = RoomName::parse(&body.name)?;
    // Members are limited; agents and admins (a CRM integration) are not.
    if user.role == Role::Member {
        state
            .limits()
            .rooms
            .check(&user.id)
            .map_err(ApiError::RateLimited)?;
    }
    let mut member_ids = body.member_ids;
    member_ids.sort_unstable();
    member_ids.dedup();
    if member_ids.len() > MAX_INITIAL_MEMBERS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_INITIAL_MEMBERS} member_ids"
        )));
    }
    let creator = user.id;
    let room = state
        .db()
        .transaction(move |conn| {
            async move {
                let known = store::users::count_existing(conn, &member_ids).await?;
                if known != member_ids.len() as i64 {
                    return Err(ApiError::BadRequest(
                        "member_ids names a user that does not exist".into(),
                    ));
                }
                Ok(store::rooms::create(conn, name.as_str(), creator, &member_ids).await?)
            }
            .boxed()
        })
        .await?;
    Ok((StatusCode::CREATED, Json(room)))
}

/// `GET /api/rooms` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `mine` (the default) or `all` (agents and admins).
    #[param(value_type = String, required = false, pattern = "^(all|mine)$")]
    scope: Option<String>,
}

/// A list of rooms.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RoomsResponse {
    /// The rooms, by id.
    pub rooms: Vec<RoomView>,
}

/// `GET /api/rooms`: the caller's rooms, or with `scope=all` (agents and
/// admins) every room. `scope=mine` is the explicit default.
#[utoipa::path(get, path = "/api/rooms", tag = "rooms",
    params(ListQuery),
    responses(
        (status = 200, description = "Rooms by id", body = RoomsResponse),
        (status = 403, description = "`forbidden`: scope=all for a member", body = ErrorBody),
        PublicErrors, AuthErrors,
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(q): Query<ListQuery>,
) -> Result<Json<RoomsResponse>, ApiError> {
    let all = match q.scope.as_deref() {
        None | Some("mine") => false,
        Some("all") if user.role.sees_every_room() => true,
        Some("all") => {
            return Err(ApiError::Forbidden(
                "scope=all is for agents and admins".into(),
            ))
        }
        Some(_) => return Err(ApiError::BadRequest("scope must be all or mine".into())),
    };
    let id = user.id;
    let rooms = state
        .db()
        .run(move |c| {
            if all {
                store::rooms::all(c, id).boxed()
            } else {
                store::rooms::for_member(c, id).boxed()
            }
        })
        .await?;
    Ok(Json(RoomsResponse { rooms }))
}

/// `GET /api/rooms/{id}`.
#[utoipa::path(get, path = "/api/rooms/{id}", tag = "rooms",
    params(("id" = i64, Path, description = "Room id")),
    responses(
        (status = 200, description = "The room", body = RoomView),
        (status = 404, description = "`not_found`, also for a room the caller may not see", body = ErrorBody),
        PublicErrors, AuthErrors,
    ),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    user: AuthUser,
    Path(room_id): Path<RoomId>,
) -> Result<Json<RoomView>, ApiError> {
    let caller = user.id;
    let room = state
        .db()
        .transaction(move |conn| {
            async move {
                if !store::rooms::visible_to(conn, room_id, caller).await? {
                    return Err(no_room());
                }
                store::rooms::get(conn, room_id, caller)
                    .await?
                    .ok_or_else(no_room)
            }
            .boxed()
        })
        .await?;
    Ok(Json(room))
}

/// `POST /api/rooms/{id}/members` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct AddMemberRequest {
    user_id: UserId,
}

/// `POST /api/rooms/{id}/members`: anyone who sees the room may add any
/// existing user (404 for an unknown one); adding a member twice is a no-op.
#[utoipa::path(post, path = "/api/rooms/{id}/members", tag = "rooms",
    params(("id" = i64, Path, description = "Room id")),
    request_body = AddMemberRequest,
    responses(
        (status = 204, description = "A member (already, or now)"),
        (status = 404, description = "`not_found`: no such room or user", body = ErrorBody),
        PublicErrors, AuthErrors,
    ),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(user_id = user.id.0, room_id = room_id.0))]
pub async fn add_member(
    State(state): State<AppState>,
    user: AuthUser,
    Path(room_id): Path<RoomId>,
    Json(body): Json<AddMemberRequest>,
) -> Result<StatusCode, ApiError> {
    let caller = user.id;
    let member = body.user_id;
    state
        .db()
        .transaction(move |conn| {
            async move {
                if !store::rooms::visible_to(conn, room_id, caller).await? {
                    return Err(no_room());
                }
                if store::users::by_id(conn, member).await?.is_none() {
                    return Err(ApiError::NotFound("no such user".into()));
                }
                Ok(store::rooms::add_member(conn, room_id, member).await?)
            }
            .boxed()
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/rooms/{id}/members/{user_id}`: a user may leave; agents and
/// admins may remove anyone. Removing a user who is not a member is a no-op
/// (204), so a retried DELETE succeeds; an unknown user is 404. A removed
/// member's open sockets on every instance leave the room at once (unless
/// their role still sees it).
#[utoipa::path(delete, path = "/api/rooms/{id}/members/{user_id}", tag = "rooms",
    params(("id" = i64, Path, description = "Room id"), ("user_id" = i64, Path, description = "User id")),
    responses(
        (status = 204, description = "Not a member (any more)"),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        PublicErrors, AuthErrors,
    ),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(user_id = user.id.0, room_id = room_id.0))]
pub async fn remove_member(
    State(state): State<AppState>,
    user: AuthUser,
    Path((room_id, member)): Path<(RoomId, UserId)>,
) -> Result<StatusCode, ApiError> {
    let caller = user.id;
    let may_remove_others = user.role.sees_every_room();
    commit_and_announce(state.db(), state.hub(), move |conn, outbox| {
        async move {
            if !store::rooms::visible_to(conn, room_id, caller).await? {
                return Err(no_room());
            }
            if member != caller && !may_remove_others {
                return Err(ApiError::Forbidden(
                    "only agents and admins remove other members".into(),
                ));
            }
            if member != caller && store::users::by_id(conn, member).await?.is_none() {
                return Err(ApiError::NotFound("no such user".into()));
            }
            if store::rooms::remove_member(conn, room_id, member).await? {
                outbox.announce(Event::AccessChanged { user_id: member });
            }
            Ok(())
        }
        .boxed()
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/rooms/{id}/messages` query. Cursors are parsed as integers by
/// the extractor (a non-integer is 400) and range-checked here.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Messages after this seq, oldest first (not with `before_seq`).
    #[param(value_type = i64, required = false, minimum = 0)]
    after_seq: Option<Seq>,
    /// Messages before this seq (not with `after_seq`).
    #[param(value_type = i64, required = false, minimum = 0)]
    before_seq: Option<Seq>,
    /// At most this many (default 50).
    #[param(value_type = i64, required = false, minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// A page of history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryResponse {
    /// Ascending by seq.
    pub messages: Vec<MessageView>,
    /// Whether more exist beyond the page in the paging direction.
    pub has_more: bool,
    /// The room's latest seq when the page was read (at least every seq in it).
    pub last_seq: Seq,
}

/// Default and largest page of history.
const HISTORY_LIMIT: (i64, i64) = (50, 200);

impl HistoryQuery {
    fn cursor(&self) -> Result<Cursor, ApiError> {
        match (self.after_seq, self.before_seq) {
            (Some(_), Some(_)) => Err(ApiError::BadRequest(
                "give after_seq or before_seq, not both".into(),
            )),
            (Some(n), None) | (None, Some(n)) if n.0 < 0 => Err(ApiError::BadRequest(
                "after_seq and before_seq must not be negative".into(),
            )),
            (Some(n), None) => Ok(Cursor::After(n)),
            (None, Some(n)) => Ok(Cursor::Before(n)),
            (None, None) => Ok(Cursor::Latest),
        }
    }
}

/// `GET /api/rooms/{id}/messages`: a page of history, served by the
/// `(room_id, seq)` index.
#[utoipa::path(get, path = "/api/rooms/{id}/messages", tag = "rooms",
    params(("id" = i64, Path, description = "Room id"), HistoryQuery),
    responses(
        (status = 200, description = "A page of history, ascending by seq", body = HistoryResponse),
        (status = 404, description = "`not_found`", body = ErrorBody),
        PublicErrors, AuthErrors,
    ),
    security(("bearer" = [])))]
pub async fn history(
    State(state): State<AppState>,
    user: AuthUser,
    Path(room_id): Path<RoomId>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<HistoryResponse>, ApiError> {
    let cursor = q.cursor()?;
    let limit = limit_in(q.limit, HISTORY_LIMIT)?;
    let caller = user.id;
    let (messages, has_more, last_seq) = state
        .db()
        .run(move |c| store::messages::visible_page(c, room_id, caller, cursor, limit).boxed())
        .await?
        .ok_or_else(no_room)?;
    let page = HistoryResponse {
        messages,
        has_more,
        last_seq,
    };
    Ok(Json(page))
}

/// `POST /api/rooms/{id}/messages` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SendRequest {
    #[schema(min_length = 1, max_length = 4000)]
    body: String,
    #[schema(min_length = 1, max_length = 64)]
    client_id: Option<String>,
}

/// `POST /api/rooms/{id}/messages`: 201 with the new message, or 200 with the
/// original when the author already sent this `client_id`.
#[utoipa::path(post, path = "/api/rooms/{id}/messages", tag = "rooms",
    params(("id" = i64, Path, description = "Room id")),
    request_body = SendRequest,
    responses(
        (status = 201, description = "Stored", body = MessageView),
        (status = 200, description = "This client_id was sent before: the original", body = MessageView),
        (status = 404, description = "`not_found`", body = ErrorBody),
        PublicErrors, AuthErrors,
    ),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(user_id = user.id.0, room_id = room_id.0))]
pub async fn send(
    State(state): State<AppState>,
    user: AuthUser,
    Path(room_id): Path<RoomId>,
    Json(req): Json<SendRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let body = MessageBody::parse(&req.body)?;
    crate::faults::maybe_panic(body.as_str());
    let client_id = req.client_id.as_deref().map(ClientId::parse).transpose()?;
    let sent = chat::send_message(
        state.committer(),
        state.limits(),
        user.author(),
        room_id,
        body,
        client_id,
    )
    .await?;
    let status = if sent.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(sent.message)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The history query as axum parses it: any query string is a page
    /// request or a 400, never a panic, and an accepted one is in range.
    fn parse(query: &str) -> Result<(Cursor, i64), ApiError> {
        let uri: axum::http::Uri = format!("/x?{query}")
            .parse()
            .map_err(|_| ApiError::BadRequest("not a URI".into()))?;
        let q = axum::extract::Query::<HistoryQuery>::try_from_uri(&uri)
            .map_err(|e| ApiError::BadRequest(e.body_text()))?
            .0;
        Ok((q.cursor()?, limit_in(q.limit, HISTORY_LIMIT)?))
    }

    proptest! {
        #[test]
        fn any_history_query_is_a_page_or_a_bad_request(query in "[ -~]{0,80}") {
            match parse(&query) {
                Ok((cursor, limit)) => {
                    prop_assert!((1..=HISTORY_LIMIT.1).contains(&limit));
                    match cursor {
                        Cursor::After(n) | Cursor::Before(n) => prop_assert!(n.0 >= 0),
                        Cursor::Latest => {}
                    }
                }
                Err(e) => prop_assert_eq!(e.code(), "bad_request"),
            }
        }

        #[test]
        fn cursors_and_limits_of_any_integer_are_checked(
            after in proptest::option::of(any::<i64>()),
            before in proptest::option::of(any::<i64>()),
            limit in proptest::option::of(any::<i64>()),
        ) {
            let mut parts = Vec::new();
            if let Some(a) = after { parts.push(format!("after_seq={a}")); }
            if let Some(b) = before { parts.push(format!("before_seq={b}")); }
            if let Some(l) = limit { parts.push(format!("limit={l}")); }
            let accepted = parse(&parts.join("&")).is_ok();
            let expected = !(after.is_some() && before.is_some())
                && after.unwrap_or(0) >= 0
                && before.unwrap_or(0) >= 0
                && limit.is_none_or(|l| (1..=HISTORY_LIMIT.1).contains(&l));
            prop_assert_eq!(accepted, expected);
        }
    }
}
