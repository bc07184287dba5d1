//! The pages for people: `/` for a browser (drop a photo, see its classes) and `/docs`
//! (Swagger UI). Everything they load is embedded in the binary and served from
//! `/static/`; a strict Content-Security-Policy lets them load nothing from elsewhere.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

pub const INDEX_HTML: &str = include_str!("web/index.html");
pub const DOCS_HTML: &str = include_str!("web/docs.html");

/// No request beyond this service, no inline script or style, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; font-src 'self'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The files the pages load: name, content type, bytes. Swagger UI's come from npm's
/// swagger-ui-dist (images/classifier/build.sh puts them in dist/swagger-ui/).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "page.js",
        "text/javascript; charset=utf-8",
        include_bytes!("web/page.js"),
    ),
    (
        "page.css",
        "text/css; charset=utf-8",
        include_bytes!("web/page.css"),
    ),
    (
        "docs.js",
        "text/javascript; charset=utf-8",
        include_bytes!("web/docs.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("web/favicon.svg"),
    ),
    (
        "swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../dist/swagger-ui/swagger-ui-bundle.js"),
    ),
    (
        "swagger-ui.css",
        "text/css; charset=utf-8",
        include_bytes!("../dist/swagger-ui/swagger-ui.css"),
    ),
];

/// An HTML page with the headers every page gets.
pub fn page(html: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Accept"));
    response
}

/// `GET /static/{file}`: one of [`ASSETS`].
pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let (_, content_type, bytes) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "not found"))?;
    Ok((
        [
            (header::CONTENT_TYPE, *content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        *bytes,
    )
        .into_response())
}
