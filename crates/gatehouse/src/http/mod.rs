//! The console's HTTP API: JSON over HTTP, `Authorization: Bearer <token>` on every route.
//!
//! Invariants: handlers only translate between HTTP and the core: they parse and check the
//! request's shape, build a typed [`crate::core::Command`], and render the snapshot the core
//! returns; only this module knows the API's routes, statuses and JSON. Every change goes
//! through the core, which makes it durable and records who made it before the handler
//! answers. Errors are JSON:
//! `{"error": "...", "field": "..."}` (`field` when one input is to blame).

mod access;
mod acon;
mod game;
pub mod health;
mod history;
pub mod metrics;
pub mod serve;
mod skaben;
mod stream;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::clock::rfc3339;
use crate::core::{CoreError, DeviceSummary, DeviceView, Hub};
pub use stream::Streams;

/// Who a request acts as; recorded on every change it makes.
const ADMIN: &str = "admin";

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub admin_token: Arc<str>,
    /// The embedded broker's logins (`None` with an external broker).
    pub mqtt_auth: Option<crate::gateway::access::MqttAuth>,
    /// Whether the MQTT side is up, for `/readyz` and `/metrics`.
    pub ready: Arc<health::Readiness>,
    /// The event streams' cap and the shutdown that ends them.
    pub streams: Streams,
}

/// The API router: `/healthz` and `/readyz` open to anyone; everything else (one router per
/// resource: boards, props and types, history, credentials; `/metrics`) behind the Bearer
/// check, and a body must be JSON.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/devices", get(list_devices))
        .route("/api/stats", get(get_stats))
        .route("/metrics", get(metrics::metrics))
        .merge(acon::routes())
        .merge(skaben::routes())
        .merge(history::routes())
        .merge(access::routes())
        .merge(game::routes())
        .merge(stream::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::from_fn(json_body))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(api)
        .with_state(state)
}

/// The `--metrics-listen` router: `/metrics` only, without the token (bind it to a private
/// address).
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics::metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .with_state(state)
}

/// Whether a request carries a body (a length above 0, or a chunked one).
fn has_body(req: &Request) -> bool {
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    h.get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) != Some(0))
}

/// Whether `content_type` is JSON: `application/json` (for PATCH also
/// `application/merge-patch+json`), with no parameter but `charset=utf-8`.
fn is_json(content_type: &str, patch: bool) -> bool {
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or("").trim();
    let type_ok = essence.eq_ignore_ascii_case("application/json")
        || (patch && essence.eq_ignore_ascii_case("application/merge-patch+json"));
    type_ok
        && parts.all(|p| {
            let p = p.trim();
            p.is_empty()
                || p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("charset")
                        && v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
                })
        })
}

/// 415 for a request with a body that is not declared JSON. A request without a body needs
/// no content type.
async fn json_body(req: Request, next: Next) -> Response {
    if has_body(&req) {
        let patch = req.method() == axum::http::Method::PATCH;
        // A rule file is imported as it is written: TOML.
        if req.uri().path() == "/api/rules/import" {
            let toml = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| {
                    ct.split(';')
                        .next()
                        .is_some_and(|e| e.trim().eq_ignore_ascii_case("application/toml"))
                });
            if !toml {
                return ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "the body must be the rule file, Content-Type: application/toml",
                )
                .into_response();
            }
            return next.run(req).await;
        }
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("(not text)"));
        if !ct.is_some_and(|ct| is_json(ct, patch)) {
            let accepted = if patch {
                "application/json or application/merge-patch+json"
            } else {
                "application/json"
            };
            let given = ct.map_or("none".to_string(), |c| format!("{c:?}"));
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("the body must be {accepted} (Content-Type: {given})"),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
    /// More keys of the error object (`rule`, `errors` of a refused rule file).
    extra: Option<serde_json::Map<String, Value>>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            field: None,
            extra: None,
        }
    }

    fn field(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field.to_string()),
            extra: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.message});
        if let Some(f) = self.field {
            body["field"] = json!(f);
        }
        if let (Some(extra), Value::Object(m)) = (self.extra, &mut body) {
            m.extend(extra);
        }
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> ApiError {
        match e {
            CoreError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, m),
            CoreError::Invalid { field, reason } => {
                ApiError::field(field, format!("{field}: {reason}"))
            }
            CoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            CoreError::Rules(errors) => {
                let first = errors.first();
                let mut extra = serde_json::Map::new();
                extra.insert("rule".into(), json!(first.and_then(|e| e.rule.clone())));
                extra.insert("errors".into(), json!(errors));
                ApiError {
                    status: StatusCode::BAD_REQUEST,
                    message: first
                        .map_or_else(|| "the rule file was refused".into(), ToString::to_string),
                    field: first.map(|e| e.field.clone()),
                    extra: Some(extra),
                }
            }
            CoreError::Store(e) => {
                tracing::error!(error = %e, "store failure in API request");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not recorded: {e}"),
                )
            }
        }
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(v: impl serde::Serialize) -> ApiResult {
    Ok(axum::Json(v).into_response())
}

async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t)
            if crate::core::access::constant_time_eq(
                t.as_bytes(),
                state.admin_token.as_bytes(),
            ) =>
        {
            next.run(req).await
        }
        Some(_) => {
            let mut r =
                ApiError::new(StatusCode::UNAUTHORIZED, "wrong bearer token").into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
        None => {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing Authorization: Bearer <token> (the admin token is in the data directory's admin-token file)",
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}

/// Parses a JSON body into `T`, with errors that name the field.
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return serde_json::from_str("{}").map_err(|e| ApiError::field("body", e.to_string()));
    }
    // serde's message names the offending field ("unknown field `x`, expected one of …").
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::field("body", format!("invalid JSON body: {e}")))
}

#[derive(Deserialize)]
struct KindQuery {
    kind: Option<String>,
}

fn opt_time(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

/// What every device's page starts with; the protocol's routes add their fields.
fn device_json(d: &DeviceView) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for (k, v) in [
        ("kind", json!(d.kind)),
        ("id", json!(d.id)),
        ("protocol", json!(d.protocol)),
        ("name", json!(d.name)),
        ("notes", json!(d.notes)),
        ("first_seen", json!(rfc3339(d.first_seen))),
        ("last_seen", opt_time(d.last_seen)),
        ("online", json!(d.online)),
        ("presence_changed_at", json!(rfc3339(d.presence_changed_at))),
    ] {
        m.insert(k.into(), v);
    }
    m
}

/// A page: the shared device fields, then the protocol's.
fn page_json(d: &DeviceView, rest: Value) -> Value {
    let mut m = device_json(d);
    if let Value::Object(r) = rest {
        m.extend(r);
    }
    Value::Object(m)
}

fn summary_json(s: &DeviceSummary) -> Value {
    let d = &s.device;
    json!({
        "kind": d.kind,
        "id": d.id,
        "protocol": d.protocol,
        "name": d.name,
        "online": d.online,
        "last_seen": opt_time(d.last_seen),
        "first_seen": rfc3339(d.first_seen),
        "blocked": s.blocked,
    })
}

async fn list_devices(State(s): State<AppState>, Query(q): Query<KindQuery>) -> ApiResult {
    let list: Vec<Value> = s
        .hub
        .list(q.kind.as_deref())
        .iter()
        .map(summary_json)
        .collect();
    ok(list)
}

async fn get_stats(State(s): State<AppState>) -> ApiResult {
    let mut m = serde_json::Map::new();
    for (name, _, _, value) in s.hub.stats.entries() {
        m.insert(name.into(), json!(value));
    }
    m.insert("mqtt_auth".into(), json!(s.mqtt_auth));
    m.insert(
        "mqtt_auth_warning".into(),
        json!(
            (s.mqtt_auth == Some(crate::gateway::access::MqttAuth::Off)).then_some(
                "MQTT logins are off (--mqtt-auth off): any client may connect without a credential"
            )
        ),
    );
    ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_content_types() {
        for ct in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert!(is_json(ct, false), "{ct}");
            assert!(is_json(ct, true), "{ct}");
        }
        assert!(is_json("application/merge-patch+json", true));
        assert!(!is_json("application/merge-patch+json", false));
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin1",
            "application/jsonx",
            "",
        ] {
            assert!(!is_json(ct, true), "{ct}");
        }
    }
}
