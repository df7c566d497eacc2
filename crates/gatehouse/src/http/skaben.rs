//! SKABEN routes: prop pages, config replace/patch with `If-Match`, pushes, device types.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::acon::unexpected;
use super::{ApiError, ApiResult, AppState, ErrorBody, body, ok, page_json};
use crate::clock::{now_ms, rfc3339};
use crate::core::skaben::{Delivery, DeviceType, Push, Reported};
use crate::core::{
    Command, ConfigEdit, Outcome, PropSnapshot, SkabenRegister, TypeSnapshot, TypeUpdate,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_device, register_device))
        .routes(routes!(put_config, patch_config))
        .routes(routes!(push_device))
        .routes(routes!(list_types))
        .routes(routes!(get_type, put_type))
        .routes(routes!(push_type))
}

// The schema of [`SkabenRegister`], which the core owns; `tests` checks that the core takes
// every field documented here.
/// A prop's registration: every field optional, an absent one left as it is.
#[derive(utoipa::ToSchema)]
#[schema(as = RegisterProp)]
#[allow(dead_code)]
pub(super) struct RegisterPropDoc {
    /// The prop's name for the operators.
    name: Option<String>,
    /// Free text.
    notes: Option<String>,
    /// How the prop reads a config push: `standard` or `reference`; `null` goes back to the
    /// type's.
    #[schema(nullable, example = "standard")]
    profile: Option<String>,
}

// The schema of [`TypeUpdate`], which the core owns; `tests` checks that the core takes every
// field documented here.
/// A device type's settings: every field optional, an absent one left as it is; a new type
/// needs `kind`.
#[derive(utoipa::ToSchema)]
#[schema(as = TypeUpdate)]
#[allow(dead_code)]
pub(super) struct TypeUpdateDoc {
    /// `smart` (keeps a structured config, takes merges) or `dumb` (takes the whole config).
    #[schema(example = "smart")]
    kind: Option<String>,
    /// Whether the type's devices are served.
    active: Option<bool>,
    /// How its devices read a config push: `standard` or `reference`.
    profile: Option<String>,
    /// Seconds between keepalives; `null` goes back to the server's setting.
    #[schema(nullable)]
    keepalive_secs: Option<f64>,
    /// The largest packet taken, bytes; `null` goes back to the server's setting.
    #[schema(nullable)]
    max_payload_bytes: Option<u32>,
    /// The config a new device of the type starts with.
    #[schema(value_type = Option<Object>)]
    config: Option<Value>,
    /// A JSON Schema the devices' configs must meet; `null` removes it.
    #[schema(value_type = Option<Object>, nullable)]
    schema: Option<Value>,
}

fn push_json(p: &Push) -> Value {
    json!({
        "version": p.version,
        "hash": p.hash,
        "task_ids": p.task_ids,
        "overwrite": p.overwrite,
        "first_sent_at": p.first_sent_at,
        "last_sent_at": p.last_sent_at,
        "attempts": p.attempts,
        "state": p.state,
        "reason": p.reason,
    })
}

fn delivery_json(d: &Delivery) -> Value {
    json!({
        "confirmed_version": d.confirmed_version,
        "confirmed_hash": d.confirmed_hash,
        "confirmed_at": d.confirmed_at,
        "confirmed_by": d.confirmed_by,
        "pending": d.pending.as_ref().map(push_json),
        "confirms": d.confirms,
    })
}

fn reported_json(r: &Reported) -> Value {
    json!({
        "values": r.values,
        "last_sup_at": r.last_sup_at,
        "hash": r.hash,
        "pong_timestamp": r.pong_timestamp,
    })
}

fn prop_json(v: &PropSnapshot) -> Value {
    page_json(
        &v.device,
        json!({
            "type_kind": v.type_kind,
            "profile": v.profile,
            "desired": {
                "config": v.desired.config,
                "version": v.desired.version,
                "hash": v.desired.hash,
                "source": v.desired.source,
                "author": v.desired.author,
                "updated_at": rfc3339(v.desired.updated_at),
            },
            "reported": reported_json(&v.reported),
            "delivery": delivery_json(&v.delivery),
            "in_sync": v.in_sync,
        }),
    )
}

fn type_def_json(t: &DeviceType) -> serde_json::Map<String, Value> {
    let v = json!({
        "name": t.name,
        "kind": t.kind,
        "active": t.active,
        "profile": t.profile,
        "keepalive_secs": t.keepalive_secs,
        "max_payload_bytes": t.max_payload_bytes,
        "config": t.config,
        "config_version": t.config_version,
        "config_hash": t.config_hash,
        "schema": t.schema,
        "updated_at": t.updated_at,
    });
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

fn type_json(t: &TypeSnapshot) -> Value {
    let mut m = type_def_json(&t.def);
    m.insert("devices".into(), json!(t.devices));
    Value::Object(m)
}

/// The prop page with its config version as the ETag (what `If-Match` takes).
fn page(v: &PropSnapshot, status: StatusCode) -> ApiResult {
    let etag = HeaderValue::from_str(&format!("\"{}\"", v.desired.version))
        .unwrap_or(HeaderValue::from_static("\"0\""));
    let mut r = (status, axum::Json(prop_json(v))).into_response();
    r.headers_mut().insert(header::ETAG, etag);
    Ok(r)
}

/// Runs a prop command and answers with the prop's page.
async fn prop_command(s: &AppState, cmd: Command) -> ApiResult {
    match s.hub.execute(cmd, &super::auth::actor(), now_ms()).await? {
        Outcome::Prop { page: v, created } => page(
            &v,
            if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
        ),
        other => Err(unexpected(&other)),
    }
}

/// Runs a type command and answers with the type.
async fn type_command(s: &AppState, cmd: Command, created_status: bool) -> ApiResult {
    match s.hub.execute(cmd, &super::auth::actor(), now_ms()).await? {
        Outcome::Type { view, created } => {
            let status = if created && created_status {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, axum::Json(type_json(&view))).into_response())
        }
        other => Err(unexpected(&other)),
    }
}

pub(super) fn not_found(ty: &str, id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no device {ty}/{id}"))
}

/// A prop's page.
///
/// Its desired config (with version and hash), what it reported, the delivery of its pushes, whether it is in sync.
#[utoipa::path(
    get,
    path = "/api/devices/{type}/{id}",
    tag = "skaben",
    params(
        ("type" = String, Path, description = "The device type, e.g. `lock`"),
        ("id" = String, Path, description = "The device's id, e.g. `1`"),
    ),
    responses(
        (status = 200, description = "The prop's page; its ETag is the config version", body = Object),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
async fn get_device(
    State(s): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
) -> ApiResult {
    let (ty, id) = (ty.to_ascii_lowercase(), id.to_ascii_lowercase());
    match s.hub.skaben_device(&ty, &id) {
        Some(v) => page(&v, StatusCode::OK),
        None => Err(not_found(&ty, &id)),
    }
}

/// Register a prop or change its name, notes or profile.
#[utoipa::path(
    put,
    path = "/api/devices/{type}/{id}",
    tag = "skaben",
    params(
        ("type" = String, Path, description = "The device type, e.g. `lock`"),
        ("id" = String, Path, description = "The device's id, e.g. `1`"),
    ),
    request_body(content = RegisterPropDoc, description = "The fields to set", content_type = "application/json"),
    responses(
        (status = 200, description = "The prop's page", body = Object),
        (status = 201, description = "Registered: the new prop's page", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 404, description = "No such device type", body = ErrorBody),
    )
)]
async fn register_device(
    State(s): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
    bytes: Bytes,
) -> ApiResult {
    let req: SkabenRegister = body(&bytes)?;
    let ty = ty.to_ascii_lowercase();
    prop_command(&s, Command::RegisterProp { ty, id, req }).await
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
    let (ty, id) = (ty.to_ascii_lowercase(), id.to_ascii_lowercase());
    match prop_command(
        &s,
        Command::SetConfig {
            ty: ty.clone(),
            id: id.clone(),
            edit,
        },
    )
    .await
    {
        Err(e) if e.status == StatusCode::CONFLICT => Err(conflict(&s, &ty, &id, e).await),
        r => r,
    }
}

// The schema of a refused `If-Match`'s answer; never built (`conflict` writes it).
/// A stale `If-Match` (409): the error, and who made the config's current version and when.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct ConfigConflict {
    /// What is wrong, in words (with who changed the config and when).
    error: String,
    /// `If-Match`.
    field: Option<String>,
    /// The current config version (what `If-Match` should have been).
    version: i64,
    /// Who made that version: an account, `token:<name>`, `admin`, `device` (a SUP),
    /// `rule:<name>`; `null` when the log no longer says.
    #[schema(nullable)]
    changed_by: Option<String>,
    /// When that version was made (RFC 3339).
    changed_at: String,
}

/// A stale `If-Match` answered with who made the config's current version and when (the
/// console shows it and offers to reload or overwrite). The prop's own config carries its
/// author; a config inherited from the type is traced to the `type_changed` event that made
/// that version (among the type's newest 50).
async fn conflict(s: &AppState, ty: &str, id: &str, e: ApiError) -> ApiError {
    let Some(v) = s.hub.skaben_device(ty, id) else {
        return e;
    };
    let d = &v.desired;
    let (mut by, mut at) = (d.author.clone(), d.updated_at);
    if by.is_none() {
        let filter = crate::store::EventFilter {
            device: Some(format!("{ty}/all")),
            kind: Some("type_changed".into()),
            limit: 50,
        };
        let rows = s.hub.store().events(filter).await.unwrap_or_default();
        let made = rows.iter().find(|r| {
            serde_json::from_str::<Value>(&r.record.data).is_ok_and(|data| {
                data["config_changed"] == json!(true)
                    && data["type"]["config_version"] == json!(d.version)
            })
        });
        if let Some(r) = made {
            by = Some(r.record.actor.clone());
            at = r.record.at;
        }
    }
    let when = rfc3339(at);
    let mut extra = serde_json::Map::new();
    extra.insert("version".into(), json!(d.version));
    extra.insert("changed_by".into(), json!(by));
    extra.insert("changed_at".into(), json!(when));
    ApiError {
        status: StatusCode::CONFLICT,
        message: format!(
            "{}; version {} was made by {} at {when}",
            e.message,
            d.version,
            by.as_deref().unwrap_or("an unknown actor"),
        ),
        field: Some("If-Match".into()),
        extra: Some(extra),
    }
}

/// Replace a prop's config.
///
/// The new config is pushed to the prop; with `If-Match` only if nobody changed it since.
#[utoipa::path(
    put,
    path = "/api/devices/{type}/{id}/config",
    tag = "skaben",
    params(
        ("type" = String, Path, description = "The device type, e.g. `lock`"),
        ("id" = String, Path, description = "The device's id, e.g. `1`"),
        ("If-Match" = Option<String>, Header, description = "The config version read (the page's ETag, e.g. `\"3\"`); a stale one is refused"),
    ),
    request_body(content = Object, description = "The whole new config", content_type = "application/json"),
    responses(
        (status = 200, description = "The prop's page; its ETag is the config version", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 409, description = "`If-Match` is not the current config version: the current one, who made it and when", body = ConfigConflict),
    )
)]
async fn put_config(
    State(s): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    set_config(s, ty, id, headers, bytes, false).await
}

/// Change part of a prop's config (a JSON merge patch).
///
/// RFC 7386: a key set to `null` is removed. Also taken as `application/json`.
#[utoipa::path(
    patch,
    path = "/api/devices/{type}/{id}/config",
    tag = "skaben",
    params(
        ("type" = String, Path, description = "The device type, e.g. `lock`"),
        ("id" = String, Path, description = "The device's id, e.g. `1`"),
        ("If-Match" = Option<String>, Header, description = "The config version read (the page's ETag, e.g. `\"3\"`); a stale one is refused"),
    ),
    request_body(content = Object, description = "An RFC 7386 merge patch", content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "The prop's page; its ETag is the config version", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 409, description = "`If-Match` is not the current config version: the current one, who made it and when", body = ConfigConflict),
    )
)]
async fn patch_config(
    State(s): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    set_config(s, ty, id, headers, bytes, true).await
}

/// Push a prop's config to it again.
#[utoipa::path(
    post,
    path = "/api/devices/{type}/{id}/push",
    tag = "skaben",
    params(
        ("type" = String, Path, description = "The device type, e.g. `lock`"),
        ("id" = String, Path, description = "The device's id, e.g. `1`"),
    ),
    responses(
        (status = 200, description = "The prop's page; its ETag is the config version", body = Object),
        (status = 404, description = "No such device", body = ErrorBody),
    )
)]
async fn push_device(
    State(s): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
) -> ApiResult {
    let (ty, id) = (ty.to_ascii_lowercase(), id.to_ascii_lowercase());
    prop_command(&s, Command::PushDevice { ty, id }).await
}

/// Every SKABEN device type.
#[utoipa::path(
    get,
    path = "/api/types",
    tag = "types",
    responses(
        (status = 200, description = "The types, each with its devices", body = Vec<Object>),
    )
)]
async fn list_types(State(s): State<AppState>) -> ApiResult {
    let list: Vec<Value> = s.hub.skaben_types().iter().map(type_json).collect();
    ok(list)
}

/// A device type.
#[utoipa::path(
    get,
    path = "/api/types/{type}",
    tag = "types",
    params(
        ("type" = String, Path, description = "The device type, e.g. `lock`"),
    ),
    responses(
        (status = 200, description = "The type, with its devices", body = Object),
        (status = 404, description = "No such device type", body = ErrorBody),
    )
)]
async fn get_type(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let name = name.to_ascii_lowercase();
    match s.hub.skaben_type(&name) {
        Some(t) => ok(type_json(&t)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no device type {name:?}"),
        )),
    }
}

/// Create a device type or change it.
#[utoipa::path(
    put,
    path = "/api/types/{type}",
    tag = "types",
    params(
        ("type" = String, Path, description = "The device type, e.g. `lock`"),
    ),
    request_body(content = TypeUpdateDoc, description = "The fields to set (a new type needs `kind`)", content_type = "application/json"),
    responses(
        (status = 200, description = "The type, with its devices", body = Object),
        (status = 201, description = "Created: the new type", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
    )
)]
async fn put_type(State(s): State<AppState>, Path(name): Path<String>, bytes: Bytes) -> ApiResult {
    let update: TypeUpdate = body(&bytes)?;
    type_command(&s, Command::PutType { name, update }, true).await
}

/// Push a type's config to all its devices.
#[utoipa::path(
    post,
    path = "/api/types/{type}/push",
    tag = "types",
    params(
        ("type" = String, Path, description = "The device type, e.g. `lock`"),
    ),
    responses(
        (status = 200, description = "The type, with its devices", body = Object),
        (status = 404, description = "No such device type", body = ErrorBody),
    )
)]
async fn push_type(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    let name = name.to_ascii_lowercase();
    type_command(&s, Command::PushType { name }, false).await
}
