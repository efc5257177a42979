//! Static files: the built web app at `/` and the shard sets at `/models/`, so a kiosk needs
//! nothing but `orfeas serve`. tower-http's `ServeDir` does the serving (Range requests,
//! Content-Length, Last-Modified, MIME types, and it refuses `..`); this adds a strong ETag
//! from the file's size and modification time, and `If-None-Match` → 304.

use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::services::ServeDir;

/// A router serving `root`, with ETags.
pub fn serve_dir(root: &Path) -> Router {
    let root_for_tags = root.to_path_buf();
    Router::new()
        .fallback_service(ServeDir::new(root))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let root = root_for_tags.clone();
            async move { with_etag(&root, request, next).await }
        }))
}

/// The file a request path names under `root`, if it is a plain relative path.
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let relative = Path::new(path.trim_start_matches('/'));
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return None;
    }
    let mut file = root.join(relative);
    if file.is_dir() {
        file = file.join("index.html");
    }
    file.is_file().then_some(file)
}

fn etag(file: &Path) -> Option<String> {
    let meta = std::fs::metadata(file).ok()?;
    let modified = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some(format!("\"{:x}-{:x}\"", meta.len(), modified.as_nanos()))
}

async fn with_etag(root: &Path, request: Request, next: Next) -> Response {
    let tag = resolve(root, request.uri().path()).and_then(|file| etag(&file));
    if let Some(tag) = &tag {
        let matches = request
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
        if matches {
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            if let Ok(value) = HeaderValue::from_str(tag) {
                response.headers_mut().insert(header::ETAG, value);
            }
            return response;
        }
    }
    let mut response = next.run(request).await;
    if let Some(tag) = tag
        && response.status().is_success()
        && let Ok(value) = HeaderValue::from_str(&tag)
    {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_resolve() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "x").unwrap();
        assert!(resolve(dir.path(), "/a.txt").is_some());
        assert!(resolve(dir.path(), "/../a.txt").is_none());
        assert!(resolve(dir.path(), "/missing").is_none());
    }
}
