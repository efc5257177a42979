//! Who may talk to the server. A kiosk's server listens on loopback, where any web page the
//! kiosk's browser opens could post jobs to it (`fetch("http://127.0.0.1:8000/api/…")`) or,
//! through DNS rebinding (a hostile name that resolves to 127.0.0.1), read its answers. So:
//!
//! - the `Host` must be a loopback name, an IP literal, the `--bind` host or an `--allow-host`
//!   name (a rebinding page's requests carry its own domain): otherwise 403;
//! - a request that changes something (anything but GET/HEAD) with an `Origin` must come from
//!   the server's own origin or an `--allow-origin` one: otherwise 403;
//! - no CORS headers are ever sent, so other origins cannot read `/api` answers;
//! - every response says `X-Content-Type-Options: nosniff`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The names and origins let in beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Host names accepted besides loopback names and IP literals (the `--bind` host and
    /// `--allow-host`), lower-case, without ports.
    pub hosts: Vec<String>,
    /// Origins that may post besides the server's own (`--allow-origin`), as
    /// `scheme://host[:port]`.
    pub origins: Vec<String>,
}

/// The host part of a `Host` header value (`[::1]:8000` → `::1`, `a.b:80` → `a.b`).
fn host_name(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name.to_string(),
        _ => host,
    }
}

impl Access {
    pub fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        name == "localhost"
            || name.ends_with(".localhost")
            || name.parse::<IpAddr>().is_ok()
            || self.hosts.contains(&name)
    }

    /// Whether `origin` may change things on a server reached as `host`.
    pub fn origin_allowed(&self, origin: &str, host: &str) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        let host = host.trim().to_ascii_lowercase();
        origin == format!("http://{host}")
            || origin == format!("https://{host}")
            || self
                .origins
                .iter()
                .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(&origin))
    }
}

fn forbidden(message: String) -> Response {
    (
        StatusCode::FORBIDDEN,
        axum::Json(json!({ "error": message, "status": "forbidden" })),
    )
        .into_response()
}

/// The middleware: Host, then Origin for changes, then `nosniff` on whatever is answered.
pub async fn guard(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(host) = &host
        && !access.host_allowed(host)
    {
        return forbidden(format!(
            "this server does not answer to the host {} (start it with --allow-host {})",
            super::excerpt(host),
            super::excerpt(&host_name(host)).trim_matches('"')
        ));
    }
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
    if changes && let Some(origin) = request.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("(not text)");
        let host = host.as_deref().unwrap_or_default();
        if !access.origin_allowed(origin, host) {
            let origin = super::excerpt(origin);
            return forbidden(format!(
                "requests from the page at {origin} may not change anything here (start the \
                 server with --allow-origin {} to allow it)",
                origin.trim_matches('"')
            ));
        }
    }
    let mut response = next.run(request).await;
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_ip_literals_pass_other_names_do_not() {
        let access = Access {
            hosts: vec!["kiosk.lan".into()],
            origins: vec!["https://studio.example".into()],
        };
        for ok in [
            "localhost:8000",
            "127.0.0.1:8000",
            "[::1]:8000",
            "192.168.1.20",
            "app.localhost",
            "KIOSK.lan:8000",
        ] {
            assert!(access.host_allowed(ok), "{ok}");
        }
        for refused in ["evil.example", "evil.example:8000", "127.0.0.1.nip.io"] {
            assert!(!access.host_allowed(refused), "{refused}");
        }
        assert!(access.origin_allowed("http://127.0.0.1:8000", "127.0.0.1:8000"));
        assert!(access.origin_allowed("https://studio.example/", "127.0.0.1:8000"));
        assert!(!access.origin_allowed("http://evil.example", "127.0.0.1:8000"));
        assert!(!access.origin_allowed("http://127.0.0.1:9000", "127.0.0.1:8000"));
        assert!(!access.origin_allowed("null", "127.0.0.1:8000"));
    }
}
