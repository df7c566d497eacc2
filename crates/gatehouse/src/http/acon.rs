//! Board routes: a board's page, its cells, engage/release, reset, block/unblock, the networks
//! it may connect from.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, ApiResult, AppState, ErrorBody, body, ok, opt_time, page_json};
use crate::cidr::Net;
use crate::clock::{now_ms, parse_rfc3339, rfc3339};
use crate::core::{
    BoardSnapshot, CellSnapshot, Command, EngageRequest, EngagedSnapshot, NetworkChoice, Outcome,
    RegisterRequest,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_board, register_board))
        .routes(routes!(get_cells))
        .routes(routes!(engage_cell, release_cell))
        .routes(routes!(reset_board))
        .routes(routes!(block_board))
        .routes(routes!(unblock_board))
        .routes(routes!(accept_network))
}

// The schema of [`crate::core::RegisterRequest`], which the core owns; `tests` checks that
// the core takes every field documented here.
/// A board's registration: every field optional, an absent one left as it is.
#[derive(utoipa::ToSchema)]
#[schema(as = RegisterBoard)]
#[allow(dead_code)]
pub(super) struct RegisterBoardDoc {
    /// The board's name for the operators.
    name: Option<String>,
    /// Free text.
    notes: Option<String>,
    /// Columns of cells.
    cols: Option<u16>,
    /// Rows of cells.
    rows: Option<u16>,
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

/// A board's page.
///
/// What it reported, its cells' count, its networks, whether it is blocked or to be reset.
#[utoipa::path(
    get,
    path = "/api/devices/acon/{id}",
    tag = "acon",
    params(("id" = String, Path, description = "The board's id, e.g. `1`")),
    responses(
        (status = 200, description = "The board's page", body = Object),
        (status = 404, description = "No such board", body = ErrorBody),
    )
)]
async fn get_board(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    match s.hub.acon_board(&id) {
        Some(b) => ok(board_json(&b)),
        None => Err(no_board(&id)),
    }
}

/// Register a board or change its name, notes or size.
#[utoipa::path(
    put,
    path = "/api/devices/acon/{id}",
    tag = "acon",
    params(("id" = String, Path, description = "The board's id, e.g. `1`")),
    request_body(content = RegisterBoardDoc, description = "The fields to set", content_type = "application/json"),
    responses(
        (status = 200, description = "The board's page", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
    )
)]
async fn register_board(
    State(s): State<AppState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let req: RegisterRequest = body(&bytes)?;
    board_command(&s, Command::RegisterBoard { id, req }).await
}

/// A board's cells.
#[utoipa::path(
    get,
    path = "/api/devices/acon/{id}/cells",
    tag = "acon",
    params(("id" = String, Path, description = "The board's id, e.g. `1`")),
    responses(
        (status = 200, description = "Every cell: its lock, its code if engaged, when it last opened", body = Vec<Object>),
        (status = 404, description = "No such board", body = ErrorBody),
    )
)]
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

// Like [`EngageRequest`], with `expires_at` as RFC 3339 and typed checks.
/// A cell's engagement: for `minutes` or until `expires_at`, with a `code` or a generated one.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct EngageBody {
    /// For how many minutes (or `expires_at`).
    #[schema(value_type = Option<i64>)]
    minutes: Option<Value>,
    /// Until when, RFC 3339 (or `minutes`).
    expires_at: Option<String>,
    /// The code, digits (default: a generated one).
    #[schema(value_type = Option<String>, example = "1492")]
    code: Option<Value>,
    /// Whether the code opens the cell once only.
    #[schema(value_type = Option<bool>)]
    single_use: Option<Value>,
}

/// Engage a cell: give it a code for a while.
///
/// `minutes` or `expires_at` says for how long; without `code` one is generated.
#[utoipa::path(
    put,
    path = "/api/devices/acon/{id}/cells/{cell}",
    tag = "acon",
    params(("id" = String, Path, description = "The board's id, e.g. `1`"), ("cell" = String, Path, description = "The cell's number, from 1")),
    request_body(content = EngageBody, description = "How long (`minutes` or `expires_at`) and optionally the code", content_type = "application/json"),
    responses(
        (status = 200, description = "The engagement: code, expiry, cell, device", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 404, description = "No such board", body = ErrorBody),
        (status = 409, description = "The cell cannot be engaged now", body = ErrorBody),
    )
)]
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

/// Release a cell: take its code away.
#[utoipa::path(
    delete,
    path = "/api/devices/acon/{id}/cells/{cell}",
    tag = "acon",
    params(("id" = String, Path, description = "The board's id, e.g. `1`"), ("cell" = String, Path, description = "The cell's number, from 1")),
    responses(
        (status = 204, description = "Released"),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 404, description = "No such board", body = ErrorBody),
    )
)]
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

/// Reset a board: it reboots on its next exchange.
#[utoipa::path(
    post,
    path = "/api/devices/acon/{id}/reset",
    tag = "acon",
    params(("id" = String, Path, description = "The board's id, e.g. `1`")),
    responses(
        (status = 200, description = "The board's page", body = Object),
        (status = 404, description = "No such board", body = ErrorBody),
    )
)]
async fn reset_board(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    board_command(&s, Command::Reset { id }).await
}

/// Block a board: its messages are refused.
#[utoipa::path(
    post,
    path = "/api/devices/acon/{id}/block",
    tag = "acon",
    params(("id" = String, Path, description = "The board's id, e.g. `1`")),
    responses(
        (status = 200, description = "The board's page", body = Object),
        (status = 404, description = "No such board", body = ErrorBody),
    )
)]
async fn block_board(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    board_command(&s, Command::Block { id, blocked: true }).await
}

/// Unblock a board.
#[utoipa::path(
    post,
    path = "/api/devices/acon/{id}/unblock",
    tag = "acon",
    params(("id" = String, Path, description = "The board's id, e.g. `1`")),
    responses(
        (status = 200, description = "The board's page", body = Object),
        (status = 404, description = "No such board", body = ErrorBody),
    )
)]
async fn unblock_board(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    board_command(&s, Command::Block { id, blocked: false }).await
}

/// The body of `POST …/peers`: `{"network": "10.1.2.0/24"}` or `{"accept_pending": true}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PeersBody {
    /// A network in CIDR notation (or `accept_pending`).
    #[schema(value_type = Option<String>, example = "10.1.2.0/24")]
    network: Option<Value>,
    /// `true`: the network the board was last refused from (or `network`).
    #[schema(value_type = Option<bool>)]
    accept_pending: Option<Value>,
}

/// Let a board connect from a network.
///
/// A network given, or the one it was last refused from (`accept_pending`).
#[utoipa::path(
    post,
    path = "/api/devices/acon/{id}/peers",
    tag = "acon",
    params(("id" = String, Path, description = "The board's id, e.g. `1`")),
    request_body(content = PeersBody, description = "`{\"network\": \"10.1.2.0/24\"}` or `{\"accept_pending\": true}`", content_type = "application/json"),
    responses(
        (status = 200, description = "The board's page", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 404, description = "No such board", body = ErrorBody),
        (status = 409, description = "The network is another board's", body = ErrorBody),
    )
)]
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
