//! History routes: a device's messages (every frame or packet in, with its answer) and the
//! event log. Read from the store.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::acon::no_board;
use super::{ApiError, ApiResult, AppState, ErrorBody, ok};
use crate::clock::rfc3339;
use crate::core::CoreError;
use crate::core::acon::board_key;
use crate::store::{EventRecord, EventSearch, Store};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(board_messages))
        .routes(routes!(prop_messages))
        .routes(routes!(get_events))
        .routes(routes!(export_events))
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

/// The filters of the event log, as in the URL: what `/api/events`, its export and the
/// console's event page take. An empty value is no filter (what a GET form sends for a field
/// left blank).
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventQuery {
    /// Only this device's events (`acon/1`, `lock/1`).
    #[serde(default)]
    pub(crate) device: Option<String>,
    /// Only events of this kind (`state_changed`, `cell_engaged`, …); several separated by
    /// commas: any of them.
    #[serde(default)]
    pub(crate) kind: Option<String>,
    /// Only this actor's events: `device`, `server`, `rule:<name>`, an account's name,
    /// `token:<name>`.
    #[serde(default)]
    pub(crate) actor: Option<String>,
    /// Only events at or after this time: RFC 3339 (`2026-12-01T20:00:00Z`; without a zone,
    /// UTC).
    #[serde(default)]
    pub(crate) from: Option<String>,
    /// Only events before this time: RFC 3339 (without a zone, UTC).
    #[serde(default)]
    pub(crate) to: Option<String>,
    /// Only events with a seq below this one: the next page back (the last seq shown).
    #[param(value_type = Option<i64>)]
    #[serde(default)]
    pub(crate) before: Option<String>,
    /// Only events with a seq above this one: what came since.
    #[param(value_type = Option<i64>)]
    #[serde(default)]
    pub(crate) after: Option<String>,
    /// The most events, newest first: 1 to 10000 (default 100; the export: every match).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 10000)]
    #[serde(default)]
    pub(crate) limit: Option<String>,
}

/// A value of the query, `None` when left blank.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A time of the event filters: RFC 3339, or a browser's `datetime-local` value
/// (`2026-12-01T20:00`, seconds optional) read as UTC.
pub(crate) fn parse_time(t: &str) -> Option<i64> {
    crate::clock::parse_rfc3339(t).or_else(|| match t.len() {
        16 => crate::clock::parse_rfc3339(&format!("{t}:00Z")),
        19 => crate::clock::parse_rfc3339(&format!("{t}Z")),
        _ => None,
    })
}

impl EventQuery {
    /// The store's search for these filters, at most `limit` events (the query's own
    /// `limit` wins when given). Errors name the field to blame.
    pub(crate) fn search(&self, default_limit: u32) -> Result<EventSearch, ApiError> {
        let time = |field: &'static str, v: &Option<String>| {
            given(v)
                .map(|t| {
                    parse_time(t).ok_or_else(|| {
                        ApiError::field(
                            field,
                            format!(
                                "{field}: {t:?} is not an RFC 3339 time (2026-12-01T20:00:00Z)"
                            ),
                        )
                    })
                })
                .transpose()
        };
        let seq = |field: &'static str, v: &Option<String>| {
            given(v)
                .map(|n| {
                    n.parse::<i64>().map_err(|_| {
                        ApiError::field(field, format!("{field}: {n:?} is not a seq (a number)"))
                    })
                })
                .transpose()
        };
        let kinds = given(&self.kind)
            .map(|k| {
                k.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(EventSearch {
            device: given(&self.device).map(str::to_string),
            kinds,
            actor: given(&self.actor).map(str::to_string),
            operators_only: false,
            from: time("from", &self.from)?,
            to: time("to", &self.to)?,
            before: seq("before", &self.before)?,
            after: seq("after", &self.after)?,
            limit: match given(&self.limit) {
                Some(l) => limit(Some(l.to_string()))?,
                None => default_limit,
            },
        })
    }
}

/// The event log.
///
/// Everything that happened, who did it, newest first; filtered by device, kinds, actor and
/// time, paged back by seq (`before` = the last seq of a page).
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "history",
    params(
        EventQuery,
    ),
    responses(
        (status = 200, description = "The events, newest first: seq, time, device, kind, actor, data", body = Vec<Object>),
        (status = 400, description = "A filter is wrong (`field` names it): `limit` not 1 to 10000, a time not RFC 3339, a seq not a number", body = ErrorBody),
    )
)]
async fn get_events(State(s): State<AppState>, Query(q): Query<EventQuery>) -> ApiResult {
    let search = q.search(100)?;
    let rows = s
        .hub
        .store()
        .search_events(search)
        .await
        .map_err(CoreError::from)?;
    let out: Vec<Value> = rows.iter().map(|e| event_json(e.seq, &e.record)).collect();
    ok(out)
}

/// The query of the export: the event log's filters and the format.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ExportFormat {
    /// `csv` (RFC 4180, a header row; cells that a spreadsheet would read as a formula are
    /// prefixed with `'`) or `jsonl` (one event per line, as `/api/events` shows it).
    #[param(value_type = String)]
    format: Option<String>,
}

/// Rows read from the store at a time by the export.
const EXPORT_PAGE: u32 = 500;

/// The event log, exported.
///
/// Exactly what `/api/events` shows for the same filters, newest first, but every match
/// (unless `limit` is given), streamed: read from the store a page at a time, never whole.
/// An attachment (`Content-Disposition`).
#[utoipa::path(
    get,
    path = "/api/events/export",
    tag = "history",
    params(
        ExportFormat,
        EventQuery,
    ),
    responses(
        (status = 200, description = "The events as CSV (`seq,at,device,kind,actor,data`, `data` as JSON) or JSON lines", content((String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, description = "A filter or the format is wrong (`field` names it)", body = ErrorBody),
    )
)]
async fn export_events(
    State(s): State<AppState>,
    Query(f): Query<ExportFormat>,
    Query(q): Query<EventQuery>,
) -> Result<Response, ApiError> {
    let csv = match f.format.as_deref().map(str::trim) {
        Some("csv") => true,
        Some("jsonl") => false,
        other => {
            return Err(ApiError::field(
                "format",
                format!("format: {:?} must be csv or jsonl", other.unwrap_or("")),
            ));
        }
    };
    let search = q.search(u32::MAX)?;
    let export = Export {
        store: s.hub.store().clone(),
        left: search.limit,
        search,
        csv,
        header: csv,
        done: false,
    };
    let body = futures_util::stream::unfold(export, |mut e| async move {
        let chunk = e.next().await?;
        Some((chunk, e))
    });
    let (ct, ext) = if csv {
        ("text/csv; charset=utf-8", "csv")
    } else {
        ("application/x-ndjson", "jsonl")
    };
    let name = format!(
        "attachment; filename=\"gatehouse-events-{}.{ext}\"",
        crate::clock::now_ms()
    );
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(ct)),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&name).unwrap_or(HeaderValue::from_static("attachment")),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// An export under way: the search moves back page by page (`before` = the last seq sent),
/// so the store holds no cursor and memory holds one page.
struct Export {
    store: Arc<dyn Store>,
    search: EventSearch,
    /// Rows still to send (the query's `limit`, if any).
    left: u32,
    csv: bool,
    /// The CSV header is still to send.
    header: bool,
    done: bool,
}

impl Export {
    /// The next chunk of the body: the header, then a page of rows; `None` at the end. A
    /// store error ends the body early (the client sees a cut transfer, not a short file
    /// that looks whole).
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.header {
            self.header = false;
            return Some(Ok(Bytes::from_static(b"seq,at,device,kind,actor,data\r\n")));
        }
        if self.done || self.left == 0 {
            return None;
        }
        let mut page = self.search.clone();
        page.limit = self.left.min(EXPORT_PAGE);
        let rows = match self.store.search_events(page.clone()).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "the event export stopped: the store failed");
                self.done = true;
                return Some(Err(std::io::Error::other(e.to_string())));
            }
        };
        if rows.len() < page.limit as usize {
            self.done = true;
        }
        let last = rows.last()?;
        self.search.before = Some(last.seq);
        self.left -= rows.len() as u32;
        let mut out = String::new();
        for e in &rows {
            if self.csv {
                csv_row(&mut out, e.seq, &e.record);
            } else {
                out.push_str(&event_json(e.seq, &e.record).to_string());
                out.push('\n');
            }
        }
        Some(Ok(Bytes::from(out)))
    }
}

/// One CSV line (RFC 4180, CRLF) of an event: seq, time, device, kind, actor, data.
fn csv_row(out: &mut String, seq: i64, r: &EventRecord) {
    let cells = [
        seq.to_string(),
        rfc3339(r.at),
        r.device.clone().unwrap_or_default(),
        r.kind.clone(),
        r.actor.clone(),
        r.data.clone(),
    ];
    for (i, c) in cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&csv_cell(c));
    }
    out.push_str("\r\n");
}

/// A CSV cell: quoted (RFC 4180) when it holds a comma, a quote, CR or LF, its quotes
/// doubled; and, as OWASP advises against formula injection, prefixed with `'` when it starts
/// with `=`, `+`, `-`, `@`, a tab or CR (a device's or a player's text must not run in the
/// spreadsheet it is opened in).
pub(crate) fn csv_cell(c: &str) -> String {
    let c = if c.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{c}")
    } else {
        c.to_string()
    };
    if c.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", c.replace('"', "\"\""))
    } else {
        c
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_as_rfc_4180_says() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell(""), "");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_cell("cr\rhere"), "\"cr\rhere\"");
        assert_eq!(csv_cell(r#"{"a":1,"b":"x"}"#), r#""{""a"":1,""b"":""x""}""#);
    }

    #[test]
    fn csv_cells_that_would_be_formulas_are_prefixed() {
        for (cell, want) in [
            ("=1+2", "'=1+2"),
            ("+1", "'+1"),
            ("-1", "'-1"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            (
                "=HYPERLINK(\"http://x\",\"y\")",
                "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\"",
            ),
            ("\r=1", "\"'\r=1\""),
            ("a=1", "a=1"),
            ("1-2", "1-2"),
        ] {
            assert_eq!(csv_cell(cell), want, "{cell:?}");
        }
    }

    #[test]
    fn a_csv_row_has_six_cells_and_ends_in_crlf() {
        let mut out = String::new();
        let r = EventRecord {
            at: 0,
            device: None,
            kind: "state_changed".into(),
            actor: "=cmd".into(),
            data: r#"{"to":"-1"}"#.into(),
        };
        csv_row(&mut out, 7, &r);
        assert_eq!(
            out,
            "7,1970-01-01T00:00:00Z,,state_changed,'=cmd,\"{\"\"to\"\":\"\"-1\"\"}\"\r\n"
        );
    }

    #[test]
    fn filter_times_take_rfc_3339_and_a_browser_s_local_form_as_utc() {
        let t = parse_time("2026-12-01T20:00:00Z");
        assert!(t.is_some());
        assert_eq!(parse_time("2026-12-01T20:00"), t);
        assert_eq!(parse_time("2026-12-01T20:00:00"), t);
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn blank_filters_are_no_filters_and_bad_ones_name_their_field() {
        let q = EventQuery {
            device: Some(String::new()),
            kind: Some("a, b,".into()),
            actor: Some(" ".into()),
            ..EventQuery::default()
        };
        let s = q.search(100).unwrap();
        assert_eq!((s.device, s.actor, s.limit), (None, None, 100));
        assert_eq!(s.kinds, ["a", "b"]);
        for (q, field) in [
            (
                EventQuery {
                    from: Some("soon".into()),
                    ..EventQuery::default()
                },
                "from",
            ),
            (
                EventQuery {
                    before: Some("x".into()),
                    ..EventQuery::default()
                },
                "before",
            ),
            (
                EventQuery {
                    limit: Some("0".into()),
                    ..EventQuery::default()
                },
                "limit",
            ),
        ] {
            let e = q.search(100).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{q:?}");
        }
    }
}
