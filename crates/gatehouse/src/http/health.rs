//! `GET /healthz` (the process answers) and `GET /readyz` (it can do its job: the store takes
//! writes, the MQTT side is up, the core is loaded). Both without the Bearer token, so they
//! say nothing but that: no versions, counts or paths.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::bus::PacketHandler;
use crate::store::Commit;

/// What `/readyz` knows beyond the store: whether the MQTT side is up.
#[derive(Debug)]
pub struct Readiness {
    /// The embedded broker is listening (from its start), or the external broker's client has
    /// connected and subscribed at least once.
    mqtt_up: AtomicBool,
    /// `true` for an external broker (for the reason's wording).
    external: bool,
}

impl Readiness {
    /// The embedded broker: up once started, which is before the HTTP listener opens.
    pub fn embedded() -> Arc<Readiness> {
        Arc::new(Readiness {
            mqtt_up: AtomicBool::new(true),
            external: false,
        })
    }

    /// An external broker: up once the client has connected and subscribed.
    pub fn external() -> Arc<Readiness> {
        Arc::new(Readiness {
            mqtt_up: AtomicBool::new(false),
            external: true,
        })
    }

    pub fn mqtt_up(&self) -> bool {
        self.mqtt_up.load(Ordering::Relaxed)
    }
}

/// The core's packet handler, noting when the MQTT link is (re)connected for `/readyz`.
pub struct WatchLink {
    pub inner: Arc<dyn PacketHandler>,
    pub ready: Arc<Readiness>,
}

impl PacketHandler for WatchLink {
    fn packet(&self, topic: &str, payload: &[u8]) {
        self.inner.packet(topic, payload);
    }

    fn packet_durable(&self, topic: &str, payload: &[u8]) -> Option<Commit> {
        self.inner.packet_durable(topic, payload)
    }

    fn connected(&self) {
        self.ready.mqtt_up.store(true, Ordering::Relaxed);
        self.inner.connected();
    }

    fn disconnected(&self) {
        self.ready.mqtt_up.store(false, Ordering::Relaxed);
        self.inner.disconnected();
    }
}

/// Whether the process answers.
///
/// `ok` as text, to anyone: nothing about the server but that it runs.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    security(()),
    responses((status = 200, description = "The process answers", body = String, content_type = "text/plain"))
)]
pub(super) async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

/// Why the server is not ready, in a few words each (empty: ready).
pub fn not_ready(s: &AppState) -> Vec<&'static str> {
    let mut reasons = Vec::new();
    // The HTTP listener opens only after the core has loaded the devices, so a server that
    // answers has its core; the store and the MQTT link can fail later.
    if !s.hub.store().health().writable {
        reasons.push("store: not writable");
    }
    if !s.ready.mqtt_up() {
        reasons.push(if s.ready.external {
            "mqtt: not connected to the external broker"
        } else {
            "mqtt: the embedded broker is not running"
        });
    }
    reasons
}

/// Whether the server can do its job.
///
/// Ready when the store takes writes and the MQTT side is up; to anyone, with reasons only.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "Ready: `{\"ready\": true}`", body = Object),
        (status = 503, description = "Not ready: `{\"ready\": false, \"reasons\": [...]}`", body = Object),
    )
)]
pub(super) async fn readyz(State(s): State<AppState>) -> Response {
    let reasons = not_ready(&s);
    if reasons.is_empty() {
        (StatusCode::OK, axum::Json(json!({"ready": true}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"ready": false, "reasons": reasons})),
        )
            .into_response()
    }
}
