//! The command line of `serve`: flags, environment, TOML file, in that order; errors that
//! name the setting. Runs the real binary.

use std::net::TcpListener;
use std::process::Command;

use crate::durability::{local_args, spawn};

fn gatehouse(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_shows_every_setting_with_its_environment_variable_and_default() {
    let (ok, out, _) = gatehouse(&["serve", "--help"], &[]);
    assert!(ok);
    for (flag, env, default) in [
        ("--data-dir", "GATEHOUSE_DATA_DIR", "./gatehouse-data"),
        ("--acon-listen", "GATEHOUSE_ACON_LISTEN", "0.0.0.0:5000"),
        ("--http-listen", "GATEHOUSE_HTTP_LISTEN", "127.0.0.1:8080"),
        ("--admin-token", "GATEHOUSE_ADMIN_TOKEN", ""),
        ("--config", "GATEHOUSE_CONFIG", ""),
        ("--unknown-devices", "GATEHOUSE_UNKNOWN_DEVICES", "register"),
        (
            "--presence-timeout-secs",
            "GATEHOUSE_PRESENCE_TIMEOUT_SECS",
            "300",
        ),
        ("--code-length", "GATEHOUSE_CODE_LENGTH", "4"),
        ("--mqtt-listen", "GATEHOUSE_MQTT_LISTEN", "0.0.0.0:1883"),
        ("--mqtt-url", "GATEHOUSE_MQTT_URL", ""),
        ("--ping-interval-secs", "GATEHOUSE_PING_INTERVAL_SECS", "10"),
        (
            "--skaben-keepalive-secs",
            "GATEHOUSE_SKABEN_KEEPALIVE_SECS",
            "60",
        ),
        ("--acon-max-frame", "GATEHOUSE_ACON_MAX_FRAME", "65536"),
        (
            "--acon-max-connections",
            "GATEHOUSE_ACON_MAX_CONNECTIONS",
            "20000",
        ),
    ] {
        assert!(out.contains(flag), "{flag} in --help:\n{out}");
        assert!(out.contains(env), "{env} in --help:\n{out}");
        assert!(
            out.contains(&format!("default: {default}")),
            "{default} in --help:\n{out}"
        );
    }
    let (ok, out, _) = gatehouse(&["--help"], &[]);
    assert!(ok);
    for cmd in ["serve", "simulate", "bench"] {
        assert!(out.contains(cmd), "{out}");
    }
}

#[test]
fn a_port_in_use_stops_start_up_naming_the_setting() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (ok, _, err) = gatehouse(
        &[
            "serve",
            "--data-dir",
            data,
            "--acon-listen",
            &port,
            "--http-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("--acon-listen") && err.contains(&port) && err.contains("in use"),
        "{err}"
    );
    let (ok, _, err) = gatehouse(
        &[
            "serve",
            "--data-dir",
            data,
            "--acon-listen",
            "127.0.0.1:0",
            "--http-listen",
            &port,
            "--mqtt-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("--http-listen") && err.contains(&port),
        "{err}"
    );
    // The MQTT port: the message names both ways out.
    let (ok, _, err) = gatehouse(
        &[
            "serve",
            "--data-dir",
            data,
            "--acon-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            &port,
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("--mqtt-listen") && err.contains("--mqtt-url") && err.contains(&port),
        "{err}"
    );
    // Both a broker to run and one to use: refused.
    let (ok, _, err) = gatehouse(
        &[
            "serve",
            "--data-dir",
            data,
            "--mqtt-listen",
            "127.0.0.1:0",
            "--mqtt-url",
            "mqtt://127.0.0.1:1883",
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("--mqtt-url") && err.contains("--mqtt-listen"),
        "{err}"
    );
}

#[test]
fn flags_beat_environment_beats_file_beats_defaults() {
    let busy: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<String> = busy
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let file = dir.path().join("gatehouse.toml");
    std::fs::write(
        &file,
        format!(
            "acon_listen = \"{}\"\nhttp-listen = \"127.0.0.1:0\"\nmqtt_listen = \"127.0.0.1:0\"\ncode_length = 6\n",
            ports[0]
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let base = ["serve", "--data-dir", data, "--config", file];

    let (ok, _, err) = gatehouse(&base, &[]);
    assert!(
        !ok && err.contains(&ports[0]),
        "the file beats the default: {err}"
    );
    let env = [("GATEHOUSE_ACON_LISTEN", ports[1].as_str())];
    let (ok, _, err) = gatehouse(&base, &env);
    assert!(
        !ok && err.contains(&ports[1]),
        "the environment beats the file: {err}"
    );
    let mut args = base.to_vec();
    args.extend(["--acon-listen", &ports[2]]);
    let (ok, _, err) = gatehouse(&args, &env);
    assert!(
        !ok && err.contains(&ports[2]),
        "a flag beats the environment: {err}"
    );

    std::fs::write(dir.path().join("bad.toml"), "acon_lisen = \"x\"\n").unwrap();
    let bad = dir.path().join("bad.toml");
    let (ok, _, err) = gatehouse(&["serve", "--config", bad.to_str().unwrap()], &[]);
    assert!(
        !ok && err.contains("acon_lisen") && err.contains("acon_listen"),
        "unknown key named: {err}"
    );
    std::fs::write(&bad, "code_length = 99\n").unwrap();
    let (ok, _, err) = gatehouse(&["serve", "--config", bad.to_str().unwrap()], &[]);
    assert!(!ok && err.contains("code-length"), "bad value named: {err}");
}

#[tokio::test]
async fn port_0_unknown_env_and_a_generated_admin_token_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let args = local_args(data, None);
    let env = [("GATEHOUSE_SOME_FUTURE_SETTING", "1")];
    let mut p = spawn(&args, &env);
    assert_ne!(p.acon.port(), 0);
    assert_ne!(p.http.port(), 0);
    let token_file = dir.path().join("admin-token");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(token.len() >= 32);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        p.stderr.iter().any(|l| l.contains(&token)),
        "printed on first start"
    );
    let r = reqwest::Client::new()
        .get(format!("http://{}/api/devices", p.http))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    p.child.kill().unwrap();
    p.child.wait().unwrap();

    let mut p = spawn(&args, &env);
    assert!(
        !p.stderr.iter().any(|l| l.contains(&token)),
        "not printed again"
    );
    // A second server on the same data directory is refused.
    let second: Vec<&str> = std::iter::once("serve")
        .chain(args.iter().copied())
        .collect();
    let (ok, _, err) = gatehouse(&second, &[]);
    assert!(
        !ok && err.contains("already using the data directory"),
        "{err}"
    );
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}
