//! The API viewer (`/api-docs`): the OpenAPI document of this server, rendered as a page.
//!
//! Server-rendered from the generated document ([`crate::http::openapi`], the one
//! `/api/openapi.json` serves): no third-party viewer is vendored, and the page cannot drift
//! from the routes. Operations are grouped by tag in the document's tag order, each with its
//! parameters, body and answers; the schemas they name are listed after them.

use std::sync::OnceLock;

use askama::Template;
use axum::Router;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::Value;

use super::{Nav, html, nav};
use crate::http::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api-docs", get(api_docs))
}

struct Param {
    name: String,
    place: String,
    required: bool,
    ty: String,
    description: String,
}

struct Answer {
    status: String,
    description: String,
    /// `content type: schema`, for each content the answer has.
    content: Vec<(String, String)>,
}

struct Operation {
    /// The HTML id (`get-api-events`).
    anchor: String,
    method: String,
    path: String,
    summary: String,
    description: String,
    /// No credentials needed.
    open: bool,
    params: Vec<Param>,
    body: Vec<(String, String)>,
    body_description: String,
    answers: Vec<Answer>,
}

struct Tag {
    name: String,
    description: String,
    operations: Vec<Operation>,
}

struct Property {
    name: String,
    ty: String,
    required: bool,
    description: String,
}

struct Schema {
    name: String,
    ty: String,
    description: String,
    properties: Vec<Property>,
}

#[derive(Template)]
#[template(path = "apidoc.html")]
struct ApiDocPage {
    nav: Option<Nav>,
    title: String,
    version: String,
    description: String,
    tags: Vec<Tag>,
    schemas: Vec<Schema>,
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// A schema in a few words: a `$ref`'s name, `array of …`, the type(s), `a | b` of a
/// `oneOf`/`anyOf`.
fn type_of(s: &Value) -> String {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        return r.rsplit('/').next().unwrap_or(r).to_string();
    }
    for k in ["oneOf", "anyOf", "allOf"] {
        if let Some(list) = s.get(k).and_then(Value::as_array) {
            let parts: Vec<String> = list.iter().map(type_of).collect();
            return parts.join(if k == "allOf" { " & " } else { " | " });
        }
    }
    let one = |t: &str| {
        if t == "array" {
            let items = s.get("items").map(type_of).unwrap_or_else(|| "any".into());
            format!("array of {items}")
        } else {
            t.to_string()
        }
    };
    let mut ty = match s.get("type") {
        Some(Value::String(t)) => one(t),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(one)
            .collect::<Vec<_>>()
            .join(" | "),
        _ => "any".into(),
    };
    if let Some(f) = s.get("format").and_then(Value::as_str) {
        ty = format!("{ty} ({f})");
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        let vals: Vec<String> = e.iter().map(|v| v.to_string()).collect();
        ty = format!("{ty}: {}", vals.join(", "));
    }
    ty
}

fn contents(v: Option<&Value>) -> Vec<(String, String)> {
    v.and_then(|c| c.get("content"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(ct, c)| (ct.clone(), c.get("schema").map(type_of).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

fn operation(method: &str, path: &str, op: &Value) -> Operation {
    let params = op
        .get("parameters")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| Param {
                    name: text(p, "name"),
                    place: text(p, "in"),
                    required: p.get("required").and_then(Value::as_bool).unwrap_or(false),
                    ty: p.get("schema").map(type_of).unwrap_or_default(),
                    description: text(p, "description"),
                })
                .collect()
        })
        .unwrap_or_default();
    let answers = op
        .get("responses")
        .and_then(Value::as_object)
        .map(|m| {
            let mut v: Vec<Answer> = m
                .iter()
                .map(|(status, r)| Answer {
                    status: status.clone(),
                    description: text(r, "description"),
                    content: contents(Some(r)),
                })
                .collect();
            v.sort_by(|a, b| a.status.cmp(&b.status));
            v
        })
        .unwrap_or_default();
    let open = op
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| {
            s.iter()
                .all(|r| r.as_object().is_some_and(|o| o.is_empty()))
        });
    let anchor = format!("{method}-{path}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    Operation {
        anchor,
        method: method.to_ascii_uppercase(),
        path: path.to_string(),
        summary: text(op, "summary"),
        description: text(op, "description"),
        open,
        params,
        body: contents(op.get("requestBody")),
        body_description: op
            .get("requestBody")
            .map(|b| text(b, "description"))
            .unwrap_or_default(),
        answers,
    }
}

/// What the page shows, as read from the document: its info, the operations by tag (the
/// document's tag order; a tag it does not list comes after), the schemas by name.
struct Parts {
    title: String,
    version: String,
    description: String,
    tags: Vec<TagParts>,
    schemas: Vec<SchemaParts>,
}

/// The page's content, read from the document once (it is fixed at build time).
fn page_parts() -> &'static Parts {
    static PARTS: OnceLock<Parts> = OnceLock::new();
    PARTS.get_or_init(|| {
        let doc = serde_json::to_value(crate::http::openapi()).unwrap_or(Value::Null);
        read(&doc)
    })
}

// The page's parts are rebuilt per request from these (askama wants owned rows; the
// document is small).
type TagParts = (String, String, Vec<(String, String, Value)>);
type SchemaParts = (String, Value);

fn read(doc: &Value) -> Parts {
    let info = doc.get("info").cloned().unwrap_or(Value::Null);
    let mut tags: Vec<TagParts> = doc
        .get("tags")
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .map(|t| (text(t, "name"), text(t, "description"), Vec::new()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        for (path, item) in paths {
            for method in ["get", "put", "post", "patch", "delete"] {
                let Some(op) = item.get(method) else { continue };
                let tag = op
                    .get("tags")
                    .and_then(Value::as_array)
                    .and_then(|t| t.first())
                    .and_then(Value::as_str)
                    .unwrap_or("other")
                    .to_string();
                let i = match tags.iter().position(|t| t.0 == tag) {
                    Some(i) => i,
                    None => {
                        tags.push((tag, String::new(), Vec::new()));
                        tags.len() - 1
                    }
                };
                tags[i]
                    .2
                    .push((method.to_string(), path.clone(), op.clone()));
            }
        }
    }
    tags.retain(|t| !t.2.is_empty());
    let schemas = doc
        .pointer("/components/schemas")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Parts {
        title: text(&info, "title"),
        version: text(&info, "version"),
        description: text(&info, "description"),
        tags,
        schemas,
    }
}

fn schema(name: &str, s: &Value) -> Schema {
    let required: Vec<&str> = s
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let properties = s
        .get("properties")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, p)| Property {
                    name: k.clone(),
                    ty: type_of(p),
                    required: required.contains(&k.as_str()),
                    description: text(p, "description"),
                })
                .collect()
        })
        .unwrap_or_default();
    Schema {
        name: name.to_string(),
        ty: type_of(s),
        description: text(s, "description"),
        properties,
    }
}

async fn api_docs() -> Response {
    let Parts {
        title,
        version,
        description,
        tags,
        schemas,
    } = page_parts();
    html(
        ApiDocPage {
            nav: nav("api"),
            title: title.clone(),
            version: version.clone(),
            description: description.clone(),
            tags: tags
                .iter()
                .map(|(name, description, ops)| Tag {
                    name: name.clone(),
                    description: description.clone(),
                    operations: ops.iter().map(|(m, p, op)| operation(m, p, op)).collect(),
                })
                .collect(),
            schemas: schemas.iter().map(|(n, s)| schema(n, s)).collect(),
        },
        StatusCode::OK,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_read_in_a_few_words() {
        assert_eq!(
            type_of(&json!({"$ref": "#/components/schemas/ErrorBody"})),
            "ErrorBody"
        );
        assert_eq!(
            type_of(&json!({"type": "array", "items": {"type": "object"}})),
            "array of object"
        );
        assert_eq!(
            type_of(&json!({"type": ["string", "null"]})),
            "string | null"
        );
        assert_eq!(
            type_of(&json!({"type": "integer", "format": "int64"})),
            "integer (int64)"
        );
        assert_eq!(
            type_of(&json!({"type": "string", "enum": ["a", "b"]})),
            "string: \"a\", \"b\""
        );
        assert_eq!(type_of(&json!({})), "any");
    }

    /// Every operation of the document is on the page, under a tag.
    #[test]
    fn every_operation_is_under_a_tag() {
        let doc = serde_json::to_value(crate::http::openapi()).unwrap();
        let mut n = 0;
        for item in doc["paths"].as_object().unwrap().values() {
            n += item.as_object().unwrap().len();
        }
        let Parts { tags, schemas, .. } = read(&doc);
        assert_eq!(tags.iter().map(|t| t.2.len()).sum::<usize>(), n);
        assert!(
            tags.iter()
                .any(|t| t.0 == "history" && t.2.iter().any(|o| o.1 == "/api/events/export"))
        );
        assert!(schemas.iter().any(|s| s.0 == "ErrorBody"));
    }
}
