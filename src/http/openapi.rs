//! The OpenAPI 3.1 document of the HTTP API (SPEC §6), served at
//! `/api/openapi.json` and generated from the handlers' `#[utoipa::path]`
//! annotations and their types' `ToSchema`. The router is built from the
//! same list (`utoipa_axum::routes!`), so a route cannot exist undocumented.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{accounts, admin, conversation, ops, rooms, search};
use crate::error::ErrorBody;
use crate::state::AppState;

/// The document's fixed part: title, the bearer scheme, the error body.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "chatpool",
        description = "HTTP API of chatpool (SPEC §2): JSON in and out, errors as \
                       {\"error\": {\"code\", \"message\"}}. The WebSocket protocol at /ws is \
                       SPEC §3."
    ),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody, crate::domain::Role))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        api.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

/// Every route with its documentation, `/metrics` included unless it has an
/// address of its own (`metrics`).
pub fn api(metrics: bool) -> OpenApiRouter<AppState> {
    let router = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(crate::ws::upgrade))
        .routes(routes!(accounts::register))
        .routes(routes!(accounts::login))
        .routes(routes!(accounts::logout))
        .routes(routes!(accounts::me))
        .routes(routes!(accounts::users))
        .routes(routes!(rooms::create, rooms::list))
        .routes(routes!(rooms::get))
        .routes(routes!(rooms::add_member))
        .routes(routes!(rooms::remove_member))
        .routes(routes!(rooms::history, rooms::send))
        .routes(routes!(conversation::edit, conversation::delete))
        .routes(routes!(conversation::read))
        .routes(routes!(conversation::presence))
        .routes(routes!(search::search))
        .routes(routes!(admin::users))
        .routes(routes!(admin::patch_user))
        .routes(routes!(admin::stats))
        .routes(routes!(admin::connections));
    if metrics {
        router.routes(routes!(ops::metrics))
    } else {
        router
    }
}

/// The document as served (with `/metrics`, as the SPEC lists it).
pub fn document() -> utoipa::openapi::OpenApi {
    api(true).into_openapi()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    /// SPEC §2's routes, §3's upgrade, §5's and the ops endpoints.
    const SPEC_ROUTES: &[&str] = &[
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /ws",
        "POST /api/auth/register",
        "POST /api/auth/login",
        "POST /api/auth/logout",
        "GET /api/me",
        "GET /api/users",
        "POST /api/rooms",
        "GET /api/rooms",
        "GET /api/rooms/{id}",
        "POST /api/rooms/{id}/members",
        "DELETE /api/rooms/{id}/members/{user_id}",
        "GET /api/rooms/{id}/messages",
        "POST /api/rooms/{id}/messages",
        "PATCH /api/rooms/{id}/messages/{seq}",
        "DELETE /api/rooms/{id}/messages/{seq}",
        "POST /api/rooms/{id}/read",
        "GET /api/rooms/{id}/presence",
        "GET /api/search",
        "GET /api/admin/users",
        "PATCH /api/admin/users/{id}",
        "GET /api/admin/stats",
        "GET /api/admin/connections",
    ];

    fn doc() -> Value {
        serde_json::to_value(super::document()).unwrap()
    }

    #[test]
    fn the_document_is_openapi_3_1_and_lists_exactly_the_spec_routes() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        let documented: BTreeSet<String> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .filter(|m| ["get", "post", "patch", "delete", "put"].contains(&m.as_str()))
                    .map(move |m| format!("{} {path}", m.to_uppercase()))
            })
            .collect();
        let spec: BTreeSet<String> = SPEC_ROUTES.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(documented, spec);
    }

    #[test]
    fn every_reference_resolves_and_every_operation_documents_its_errors() {
        fn walk(v: &Value, doc: &Value) {
            match v {
                Value::Object(m) => {
                    for (k, x) in m {
                        if k == "$ref" {
                            let r = x.as_str().unwrap();
                            assert!(
                                doc.pointer(r.trim_start_matches('#')).is_some(),
                                "dangling {r}"
                            );
                        } else {
                            walk(x, doc);
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, doc)),
                _ => {}
            }
        }
        let d = doc();
        walk(&d, &d);
        for (path, item) in d["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                let api = path.starts_with("/api/");
                if api {
                    for status in ["400", "429", "500", "503"] {
                        assert!(responses.contains_key(status), "{method} {path}: {status}");
                    }
                }
                let secured = op.get("security").is_some();
                assert_eq!(
                    secured,
                    api && !path.starts_with("/api/auth/register")
                        && !path.starts_with("/api/auth/login"),
                    "{method} {path}: security"
                );
            }
        }
    }
}
