//! Who is asking, and what they may do: the bootstrap admin token, API tokens, and browser
//! sessions; the role every route needs; logins with backoff; cross-site refusal.
//!
//! Invariants:
//! - Every request but `/healthz`, `/readyz` and `POST /login` is authenticated: a Bearer
//!   token (the data directory's admin token, or an API token) or, without an
//!   `Authorization` header, the session cookie. A request with a Bearer header never uses
//!   a cookie.
//! - The role a route needs ([`required_role`]) is checked on the server before the handler
//!   runs: viewers change nothing; only admins manage accounts, tokens, sessions, MQTT
//!   credentials, device types and rules.
//! - A state-changing request authenticated by a cookie, and every login and logout, is
//!   refused when the browser says it comes from another site (`Sec-Fetch-Site` other than
//!   `same-origin`/`none`, or an `Origin` that is not the server's: `--public-origin`, else
//!   `http(s)://<Host>`). The cookie is `HttpOnly; SameSite=Strict` besides.
//! - Logins back off per account and per address (a wait that doubles up to a minute, and is
//!   forgotten 15 minutes after the last failure); nothing is ever banned for good. While a
//!   login waits, its attempts are refused without checking the password (429 with
//!   `Retry-After`). A refused login is an event and a log line naming the account and the
//!   address, never the password.
//! - Password hashing runs off the async tasks, at most [`HASHING_AT_ONCE`] at a time.
//! - The handler runs with the caller's [`Identity`] in a task-local ([`identity`],
//!   [`actor`]): what it changes is recorded as done by that actor.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Form;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tracing::{info, warn};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, ApiResult, AppState, ErrorBody, body, ok, opt_time};
use crate::clock::{now_ms, rfc3339};
use crate::core::accounts::{
    self, Identity, Role, SessionPolicy, TOKEN_PREFIX, new_secret, secret_hash,
};

/// The session cookie's name.
pub const COOKIE: &str = "gatehouse_session";
/// Password hashes computed at once (each takes a core for a fraction of a second).
pub const HASHING_AT_ONCE: usize = 2;
/// The actor of the bootstrap admin token.
pub const ADMIN_TOKEN_ACTOR: &str = "admin";

/// Failed logins an account gets before it waits, and the first wait.
const ACCOUNT_FREE: u32 = 3;
/// Failed logins an address gets before it waits (several people may share one).
const ADDR_FREE: u32 = 10;
/// The longest wait between two login attempts.
const WAIT_MAX: Duration = Duration::from_secs(60);
/// A login's failures are forgotten this long after the last one.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Accounts and addresses tracked for failures before the memory restarts.
const TRACKED_MAX: usize = 10_000;

tokio::task_local! {
    static IDENTITY: Identity;
}

/// The caller of the request being handled.
pub fn identity() -> Option<Identity> {
    IDENTITY.try_with(Clone::clone).ok()
}

/// Runs `f` as `id` (what [`identity`] and [`actor`] see inside it).
pub async fn scope<F: std::future::Future>(id: Identity, f: F) -> F::Output {
    IDENTITY.scope(id, f).await
}

/// Who the request being handled acts as (recorded on every change it makes).
pub fn actor() -> String {
    IDENTITY
        .try_with(|i| i.actor.clone())
        .unwrap_or_else(|_| "unknown".into())
}

/// The console's access settings and the login guard.
pub struct Auth {
    pub admin_token: Arc<str>,
    pub policy: SessionPolicy,
    /// The origin browsers see when the console is behind a reverse proxy
    /// (`https://console.example`), else `None`: the `Host` header's.
    pub public_origin: Option<String>,
    guard: LoginGuard,
    hashing: Semaphore,
}

impl Auth {
    pub fn new(
        admin_token: Arc<str>,
        policy: SessionPolicy,
        public_origin: Option<String>,
    ) -> Auth {
        Auth {
            admin_token,
            policy,
            public_origin: public_origin.map(|o| o.trim_end_matches('/').to_string()),
            guard: LoginGuard::default(),
            hashing: Semaphore::new(HASHING_AT_ONCE),
        }
    }

    /// A password's Argon2id hash, computed off the async tasks.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let _permit = self.hashing.acquire().await.map_err(|_| unavailable())?;
        tokio::task::spawn_blocking(move || crate::core::access::hash_chosen(&password))
            .await
            .map_err(|_| unavailable())?
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))
    }

    /// Whether `password` matches `hash` (a missing account is checked against a dummy hash,
    /// so both take the same time).
    async fn verify(&self, password: String, hash: Option<String>) -> bool {
        let Ok(_permit) = self.hashing.acquire().await else {
            return false;
        };
        let exists = hash.is_some();
        let hash = hash.unwrap_or_else(|| dummy_hash().to_string());
        let ok = tokio::task::spawn_blocking(move || {
            crate::core::access::verify(password.as_bytes(), &hash)
        })
        .await
        .unwrap_or(false);
        ok && exists
    }

    fn secure_cookie(&self) -> bool {
        self.public_origin
            .as_deref()
            .is_some_and(|o| o.starts_with("https://"))
    }
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server is shutting down",
    )
}

fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| crate::core::access::hash_chosen("not a password").unwrap_or_default())
}

/// Failures per account and per address, and how long each must wait.
#[derive(Default)]
struct LoginGuard {
    accounts: Mutex<HashMap<String, Backoff>>,
    addrs: Mutex<HashMap<IpAddr, Backoff>>,
}

#[derive(Clone, Copy)]
struct Backoff {
    failures: u32,
    last: Instant,
    until: Instant,
}

fn wait_after(failures: u32, free: u32) -> Duration {
    if failures < free {
        return Duration::ZERO;
    }
    let secs = 1u64 << (failures - free).min(6);
    Duration::from_secs(secs).min(WAIT_MAX)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LoginGuard {
    /// How long a login for `name` from `ip` must still wait, if it must.
    fn wait(&self, name: &str, ip: IpAddr, now: Instant) -> Option<Duration> {
        let a = lock(&self.accounts).get(name).map(|b| b.until);
        let b = lock(&self.addrs).get(&ip).map(|b| b.until);
        let until = a.into_iter().chain(b).max()?;
        (until > now).then(|| until - now)
    }

    /// Notes a failure; returns the failures in a row (the larger of account and address).
    fn fail(&self, name: &str, ip: IpAddr, now: Instant) -> u32 {
        fn note<K: std::hash::Hash + Eq + Clone>(
            m: &mut HashMap<K, Backoff>,
            k: &K,
            free: u32,
            now: Instant,
        ) -> u32 {
            if m.len() >= TRACKED_MAX {
                m.retain(|_, b| now.duration_since(b.last) < FORGET_AFTER);
                if m.len() >= TRACKED_MAX {
                    m.clear();
                }
            }
            let b = m.entry(k.clone()).or_insert(Backoff {
                failures: 0,
                last: now,
                until: now,
            });
            if now.duration_since(b.last) >= FORGET_AFTER {
                b.failures = 0;
            }
            b.failures += 1;
            b.last = now;
            b.until = now + wait_after(b.failures, free);
            b.failures
        }
        let a = note(
            &mut lock(&self.accounts),
            &name.to_string(),
            ACCOUNT_FREE,
            now,
        );
        let b = note(&mut lock(&self.addrs), &ip, ADDR_FREE, now);
        a.max(b)
    }

    fn succeed(&self, name: &str, ip: IpAddr) {
        lock(&self.accounts).remove(name);
        lock(&self.addrs).remove(&ip);
    }
}

/// The role a request needs.
pub fn required_role(method: &Method, path: &str) -> Role {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let reads = method == Method::GET || method == Method::HEAD;
    match segs.as_slice() {
        // Who may do what, and the broker's logins.
        [
            "api",
            "users" | "tokens" | "sessions" | "credentials" | "observers",
            ..,
        ] => Role::Admin,
        // A device's or a type's MQTT credential.
        ["api", .., "credentials"] => Role::Admin,
        _ if reads => Role::Viewer,
        // What the venue's devices and rules are: a type's definition, the rule set.
        ["api", "types", _] => Role::Admin,
        ["api", "rules", "test" | "replay"] if method == Method::POST => Role::Operator,
        ["api", "rules", ..] => Role::Admin,
        _ => Role::Operator,
    }
}

/// The value of the cookie `name`, if the request carries it.
pub(super) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Why a browser request is cross-site, if it is.
pub fn cross_site(headers: &HeaderMap, public_origin: Option<&str>) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("");
        if !matches!(site, "same-origin" | "none") {
            return Some(format!("Sec-Fetch-Site: {site}"));
        }
    }
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
    let ours = match public_origin {
        Some(o) => origin.eq_ignore_ascii_case(o),
        None => headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|host| {
                origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"))
                    .is_some_and(|o| o.eq_ignore_ascii_case(host))
            }),
    };
    (!ours).then(|| format!("Origin: {origin} is not this server's (--public-origin)"))
}

fn unauthorized(message: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// The middleware: authenticates, checks the role, and runs the handler as the caller.
pub async fn authenticate(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let auth = &state.auth;
    let now = now_ms();
    let headers = req.headers();
    let id = if let Some(v) = headers.get(header::AUTHORIZATION) {
        let Some(t) = v
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
        else {
            return unauthorized("Authorization must be: Bearer <token>");
        };
        if crate::core::access::constant_time_eq(t.as_bytes(), auth.admin_token.as_bytes()) {
            Identity {
                actor: ADMIN_TOKEN_ACTOR.into(),
                role: Role::Admin,
                user: None,
                session: None,
            }
        } else if t.starts_with(TOKEN_PREFIX)
            && let Some(id) = state
                .hub
                .accounts_check(now, |st, fx| st.token_check(fx, t))
        {
            id
        } else {
            return unauthorized("wrong, expired or revoked bearer token");
        }
    } else if let Some(secret) = cookie_value(headers, COOKIE) {
        let Some(id) = state
            .hub
            .accounts_check(now, |st, fx| st.session_check(fx, secret, &auth.policy))
        else {
            return unauthorized("the session has ended: log in again (POST /login)");
        };
        let reads = req.method() == Method::GET || req.method() == Method::HEAD;
        if !reads && let Some(why) = cross_site(headers, auth.public_origin.as_deref()) {
            warn!(user = %id.actor, reason = %why, path = %req.uri().path(), "cross-site request refused");
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!("cross-site request refused ({why})"),
            )
            .into_response();
        }
        id
    } else {
        return unauthorized(
            "log in (POST /login), or send Authorization: Bearer <token> (an API token, or the data directory's admin-token file)",
        );
    };
    let need = required_role(req.method(), req.uri().path());
    if id.role < need {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} {} needs the {} role; {} is {}",
                req.method(),
                req.uri().path(),
                need.as_str(),
                id.actor,
                id.role.as_str()
            ),
        )
        .into_response();
    }
    IDENTITY.scope(id, next.run(req)).await
}

/// The accounts API (behind [`authenticate`]).
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(list_users, add_user))
        .routes(routes!(change_user, remove_user))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(list_sessions))
        .routes(routes!(end_session))
}

/// The login and logout forms (open: they check what they are sent themselves).
pub(super) fn login_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct LoginForm {
    name: String,
    password: String,
    /// Where to go after logging in (a path on this server).
    #[serde(default)]
    next: Option<String>,
}

#[utoipa::path(
    post,
    path = "/login",
    tag = "accounts",
    security(()),
    request_body(content = LoginForm, description = "The console's login form", content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Logged in: the session cookie (`Set-Cookie`), and `Location` the page to go to"),
        (status = 400, description = "Not a form with name and password", body = ErrorBody),
        (status = 401, description = "Wrong name or password (a browser gets the login page again)", body = ErrorBody),
        (status = 403, description = "Posted from another site", body = ErrorBody),
        (status = 429, description = "Too many failed logins: `Retry-After` says when to try again", body = ErrorBody),
    )
)]
/// `POST /login` (a form: `name`, `password`, optional `next`): a new session cookie and a
/// redirect (303) to `next` or `/`.
async fn login(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let auth = &s.auth;
    if let Some(why) = cross_site(&headers, auth.public_origin.as_deref()) {
        warn!(reason = %why, "cross-site login refused");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!("cross-site request refused ({why})"),
        )
        .into_response();
    }
    let page = super::ui::wants_html(&headers);
    let Form(f) = match form {
        Ok(f) => f,
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the login is a form with name and password: {e}"),
            )
            .into_response();
        }
    };
    let ip = peer.ip().to_canonical();
    let name = crate::core::clip_text(&f.name, 64);
    let next = super::ui::safe_next(f.next.clone());
    let refuse = |status: StatusCode, message: String| {
        if page {
            super::ui::login_refused(status, message, name.clone(), next.clone())
        } else {
            ApiError::new(status, message).into_response()
        }
    };
    if let Some(wait) = auth.guard.wait(&name, ip, Instant::now()) {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        s.hub
            .stats
            .logins_backed_off
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut r = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed logins: try again in {secs} s"),
        );
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let hash = s
        .hub
        .accounts_read(|a| a.user(&name).map(|u| u.hash.clone()));
    let known = hash.is_some();
    if !auth.verify(f.password, hash).await {
        let failures = auth.guard.fail(&name, ip, Instant::now());
        let reason = if known {
            "wrong password"
        } else {
            "no such account"
        };
        warn!(user = %name, addr = %ip, failures, reason, "console login refused");
        let addr = ip.to_string();
        let _ = s
            .hub
            .accounts_change(now_ms(), |st, fx| {
                st.login_failed(fx, &name, &addr, reason, failures);
                Ok(())
            })
            .await;
        s.hub
            .stats
            .logins_failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return refuse(StatusCode::UNAUTHORIZED, "wrong name or password".into());
    }
    auth.guard.succeed(&name, ip);
    let secret = new_secret("");
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let addr = ip.to_string();
    let policy = auth.policy;
    let started = s
        .hub
        .accounts_change(now_ms(), |st, fx| {
            st.session_start(fx, &name, secret_hash(&secret), &addr, &agent, &policy)
        })
        .await;
    let session = match started {
        Ok(x) => x,
        Err(e) => return ApiError::from(e).into_response(),
    };
    info!(user = %name, addr = %ip, session = %session.id(), "console login");
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, next)]).into_response();
    let cookie = format!(
        "{COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        policy.max_ms / 1000,
        if auth.secure_cookie() { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[utoipa::path(
    post,
    path = "/logout",
    tag = "accounts",
    security(()),
    responses(
        (status = 303, description = "Logged out: the cookie cleared, `Location: /login`"),
        (status = 403, description = "Posted from another site", body = ErrorBody),
    )
)]
/// `POST /logout`: ends the cookie's session (if any) and clears the cookie.
async fn logout(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(why) = cross_site(&headers, s.auth.public_origin.as_deref()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!("cross-site request refused ({why})"),
        )
        .into_response();
    }
    if let Some(secret) = cookie_value(&headers, COOKIE) {
        let hash = secret_hash(secret);
        let id = s.hub.accounts_read(|a| {
            a.sessions()
                .into_iter()
                .find(|x| x.hash == hash)
                .map(|x| (x.id().to_string(), x.user.clone()))
        });
        if let Some((id, user)) = id {
            let _ = s
                .hub
                .accounts_change(now_ms(), |st, fx| {
                    st.session_end(fx, &id, "logged out", &user)
                })
                .await;
        }
    }
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "gatehouse_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

#[utoipa::path(
    get,
    path = "/api/me",
    tag = "accounts",
    responses((status = 200, description = "`actor`, `role`, `user` and `session` of this request", body = Object))
)]
/// `GET /api/me`: who this request acts as.
async fn me() -> ApiResult {
    let id = identity().ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "not logged in"))?;
    ok(json!({"actor": id.actor, "role": id.role, "user": id.user, "session": id.session}))
}

fn user_json(u: &accounts::User, a: &accounts::Accounts, policy: &SessionPolicy) -> Value {
    let sessions: Vec<_> = a
        .sessions()
        .into_iter()
        .filter(|s| s.user == u.name)
        .collect();
    json!({
        "name": u.name,
        "role": u.role,
        "created_at": rfc3339(u.created_at),
        "password_changed_at": rfc3339(u.password_changed_at),
        "sessions": sessions.len(),
        "last_seen": opt_time(sessions.iter().map(|s| s.last_seen).max()),
        "session_expires_at": opt_time(sessions.iter().map(|s| policy.expires_at(s)).max()),
    })
}

/// Every console account.
#[utoipa::path(
    get,
    path = "/api/users",
    tag = "accounts",
    responses(
        (status = 200, description = "Name, role, created, password changed, sessions, last seen", body = Object),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
    )
)]
async fn list_users(State(s): State<AppState>) -> ApiResult {
    let policy = s.auth.policy;
    ok(s.hub.accounts_read(|a| {
        a.users()
            .map(|u| user_json(u, a, &policy))
            .collect::<Vec<_>>()
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    /// Generated (and returned once) when left out.
    #[serde(default)]
    password: Option<String>,
    role: String,
}

#[utoipa::path(
    post,
    path = "/api/users",
    tag = "accounts",
    request_body(content = NewUser, content_type = "application/json"),
    responses(
        (status = 201, description = "The account (`password` too when generated, shown once)", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
    )
)]
/// `POST /api/users` `{"name", "password"?, "role"}` → 201. A generated password is in the
/// answer, once.
async fn add_user(State(s): State<AppState>, raw: Bytes) -> ApiResult {
    let req: NewUser = body(&raw)?;
    let role = Role::parse(&req.role)?;
    accounts::check_name("name", &req.name)?;
    let (password, generated) = match req.password {
        Some(p) => {
            accounts::check_password(&p)?;
            (p, false)
        }
        None => (accounts::generate_password(), true),
    };
    let hash = s.auth.hash(password.clone()).await?;
    let actor = actor();
    let u = s
        .hub
        .accounts_change(now_ms(), |st, fx| {
            st.user_add(fx, &req.name, role, hash, &actor)
        })
        .await?;
    let policy = s.auth.policy;
    let mut v = s.hub.accounts_read(|a| user_json(&u, a, &policy));
    if generated {
        v["password"] = json!(password);
    }
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UserChange {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

#[utoipa::path(
    patch,
    path = "/api/users/{name}",
    tag = "accounts",
    params(("name" = String, Path, description = "The account")),
    request_body(content = UserChange, content_type = "application/json"),
    responses(
        (status = 200, description = "The account after the change", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "It is the last admin", body = ErrorBody),
    )
)]
/// `PATCH /api/users/{name}` `{"role"?, "password"?}`: a new password ends the account's
/// sessions.
async fn change_user(State(s): State<AppState>, Path(name): Path<String>, raw: Bytes) -> ApiResult {
    let req: UserChange = body(&raw)?;
    let role = req.role.as_deref().map(Role::parse).transpose()?;
    if role.is_none() && req.password.is_none() {
        return Err(ApiError::field("body", "give role and/or password"));
    }
    let hash = match req.password {
        Some(p) => {
            accounts::check_password(&p)?;
            Some(s.auth.hash(p).await?)
        }
        None => None,
    };
    let actor = actor();
    let u = s
        .hub
        .accounts_change(now_ms(), |st, fx| {
            st.user_change(fx, &name, role, hash, &actor)
        })
        .await?;
    let policy = s.auth.policy;
    ok(s.hub.accounts_read(|a| user_json(&u, a, &policy)))
}

/// Removes an account and ends its sessions.
#[utoipa::path(
    delete,
    path = "/api/users/{name}",
    tag = "accounts",
    params(("name" = String, Path, description = "The account")),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
        (status = 404, description = "No such account", body = ErrorBody),
        (status = 409, description = "It is the last admin", body = ErrorBody),
    )
)]
async fn remove_user(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let actor = actor();
    s.hub
        .accounts_change(now_ms(), |st, fx| st.user_remove(fx, &name, &actor))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn token_json(t: &accounts::ApiToken, now: i64) -> Value {
    json!({
        "name": t.name,
        "role": t.role,
        "created_at": rfc3339(t.created_at),
        "created_by": t.created_by,
        "expires_at": opt_time(t.expires_at),
        "expired": t.expires_at.is_some_and(|e| e <= now),
        "last_used": opt_time(t.last_used),
    })
}

/// Every API token (never its secret).
#[utoipa::path(
    get,
    path = "/api/tokens",
    tag = "accounts",
    responses(
        (status = 200, description = "Name, role, created by, expiry, last use", body = Object),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
    )
)]
async fn list_tokens(State(s): State<AppState>) -> ApiResult {
    let now = now_ms();
    ok(s.hub
        .accounts_read(|a| a.tokens().map(|t| token_json(t, now)).collect::<Vec<_>>()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    role: String,
    /// RFC 3339.
    #[serde(default)]
    expires_at: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/tokens",
    tag = "accounts",
    request_body(content = NewToken, content_type = "application/json"),
    responses(
        (status = 201, description = "The token, its secret in `token` (shown once)", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
    )
)]
/// `POST /api/tokens` `{"name", "role", "expires_at"?}` → 201 with the token's secret
/// (`token`), shown this once.
async fn create_token(State(s): State<AppState>, raw: Bytes) -> ApiResult {
    let req: NewToken = body(&raw)?;
    let role = Role::parse(&req.role)?;
    let expires_at = req
        .expires_at
        .as_deref()
        .map(|t| {
            crate::clock::parse_rfc3339(t).ok_or_else(|| {
                ApiError::field(
                    "expires_at",
                    format!("{t:?} is not an RFC 3339 time (2026-12-31T23:00:00Z)"),
                )
            })
        })
        .transpose()?;
    let secret = new_secret(TOKEN_PREFIX);
    let actor = actor();
    let t = s
        .hub
        .accounts_change(now_ms(), |st, fx| {
            st.token_create(
                fx,
                &req.name,
                role,
                expires_at,
                secret_hash(&secret),
                &actor,
            )
        })
        .await?;
    let mut v = token_json(&t, now_ms());
    v["token"] = json!(secret);
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

/// Revokes an API token.
#[utoipa::path(
    delete,
    path = "/api/tokens/{name}",
    tag = "accounts",
    params(("name" = String, Path, description = "The token's name")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
        (status = 404, description = "No such token", body = ErrorBody),
    )
)]
async fn revoke_token(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let actor = actor();
    s.hub
        .accounts_change(now_ms(), |st, fx| st.token_revoke(fx, &name, &actor))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Every console session.
#[utoipa::path(
    get,
    path = "/api/sessions",
    tag = "accounts",
    responses(
        (status = 200, description = "Id, account, address, browser, last seen, expiry, whether it is this request's", body = Object),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
    )
)]
async fn list_sessions(State(s): State<AppState>) -> ApiResult {
    let policy = s.auth.policy;
    let current = identity().and_then(|i| i.session);
    ok(s.hub.accounts_read(|a| {
        a.sessions()
            .into_iter()
            .map(|x| {
                json!({
                    "id": x.id(),
                    "user": x.user,
                    "created_at": rfc3339(x.created_at),
                    "last_seen": rfc3339(x.last_seen),
                    "expires_at": rfc3339(policy.expires_at(x)),
                    "addr": x.addr,
                    "agent": x.agent,
                    "current": current.as_deref() == Some(x.id()),
                })
            })
            .collect::<Vec<_>>()
    }))
}

/// Ends a console session.
#[utoipa::path(
    delete,
    path = "/api/sessions/{id}",
    tag = "accounts",
    params(("id" = String, Path, description = "The session's id (`GET /api/sessions`)")),
    responses(
        (status = 204, description = "Ended"),
        (status = 403, description = "The caller's role may not", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
    )
)]
async fn end_session(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let actor = actor();
    s.hub
        .accounts_change(now_ms(), |st, fx| {
            st.session_end(fx, &id, "revoked", &actor)
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_per_route() {
        let cases = [
            (Method::GET, "/api/devices", Role::Viewer),
            (Method::GET, "/api/state", Role::Viewer),
            (Method::PUT, "/api/state/level", Role::Operator),
            (Method::POST, "/api/devices/acon/1/cells/3", Role::Operator),
            (Method::POST, "/api/types/lock/push", Role::Operator),
            (Method::PUT, "/api/types/lock", Role::Admin),
            (Method::PUT, "/api/types/push", Role::Admin),
            (Method::GET, "/api/types/lock", Role::Viewer),
            (Method::POST, "/api/rules/test", Role::Operator),
            (Method::POST, "/api/rules/replay", Role::Operator),
            (Method::PUT, "/api/rules/test", Role::Admin),
            (Method::POST, "/api/rules/import", Role::Admin),
            (Method::DELETE, "/api/rules/x", Role::Admin),
            (Method::GET, "/api/rules/export", Role::Viewer),
            (Method::GET, "/api/users", Role::Admin),
            (Method::GET, "/api/credentials", Role::Admin),
            (Method::DELETE, "/api/sessions/ab", Role::Admin),
            (Method::POST, "/api/tokens", Role::Admin),
            (Method::GET, "/api/me", Role::Viewer),
            (
                Method::POST,
                "/api/devices/lock/b827eb0a1b2c/credentials",
                Role::Admin,
            ),
            (
                Method::DELETE,
                "/api/devices/lock/b827eb0a1b2c/credentials",
                Role::Admin,
            ),
            (Method::POST, "/api/types/rgb/credentials", Role::Admin),
            (
                Method::POST,
                "/api/observers/debug/credentials",
                Role::Admin,
            ),
            (
                Method::POST,
                "/api/devices/lock/b827eb0a1b2c/push",
                Role::Operator,
            ),
            (
                Method::PUT,
                "/api/devices/lock/b827eb0a1b2c/config",
                Role::Operator,
            ),
        ];
        for (m, p, want) in cases {
            assert_eq!(required_role(&m, p), want, "{m} {p}");
        }
    }

    #[test]
    fn cross_site_requests() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(
                    axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            m
        };
        let host = ("host", "127.0.0.1:8080");
        assert!(
            cross_site(&h(&[host]), None).is_none(),
            "no browser headers"
        );
        assert!(cross_site(&h(&[host, ("sec-fetch-site", "same-origin")]), None).is_none());
        assert!(cross_site(&h(&[host, ("origin", "http://127.0.0.1:8080")]), None).is_none());
        assert!(cross_site(&h(&[host, ("sec-fetch-site", "cross-site")]), None).is_some());
        assert!(cross_site(&h(&[host, ("sec-fetch-site", "same-site")]), None).is_some());
        assert!(cross_site(&h(&[host, ("origin", "http://evil.example")]), None).is_some());
        assert!(cross_site(&h(&[host, ("origin", "null")]), None).is_some());
        let proxied = Some("https://console.example");
        assert!(cross_site(&h(&[host, ("origin", "https://console.example")]), proxied).is_none());
        assert!(cross_site(&h(&[host, ("origin", "http://127.0.0.1:8080")]), proxied).is_some());
    }

    #[test]
    fn backoff_doubles_to_a_minute_and_is_forgotten() {
        let g = LoginGuard::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let t0 = Instant::now();
        for _ in 0..ACCOUNT_FREE - 1 {
            g.fail("admin", ip, t0);
        }
        assert!(
            g.wait("admin", ip, t0).is_none(),
            "the first failures are free"
        );
        g.fail("admin", ip, t0);
        assert_eq!(g.wait("admin", ip, t0), Some(Duration::from_secs(1)));
        assert!(g.wait("other", [10, 0, 0, 2].into(), t0).is_none());
        for _ in 0..20 {
            g.fail("admin", ip, t0);
        }
        assert_eq!(g.wait("admin", [10, 0, 0, 2].into(), t0), Some(WAIT_MAX));
        assert_eq!(
            g.wait("other", ip, t0),
            Some(WAIT_MAX),
            "the address waits too"
        );
        let later = t0 + FORGET_AFTER;
        assert!(g.wait("admin", ip, later).is_none(), "never a ban");
        assert_eq!(g.fail("admin", ip, later), 1, "failures are forgotten");
        g.succeed("admin", ip);
        assert!(g.wait("admin", ip, later).is_none());
    }
}
