//! Serving files for pages: the client package (built JavaScript), cbor-x, and a page. Shared
//! by the examples and the browser tests; not part of the library (an application serves its
//! pages its own way).

#![allow(dead_code)]

use std::path::{Component, Path, PathBuf};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// The repository's client package (`packages/msgport-client`).
pub fn client_package() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packages/msgport-client")
}

/// Whether the client package is built and its dependencies installed (`npm ci` in it).
pub fn client_ready() -> Result<(), String> {
    let dir = client_package();
    for needed in ["dist/index.js", "node_modules/cbor-x/index.js"] {
        if !dir.join(needed).exists() {
            return Err(format!(
                "{} is missing: run `npm ci --prefix packages/msgport-client` first",
                dir.join(needed).display()
            ));
        }
    }
    Ok(())
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("png") => "image/png",
        Some("css") => "text/css",
        _ => "application/octet-stream",
    }
}

/// A route serving the files under `dir` at `prefix` (no directory listing, no `..`).
pub fn serve_dir(prefix: &str, dir: PathBuf) -> axum::Router {
    let route = format!("{prefix}/{{*path}}");
    axum::Router::new().route(
        &route,
        axum::routing::get(
            move |axum::extract::Path(path): axum::extract::Path<String>| {
                let dir = dir.clone();
                async move { file(&dir, &path).await }
            },
        ),
    )
}

async fn file(dir: &Path, path: &str) -> Response {
    let relative = Path::new(path);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    let full = dir.join(relative);
    match tokio::fs::read(&full).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, content_type(&full))], bytes).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The client and cbor-x, at `/client/` and `/cbor-x/`, for pages whose import map says
/// `{"msgport-client": "/client/index.js", "cbor-x": "/cbor-x/index.js"}`.
pub fn client_routes() -> axum::Router {
    let package = client_package();
    serve_dir("/client", package.join("dist"))
        .merge(serve_dir("/cbor-x", package.join("node_modules/cbor-x")))
}

/// The import map a page needs for the client.
pub const IMPORT_MAP: &str = r#"<script type="importmap">{"imports": {"msgport-client": "/client/index.js", "cbor-x": "/cbor-x/index.js"}}</script>"#;
