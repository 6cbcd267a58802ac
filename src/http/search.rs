//! `GET /api/search` (SPEC §5): full-text search over the messages the
//! caller may read, best matches first.

use axum::extract::State;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

use super::accounts::limit_in;
use super::{Json, Query};
use crate::auth::AuthUser;
use crate::domain::{no_nul, MessageView};
use crate::error::{ApiError, AuthErrors, PublicErrors};
use crate::ids::RoomId;
use crate::state::AppState;
use crate::store;

/// Default and largest number of results.
const SEARCH_LIMIT: (i64, i64) = (20, 100);
/// Longest query, in characters.
const MAX_QUERY: usize = 200;

/// `GET /api/search` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Web-search syntax: words (all required), `"a phrase"`, `-word`, `or`.
    #[param(min_length = 1, max_length = 200)]
    q: String,
    /// Only this room.
    #[param(value_type = i64, required = false)]
    room_id: Option<RoomId>,
    /// At most this many (default 20).
    #[param(value_type = i64, required = false, minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// Search results.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchResponse {
    /// Best matches first.
    pub messages: Vec<MessageView>,
}

/// `GET /api/search?q=…&room_id=…&limit=…`: matches in the rooms the caller
/// may read (agents and admins: every room), never deleted messages;
/// language-neutral (no stemming, accents folded).
#[utoipa::path(get, path = "/api/search", tag = "conversation",
    params(SearchQuery),
    responses(
        (status = 200, description = "Best matches first", body = SearchResponse),
        PublicErrors, AuthErrors,
    ),
    security(("bearer" = [])))]
pub async fn search(
    State(state): State<AppState>,
    user: AuthUser,
    Query(q): Query<SearchQuery>,
) -> Result<Json<SearchResponse>, ApiError> {
    let text = no_nul("q", &q.q)?.to_owned();
    if text.trim().is_empty() || text.chars().count() > MAX_QUERY {
        return Err(ApiError::BadRequest(format!(
            "q must be 1-{MAX_QUERY} characters and not only whitespace"
        )));
    }
    let limit = limit_in(q.limit, SEARCH_LIMIT)?;
    let (caller, room) = (user.id, q.room_id);
    let messages = state
        .db()
        .run(move |c| {
            async move { store::search::messages(c, caller, &text, room, limit).await }.boxed()
        })
        .await?;
    Ok(Json(SearchResponse { messages }))
}
