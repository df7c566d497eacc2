//! `gatehouse rules import|export|test|replay`: the rule file's workflow from the command
//! line. Against a running server it is the HTTP API (`--url`, `--token`); against a
//! stopped server's `--data-dir` it opens the store itself (holding the data directory's
//! lock, so a running server is never written behind its back); `test` needs no server.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::{RulesCommand, RulesTarget};
use crate::core::game::def::RuleFile;
use crate::core::game::live::{GameCommand, TestInput, Window};
use crate::core::{CoreError, Effects, Hub, State};

pub async fn run(cmd: RulesCommand) -> anyhow::Result<()> {
    match cmd {
        RulesCommand::Import(a) => {
            let text = read(&a.file)?;
            let file = RuleFile::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
            match target(&a.target)? {
                Target::Url(url, token) => {
                    let (status, body) = request(
                        &url,
                        "POST",
                        "/api/rules/import",
                        &token,
                        Some(("application/toml", text)),
                    )
                    .await?;
                    answer(status, &body)?;
                    println!("{}", body.trim_end());
                }
                Target::Dir(dir) => {
                    let (hub, store, _lock) = open(&dir).await?;
                    let r = hub
                        .game(
                            GameCommand::Import {
                                file: Box::new(file),
                            },
                            "cli",
                            crate::clock::now_ms(),
                        )
                        .await;
                    store.close().await?;
                    let g = r.map_err(rule_errors)?;
                    println!(
                        "imported {} rules into {} (hash {})",
                        g.rules,
                        dir.display(),
                        g.rules_hash
                    );
                }
            }
        }
        RulesCommand::Export(t) => match target(&t)? {
            Target::Url(url, token) => {
                let (status, body) =
                    request(&url, "GET", "/api/rules/export", &token, None).await?;
                answer(status, &body)?;
                print!("{body}");
            }
            Target::Dir(dir) => {
                let db = dir.join("gatehouse.db");
                if !db.exists() {
                    bail!("no database at {} (--data-dir)", db.display());
                }
                let rows = crate::store::sqlite::game_at(&db)?;
                match rows.iter().find(|(k, _)| k == "rules") {
                    Some((_, text)) => print!("{text}"),
                    None => print!("{}", crate::core::game::RuleSet::empty().text),
                }
            }
        },
        RulesCommand::Test(a) => {
            let text = read(&a.file)?;
            let file = RuleFile::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
            let sample: Value = serde_json::from_str(&read(&a.event)?)
                .with_context(|| format!("{} is not JSON", a.event.display()))?;
            let out = dry_run(file, sample).map_err(rule_errors)?;
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        RulesCommand::Replay(a) => {
            let text = match &a.file {
                Some(f) => Some(read(f)?),
                None => None,
            };
            let window = match (a.run, &a.from) {
                (Some(run), _) => Window::Run(run),
                (None, Some(f)) => Window::Between(
                    time(f, "--from")?,
                    match &a.to {
                        Some(t) => time(t, "--to")?,
                        None => crate::clock::now_ms(),
                    },
                ),
                (None, None) => bail!("give --run N, or --from TIME (and --to TIME)"),
            };
            match target(&a.target)? {
                Target::Url(url, token) => {
                    let mut body = serde_json::Map::new();
                    if let Some(t) = text {
                        body.insert("rules".into(), Value::String(t));
                    }
                    match (a.run, &a.from, &a.to) {
                        (Some(r), _, _) => {
                            body.insert("run".into(), r.into());
                        }
                        (None, Some(f), to) => {
                            body.insert("from".into(), f.clone().into());
                            if let Some(t) = to {
                                body.insert("to".into(), t.clone().into());
                            }
                        }
                        _ => {}
                    }
                    let (status, out) = request(
                        &url,
                        "POST",
                        "/api/rules/replay",
                        &token,
                        Some(("application/json", Value::Object(body).to_string())),
                    )
                    .await?;
                    answer(status, &out)?;
                    let v: Value = serde_json::from_str(&out).unwrap_or(Value::String(out));
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                Target::Dir(dir) => {
                    let file = match &text {
                        Some(t) => Some(
                            RuleFile::from_toml(t)
                                .map_err(|e| anyhow::anyhow!("the rule file: {e}"))?,
                        ),
                        None => None,
                    };
                    let (hub, store, _lock) = open(&dir).await?;
                    let r = hub.replay(file, window, crate::clock::now_ms()).await;
                    store.close().await?;
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&r.map_err(rule_errors)?)?
                    );
                }
            }
        }
    }
    Ok(())
}

/// A dry run with no server: the default device types, the given rules, the sample.
pub fn dry_run(
    file: RuleFile,
    sample: Value,
) -> Result<crate::core::game::live::TestOutcome, CoreError> {
    let now = crate::clock::now_ms();
    let cfg = default_core();
    let mut st = State::new(cfg, now);
    st.load_types(Vec::new(), now)?;
    let mut fx = Effects::new(now);
    st.game_import(&mut fx, file, "cli")
        .map_err(CoreError::Rules)?;
    let input: TestInput = match sample {
        Value::Object(mut m) if !m.contains_key("event") => {
            let state = m.remove("state");
            let mut input = TestInput {
                event: Value::Object(m),
                ..TestInput::default()
            };
            if let Some(s) = state {
                input.state = Some(
                    serde_json::from_value(s)
                        .map_err(|e| crate::core::invalid("state", e.to_string()))?,
                );
            }
            input
        }
        other => serde_json::from_value(other)
            .map_err(|e| crate::core::invalid("event", e.to_string()))?,
    };
    let mut fx = Effects::new(now);
    st.rules_test(&mut fx, &input)
}

/// The core's defaults, for tests of the engine.
#[cfg(test)]
pub(crate) fn default_core_for_tests() -> crate::core::CoreConfig {
    unreachable_defaults()
}

fn default_core() -> crate::core::CoreConfig {
    match crate::cli::parse(vec!["gatehouse".into(), "serve".into()]) {
        Ok(crate::cli::Cli {
            command: crate::cli::Command::Serve(a),
        }) => a.settings().core,
        _ => unreachable_defaults(),
    }
}

/// The core's defaults should the command line not parse (it always does: no arguments).
fn unreachable_defaults() -> crate::core::CoreConfig {
    crate::core::CoreConfig {
        unknown_devices: crate::core::UnknownPolicy::Register,
        presence_timeout_ms: 120_000,
        code_length: 6,
        ping_interval_ms: 10_000,
        skaben_keepalive_ms: 60_000,
        acon_pin_peers: false,
        acon_max_new_boards_per_min: 60,
        acon_max_messages_per_sec: 20.0,
        skaben_max_packets_per_sec: 50.0,
        skaben_max_payload_bytes: 8192,
        timezone: None,
    }
}

fn rule_errors(e: CoreError) -> anyhow::Error {
    match e {
        CoreError::Rules(errors) => {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("the rule file was refused:\n  {}", lines.join("\n  "))
        }
        other => anyhow::anyhow!("{other}"),
    }
}

fn read(p: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
}

fn time(s: &str, flag: &str) -> anyhow::Result<i64> {
    crate::clock::parse_rfc3339(s).ok_or_else(|| {
        anyhow::anyhow!("{flag}: {s:?} is not an RFC 3339 time (2026-12-01T20:00:00Z)")
    })
}

pub(crate) enum Target {
    Url(String, String),
    Dir(std::path::PathBuf),
}

pub(crate) fn target(t: &RulesTarget) -> anyhow::Result<Target> {
    match (&t.url, &t.token, &t.data_dir) {
        (Some(u), Some(tok), None) => Ok(Target::Url(
            u.trim_end_matches('/').to_string(),
            tok.clone(),
        )),
        (Some(_), None, _) => bail!("--url needs --token (the data directory's admin-token file)"),
        (None, _, Some(d)) => Ok(Target::Dir(d.clone())),
        _ => bail!(
            "give --url URL --token TOKEN (a running server) or --data-dir DIR (a stopped one)"
        ),
    }
}

/// The hub of a stopped server's data directory, holding its lock.
pub(crate) async fn open(
    dir: &Path,
) -> anyhow::Result<(Arc<Hub>, Arc<dyn crate::store::Store>, std::fs::File)> {
    let db = dir.join("gatehouse.db");
    if !db.exists() {
        bail!(
            "no database at {} (--data-dir): start gatehouse there once first",
            db.display()
        );
    }
    let lock = crate::server::lock_data_dir(dir)
        .map_err(|e| anyhow::anyhow!("{e:#} (a running server: use --url and --token)"))?;
    let store: Arc<dyn crate::store::Store> =
        Arc::new(crate::store::sqlite::SqliteStore::open(&db)?);
    let hub = Hub::load(
        store.clone(),
        default_core(),
        Arc::new(crate::bus::NullBus),
        crate::clock::now_ms(),
    )
    .await?;
    Ok((Arc::new(hub), store, lock))
}

pub(crate) fn answer(status: u16, body: &str) -> anyhow::Result<()> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let msg = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            let errors = v.get("errors").and_then(Value::as_array).map(|a| {
                a.iter()
                    .map(|e| {
                        let rule = e
                            .get("rule")
                            .and_then(Value::as_str)
                            .map(|r| format!("rule {r:?}: "))
                            .unwrap_or_default();
                        format!(
                            "{rule}{}: {}",
                            e["field"].as_str().unwrap_or(""),
                            e["reason"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n  ")
            });
            errors.or_else(|| v.get("error").and_then(Value::as_str).map(str::to_string))
        })
        .unwrap_or_else(|| body.to_string());
    bail!("the server answered {status}:\n  {msg}")
}

/// One HTTP/1.1 request to the server (plain HTTP, as the API listens).
pub(crate) async fn request(
    url: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<(&str, String)>,
) -> anyhow::Result<(u16, String)> {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = format!("{url}{path}")
        .parse()
        .with_context(|| format!("--url {url:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--url {url:?}: give http://HOST:PORT (the API speaks plain HTTP)");
    }
    let host = uri.host().context("--url has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("cannot connect to {host}:{port} (--url)"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("{host}:{port}"))
        .header("authorization", format!("Bearer {token}"));
    let body = match body {
        Some((ct, b)) => {
            req = req.header("content-type", ct);
            b
        }
        None => String::new(),
    };
    let resp = send
        .send_request(req.body(http_body_util::Full::new(bytes_of(body)))?)
        .await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

fn bytes_of(s: String) -> axum::body::Bytes {
    axum::body::Bytes::from(s)
}
