//! Extractors of the API handlers whose rejections are SPEC errors.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;

use crate::auth::{self, AuthUser};
use crate::error::ApiError;
use crate::state::AppState;

/// `X-Forwarded-For`.
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// `axum::extract::Path` whose rejections are 400 `bad_request`: an id that
/// is not an integer or overflows i64 is a client mistake, not a 404 or 500.
#[derive(Debug, Clone, Copy)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| ApiError::BadRequest(format!("invalid path: {}", e.body_text())))
    }
}

/// The client's address: the TCP peer, or, when the peer is one of
/// `CHATPOOL_TRUSTED_PROXIES`, the last `X-Forwarded-For` entry (the one that
/// proxy added; entries before it are the client's to invent).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(ClientAddr(peer.map(|peer| {
            client_of(peer, &parts.headers, &state.settings().trusted_proxies)
        })))
    }
}

/// `peer`, or the address its trusted proxy says it forwarded for.
pub fn client_of(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    if !trusted.iter().any(|net| net.contains(&peer)) {
        return peer;
    }
    // Several headers count as one comma-separated list, in order.
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|entry| !entry.is_empty())
        .and_then(|entry| entry.parse().ok())
        .unwrap_or(peer)
}

/// The caller of an authenticated endpoint: 401 `unauthorized` without a
/// valid `Authorization: Bearer` token.
impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = auth::bearer(parts).ok_or(ApiError::Unauthorized)?;
        auth::authenticate(state, token).await
    }
}

/// An authenticated admin: 401 without a valid token, 403 for other roles.
/// Checked before the query and body are parsed, so a non-admin learns
/// nothing from the admin endpoints' validation.
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        user.require_admin()?;
        Ok(AdminUser(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy_and_only_its_own_entry() {
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&["1.1.1.1, 2.2.2.2", "3.3.3.3"]);
        assert_eq!(
            client_of(proxy, &h, &trusted),
            "3.3.3.3".parse::<IpAddr>().unwrap()
        );
        let outsider: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(client_of(outsider, &h, &trusted), outsider);
        assert_eq!(client_of(proxy, &headers(&[]), &trusted), proxy);
        assert_eq!(
            client_of(proxy, &headers(&["not an address"]), &trusted),
            proxy
        );
        assert_eq!(client_of(proxy, &h, &[]), proxy);
    }
}
