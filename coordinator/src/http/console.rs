//! The web console's assets, embedded in the binary (no Node build, no CDN): one HTML page,
//! one script, one stylesheet. The page asks for the API token once (or takes it from the URL
//! fragment `#token=...` that `serve` prints) and keeps it in the browser's local storage.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");

/// The assets' combined size in bytes (what a first load transfers, before compression).
pub const FIRST_LOAD_BYTES: usize = INDEX.len() + SCRIPT.len() + STYLE.len();

const CACHE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "no-cache");

pub(crate) async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            CACHE,
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'",
            ),
        ],
        INDEX,
    )
}

pub(crate) async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            CACHE,
        ],
        SCRIPT,
    )
}

pub(crate) async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), CACHE],
        STYLE,
    )
}
