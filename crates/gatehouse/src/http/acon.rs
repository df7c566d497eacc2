//! Board routes: a board's page, its cells, engage/release, reset, block/unblock, the networks
//! it may connect from.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, AppState, body, ok, opt_time, page_json};
use crate::cidr::Net;
use crate::clock::{now_ms, parse_rfc3339, rfc3339};
use crate::core::{
    BoardSnapshot, CellSnapshot, Command, EngageRequest, EngagedSnapshot, NetworkChoice, Outcome,
    RegisterRequest,
};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/devices/acon/{id}", get(get_board).put(register_board))
        .route("/api/devices/acon/{id}/cells", get(get_cells))
        .route(
            "/api/devices/acon/{id}/cells/{cell}",
            put(engage_cell).delete(release_cell),
        )
        .route("/api/devices/acon/{id}/reset", post(reset_board))
        .route("/api/devices/acon/{id}/block", post(block_board))
        .route("/api/devices/acon/{id}/unblock", post(unblock_board))
        .route("/api/devices/acon/{id}/peers", post(accept_network))
}

pub(super) fn no_board(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no board acon/{id}"))
}

fn board_json(b: &BoardSnapshot) -> Value {
    page_json(
        &b.device,
        json!({
            "pending_reset": b.pending_reset,
            "blocked": b.blocked,
            "desired_version": b.desired_version,
            "cols": b.cols,
            "rows": b.rows,
            "engaged_cells": b.engaged_cells,
            "reported": {
                "message": b.reported.message,
                "peer": b.reported.peer,
                "last_send": b.reported.last_send,
                "reboots": b.reported.reboots,
            },
            "peers": {
                "connected": b.held_by,
                "networks": b.networks.iter().map(Net::to_string).collect::<Vec<_>>(),
                "pending": b.pending_network.as_ref().map(|p| json!({
                    "network": p.network.to_string(),
                    "peer": p.peer,
                    "refused_at": rfc3339(p.at),
                })),
            },
        }),
    )
}

fn engaged_json(e: &EngagedSnapshot) -> Value {
    json!({
        "code": e.code,
        "expires_at": rfc3339(e.expires_at),
        "minutes_left": e.minutes_left,
        "single_use": e.single_use,
        "assigned_at": rfc3339(e.assigned_at),
        "assigned_by": e.assigned_by,
    })
}

fn cell_json(c: &CellSnapshot) -> Value {
    json!({
        "cell": c.cell,
        "row": c.row,
        "col": c.col,
        "lock_connected": c.lock_connected,
        "engaged": c.engaged.as_ref().map(engaged_json),
        "engaged_on_board": c.engaged_on_board,
        "timed_out": c.timed_out,
        "last_opened": opt_time(c.last_opened),
    })
}

/// Runs a board command and answers with the board's page.
async fn board_command(s: &AppState, cmd: Command) -> ApiResult {
    match s.hub.execute(cmd, &super::auth::actor(), now_ms()).await? {
        Outcome::Board(b) => ok(board_json(&b)),
        other => Err(unexpected(&other)),
    }
}

pub(super) fn unexpected(o: &Outcome) -> ApiError {
    tracing::error!(outcome = ?o, "a command returned an outcome its route does not render");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the change was made, but its result could not be shown; read the resource again",
    )
}

async fn get_board(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    match s.hub.acon_board(&id) {
        Some(b) => ok(board_json(&b)),
        None => Err(no_board(&id)),
    }
}

async fn register_board(
    State(s): State<AppState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let req: RegisterRequest = body(&bytes)?;
    board_command(&s, Command::RegisterBoard { id, req }).await
}

async fn get_cells(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let cells: Vec<Value> = s
        .hub
        .acon_cells(&id, now_ms())?
        .iter()
        .map(cell_json)
        .collect();
    ok(cells)
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
    match s
        .hub
        .execute(
            Command::Engage { id, cell, req },
            &super::auth::actor(),
            now_ms(),
        )
        .await?
    {
        Outcome::Engaged(e) => {
            let mut v = engaged_json(&e);
            v["cell"] = json!(e.cell);
            v["device"] = json!(e.device);
            ok(v)
        }
        other => Err(unexpected(&other)),
    }
}

async fn release_cell(
    State(s): State<AppState>,
    Path((id, cell)): Path<(String, String)>,
) -> ApiResult {
    let cell = parse_cell(&cell)?;
    s.hub
        .execute(
            Command::Release { id, cell },
            &super::auth::actor(),
            now_ms(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn reset_board(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    board_command(&s, Command::Reset { id }).await
}

async fn block_board(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    board_command(&s, Command::Block { id, blocked: true }).await
}

async fn unblock_board(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    board_command(&s, Command::Block { id, blocked: false }).await
}

/// The body of `POST …/peers`: `{"network": "10.1.2.0/24"}` or `{"accept_pending": true}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersBody {
    network: Option<Value>,
    accept_pending: Option<Value>,
}

async fn accept_network(
    State(s): State<AppState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let b: PeersBody = body(&bytes)?;
    let network = match b.network {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) => Some(
            n.parse::<Net>()
                .map_err(|e| ApiError::field("network", format!("network: {e}")))?,
        ),
        Some(_) => {
            return Err(ApiError::field(
                "network",
                "network: must be a string, e.g. \"10.1.2.0/24\"",
            ));
        }
    };
    let pending = match b.accept_pending {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => {
            return Err(ApiError::field(
                "accept_pending",
                "accept_pending: must be true or false",
            ));
        }
    };
    let network = match (network, pending) {
        (Some(n), false) => NetworkChoice::Network(n),
        (None, true) => NetworkChoice::Pending,
        (Some(_), true) => {
            return Err(ApiError::field(
                "network",
                "network: give a network or accept_pending, not both",
            ));
        }
        (None, false) => {
            return Err(ApiError::field(
                "body",
                "give {\"network\": \"10.1.2.0/24\"} or {\"accept_pending\": true}",
            ));
        }
    };
    board_command(&s, Command::AcceptNetwork { id, network }).await
}
