//! History routes: a device's messages (every frame or packet in, with its answer) and the
//! event log. Read from the store.

use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::acon::no_board;
use super::{ApiError, ApiResult, AppState, ErrorBody, ok};
use crate::clock::rfc3339;
use crate::core::CoreError;
use crate::core::acon::board_key;
use crate::store::{EventFilter, EventRecord};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(board_messages))
        .routes(routes!(prop_messages))
        .routes(routes!(get_events))
}

/// The query of the message lists.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LimitQuery {
    /// The most messages, newest first: 1 to 10000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 10000)]
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

/// A board's messages.
///
/// Every frame in, with the answer that went out.
#[utoipa::path(
    get,
    path = "/api/devices/acon/{id}/messages",
    tag = "history",
    params(
        ("id" = String, Path, description = "The board's id, e.g. `1`"),
        LimitQuery,
    ),
    responses(
        (status = 200, description = "The messages, newest first: time, raw and parsed, the answer", body = Vec<Object>),
        (status = 400, description = "`limit` is not a number from 1 to 10000", body = ErrorBody),
        (status = 404, description = "No such board", body = ErrorBody),
    )
)]
async fn board_messages(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LimitQuery>,
) -> ApiResult {
    if s.hub.acon_board(&id).is_none() {
        return Err(no_board(&id));
    }
    messages(&s, board_key(&id), q).await
}

/// A SKABEN device's messages.
///
/// Every packet in, with what went out in answer.
#[utoipa::path(
    get,
    path = "/api/devices/{type}/{id}/messages",
    tag = "history",
    params(
        ("type" = String, Path, description = "The device type, e.g. `lock`"),
        ("id" = String, Path, description = "The device's id, or `all` for the packets to a whole type"),
        LimitQuery,
    ),
    responses(
        (status = 200, description = "The messages, newest first: time, raw and parsed, the answer", body = Vec<Object>),
        (status = 400, description = "`limit` is not a number from 1 to 10000", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
async fn prop_messages(
    State(s): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
    Query(q): Query<LimitQuery>,
) -> ApiResult {
    let (ty, id) = (ty.to_ascii_lowercase(), id.to_ascii_lowercase());
    // `<type>/all` has messages too (packets from a whole type).
    if id != "all" && s.hub.skaben_device(&ty, &id).is_none() {
        return Err(super::skaben::not_found(&ty, &id));
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

/// The query of the event log.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EventQuery {
    /// Only this device's events (`acon/1`, `lock/1`).
    device: Option<String>,
    /// Only events of this kind (`state_changed`, `cell_engaged`, …).
    kind: Option<String>,
    /// The most events, newest first: 1 to 10000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 10000)]
    limit: Option<String>,
}

/// The event log.
///
/// Everything that happened, who did it, newest first.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "history",
    params(
        EventQuery,
    ),
    responses(
        (status = 200, description = "The events, newest first: time, device, kind, actor, data", body = Vec<Object>),
        (status = 400, description = "`limit` is not a number from 1 to 10000", body = ErrorBody),
    )
)]
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
    let out: Vec<Value> = rows.iter().map(|e| event_json(e.seq, &e.record)).collect();
    ok(out)
}

/// One event as the API shows it (`/api/events`, the event stream): seq, time, device, kind,
/// actor, and `data` as JSON (as text if a stored row's is not).
pub(super) fn event_json(seq: i64, r: &EventRecord) -> Value {
    json!({
        "seq": seq,
        "at": rfc3339(r.at),
        "device": r.device,
        "kind": r.kind,
        "actor": r.actor,
        "data": serde_json::from_str::<Value>(&r.data).unwrap_or_else(|_| Value::String(r.data.clone())),
    })
}
