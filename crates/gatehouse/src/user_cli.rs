//! `gatehouse user add|passwd|role|remove|list`: console accounts from the command line,
//! against a running server (`--url`, `--token`: the same API the console uses) or a stopped
//! server's data directory (`--data-dir`, holding its lock; `list` reads it read-only, so it
//! works beside a running server too).

use std::io::BufRead;

use anyhow::bail;
use serde_json::{Value, json};

use crate::cli::UserCommand;
use crate::core::accounts;
use crate::rules_cli::{Target, answer, open, request, target};

pub async fn run(cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add(a) => {
            let (password, generated) = password(a.password_stdin)?;
            accounts::check_name("name", &a.name).map_err(|e| anyhow::anyhow!("{e}"))?;
            match target(&a.target)? {
                Target::Url(url, token) => {
                    let body = json!({"name": a.name, "role": a.role, "password": password});
                    call(&url, &token, "POST", "/api/users", Some(body)).await?;
                }
                Target::Dir(dir) => {
                    let hash = hash(password.clone()).await?;
                    let (hub, store, _lock) = open(&dir).await?;
                    let r = hub
                        .accounts_change(crate::clock::now_ms(), |st, fx| {
                            st.user_add(fx, &a.name, a.role, hash, "cli")
                        })
                        .await;
                    store.close().await?;
                    r?;
                }
            }
            println!("added {:?} ({})", a.name, a.role.as_str());
            if generated {
                println!("password: {password}");
            }
        }
        UserCommand::Passwd(a) => {
            let (password, generated) = password(a.password_stdin)?;
            match target(&a.target)? {
                Target::Url(url, token) => {
                    let path = format!("/api/users/{}", a.name);
                    let body = json!({ "password": password });
                    call(&url, &token, "PATCH", &path, Some(body)).await?;
                }
                Target::Dir(dir) => {
                    let hash = hash(password.clone()).await?;
                    change(&dir, |st, fx| {
                        st.user_change(fx, &a.name, None, Some(hash), "cli")
                            .map(drop)
                    })
                    .await?;
                }
            }
            println!("changed the password of {:?}; its sessions ended", a.name);
            if generated {
                println!("password: {password}");
            }
        }
        UserCommand::Role(a) => {
            match target(&a.target)? {
                Target::Url(url, token) => {
                    let path = format!("/api/users/{}", a.name);
                    let body = json!({ "role": a.role });
                    call(&url, &token, "PATCH", &path, Some(body)).await?;
                }
                Target::Dir(dir) => {
                    change(&dir, |st, fx| {
                        st.user_change(fx, &a.name, Some(a.role), None, "cli")
                            .map(drop)
                    })
                    .await?;
                }
            }
            println!("{:?} is now {}", a.name, a.role.as_str());
        }
        UserCommand::Remove(a) => {
            match target(&a.target)? {
                Target::Url(url, token) => {
                    let path = format!("/api/users/{}", a.name);
                    call(&url, &token, "DELETE", &path, None).await?;
                }
                Target::Dir(dir) => {
                    change(&dir, |st, fx| st.user_remove(fx, &a.name, "cli").map(drop)).await?;
                }
            }
            println!("removed {:?}", a.name);
        }
        UserCommand::List(t) => {
            let users: Vec<(String, String)> = match target(&t)? {
                Target::Url(url, token) => {
                    let v = call(&url, &token, "GET", "/api/users", None).await?;
                    v.as_array()
                        .map(|a| {
                            a.iter()
                                .map(|u| {
                                    (
                                        u["name"].as_str().unwrap_or("").to_string(),
                                        u["role"].as_str().unwrap_or("").to_string(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                }
                Target::Dir(dir) => {
                    let db = dir.join("gatehouse.db");
                    if !db.exists() {
                        bail!("no database at {} (--data-dir)", db.display());
                    }
                    let a = accounts::Accounts::load(crate::store::sqlite::accounts_at(&db)?)?;
                    a.users()
                        .map(|u| (u.name.clone(), u.role.as_str().to_string()))
                        .collect()
                }
            };
            for (name, role) in users {
                println!("{name}\t{role}");
            }
        }
    }
    Ok(())
}

/// The password: the first line of standard input, or a generated one.
fn password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if !from_stdin {
        return Ok((accounts::generate_password(), true));
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    accounts::check_password(&p).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((p, false))
}

async fn hash(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || crate::core::access::hash_chosen(&password))
        .await?
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

/// One accounts change on a stopped server's data directory.
async fn change(
    dir: &std::path::Path,
    f: impl FnOnce(
        &mut crate::core::State,
        &mut crate::core::Effects,
    ) -> Result<(), crate::core::CoreError>,
) -> anyhow::Result<()> {
    let (hub, store, _lock) = open(dir).await?;
    let r = hub.accounts_change(crate::clock::now_ms(), f).await;
    store.close().await?;
    Ok(r?)
}

/// One API call; the answer's JSON, or the server's error.
async fn call(
    url: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let body = body.map(|b| ("application/json", b.to_string()));
    let (status, text) = request(url, method, path, token, body).await?;
    answer(status, &text)?;
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}
