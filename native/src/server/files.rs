//! Static files: the built web app at `/` and the shard sets at `/models/`, so a kiosk needs
//! nothing but `orfeas serve`. tower-http's `ServeDir` does the serving (Range requests,
//! Content-Length, Last-Modified, MIME types, and it refuses `..`); in front of it this refuses
//! dotfiles and anything a symlink would take outside the folder, adds a strong ETag from the
//! file's size and modification time (`If-None-Match` → 304), and gives the app's HTML pages a
//! Content-Security-Policy.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use tower_http::services::ServeDir;

/// What the app's pages may load and connect to (see [`shell_policy`]).
#[derive(Debug, Clone)]
pub struct ShellPolicy {
    /// Origins besides our own the page may fetch from (the models' hosts in `orfeas.json`).
    pub connect: Vec<String>,
}

/// The policy for the app in `web`: its own origin, plus the origins `orfeas.json` names
/// (`allow_origins`, and the models' absolute URLs).
pub fn shell_policy(web: &Path) -> ShellPolicy {
    let mut connect = Vec::new();
    if let Ok(text) = std::fs::read_to_string(web.join("orfeas.json"))
        && let Ok(config) = serde_json::from_str::<serde_json::Value>(&text)
    {
        let mut urls: Vec<String> = config["allow_origins"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.as_str().map(str::to_string))
            .collect();
        urls.extend(config["models_base"].as_str().map(str::to_string));
        urls.extend(
            config["models"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["url"].as_str().map(str::to_string)),
        );
        for url in urls {
            if let Some(origin) = origin_of(&url)
                && !connect.contains(&origin)
            {
                connect.push(origin);
            }
        }
    }
    ShellPolicy { connect }
}

/// `scheme://host[:port]` of an absolute http(s) URL.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty()).then(|| format!("{scheme}://{authority}"))
}

/// The Content-Security-Policy of an HTML page: scripts only from us (and the page's own
/// inline scripts, by hash: trunk's loader), WebAssembly allowed, connections to us and the
/// allowed origins, nothing framed, no plugins.
fn content_security_policy(html: &str, policy: &ShellPolicy) -> String {
    let mut hashes = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<script") {
        let after = &rest[start..];
        let Some(open_end) = after.find('>') else {
            break;
        };
        let tag = &after[..open_end];
        let body_start = open_end + 1;
        let Some(close) = after[body_start..].find("</script>") else {
            break;
        };
        let body = &after[body_start..body_start + close];
        if !tag.contains("src=") && !body.trim().is_empty() {
            let digest = Sha256::digest(body.as_bytes());
            hashes.push(format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            ));
        }
        rest = &after[body_start + close..];
    }
    format!(
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'{}; style-src 'self' \
         'unsafe-inline'; img-src 'self' blob: data:; connect-src 'self'{}; worker-src 'self' \
         blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        hashes.iter().map(|h| format!(" {h}")).collect::<String>(),
        policy
            .connect
            .iter()
            .map(|o| format!(" {o}"))
            .collect::<String>()
    )
}

/// A router serving `root` (pages with `policy`'s CSP, when given).
pub fn serve_dir(root: &Path, policy: Option<ShellPolicy>) -> Router {
    let root_for_checks = root.to_path_buf();
    let policy = policy.map(Arc::new);
    Router::new()
        .fallback_service(ServeDir::new(root))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let root = root_for_checks.clone();
            let policy = policy.clone();
            async move { guarded(&root, policy.as_deref(), request, next).await }
        }))
}

/// Whether `path` (a request path) names a dotfile or a dot-folder anywhere along it.
fn hidden(path: &str) -> bool {
    path.split('/').any(|segment| segment.starts_with('.'))
}

/// The file a request path names under `root`, if it is a plain relative path that stays
/// inside `root` once links are followed.
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
    let real = file.canonicalize().ok()?;
    let real_root = root.canonicalize().ok()?;
    (real.starts_with(&real_root) && real.is_file()).then_some(file)
}

/// Whether `path` exists under `root` only through a link that leads outside it.
fn leaves(root: &Path, path: &str) -> bool {
    let full = root.join(path.trim_start_matches('/'));
    match (full.canonicalize(), root.canonicalize()) {
        (Ok(real), Ok(real_root)) => !real.starts_with(real_root),
        _ => false,
    }
}

fn etag(file: &Path) -> Option<String> {
    let meta = std::fs::metadata(file).ok()?;
    let modified = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some(format!("\"{:x}-{:x}\"", meta.len(), modified.as_nanos()))
}

async fn guarded(
    root: &Path,
    policy: Option<&ShellPolicy>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    // Dotfiles, and links out of the folder, do not exist here. (A path that resolves to
    // nothing at all still goes to ServeDir, for its own 404 or directory redirect.)
    let inside = resolve(root, &path);
    if hidden(&path) || leaves(root, &path) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let tag = inside.as_deref().and_then(etag);
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
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if let (Some(policy), Some(file), true) = (policy, inside.as_deref(), is_html)
        && let Ok(html) = std::fs::read_to_string(file)
        && let Ok(value) = HeaderValue::from_str(&content_security_policy(&html, policy))
    {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_inside_the_folder_resolve() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "x").unwrap();
        assert!(resolve(dir.path(), "/a.txt").is_some());
        assert!(resolve(dir.path(), "/../a.txt").is_none());
        assert!(resolve(dir.path(), "/missing").is_none());
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link"))
                .unwrap();
            assert!(
                resolve(dir.path(), "/link").is_none(),
                "a link out of the folder"
            );
            assert!(leaves(dir.path(), "/link") && !leaves(dir.path(), "/a.txt"));
            std::os::unix::fs::symlink(dir.path().join("a.txt"), dir.path().join("inner")).unwrap();
            assert!(resolve(dir.path(), "/inner").is_some(), "a link within it");
        }
        assert!(hidden("/.env") && hidden("/a/.git/config") && !hidden("/a.b/c"));
    }

    #[test]
    fn the_policy_hashes_inline_scripts_and_names_model_origins() {
        let html = "<script type=\"module\">init();</script><script src=\"/a.js\"></script>";
        let policy = ShellPolicy {
            connect: vec!["https://cdn.example".into()],
        };
        let csp = content_security_policy(html, &policy);
        let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"init();"));
        assert!(csp.contains(&format!("'sha256-{digest}'")), "{csp}");
        assert!(
            csp.contains("connect-src 'self' https://cdn.example;"),
            "{csp}"
        );
        assert!(csp.contains("'wasm-unsafe-eval'") && csp.contains("frame-ancestors 'none'"));
        assert_eq!(
            origin_of("https://cdn.example:8443/m/x/"),
            Some("https://cdn.example:8443".into())
        );
        assert_eq!(origin_of("/models/"), None);
    }
}
