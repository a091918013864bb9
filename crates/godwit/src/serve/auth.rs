//! Who may look and act: every page and API call needs the token. API clients send it as
//! `Authorization: Bearer TOKEN`; a browser logs in once with it and gets a session cookie
//! (HttpOnly, SameSite=Strict) signed with a key derived from the token, so any server sharing
//! the token accepts it and a new token ends every session. A state-changing request that rides
//! on the cookie must also carry the session's CSRF token (`X-CSRF-Token`) and come from this
//! origin.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::Failure;

/// The session cookie's name.
pub const COOKIE: &str = "godwit_session";
/// The header a page's scripts send the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts.
const SESSION_SECONDS: i64 = 12 * 3600;

type HmacSha256 = Hmac<Sha256>;

/// The token and the key sessions are signed with.
pub struct Auth {
    key: [u8; 32],
    token_tag: Vec<u8>,
}

impl Auth {
    /// Checks against `token`.
    pub fn new(token: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"godwit session key\0");
        hasher.update(token.as_bytes());
        let key: [u8; 32] = hasher.finalize().into();
        let mut auth = Self {
            key,
            token_tag: Vec::new(),
        };
        auth.token_tag = auth.tag(&[b"token:", token.as_bytes()]);
        auth
    }

    fn mac(&self) -> HmacSha256 {
        <HmacSha256 as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    fn tag(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = self.mac();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// Whether `given` is the token (compared in constant time, through its MAC).
    pub fn is_token(&self, given: &str) -> bool {
        let mut mac = self.mac();
        mac.update(b"token:");
        mac.update(given.as_bytes());
        mac.verify_slice(&self.token_tag).is_ok()
    }

    /// A new session cookie's value, issued at `now` (seconds since the Unix epoch).
    pub fn new_session(&self, now: i64) -> String {
        let issued = now.to_string();
        let tag = self.tag(&[b"session:", issued.as_bytes()]);
        format!("{issued}.{}", encode(&tag))
    }

    /// Whether `value` is a session this key issued that has not expired at `now`.
    pub fn is_session(&self, value: &str, now: i64) -> bool {
        let Some((issued, tag)) = value.split_once('.') else {
            return false;
        };
        let Ok(at) = issued.parse::<i64>() else {
            return false;
        };
        if !(now - SESSION_SECONDS..=now + 60).contains(&at) {
            return false;
        }
        let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tag) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(b"session:");
        mac.update(issued.as_bytes());
        mac.verify_slice(&tag).is_ok()
    }

    /// The CSRF token of a session: what its pages send back with a state-changing request.
    pub fn csrf(&self, session: &str) -> String {
        encode(&self.tag(&[b"csrf:", session.as_bytes()]))
    }

    fn is_csrf(&self, session: &str, given: &str) -> bool {
        let Ok(tag) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(given) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(b"csrf:");
        mac.update(session.as_bytes());
        mac.verify_slice(&tag).is_ok()
    }
}

fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The session cookie a request carries, if any.
pub fn session_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` value that starts a session; `Secure` (sent back over HTTPS only) when the
/// browser came over HTTPS.
pub fn session_cookie(value: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}{secure}"
    )
}

/// The `Set-Cookie` value that ends one.
pub fn expired_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Whether a request that changes something comes from this server's own pages: when the browser
/// names an origin (`Origin`, else `Referer`), its host must be this request's `Host`.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let from = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|h| h.to_str().ok());
    match (from, host) {
        (None, _) => true,
        (Some("null"), _) => false,
        (Some(from), Some(host)) => {
            let rest = from
                .strip_prefix("http://")
                .or_else(|| from.strip_prefix("https://"))
                .unwrap_or("");
            rest.split('/').next() == Some(host)
        }
        (Some(_), None) => false,
    }
}

/// Paths open to anyone: the login page and the dashboard's assets (and `/metrics` when the
/// server was told so).
fn is_open(path: &str, metrics_public: bool) -> bool {
    path == "/login" || path.starts_with("/assets/") || (metrics_public && path == "/metrics")
}

/// The middleware in front of every route.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let changes = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if changes && !same_origin(request.headers()) {
        return Failure::new(
            StatusCode::FORBIDDEN,
            "cross_site",
            "a request from another site cannot change anything here",
        )
        .into_response();
    }
    if is_open(path, state.metrics_public()) {
        return next.run(request).await;
    }
    let auth = state.auth();
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        let given = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        return match given {
            Some(token) if auth.is_token(token) => next.run(request).await,
            _ => unauthorized("the bearer token is not this server's token"),
        };
    }
    if let Some(session) = session_of(request.headers())
        && auth.is_session(session, now())
    {
        if changes {
            let given = request
                .headers()
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !auth.is_csrf(session, given) {
                return Failure::new(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "this request lacks the page's CSRF token (X-CSRF-Token); reload the page",
                )
                .into_response();
            }
        }
        return next.run(request).await;
    }
    let api = path.starts_with("/api/") || path == "/metrics";
    if api || changes {
        unauthorized("send the token: Authorization: Bearer TOKEN (or log in at /login)")
    } else {
        let target = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        Redirect::to(&format!("/login?next={}", query_escape(&target))).into_response()
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response =
        Failure::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"godwit\""),
    );
    response
}

/// Percent-escapes everything but unreserved characters and `/`.
fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Where to go after logging in: a path on this server, never elsewhere.
pub fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(next) if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') => {
            next
        }
        _ => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_csrf_tokens_hold_only_for_their_key_and_time() {
        let auth = Auth::new("a-token-of-enough-length");
        let other = Auth::new("another-token-of-enough-length");
        assert!(auth.is_token("a-token-of-enough-length"));
        assert!(!auth.is_token("a-token-of-enough-lengt"));
        let session = auth.new_session(1_000_000);
        assert!(auth.is_session(&session, 1_000_010));
        assert!(!other.is_session(&session, 1_000_010));
        assert!(!auth.is_session(&session, 1_000_000 + SESSION_SECONDS + 1));
        let tampered = session.replacen("1000000", "1000001", 1);
        assert!(!auth.is_session(&tampered, 1_000_010));
        let csrf = auth.csrf(&session);
        assert!(auth.is_csrf(&session, &csrf));
        assert!(!auth.is_csrf(&auth.new_session(1_000_001), &csrf));
    }

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(safe_next(Some("/migrations/3")), "/migrations/3");
        assert_eq!(safe_next(Some("//evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }
}
