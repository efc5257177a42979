//! Static files: the built web app at `/` and the shard sets at `/models/`, so a kiosk needs
//! nothing but `orfeas serve`. The request path is percent-decoded once, strictly (a bad
//! escape is 400), and every check is made on that decoded name: `..`, dotfiles and anything a
//! link would take outside the folder do not exist here (404). Only the file so resolved is
//! served, by tower-http's `ServeFile` (Range requests, Content-Length, Last-Modified, MIME
//! types), with a strong ETag from its size and modification time (`If-None-Match` → 304),
//! `Cache-Control: no-cache` (the app's file names carry no hash), and on every HTML answer a
//! Content-Security-Policy (the app's, or an inert one for any other page).

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use tower::ServiceExt;
use tower_http::services::ServeFile;

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

/// The policy of an HTML file that is not the app (a page someone left in the models folder):
/// nothing runs, nothing loads, nothing frames it.
const INERT_HTML_POLICY: &str = "default-src 'none'; frame-ancestors 'none'; sandbox";

/// A router serving `root` (pages with `policy`'s CSP, when given).
pub fn serve_dir(root: &Path, policy: Option<ShellPolicy>) -> Router {
    let root = Arc::new(root.to_path_buf());
    let policy = policy.map(Arc::new);
    Router::new().fallback(move |request: Request| {
        let root = root.clone();
        let policy = policy.clone();
        async move { serve(&root, policy.as_deref(), request).await }
    })
}

/// Why a request path names no file here.
#[derive(Debug, PartialEq, Eq)]
enum PathRefusal {
    /// A `%` not followed by two hex digits, a NUL, or bytes that are not UTF-8: 400.
    Malformed(&'static str),
    /// `..`, a dotfile, a link out of the folder, or nothing there at all: 404.
    NotHere,
}

/// The request path percent-decoded once, strictly: every `%` starts two hex digits, and the
/// result is UTF-8 without NUL. The guard decides on this, the name the file system sees.
fn decode_path(raw: &str) -> Result<String, PathRefusal> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return Err(PathRefusal::Malformed("a % not followed by two hex digits"));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| PathRefusal::Malformed("the decoded path is not UTF-8"))?;
    if decoded.contains('\0') {
        return Err(PathRefusal::Malformed("a NUL in the path"));
    }
    Ok(decoded.into_owned())
}

/// Whether `path` (a decoded request path) names a dotfile or a dot-folder anywhere along it.
fn hidden(path: &str) -> bool {
    path.split(['/', '\\'])
        .any(|segment| segment.starts_with('.'))
}

/// What a decoded request path names under `root`.
#[derive(Debug, PartialEq, Eq)]
enum Resolved {
    /// A file inside `root` once links are followed: its real path.
    File(PathBuf),
    /// A folder named without its trailing `/` (redirected, so relative links work).
    Folder,
}

/// The file a decoded request path names under `root`, if it is a plain relative path that
/// stays inside `root` once links are followed (a folder means its `index.html`).
fn resolve(root: &Path, path: &str) -> Result<Resolved, PathRefusal> {
    if hidden(path) {
        return Err(PathRefusal::NotHere);
    }
    let relative = Path::new(path.trim_start_matches('/'));
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(PathRefusal::NotHere);
    }
    let mut file = root.join(relative);
    if file.is_dir() {
        if !path.is_empty() && !path.ends_with('/') {
            let real_root = root.canonicalize().map_err(|_| PathRefusal::NotHere)?;
            let real = file.canonicalize().map_err(|_| PathRefusal::NotHere)?;
            return match real.starts_with(real_root) {
                true => Ok(Resolved::Folder),
                false => Err(PathRefusal::NotHere),
            };
        }
        file = file.join("index.html");
    }
    let real = file.canonicalize().map_err(|_| PathRefusal::NotHere)?;
    let real_root = root.canonicalize().map_err(|_| PathRefusal::NotHere)?;
    match real.starts_with(&real_root) && real.is_file() {
        true => Ok(Resolved::File(real)),
        false => Err(PathRefusal::NotHere),
    }
}

fn etag(file: &Path) -> Option<String> {
    let meta = std::fs::metadata(file).ok()?;
    let modified = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some(format!("\"{:x}-{:x}\"", meta.len(), modified.as_nanos()))
}

/// Serve the one file the decoded path resolves to (tower-http's `ServeFile` does Range,
/// Content-Length, Last-Modified and the MIME type), or refuse. The request's own path is
/// never handed to anything that would decode it a second time.
async fn serve(root: &Path, policy: Option<&ShellPolicy>, request: Request) -> Response {
    let raw = request.uri().path().to_string();
    let file = match decode_path(&raw).and_then(|path| resolve(root, &path)) {
        Ok(Resolved::File(file)) => file,
        Ok(Resolved::Folder) => {
            // Under `/models` the path seen here has lost its prefix: redirect the original.
            let original = request
                .extensions()
                .get::<axum::extract::OriginalUri>()
                .map_or(raw.clone(), |uri| uri.path().to_string());
            let mut location = format!("{original}/");
            if let Some(query) = request.uri().query() {
                location = format!("{location}?{query}");
            }
            let mut response = StatusCode::PERMANENT_REDIRECT.into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            return response;
        }
        Err(PathRefusal::Malformed(why)) => {
            return (StatusCode::BAD_REQUEST, format!("malformed path: {why}")).into_response();
        }
        Err(PathRefusal::NotHere) => return StatusCode::NOT_FOUND.into_response(),
    };
    let tag = etag(&file);
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
    let mut response = match ServeFile::new(&file).oneshot(request).await {
        Ok(response) => response.map(axum::body::Body::new),
        Err(never) => match never {},
    };
    let headers = response.headers_mut();
    if let Some(tag) = tag
        && let Ok(value) = HeaderValue::from_str(&tag)
    {
        headers.insert(header::ETAG, value);
    }
    // Names carry no content hash: revalidate every time (a 304 with the ETag), so a browser
    // never mixes two builds from its heuristic cache.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let is_html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if is_html {
        let csp = match policy {
            Some(policy) => std::fs::read_to_string(&file)
                .map(|html| content_security_policy(&html, policy))
                .unwrap_or_else(|_| INERT_HTML_POLICY.to_string()),
            None => INERT_HTML_POLICY.to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&csp) {
            headers.insert(header::CONTENT_SECURITY_POLICY, value);
        }
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
        let file = |p: &str| matches!(resolve(dir.path(), p), Ok(Resolved::File(_)));
        assert!(file("/a.txt"));
        assert!(!file("/../a.txt"));
        assert!(!file("/missing"));
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link"))
                .unwrap();
            assert!(!file("/link"), "a link out of the folder");
            std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
            assert_eq!(resolve(dir.path(), "/out"), Err(PathRefusal::NotHere));
            std::os::unix::fs::symlink(dir.path().join("a.txt"), dir.path().join("inner")).unwrap();
            assert!(file("/inner"), "a link within it");
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert_eq!(resolve(dir.path(), "/sub"), Ok(Resolved::Folder));
        assert!(hidden("/.env") && hidden("/a/.git/config") && !hidden("/a.b/c"));
    }

    #[test]
    fn paths_are_decoded_once_and_strictly() {
        assert_eq!(decode_path("/%2esecret").unwrap(), "/.secret");
        assert_eq!(decode_path("/o%75t/key").unwrap(), "/out/key");
        assert_eq!(decode_path("/%2e%2e/x").unwrap(), "/../x");
        assert_eq!(decode_path("/caf%C3%A9").unwrap(), "/café");
        for bad in ["/%zz", "/a%2", "/a%", "/%ff", "/a%00b"] {
            assert!(
                matches!(decode_path(bad), Err(PathRefusal::Malformed(_))),
                "{bad}"
            );
        }
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
