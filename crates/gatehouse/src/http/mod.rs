//! The console's HTTP API: JSON over HTTP, behind [`auth`] (a Bearer token or a session cookie, and a role) on every route.
//!
//! Invariants: handlers only translate between HTTP and the core: they parse and check the
//! request's shape, build a typed [`crate::core::Command`], and render the snapshot the core
//! returns; only this module knows the API's routes, statuses and JSON. Every change goes
//! through the core, which makes it durable and records who made it before the handler
//! answers. Errors are JSON:
//! `{"error": "...", "field": "..."}` (`field` when one input is to blame).
//!
//! The routes are registered through utoipa-axum's `routes!` from each handler's
//! `#[utoipa::path]`, so the OpenAPI document ([`openapi`], `GET /api/openapi.json`) is
//! generated from the routes and lists every one.

mod access;
mod acon;
pub mod auth;
mod game;
pub mod health;
mod history;
pub mod metrics;
pub mod serve;
mod skaben;
mod stream;
pub mod ui;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::clock::rfc3339;
use crate::core::{CoreError, DeviceSummary, DeviceView, Hub};
pub use stream::Streams;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    /// The admin token, the session policy, the login guard.
    pub auth: Arc<auth::Auth>,
    /// The embedded broker's logins (`None` with an external broker).
    pub mqtt_auth: Option<crate::gateway::access::MqttAuth>,
    /// Whether the MQTT side is up, for `/readyz` and `/metrics`.
    pub ready: Arc<health::Readiness>,
    /// The event streams' cap and the shutdown that ends them.
    pub streams: Streams,
}

/// The API router: `/healthz` and `/readyz` open to anyone; everything else (one router per
/// resource: boards, props and types, history, credentials, the game; `/metrics`; the OpenAPI
/// document) behind the Bearer check, and a body must be JSON.
///
/// Every route is registered through utoipa-axum's `routes!`, which takes the method and the
/// path from the handler's `#[utoipa::path]`: a route cannot be served without being in the
/// document, and the document served at `/api/openapi.json` is the one split from this router.
pub fn app(state: AppState) -> Router {
    let api = api_routes()
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::from_fn(json_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    let (router, doc) = open_routes().merge(api).split_for_parts();
    // The console's pages are not API routes: they only read, through the same core, and
    // every change they offer is an `/api` call.
    router
        .merge(ui::routes(state.clone()))
        .layer(Extension(Arc::new(finish(doc))))
        .layer(middleware::from_fn(ui::security_headers))
        .with_state(state)
}

/// The OpenAPI document of [`app`]'s routes (what `/api/openapi.json` serves and `gatehouse
/// openapi` prints), built without a server.
pub fn openapi() -> utoipa::openapi::OpenApi {
    finish(open_routes().merge(api_routes()).into_openapi())
}

/// The routes open to anyone.
fn open_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .merge(auth::login_routes())
}

/// The routes behind the Bearer check (without the layers, which need the state).
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_devices))
        .routes(routes!(get_stats))
        .routes(routes!(metrics::metrics))
        .routes(routes!(openapi_json))
        .merge(acon::routes())
        .merge(skaben::routes())
        .merge(history::routes())
        .merge(access::routes())
        .merge(game::routes())
        .merge(stream::routes())
        .merge(auth::routes())
}

/// The document's frame: title, version, the error shape, the tags, the Bearer scheme.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "gatehouse",
        description = "The HTTP API of gatehouse, a server for the devices of a venue (ACon lock \
boards, SKABEN props) and the game played with them.\n\n\
Every route but `/healthz`, `/readyz`, `/login` and `/logout` takes `Authorization: Bearer <token>` \
(an API token or the admin token) or the console's session cookie, and the role the route \
needs: a viewer reads, an operator also runs the venue, an admin also manages accounts, \
tokens, sessions, MQTT credentials, device types and rules. A body is \
JSON (`Content-Type: application/json`; a PATCH also takes `application/merge-patch+json`), \
except the rule file of `POST /api/rules/import` (`application/toml`).\n\n\
An error is answered with its status and a JSON object `{\"error\": \"...\", \"field\": \"...\"}`: \
`error` says what is wrong in words, `field` (when one input is to blame) names it. A refused \
rule file adds `rule` and `errors` (every problem found)."
    ),
    modifiers(&BearerScheme),
    security(("bearer" = [])),
    tags(
        (name = "devices", description = "Every device, of every protocol"),
        (name = "acon", description = "ACon lock boards: their page, cells, reset, block, networks"),
        (name = "skaben", description = "SKABEN props: their page, config (with `If-Match`), pushes"),
        (name = "types", description = "SKABEN device types: defaults, schema, pushes to a whole type"),
        (name = "history", description = "What devices sent and what happened: messages and the event log"),
        (name = "credentials", description = "MQTT credentials of devices, types and observers"),
        (name = "game", description = "The game's state: level, counter, variables"),
        (name = "rules", description = "The game's rules: import, export, edit, dry runs, replays, traces"),
        (name = "timers", description = "The game's timers"),
        (name = "runs", description = "Game runs: start, pause, resume, end, reset, timelines"),
        (name = "health", description = "The server itself: liveness, readiness, counters, metrics, this document"),
        (name = "accounts", description = "Who may use the console: login, accounts, API tokens, sessions"),
    )
)]
struct ApiDoc;

/// Adds the `bearer` security scheme the document's `security` names.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = doc
            .components
            .get_or_insert_with(utoipa::openapi::Components::new);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The answers the layers give rather than the handlers, added to the operations they guard:
/// 401 to every operation behind the Bearer check, 415 to every one that takes a body.
fn finish(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::{RefOr, ResponseBuilder};
    let error = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                            "ErrorBody",
                        ))))
                        .build(),
                )
                .build(),
        )
    };
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            // An open route says so with an empty requirement (`security: [{}]`).
            let open = op
                .security
                .as_ref()
                .is_some_and(|s| s.iter().all(|r| r == &Default::default()));
            if !open {
                op.responses.responses.insert(
                    "401".into(),
                    error("No valid credentials: `Authorization: Bearer <token>` or the session cookie"),
                );
            }
            if op.request_body.is_some() {
                op.responses.responses.insert(
                    "415".into(),
                    error("The body is not of the declared content type"),
                );
            }
        }
    }
    let components = doc
        .components
        .get_or_insert_with(utoipa::openapi::Components::new);
    components.schemas.insert(
        "ErrorBody".into(),
        <ErrorBody as utoipa::PartialSchema>::schema(),
    );
    doc
}

// The schema of what [`ApiError`] renders; never built.
/// An error answer's body.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ErrorBody {
    /// What is wrong, in words.
    error: String,
    /// The input to blame, when there is one.
    field: Option<String>,
}

/// The OpenAPI document of this API.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 document of every route", body = Object))
)]
async fn openapi_json(Extension(doc): Extension<Arc<utoipa::openapi::OpenApi>>) -> Response {
    axum::Json(&*doc).into_response()
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

/// Parses a JSON body into `T`, with errors that name the field.
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return serde_json::from_str("{}").map_err(|e| ApiError::field("body", e.to_string()));
    }
    // serde's message names the offending field ("unknown field `x`, expected one of …").
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::field("body", format!("invalid JSON body: {e}")))
}

/// The query of `GET /api/devices`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct KindQuery {
    /// Only the devices of this kind (`acon`, or a SKABEN type such as `lock`).
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
        "sync": s.sync,
    })
}

/// Every device, of every protocol.
///
/// A summary of each: kind, id, protocol, name, presence, whether it is blocked.
#[utoipa::path(
    get,
    path = "/api/devices",
    tag = "devices",
    params(KindQuery),
    responses((status = 200, description = "The devices' summaries", body = Vec<Object>))
)]
async fn list_devices(State(s): State<AppState>, Query(q): Query<KindQuery>) -> ApiResult {
    let list: Vec<Value> = s
        .hub
        .list(q.kind.as_deref())
        .iter()
        .map(summary_json)
        .collect();
    ok(list)
}

/// The server's counters.
///
/// Every counter by name, and whether the embedded broker asks for MQTT logins.
#[utoipa::path(
    get,
    path = "/api/stats",
    tag = "health",
    responses((status = 200, description = "The counters, and `mqtt_auth` with its warning", body = Object))
)]
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

    /// Every operation of the document is in a tag, has a summary (its handler's doc comment's
    /// first line) and says what it answers.
    #[test]
    fn every_operation_has_a_tag_a_summary_and_a_response() {
        let doc = super::openapi();
        let mut seen = 0;
        for (path, item) in &doc.paths.paths {
            for (method, op) in [
                ("get", &item.get),
                ("put", &item.put),
                ("post", &item.post),
                ("delete", &item.delete),
                ("patch", &item.patch),
            ] {
                let Some(op) = op else { continue };
                seen += 1;
                let what = format!("{method} {path}");
                let tags = op.tags.as_deref().unwrap_or_default();
                assert_eq!(tags.len(), 1, "{what}: tags {tags:?}");
                assert!(
                    doc.tags
                        .as_deref()
                        .unwrap_or_default()
                        .iter()
                        .any(|t| t.name == tags[0]),
                    "{what}: the tag {:?} is not described in the document",
                    tags[0]
                );
                assert!(
                    op.summary.as_deref().is_some_and(|s| !s.trim().is_empty()),
                    "{what}: no summary (a doc comment on the handler)"
                );
                assert!(
                    op.responses
                        .responses
                        .keys()
                        .any(|k| k.starts_with('2') || k == "303"),
                    "{what}: no success response (or the login form's redirect)"
                );
            }
        }
        assert!(seen > 0, "no operations");
    }

    /// The schemas written here for bodies the core parses list only fields the core takes:
    /// a body with every documented field is accepted.
    #[test]
    fn the_documented_core_bodies_are_taken() {
        fn takes<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Result<(), String> {
            serde_json::from_value::<T>(v.clone())
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        let doc = serde_json::to_value(super::openapi()).expect("the document as JSON");
        type Check = fn(&serde_json::Value) -> Result<(), String>;
        let cases: [(&str, serde_json::Value, Check); 4] = [
            (
                "RegisterBoard",
                serde_json::json!({"name": "a", "notes": "b", "cols": 2, "rows": 2}),
                takes::<crate::core::RegisterRequest>,
            ),
            (
                "RegisterProp",
                serde_json::json!({"name": "a", "notes": "b", "profile": "standard"}),
                takes::<crate::core::SkabenRegister>,
            ),
            (
                "TypeUpdate",
                serde_json::json!({
                    "kind": "smart", "active": true, "profile": "standard",
                    "keepalive_secs": 30.0, "max_payload_bytes": 1000,
                    "config": {}, "schema": null,
                }),
                takes::<crate::core::TypeUpdate>,
            ),
            (
                "TestInput",
                serde_json::json!({"event": {"kind": "x"}, "state": {"level": "a"}, "rules": ""}),
                takes::<crate::core::game::live::TestInput>,
            ),
        ];
        for (name, sample, check) in cases {
            let documented: Vec<&String> = doc["components"]["schemas"][name]["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("{name}: no properties in the document"))
                .keys()
                .collect();
            let sampled: Vec<&String> = sample.as_object().expect("an object").keys().collect();
            assert_eq!(
                documented, sampled,
                "{name}: the sample is not the documented fields"
            );
            check(&sample).unwrap_or_else(|e| panic!("{name}: the core refuses {sample}: {e}"));
        }
    }

    /// Routes are only registered through `routes!` (which documents them): no plain
    /// `.route(` in the API's modules but `metrics_app`'s `/metrics`, itself documented.
    /// (`ui/` serves the console's pages, which are not API routes.)
    #[test]
    fn no_route_is_registered_around_the_document() {
        for (name, text) in [
            ("mod.rs", include_str!("mod.rs")),
            ("acon.rs", include_str!("acon.rs")),
            ("skaben.rs", include_str!("skaben.rs")),
            ("history.rs", include_str!("history.rs")),
            ("access.rs", include_str!("access.rs")),
            ("game.rs", include_str!("game.rs")),
            ("health.rs", include_str!("health.rs")),
            ("metrics.rs", include_str!("metrics.rs")),
            ("auth.rs", include_str!("auth.rs")),
            ("stream.rs", include_str!("stream.rs")),
        ] {
            let plain: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    [".route(", ".route_service(", ".nest(", ".nest_service("]
                        .iter()
                        .any(|r| l.starts_with(r))
                })
                .filter(|l| *l != ".route(\"/metrics\", get(metrics::metrics))")
                .collect();
            assert!(
                plain.is_empty(),
                "{name}: routes outside routes!: {plain:?}"
            );
        }
    }

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
