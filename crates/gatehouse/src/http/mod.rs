//! The console's HTTP API: JSON over HTTP, `Authorization: Bearer <token>` on every route.
//!
//! Invariants: handlers only translate between HTTP and the core (parse, validate shapes,
//! map errors to statuses); every change goes through the core, which makes it durable and
//! records who made it before the handler answers. Errors are JSON:
//! `{"error": "...", "field": "..."}` (`field` when one input is to blame).

mod skaben;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::clock::{now_ms, parse_rfc3339, rfc3339};
use crate::core::{CoreError, EngageRequest, Hub, RegisterRequest, acon_key};
use crate::store::EventFilter;

/// Who a request acts as; recorded on every change it makes.
const ADMIN: &str = "admin";

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub admin_token: Arc<str>,
}

/// The API router.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/devices", get(list_devices))
        .route("/api/devices/acon/{id}", get(get_board).put(register_board))
        .route("/api/devices/acon/{id}/cells", get(get_cells))
        .route(
            "/api/devices/acon/{id}/cells/{cell}",
            put(engage_cell).delete(release_cell),
        )
        .route("/api/devices/acon/{id}/reset", post(reset_board))
        .route("/api/devices/acon/{id}/block", post(block_board))
        .route("/api/devices/acon/{id}/unblock", post(unblock_board))
        .route("/api/devices/acon/{id}/messages", get(get_messages))
        .route(
            "/api/devices/{type}/{id}",
            get(skaben::get_device).put(skaben::register_device),
        )
        .route(
            "/api/devices/{type}/{id}/config",
            put(skaben::put_config).patch(skaben::patch_config),
        )
        .route("/api/devices/{type}/{id}/push", post(skaben::push_device))
        .route(
            "/api/devices/{type}/{id}/messages",
            get(get_device_messages),
        )
        .route("/api/types", get(skaben::list_types))
        .route(
            "/api/types/{type}",
            get(skaben::get_type).put(skaben::put_type),
        )
        .route("/api/types/{type}/push", post(skaben::push_type))
        .route("/api/events", get(get_events))
        .route("/api/stats", get(get_stats))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") });
    api.layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            field: None,
        }
    }

    fn field(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.message});
        if let Some(f) = self.field {
            body["field"] = json!(f);
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
        Some(t) if constant_time_eq(t.as_bytes(), state.admin_token.as_bytes()) => {
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

async fn list_devices(State(s): State<AppState>, Query(q): Query<KindQuery>) -> ApiResult {
    ok(s.hub.list(q.kind.as_deref()))
}

async fn get_board(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    match s.hub.acon_board(&id) {
        Some(b) => ok(b),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no board acon/{id}"),
        )),
    }
}

async fn register_board(
    State(s): State<AppState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let req: RegisterRequest = body(&bytes)?;
    s.hub.acon_register(&id, req, ADMIN, now_ms()).await?;
    get_board(State(s), Path(id)).await
}

async fn get_cells(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    ok(s.hub.acon_cells(&id, now_ms())?)
}

fn parse_cell(cell: &str) -> Result<u32, ApiError> {
    cell.parse()
        .map_err(|_| ApiError::field("cell", format!("cell: {cell:?} is not a cell number")))
}

/// The engage body: like [`EngageRequest`], with `expires_at` as RFC 3339 and typed checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EngageBody {
    minutes: Option<Value>,
    expires_at: Option<String>,
    code: Option<Value>,
    single_use: Option<Value>,
}

async fn engage_cell(
    State(s): State<AppState>,
    Path((id, cell)): Path<(String, String)>,
    bytes: Bytes,
) -> ApiResult {
    let cell = parse_cell(&cell)?;
    let b: EngageBody = body(&bytes)?;
    let minutes = match b.minutes {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_i64().ok_or_else(|| {
            ApiError::field("minutes", "minutes: must be a whole number of minutes")
        })?),
        Some(_) => return Err(ApiError::field("minutes", "minutes: must be a number")),
    };
    let expires_at = match b.expires_at {
        None => None,
        Some(t) => Some(parse_rfc3339(&t).ok_or_else(|| {
            ApiError::field(
                "expires_at",
                format!("expires_at: {t:?} is not an RFC 3339 time"),
            )
        })?),
    };
    let code = match b.code {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => Some(c),
        Some(_) => {
            return Err(ApiError::field(
                "code",
                "code: must be a string of digits, e.g. \"1492\"",
            ));
        }
    };
    let single_use = match b.single_use {
        None | Some(Value::Null) => None,
        Some(Value::Bool(v)) => Some(v),
        Some(_) => {
            return Err(ApiError::field(
                "single_use",
                "single_use: must be true or false",
            ));
        }
    };
    let req = EngageRequest {
        minutes,
        expires_at,
        code,
        single_use,
    };
    let view = s.hub.acon_engage(&id, cell, req, ADMIN, now_ms()).await?;
    let mut v = serde_json::to_value(&view)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    v["cell"] = json!(cell);
    v["device"] = json!(acon_key(&id));
    ok(v)
}

async fn release_cell(
    State(s): State<AppState>,
    Path((id, cell)): Path<(String, String)>,
) -> ApiResult {
    let cell = parse_cell(&cell)?;
    s.hub.acon_release(&id, cell, ADMIN, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn reset_board(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    s.hub.acon_reset(&id, ADMIN, now_ms()).await?;
    get_board(State(s), Path(id)).await
}

async fn block_board(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    s.hub.acon_block(&id, true, ADMIN, now_ms()).await?;
    get_board(State(s), Path(id)).await
}

async fn unblock_board(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    s.hub.acon_block(&id, false, ADMIN, now_ms()).await?;
    get_board(State(s), Path(id)).await
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<String>,
}

fn limit(q: Option<String>) -> Result<u32, ApiError> {
    match q {
        None => Ok(100),
        Some(l) => match l.parse::<u32>() {
            Ok(n) if (1..=10_000).contains(&n) => Ok(n),
            _ => Err(ApiError::field(
                "limit",
                format!("limit: {l:?} must be a number from 1 to 10000"),
            )),
        },
    }
}

async fn get_messages(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LimitQuery>,
) -> ApiResult {
    if s.hub.acon_board(&id).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no board acon/{id}"),
        ));
    }
    messages(&s, acon_key(&id), q).await
}

/// Messages of a SKABEN device (every packet in, with what went out in answer).
async fn get_device_messages(
    State(s): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
    Query(q): Query<LimitQuery>,
) -> ApiResult {
    let (ty, id) = (ty.to_ascii_lowercase(), id.to_ascii_lowercase());
    // `<type>/all` has messages too (packets from a whole type).
    if id != "all" && s.hub.skaben_device(&ty, &id).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no device {ty}/{id}"),
        ));
    }
    messages(&s, format!("{ty}/{id}"), q).await
}

async fn messages(s: &AppState, device: String, q: LimitQuery) -> ApiResult {
    let limit = limit(q.limit)?;
    let rows = s
        .hub
        .store()
        .messages(device, limit)
        .await
        .map_err(CoreError::from)?;
    let out: Vec<Value> = rows
        .into_iter()
        .map(|m| {
            let r = m.record;
            json!({
                "seq": m.seq,
                "at": rfc3339(r.at),
                "send": r.send,
                "peer": r.peer,
                "raw": r.raw,
                "parsed": serde_json::from_str::<Value>(&r.parsed).unwrap_or(Value::String(r.parsed)),
                "answer": r.answer,
            })
        })
        .collect();
    ok(out)
}

#[derive(Deserialize)]
struct EventQuery {
    device: Option<String>,
    kind: Option<String>,
    limit: Option<String>,
}

async fn get_events(State(s): State<AppState>, Query(q): Query<EventQuery>) -> ApiResult {
    let filter = EventFilter {
        device: q.device,
        kind: q.kind,
        limit: limit(q.limit)?,
    };
    let rows = s
        .hub
        .store()
        .events(filter)
        .await
        .map_err(CoreError::from)?;
    let out: Vec<Value> = rows
        .into_iter()
        .map(|e| {
            let r = e.record;
            json!({
                "seq": e.seq,
                "at": rfc3339(r.at),
                "device": r.device,
                "kind": r.kind,
                "actor": r.actor,
                "data": serde_json::from_str::<Value>(&r.data).unwrap_or(Value::String(r.data)),
            })
        })
        .collect();
    ok(out)
}

async fn get_stats(State(s): State<AppState>) -> ApiResult {
    ok(&s.hub.stats)
}
