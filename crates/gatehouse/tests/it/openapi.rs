//! The OpenAPI document: the one served at `/api/openapi.json` is the one committed as
//! `openapi.json` at the repository's root, and every route it documents is served.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::Value;

use crate::common::{Server, TOKEN, decode};

/// How to bring the committed document up to date with the routes.
const REGENERATE: &str = "cargo run -q -p gatehouse -- openapi > openapi.json";

/// The operations the routers in `http/` register (through `routes!`, so each is in the
/// document): the document may grow, never shrink below this.
const REGISTERED: usize = 58;

/// The methods an OpenAPI path item may have, as the document names them.
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

fn committed() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../openapi.json");
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("openapi.json at the repository's root: {e}; {REGENERATE}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("openapi.json: {e}; {REGENERATE}"))
}

async fn served(s: &Server) -> Value {
    let (status, doc) = s.get("/api/openapi.json").await;
    assert_eq!(status, 200, "{doc}");
    doc
}

/// `(path, method)` of every operation in `doc`.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths").iter() {
        for m in METHODS {
            if item.get(m).is_some() {
                out.push((path.clone(), m.to_string()));
            }
        }
    }
    out
}

/// What differs between two documents, path by path (and the rest of the document).
fn differences(served: &Value, committed: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let paths = |d: &Value| d["paths"].as_object().cloned().unwrap_or(empty.clone());
    let (a, b) = (paths(served), paths(committed));
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out = Vec::new();
    for name in names {
        match (a.get(name), b.get(name)) {
            (Some(_), None) => out.push(format!("{name}: served, not in openapi.json")),
            (None, Some(_)) => out.push(format!("{name}: in openapi.json, not served")),
            (Some(x), Some(y)) if x != y => out.push(format!("{name}: documented differently")),
            _ => {}
        }
    }
    for key in ["openapi", "info", "components", "security", "tags"] {
        if served.get(key) != committed.get(key) {
            out.push(format!("`{key}` differs"));
        }
    }
    out
}

#[tokio::test]
async fn the_committed_document_is_the_generated_one() {
    let s = Server::start().await;
    let doc = served(&s).await;
    let file = committed();
    let diff = differences(&doc, &file);
    assert!(
        doc == file && diff.is_empty(),
        "/api/openapi.json is not the committed openapi.json:\n  {}\nregenerate it: {REGENERATE}",
        if diff.is_empty() {
            "(the documents differ outside the compared keys)".to_string()
        } else {
            diff.join("\n  ")
        }
    );
}

/// A path of the document with its parameters filled with plausible values.
fn fill(path: &str) -> String {
    path.replace("{type}", "lock")
        .replace("{cell}", "1")
        .replace("{id}", "1")
        .replace("{name}", "x")
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let s = Server::start().await;
    let doc = served(&s).await;
    let ops = operations(&doc);
    assert!(
        ops.len() >= REGISTERED,
        "the document has {} operations, the routers register {REGISTERED}",
        ops.len()
    );
    for (path, method) in &ops {
        let op = &doc["paths"][path][method];
        let url = s.url(&fill(path));
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
        let mut req = s.http.request(m, url).bearer_auth(TOKEN);
        // The body in the documented content type: `{}` for JSON, an empty rule file for TOML.
        if let Some(ct) = op["requestBody"]["content"]
            .as_object()
            .and_then(|c| c.keys().next())
        {
            let body = if ct.contains("json") {
                "{}"
            } else {
                "# empty\n"
            };
            req = req.header("content-type", ct.as_str()).body(body);
        }
        let resp = req.send().await.expect("an answer");
        // A stream (the event stream) never ends: its head is the answer.
        let streaming = resp
            .headers()
            .get("content-type")
            .is_some_and(|ct| ct.as_bytes().starts_with(b"text/event-stream"));
        let (status, body) = if streaming {
            (resp.status().as_u16(), Value::Null)
        } else {
            decode(resp).await
        };
        let what = format!("{} {path}: {status} {body}", method.to_uppercase());
        assert_ne!(status, 405, "not served: {what}");
        assert!(
            !(status == 404 && body["error"] == "no such route"),
            "not served: {what}"
        );
        // The token and the documented content type are taken.
        assert_ne!(status, 401, "{what}");
        assert_ne!(status, 415, "{what}");
        assert!(status < 500, "{what}");
    }
}

/// The least role an operation needs, stated here from the operation's tag and method (the
/// policy as the README gives it), independently of the server's `required_role`.
fn least_role(path: &str, method: &str, tag: &str) -> &'static str {
    let reads = method == "get";
    match tag {
        // Anyone may ask who they are.
        "accounts" if path == "/api/me" => "viewer",
        "accounts" | "credentials" => "admin",
        "types" if method == "put" => "admin",
        "rules" if !reads && !path.ends_with("/test") && !path.ends_with("/replay") => "admin",
        _ if reads => "viewer",
        _ => "operator",
    }
}

/// Every documented operation × every role, table-driven from the served document: a role
/// below the operation's is refused with 403 before anything happens; one at or above it is
/// let through (whatever the handler then says about the plausible values sent).
#[tokio::test]
async fn every_operation_answers_each_role_as_the_policy_says() {
    let s = Server::start().await;
    let doc = served(&s).await;
    let mut tokens = Vec::new();
    for role in ["viewer", "operator", "admin"] {
        let (st, t) = s
            .send(
                Method::POST,
                "/api/tokens",
                Some(serde_json::json!({"name": format!("as-{role}"), "role": role})),
            )
            .await;
        assert_eq!(st, 201, "{t}");
        tokens.push((role, t["token"].as_str().unwrap().to_string()));
    }
    let rank = |r: &str| ["viewer", "operator", "admin"].iter().position(|x| *x == r);
    let mut checked = 0;
    for (role, token) in &tokens {
        for (path, method) in operations(&doc) {
            let op = &doc["paths"][&path][&method];
            // The login form and the health checks are open.
            if op["security"].as_array().is_some_and(|a| {
                a.iter()
                    .all(|r| r.as_object().is_some_and(|o| o.is_empty()))
            }) {
                continue;
            }
            let tag = op["tags"][0].as_str().unwrap_or("");
            let need = least_role(&path, &method, tag);
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
            let mut req = s.http.request(m, s.url(&fill(&path))).bearer_auth(token);
            if let Some(ct) = op["requestBody"]["content"]
                .as_object()
                .and_then(|c| c.keys().next())
            {
                let body = if ct.contains("json") {
                    "{}"
                } else {
                    "# empty\n"
                };
                req = req.header("content-type", ct.as_str()).body(body);
            }
            let resp = req.send().await.expect("an answer");
            let status = resp.status().as_u16();
            drop(resp);
            let what = format!("{role} {} {path}: {status}", method.to_uppercase());
            if rank(role) < rank(need) {
                assert_eq!(status, 403, "refused below {need}: {what}");
            } else {
                assert_ne!(status, 403, "let through at {need}: {what}");
                assert_ne!(status, 401, "{what}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 3 * REGISTERED, "{checked} checks");
}
