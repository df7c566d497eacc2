//! History routes: a device's messages (every frame or packet in, with its answer) and the
//! event log. Read from the store.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::acon::no_board;
use super::{ApiError, ApiResult, AppState, ok};
use crate::clock::rfc3339;
use crate::core::CoreError;
use crate::core::acon::board_key;
use crate::store::{EventFilter, EventRecord};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/devices/acon/{id}/messages", get(board_messages))
        .route("/api/devices/{type}/{id}/messages", get(prop_messages))
        .route("/api/events", get(get_events))
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

/// Messages of a SKABEN device (every packet in, with what went out in answer).
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
