//! Operator authentication for the web UI and the JSON API: Argon2id passwords, browser
//! sessions in HttpOnly SameSite cookies with a CSRF token each, API bearer tokens, and a login
//! rate limit. Booting machines never pass through here (their routes are public).

pub mod devices;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::db::{Db, DbError};
use crate::support::clock::SharedClock;

pub const SESSION_COOKIE: &str = "bootplane_session";
/// Header carrying the CSRF token for requests made by the UI's own scripts.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Form field carrying the CSRF token.
pub const CSRF_FIELD: &str = "csrf";
/// Prefix of API tokens, so they are recognisable in secret scanners.
pub const TOKEN_PREFIX: &str = "bpt_";
/// Sessions last this long from login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Largest form body accepted on a session-authenticated route (patches fit comfortably).
const MAX_FORM: usize = 1024 * 1024;

/// Who is making a request.
#[derive(Clone, Debug)]
pub enum Operator {
    Session {
        user_id: i64,
        username: String,
        csrf: String,
    },
    Token {
        id: i64,
        name: String,
    },
}

impl Operator {
    pub fn name(&self) -> String {
        match self {
            Operator::Session { username, .. } => username.clone(),
            Operator::Token { name, .. } => format!("token {name}"),
        }
    }

    /// The CSRF token to embed in forms (empty for API tokens, which need none).
    pub fn csrf(&self) -> &str {
        match self {
            Operator::Session { csrf, .. } => csrf,
            Operator::Token { .. } => "",
        }
    }

    pub fn user_id(&self) -> Option<i64> {
        match self {
            Operator::Session { user_id, .. } => Some(*user_id),
            Operator::Token { .. } => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A random secret, URL-safe base64 of `bytes` random bytes.
pub fn random_secret(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Argon2id with the crate's defaults (19 MiB, 2 passes), run off the async workers.
pub async fn hash_password(password: &str) -> Result<String, AuthError> {
    let password = password.to_string();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Hash(e.to_string()))
    })
    .await
    .map_err(|e| AuthError::Hash(e.to_string()))?
}

pub async fn verify_password(hash: &str, password: &str) -> bool {
    let (hash, password) = (hash.to_string(), password.to_string());
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// A dummy hash verified for unknown usernames, so their timing matches a wrong password.
static DUMMY_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

async fn dummy_verify(password: &str) {
    let hash = match DUMMY_HASH.get() {
        Some(h) => h.clone(),
        None => match hash_password("bootplane-dummy-password").await {
            Ok(h) => DUMMY_HASH.get_or_init(|| h).clone(),
            Err(_) => return,
        },
    };
    let _ = verify_password(&hash, password).await;
}

pub const ADMIN_USER: &str = "admin";

/// Makes sure an admin account exists. With no account yet: the configured password, or a
/// generated one printed once in the log. With a configured password that differs from the
/// stored one: the stored one is replaced (how an operator resets a forgotten password).
pub async fn ensure_admin(db: &Db, configured: Option<&str>, now: i64) -> Result<(), AuthError> {
    let existing = db.user_by_name(ADMIN_USER).await?;
    match (existing, configured) {
        (None, Some(password)) => {
            db.put_user(ADMIN_USER, &hash_password(password).await?, now)
                .await?;
            tracing::info!(
                user = ADMIN_USER,
                "admin account created with the configured password"
            );
        }
        (None, None) => {
            let password = random_secret(18);
            db.put_user(ADMIN_USER, &hash_password(&password).await?, now)
                .await?;
            tracing::warn!(
                user = ADMIN_USER,
                password = %password,
                "admin account created; this generated password is shown once: log in and keep it \
                 (set BOOTPLANE_ADMIN_PASSWORD to choose or reset it)"
            );
        }
        (Some(user), Some(password)) => {
            if !verify_password(&user.password_hash, password).await {
                db.set_password(user.id, &hash_password(password).await?, now)
                    .await?;
                tracing::warn!(
                    user = ADMIN_USER,
                    "admin password reset from the configuration; its sessions ended"
                );
            }
        }
        (Some(_), None) => {}
    }
    Ok(())
}

/// Checks a username and password; `None` when they do not match.
pub async fn check_login(
    db: &Db,
    username: &str,
    password: &str,
) -> Result<Option<i64>, AuthError> {
    match db.user_by_name(username).await? {
        Some(user) if verify_password(&user.password_hash, password).await => Ok(Some(user.id)),
        Some(_) => Ok(None),
        None => {
            dummy_verify(password).await;
            Ok(None)
        }
    }
}

/// Starts a session; returns the cookie value (the only place the session id exists in clear).
pub async fn start_session(db: &Db, user_id: i64, now: i64) -> Result<String, AuthError> {
    let id = random_secret(32);
    let csrf = random_secret(32);
    let ttl = i64::try_from(SESSION_TTL.as_millis()).unwrap_or(i64::MAX);
    db.create_session(
        &sha256_hex(&id),
        user_id,
        &csrf,
        now,
        now.saturating_add(ttl),
    )
    .await?;
    Ok(id)
}

/// The Set-Cookie value for a new session.
pub fn session_cookie(id: &str, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The Set-Cookie value that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The session id from the request's cookies.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// Makes a new API token; returns (id, the token in clear: shown once).
pub async fn create_token(
    db: &Db,
    name: &str,
    created_by: Option<i64>,
    now: i64,
) -> Result<(i64, String), AuthError> {
    let token = format!("{TOKEN_PREFIX}{}", random_secret(32));
    let id = db
        .create_token(name, &sha256_hex(&token), created_by, now)
        .await?;
    Ok((id, token))
}

/// Who the request comes from, by bearer token or session cookie.
pub async fn identify(db: &Db, headers: &HeaderMap, now: i64) -> Result<Option<Operator>, DbError> {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let token = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| t.starts_with(TOKEN_PREFIX) && t.len() <= 128);
        return Ok(match token {
            Some(t) => db
                .use_token(&sha256_hex(t), now)
                .await?
                .map(|(id, name)| Operator::Token { id, name }),
            None => None,
        });
    }
    let Some(id) = session_id(headers) else {
        return Ok(None);
    };
    Ok(db
        .session(&sha256_hex(&id), now)
        .await?
        .map(|s| Operator::Session {
            user_id: s.user_id,
            username: s.username,
            csrf: s.csrf,
        }))
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn form_field(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// How a refused request is answered: JSON for the API, a redirect to the login page for the UI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    Api,
    Ui,
}

/// Renders a refusal in the surface's own format (the UI's error page, the API's JSON error);
/// each surface passes its own, so this layer never imports the surfaces above it.
pub type RenderRefusal = fn(StatusCode, &str) -> Response;

/// What `require_operator` needs: where sessions live, the time, and how to say no.
#[derive(Clone, Debug)]
pub struct Gate {
    pub db: Db,
    pub clock: SharedClock,
    pub surface: Surface,
    pub render: RenderRefusal,
}

impl Gate {
    fn refuse(&self, status: StatusCode, message: &str, uri: &axum::http::Uri) -> Response {
        if self.surface == Surface::Ui && status == StatusCode::UNAUTHORIZED {
            let next = uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/ui".into());
            let target = format!("/login?next={}", urlencode(&next));
            return Redirect::to(&target).into_response();
        }
        (self.render)(status, message)
    }
}

pub fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Middleware: every request needs an operator; requests that change something and come with
/// a session cookie also need the session's CSRF token (header or form field).
pub async fn require_operator(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    let now = gate.clock.now_ms();
    let uri = request.uri().clone();
    let operator = match identify(&gate.db, request.headers(), now).await {
        Ok(Some(op)) => op,
        Ok(None) => return gate.refuse(StatusCode::UNAUTHORIZED, "log in first", &uri),
        Err(e) => {
            tracing::error!(error = %e, "cannot check the session");
            return gate.refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database is not answering; try again",
                &uri,
            );
        }
    };
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let mut request = request;
    if let (false, Operator::Session { csrf, .. }) = (safe, &operator) {
        let header_ok = request
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| constant_time_eq(v, csrf));
        if !header_ok {
            let is_form = request
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
            if !is_form {
                return gate.refuse(StatusCode::FORBIDDEN, "missing CSRF token", &uri);
            }
            let (parts, body) = request.into_parts();
            let bytes: Bytes = match axum::body::to_bytes(body, MAX_FORM).await {
                Ok(b) => b,
                Err(_) => {
                    return gate.refuse(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "the form is too large",
                        &uri,
                    )
                }
            };
            let ok = form_field(&bytes, CSRF_FIELD).is_some_and(|v| constant_time_eq(&v, csrf));
            if !ok {
                return gate.refuse(StatusCode::FORBIDDEN,
                    "the form's CSRF token does not match your session (reload the page and try again)",
                    &uri,
                );
            }
            request = Request::from_parts(parts, Body::from(bytes));
        }
    }
    request.extensions_mut().insert(operator);
    next.run(request).await
}

/// Usernames longer than this (in bytes) are refused before any lookup, and logged truncated.
pub const MAX_USERNAME_BYTES: usize = 64;
/// Failed logins allowed per client address (whatever the usernames) before waiting.
const ADDRESS_BURST: f64 = 10.0;
/// Failed logins allowed per username from one client address before waiting.
const USER_BURST: f64 = 5.0;
/// One more attempt is allowed every this many seconds, in each bucket.
const LOGIN_REFILL_SECS: f64 = 30.0;
/// Buckets kept at most; refilled buckets are forgotten first, then the least recently used.
pub const LOGIN_MAX_BUCKETS: usize = 10_000;
/// Refilled buckets are swept out at least this often.
const LOGIN_SWEEP_MS: i64 = 60_000;
/// Password verifications running at once: Argon2id takes 19 MiB and a core for each.
pub const MAX_CONCURRENT_VERIFICATIONS: usize = 2;
/// How long a login waits for a verification slot before it is answered 429.
const VERIFY_QUEUE_WAIT: Duration = Duration::from_secs(5);

/// What a login bucket counts: one client address, or one username from one client address.
/// Failures never lock a username out for other addresses.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum LimitKey {
    Address(IpAddr),
    User(IpAddr, String),
}

impl LimitKey {
    fn burst(&self) -> f64 {
        match self {
            LimitKey::Address(_) => ADDRESS_BURST,
            LimitKey::User(..) => USER_BURST,
        }
    }
}

/// Attempts left (fractional while refilling) as of `at` (ms).
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: i64,
}

impl Bucket {
    fn level(&self, burst: f64, now: i64) -> f64 {
        let refilled = now.saturating_sub(self.at).max(0) as f64 / 1000.0 / LOGIN_REFILL_SECS;
        (self.tokens + refilled).min(burst)
    }
}

#[derive(Debug, Default)]
struct Buckets {
    map: HashMap<LimitKey, Bucket>,
    swept_at: i64,
}

impl Buckets {
    fn level(&self, key: &LimitKey, now: i64) -> f64 {
        self.map
            .get(key)
            .map_or(key.burst(), |b| b.level(key.burst(), now))
    }

    /// Forgets refilled buckets (they hold nothing a new one would not); when still full, the
    /// least recently charged tenth.
    fn sweep(&mut self, now: i64) {
        self.swept_at = now;
        self.map.retain(|k, b| b.level(k.burst(), now) < k.burst());
        if self.map.len() > LOGIN_MAX_BUCKETS - LOGIN_MAX_BUCKETS / 10 {
            let mut ages: Vec<i64> = self.map.values().map(|b| b.at).collect();
            let cut = ages.len() / 10;
            ages.select_nth_unstable(cut);
            let oldest = ages[cut];
            self.map.retain(|_, b| b.at > oldest);
        }
    }
}

/// Why a login was not checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginRefusal {
    /// Too many failures from this address (or for this username from it): wait this many seconds.
    Limited(u64),
}

/// The login throttle: token buckets of attempts by client address and by (username, client
/// address), charged before the password is checked and given back when it was right; and the
/// few slots in which passwords are verified.
#[derive(Clone, Debug)]
pub struct LoginLimiter {
    buckets: Arc<Mutex<Buckets>>,
    verifying: Arc<tokio::sync::Semaphore>,
}

impl Default for LoginLimiter {
    fn default() -> LoginLimiter {
        LoginLimiter {
            buckets: Arc::default(),
            verifying: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_VERIFICATIONS)),
        }
    }
}

fn limit_keys(ip: IpAddr, username: &str) -> [LimitKey; 2] {
    [
        LimitKey::Address(ip),
        LimitKey::User(ip, bounded(username).to_string()),
    ]
}

/// `text` cut to at most `MAX_USERNAME_BYTES`, on a character boundary.
pub fn bounded(text: &str) -> &str {
    let mut end = text.len().min(MAX_USERNAME_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl LoginLimiter {
    /// Charges one attempt from `ip` for `username`, before the password is checked; or says
    /// how many seconds to wait, charging nothing. Concurrent attempts each take their own
    /// charge, so no more than the burst are ever checked.
    pub fn reserve(&self, ip: IpAddr, username: &str, now: i64) -> Result<(), LoginRefusal> {
        let keys = limit_keys(ip, username);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.map.len() + keys.len() > LOGIN_MAX_BUCKETS
            || now.saturating_sub(buckets.swept_at) >= LOGIN_SWEEP_MS
        {
            buckets.sweep(now);
        }
        let levels = keys.clone().map(|k| buckets.level(&k, now));
        let lowest = levels.iter().copied().fold(f64::INFINITY, f64::min);
        if lowest < 1.0 {
            let wait = ((1.0 - lowest) * LOGIN_REFILL_SECS).ceil().max(1.0) as u64;
            return Err(LoginRefusal::Limited(wait));
        }
        for (key, level) in keys.into_iter().zip(levels) {
            buckets.map.insert(
                key,
                Bucket {
                    tokens: level - 1.0,
                    at: now,
                },
            );
        }
        Ok(())
    }

    /// Gives back the attempt `reserve` charged: the password was right, or it was never checked.
    pub fn refund(&self, ip: IpAddr, username: &str, now: i64) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        for key in limit_keys(ip, username) {
            let burst = key.burst();
            if let Some(bucket) = buckets.map.get_mut(&key) {
                *bucket = Bucket {
                    tokens: (bucket.level(burst, now) + 1.0).min(burst),
                    at: now,
                };
            }
        }
    }

    /// A slot to verify one password in, waiting a little for one to free up; `None` when all
    /// stayed busy (the caller answers 429).
    pub async fn verify_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.verify_slot_within(VERIFY_QUEUE_WAIT).await
    }

    async fn verify_slot_within(
        &self,
        wait: Duration,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let slot = Arc::clone(&self.verifying).acquire_owned();
        tokio::time::timeout(wait, slot)
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Buckets held now (tests and diagnostics).
    pub fn buckets(&self) -> usize {
        self.buckets
            .lock()
            .map(|b| b.map.len())
            .unwrap_or_else(|e| e.into_inner().map.len())
    }
}

/// The client address of a request.
pub fn client_ip(connect: Option<&ConnectInfo<SocketAddr>>) -> IpAddr {
    connect
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_attempts_per_user_and_address_then_wait_and_refill() {
        let limiter = LoginLimiter::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let now = 1_000_000;
        for _ in 0..5 {
            assert_eq!(limiter.reserve(ip, "admin", now), Ok(()));
        }
        let Err(LoginRefusal::Limited(wait)) = limiter.reserve(ip, "admin", now) else {
            panic!("a sixth attempt was allowed");
        };
        assert!((29..=30).contains(&wait), "{wait}");
        // Another address is not limited by this one's failures.
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(limiter.reserve(other, "admin", now), Ok(()));
        // One attempt comes back after the refill interval.
        assert_eq!(limiter.reserve(ip, "admin", now + 30_000), Ok(()));
    }

    #[test]
    fn a_right_password_gives_its_attempt_back() {
        let limiter = LoginLimiter::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..20 {
            assert_eq!(limiter.reserve(ip, "admin", 0), Ok(()));
            limiter.refund(ip, "admin", 0);
        }
    }

    #[test]
    fn an_address_trying_many_usernames_is_limited_too() {
        let limiter = LoginLimiter::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for i in 0..10 {
            assert_eq!(limiter.reserve(ip, &format!("user{i}"), 0), Ok(()));
        }
        assert!(limiter.reserve(ip, "admin", 0).is_err());
    }

    #[test]
    fn the_bucket_map_stays_bounded() {
        let limiter = LoginLimiter::default();
        for i in 0..(LOGIN_MAX_BUCKETS as u32 * 2) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = limiter.reserve(ip, "admin", i64::from(i));
            assert!(limiter.buckets() <= LOGIN_MAX_BUCKETS, "{i}");
        }
        // Refilled buckets expire at the next sweep.
        let later = 10 * 3600 * 1000;
        let _ = limiter.reserve("192.0.2.1".parse().unwrap(), "admin", later);
        assert_eq!(limiter.buckets(), 2);
        // Keys keep at most the bounded username.
        assert_eq!(bounded(&"é".repeat(100)).len(), MAX_USERNAME_BYTES);
    }

    #[tokio::test]
    async fn only_a_few_passwords_are_verified_at_once() {
        let limiter = LoginLimiter::default();
        let held: Vec<_> = futures::future::join_all(
            (0..MAX_CONCURRENT_VERIFICATIONS).map(|_| limiter.verify_slot()),
        )
        .await;
        assert!(held.iter().all(Option::is_some));
        let wait = Duration::from_millis(50);
        assert!(limiter.verify_slot_within(wait).await.is_none());
        drop(held);
        assert!(limiter.verify_slot_within(wait).await.is_some());
    }

    #[test]
    fn form_fields_are_decoded() {
        let body = b"a=1&csrf=x%2By%3D&name=two+words";
        assert_eq!(form_field(body, "csrf").as_deref(), Some("x+y="));
        assert_eq!(form_field(body, "name").as_deref(), Some("two words"));
        assert_eq!(form_field(b"csrf=", "csrf").as_deref(), Some(""));
    }

    #[test]
    fn session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "theme=dark; bootplane_session=abc123; x=y".parse().unwrap(),
        );
        assert_eq!(session_id(&headers).as_deref(), Some("abc123"));
    }

    #[tokio::test]
    async fn argon2_hashes_verify_only_the_right_password() {
        let hash = hash_password("correct horse battery").await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&hash, "correct horse battery").await);
        assert!(!verify_password(&hash, "wrong").await);
        assert!(!verify_password("not a hash", "x").await);
    }
}
