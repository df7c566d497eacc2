//! `GET /metrics`: Prometheus text exposition format (version 0.0.4). Every entry of
//! [`crate::core::Stats::entries`] as `gatehouse_<name>`, the refusals again as one family by
//! reason, the store's health (commit-latency histogram, queue, failures, size, retention),
//! the props with a pending push, and whether the MQTT side is up.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::core::StatKind;
use crate::store::StoreHealth;

/// The `Stats` entries that count refusals, with the reason they carry in
/// `gatehouse_refusals_total{reason="..."}` (the entry's own name).
const REFUSALS: &[&str] = &[
    "acon_rejected",
    "acon_not_allowed",
    "acon_id_conflicts",
    "acon_peer_refused",
    "acon_registrations_capped",
    "skaben_rejected",
    "mqtt_refused_logins",
    "mqtt_refused_publishes",
    "mqtt_refused_subscribes",
    "http_refused_full",
    "http_refused_per_addr",
];

/// A text exposition being written: a `# HELP` and `# TYPE` per family, a line per sample.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a family: `kind` is `counter`, `gauge` or `histogram`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// HELP text: backslash and line feed escaped.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A label value: backslash, double quote and line feed escaped.
fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A float as Prometheus reads it (`+Inf` for infinity).
fn float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

/// What `/metrics` shows, from values already read.
pub struct Snapshot<'a> {
    pub entries: &'a [(&'static str, StatKind, &'static str, u64)],
    pub store: &'a StoreHealth,
    pub pending_pushes: usize,
    pub mqtt_up: bool,
}

/// The whole exposition.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut e = Exposition::default();
    for (name, kind, help, value) in s.entries {
        let kind = match kind {
            StatKind::Counter => "counter",
            StatKind::Gauge => "gauge",
        };
        e.single(&format!("gatehouse_{name}"), kind, help, value);
    }
    e.family(
        "gatehouse_refusals_total",
        "counter",
        "everything refused, by reason (the gatehouse_<reason> counter of the same name)",
    );
    for (name, _, _, value) in s.entries {
        if REFUSALS.contains(name) {
            e.sample("gatehouse_refusals_total", &[("reason", name)], value);
        }
    }
    let st = s.store;
    e.single(
        "gatehouse_store_writable",
        "gauge",
        "1 while the store commits units durably, 0 once a commit failed or the database file is gone",
        u8::from(st.writable),
    );
    e.single(
        "gatehouse_store_failed_units",
        "counter",
        "units the store failed to commit since start",
        st.failures,
    );
    e.single(
        "gatehouse_store_queue_depth",
        "gauge",
        "units waiting for the store's writer",
        st.queue_depth,
    );
    e.single(
        "gatehouse_db_bytes",
        "gauge",
        "size of the database on disk (main file and WAL), bytes",
        st.db_bytes,
    );
    let h = &st.commit_latency;
    let name = "gatehouse_store_commit_seconds";
    e.family(
        name,
        "histogram",
        "time from a unit's submission to its durable commit, seconds",
    );
    for (le, n) in &h.buckets {
        e.sample(&format!("{name}_bucket"), &[("le", &float(*le))], n);
    }
    e.sample(&format!("{name}_bucket"), &[("le", "+Inf")], h.count);
    e.sample(&format!("{name}_sum"), &[], float(h.sum_seconds));
    e.sample(&format!("{name}_count"), &[], h.count);
    e.single(
        "gatehouse_retention_removed_messages",
        "counter",
        "message rows removed by retention since start",
        st.retention_removed_messages,
    );
    e.single(
        "gatehouse_retention_removed_events",
        "counter",
        "event rows removed by retention since start",
        st.retention_removed_events,
    );
    e.single(
        "gatehouse_skaben_pending_pushes",
        "gauge",
        "SKABEN props with a config push not yet confirmed",
        s.pending_pushes,
    );
    e.single(
        "gatehouse_mqtt_up",
        "gauge",
        "1 while the embedded broker runs or the external broker's client has connected",
        u8::from(s.mqtt_up),
    );
    e.finish()
}

/// The server's metrics, for Prometheus.
///
/// The text exposition format (version 0.0.4): counters, the store's health, pending pushes,
/// the MQTT side. `--metrics-listen` serves the same without the token.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "The metrics in the Prometheus text format", body = String, content_type = "text/plain; version=0.0.4"))
)]
pub(super) async fn metrics(State(s): State<AppState>) -> Response {
    let entries = s.hub.stats.entries();
    let store = s.hub.store().health();
    let text = render(&Snapshot {
        entries: &entries,
        store: &store,
        pending_pushes: s.hub.pending_pushes(),
        mqtt_up: s.ready.mqtt_up(),
    });
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Histogram;

    #[test]
    fn help_and_labels_are_escaped() {
        let mut e = Exposition::default();
        e.family("x", "gauge", "a \\ b\nc");
        e.sample("x", &[("l", "q\"\\\n")], 1);
        assert_eq!(
            e.finish(),
            "# HELP x a \\\\ b\\nc\n# TYPE x gauge\nx{l=\"q\\\"\\\\\\n\"} 1\n"
        );
    }

    #[test]
    fn every_entry_is_a_family_and_every_sample_a_line() {
        let entries = vec![
            ("acon_messages", StatKind::Counter, "messages", 7),
            ("acon_rejected", StatKind::Counter, "refused", 2),
            ("http_connections", StatKind::Gauge, "open", 3),
        ];
        let store = StoreHealth {
            db_bytes: 4096,
            commit_latency: Histogram {
                buckets: vec![(0.001, 1), (0.01, 4)],
                sum_seconds: 0.0125,
                count: 5,
            },
            ..StoreHealth::default()
        };
        let text = render(&Snapshot {
            entries: &entries,
            store: &store,
            pending_pushes: 1,
            mqtt_up: true,
        });
        let lines: Vec<&str> = text.lines().collect();
        for want in [
            "# TYPE gatehouse_acon_messages counter",
            "gatehouse_acon_messages 7",
            "# TYPE gatehouse_http_connections gauge",
            "gatehouse_http_connections 3",
            "gatehouse_refusals_total{reason=\"acon_rejected\"} 2",
            "# TYPE gatehouse_store_commit_seconds histogram",
            "gatehouse_store_commit_seconds_bucket{le=\"0.001\"} 1",
            "gatehouse_store_commit_seconds_bucket{le=\"0.01\"} 4",
            "gatehouse_store_commit_seconds_bucket{le=\"+Inf\"} 5",
            "gatehouse_store_commit_seconds_sum 0.0125",
            "gatehouse_store_commit_seconds_count 5",
            "gatehouse_db_bytes 4096",
            "gatehouse_store_writable 1",
            "gatehouse_skaben_pending_pushes 1",
        ] {
            assert!(lines.contains(&want), "missing {want:?} in\n{text}");
        }
        // Not a refusal: not in the family.
        assert!(!text.contains("reason=\"acon_messages\""));
        // Every line is a comment or `name{labels} value`, and every family is declared
        // once before its samples.
        let mut declared = Vec::new();
        for l in &lines {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!declared.contains(&name.to_string()), "{name} twice");
                declared.push(name.to_string());
            } else if !l.starts_with("# HELP ") {
                let (series, value) = l.rsplit_once(' ').unwrap();
                assert!(value.parse::<f64>().is_ok(), "{l}");
                let metric = series.split('{').next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| metric.strip_suffix(s))
                    .filter(|f| declared.iter().any(|d| d == f))
                    .unwrap_or(metric);
                assert_eq!(declared.last().map(String::as_str), Some(family), "{l}");
            }
        }
    }
}
