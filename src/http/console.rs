//! The console: a single-page UI at `/` (issue 14), plain HTML, CSS and ES
//! modules from `console/`, compiled into the binary (no CDN, no network, no
//! build step). `/console/chatpool.js` is also the reference client for
//! anyone writing their own UI (README, "The console and chatpool.js").
//!
//! Every file goes out with a strict Content-Security-Policy: scripts,
//! styles and connections (the API and the WebSocket) from this origin
//! only, nothing inline, no frames, no plugins.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// The policy of every console file.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../console/index.html"),
    },
    Asset {
        path: "/console/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../console/app.js"),
    },
    Asset {
        path: "/console/chatpool.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../console/chatpool.js"),
    },
    Asset {
        path: "/console/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../console/style.css"),
    },
];

/// The console's routes (`GET` only; other methods get the API's 405).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(asset.path, get(move || async move { serve(asset) }))
    })
}

fn serve(asset: &'static Asset) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        asset.body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files_and_nothing_inline() {
        let page = ASSETS[0].body;
        for asset in &ASSETS[1..] {
            let linked = ASSETS
                .iter()
                .filter(|other| other.path != asset.path)
                .any(|other| other.body.contains(&format!("\"{}\"", asset.path)));
            assert!(linked, "{} is linked from another file", asset.path);
        }
        // Every script has a src, no element has a style or an on* handler.
        let scripts = page.matches("<script").count();
        let with_src = page
            .matches("<script type=\"module\" src=\"/console/")
            .count();
        assert_eq!(scripts, with_src, "no inline script");
        assert!(
            !page.contains("style=") && !page.contains("<style"),
            "no inline style"
        );
        let handler = page
            .split(|c: char| c.is_whitespace())
            .any(|word| word.starts_with("on") && word.contains('='));
        assert!(!handler, "no inline event handler");
        for asset in ASSETS {
            assert!(
                !asset.body.contains("http://") && !asset.body.contains("https://"),
                "{} loads nothing from elsewhere",
                asset.path
            );
        }
    }
}
