//! The overview: devices online and offline by kind, live.

use std::collections::BTreeMap;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;

use super::{Nav, html, nav};
use crate::core::DeviceSummary;
use crate::http::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/overview/counts", get(overview_counts))
}

struct KindCount {
    kind: String,
    total: usize,
    online: usize,
    offline: usize,
}

fn counts(list: &[DeviceSummary]) -> Vec<KindCount> {
    let mut m: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for d in list {
        let e = m.entry(d.device.kind.as_str()).or_default();
        e.0 += 1;
        if d.device.online {
            e.1 += 1;
        }
    }
    m.into_iter()
        .map(|(k, (total, online))| KindCount {
            kind: k.to_string(),
            total,
            online,
            offline: total - online,
        })
        .collect()
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    nav: Option<Nav>,
    counts: Vec<KindCount>,
}

#[derive(Template)]
#[template(path = "overview_counts.html")]
struct OverviewCounts {
    counts: Vec<KindCount>,
}

async fn overview(State(s): State<AppState>) -> Response {
    let page = OverviewPage {
        nav: nav("overview"),
        counts: counts(&s.hub.list(None)),
    };
    html(page, StatusCode::OK)
}

async fn overview_counts(State(s): State<AppState>) -> Response {
    html(
        OverviewCounts {
            counts: counts(&s.hub.list(None)),
        },
        StatusCode::OK,
    )
}
