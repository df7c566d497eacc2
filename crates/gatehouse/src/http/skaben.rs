//! SKABEN routes: device pages, config replace/patch with `If-Match`, pushes, device types.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use serde_json::Value;

use super::{ADMIN, ApiError, ApiResult, AppState, body, ok};
use crate::clock::now_ms;
use crate::core::skaben::{ConfigEdit, SkabenRegister, SkabenView, TypeUpdate};

/// The device page with its config version as the ETag (what `If-Match` takes).
fn page(v: SkabenView, status: StatusCode) -> ApiResult {
    let etag = HeaderValue::from_str(&format!("\"{}\"", v.desired.version))
        .unwrap_or(HeaderValue::from_static("\"0\""));
    let mut r = (status, axum::Json(v)).into_response();
    r.headers_mut().insert(header::ETAG, etag);
    Ok(r)
}

fn not_found(ty: &str, id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no device {ty}/{id}"))
}

pub(super) async fn get_device(
    State(s): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
) -> ApiResult {
    let (ty, id) = (ty.to_ascii_lowercase(), id.to_ascii_lowercase());
    match s.hub.skaben_device(&ty, &id) {
        Some(v) => page(v, StatusCode::OK),
        None => Err(not_found(&ty, &id)),
    }
}

pub(super) async fn register_device(
    State(s): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
    bytes: Bytes,
) -> ApiResult {
    let req: SkabenRegister = body(&bytes)?;
    let (v, created) = s
        .hub
        .skaben_register(&ty.to_ascii_lowercase(), &id, req, ADMIN, now_ms())
        .await?;
    page(
        v,
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
    )
}

/// `If-Match: "5"`, `5` or `W/"5"`; `*` or absent: no check.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::field(
            "If-Match",
            "If-Match: expected the config version from the device page (its ETag), e.g. If-Match: \"3\"",
        )
    };
    let text = v.to_str().map_err(|_| bad())?.trim();
    if text == "*" {
        return Ok(None);
    }
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse::<i64>().map(Some).map_err(|_| bad())
}

fn config_body(bytes: &Bytes) -> Result<Value, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::field("body", "body: expected the config as JSON"));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::field("body", format!("invalid JSON body: {e}")))
}

async fn set_config(
    s: AppState,
    ty: String,
    id: String,
    headers: HeaderMap,
    bytes: Bytes,
    merge: bool,
) -> ApiResult {
    let edit = ConfigEdit {
        body: config_body(&bytes)?,
        merge,
        if_match: if_match(&headers)?,
    };
    let v = s
        .hub
        .skaben_set_config(
            &ty.to_ascii_lowercase(),
            &id.to_ascii_lowercase(),
            edit,
            ADMIN,
            now_ms(),
        )
        .await?;
    page(v, StatusCode::OK)
}

pub(super) async fn put_config(
    State(s): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    set_config(s, ty, id, headers, bytes, false).await
}

pub(super) async fn patch_config(
    State(s): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    set_config(s, ty, id, headers, bytes, true).await
}

pub(super) async fn push_device(
    State(s): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
) -> ApiResult {
    let v = s
        .hub
        .skaben_push(
            &ty.to_ascii_lowercase(),
            &id.to_ascii_lowercase(),
            ADMIN,
            now_ms(),
        )
        .await?;
    page(v, StatusCode::OK)
}

pub(super) async fn list_types(State(s): State<AppState>) -> ApiResult {
    ok(s.hub.skaben_types())
}

pub(super) async fn get_type(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let name = name.to_ascii_lowercase();
    match s.hub.skaben_type(&name) {
        Some(t) => ok(t),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no device type {name:?}"),
        )),
    }
}

pub(super) async fn put_type(
    State(s): State<AppState>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let upd: TypeUpdate = body(&bytes)?;
    let (t, created) = s.hub.skaben_put_type(&name, upd, ADMIN, now_ms()).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(t)).into_response())
}

pub(super) async fn push_type(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    ok(s.hub
        .skaben_push_type(&name.to_ascii_lowercase(), ADMIN, now_ms())
        .await?)
}
