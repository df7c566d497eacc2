//! The device-side tools against the real server: virtual boards and the load generator.

use gatehouse_tools::bench_acon::{self, BenchAconArgs};
use gatehouse_tools::simulate_acon::{self, SimulateAconArgs};

use crate::common::Server;

#[tokio::test]
async fn simulated_boards_are_registered_and_recorded() {
    let s = Server::start().await;
    let args = SimulateAconArgs {
        addr: s.running().acon_addr.to_string(),
        boards: 3,
        interval: 0.05,
        first_id: 500,
        cols: 8,
        rows: 8,
        answer_timeout: 3.0,
        seed: Some(1),
        count: Some(5),
    };
    simulate_acon::run(args).await.unwrap();
    let (_, list) = s.get("/api/devices").await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["500", "501", "502"]);
    for id in ids {
        let (_, m) = s
            .get(&format!("/api/devices/acon/{id}/messages?limit=100"))
            .await;
        assert!(m.as_array().unwrap().len() >= 5, "board {id}: {m}");
        let (_, cells) = s.get(&format!("/api/devices/acon/{id}/cells")).await;
        assert_eq!(cells.as_array().unwrap().len(), 64);
    }
}

#[tokio::test]
async fn the_load_generator_sees_every_send_echoed_by_the_real_server() {
    let s = Server::start().await;
    let args = BenchAconArgs {
        addr: s.running().acon_addr.to_string(),
        conns: 8,
        seconds: 1.0,
        rate: None,
        warmup: 0.2,
        first_id: 9000,
        reference: false,
        connect_concurrency: 8,
    };
    let report = bench_acon::measure(&args).await.unwrap();
    assert!(report.messages > 0, "{report}");
    assert_eq!(report.errors, 0, "{report}");
    assert_eq!(report.send_mismatches, 0, "{report}");
    let (_, list) = s.get("/api/devices").await;
    assert_eq!(list.as_array().unwrap().len(), 8);
}

#[derive(clap::Parser)]
struct SimArgs {
    #[command(flatten)]
    a: gatehouse_tools::simulate_skaben::SimulateSkabenArgs,
}

#[derive(clap::Parser)]
struct BenchArgs {
    #[command(flatten)]
    a: gatehouse_tools::bench_skaben::BenchSkabenArgs,
}

/// Virtual props of both profiles take the server's configs, answer pings, ACK, and their
/// INFOs reach the event log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_props_get_their_configs_in_sync() {
    use clap::Parser as _;
    let b = crate::common::Bench::start_with(crate::common::Broker::Embedded, |s| {
        s.core.ping_interval_ms = 300
    })
    .await;
    let mqtt = format!("127.0.0.1:{}", b.mqtt_port);
    for (profile, prefix) in [("reference", "5ca1a0"), ("standard", "5ca1b0")] {
        let args = SimArgs::try_parse_from([
            "sim",
            "--mqtt",
            &mqtt,
            "--devices",
            "10",
            "--types",
            "lock,rgb",
            "--profile",
            profile,
            "--info-every",
            "0.5",
            "--id-prefix",
            prefix,
        ])
        .unwrap()
        .a;
        let sim = gatehouse_tools::simulate_skaben::Simulation::start(&args)
            .await
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), sim.all_connected())
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        let r = sim.stop().await.unwrap();
        assert_eq!((r.in_sync, r.differs), (10, 0), "{profile}: {r}");
        assert!(
            r.pings_answered >= 10 && r.acks_sent >= 5 && r.infos_sent > 0,
            "{r}"
        );
    }
    let locks = b
        .until("/api/devices?kind=lock", |v| {
            v.as_array().is_some_and(|a| a.len() == 10)
        })
        .await;
    let id = locks[0]["id"].as_str().unwrap();
    let dev = b
        .until(&format!("/api/devices/lock/{id}"), |v| v["in_sync"] == true)
        .await;
    assert_eq!(dev["online"], true);
    b.until_event(&format!("lock/{id}"), "info").await;
}

/// `bench skaben` measures round trips through the server and the broker's own rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_skaben_measures_the_server_and_the_broker() {
    use clap::Parser as _;
    let b = crate::common::Bench::start(crate::common::Broker::Embedded).await;
    let mqtt = format!("127.0.0.1:{}", b.mqtt_port);
    let args = BenchArgs::try_parse_from([
        "bench",
        "--mqtt",
        &mqtt,
        "--devices",
        "10",
        "--duration",
        "1.5",
        "--warmup",
        "0.3",
    ])
    .unwrap()
    .a;
    let r = gatehouse_tools::bench_skaben::measure(&args).await.unwrap();
    let s = r.server.as_ref().unwrap();
    assert!(s.round_trips > 100, "{r}");
    assert_eq!((s.timeouts, s.errors), (0, 0), "{r}");
    assert!(r.broker.as_ref().unwrap().round_trips > 100, "{r}");
    let msgs = b
        .until("/api/devices?kind=lock", |v| {
            v.as_array().is_some_and(|a| a.len() == 10)
        })
        .await;
    assert_eq!(msgs.as_array().unwrap().len(), 10);
}

/// With the broker's logins on (the default), the tools log in: a type credential for every
/// virtual device, per-device lines from a credentials file; a wrong password stops them
/// with an error naming the device instead of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_log_in_with_type_and_device_credentials() {
    use clap::Parser as _;
    use reqwest::Method;
    let b = crate::common::Bench::start_with(crate::common::Broker::Embedded, |s| {
        s.mqtt = gatehouse::gateway::mqtt::MqttSettings::Embedded {
            listen: "127.0.0.1:0".into(),
            auth: gatehouse::gateway::access::MqttAuth::Devices,
        };
    })
    .await;
    let mqtt = format!("127.0.0.1:{}", b.mqtt_port);
    let (s, fleet) = b
        .server
        .send(
            Method::POST,
            "/api/types/lock/credentials",
            Some(serde_json::json!({})),
        )
        .await;
    assert_eq!(s, 201, "{fleet}");
    let (fleet_user, fleet_pw) = (
        fleet["username"].as_str().unwrap(),
        fleet["password"].as_str().unwrap(),
    );
    // One device with its own credential, from a file; the others with the type's.
    let (s, own) = b
        .server
        .send(
            Method::POST,
            "/api/devices/lock/5ca1c0000001/credentials",
            Some(serde_json::json!({})),
        )
        .await;
    assert_eq!(s, 201, "{own}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials.txt");
    std::fs::write(
        &file,
        format!(
            "# device username password\n5ca1c0000001 {} {}\n",
            own["username"].as_str().unwrap(),
            own["password"].as_str().unwrap()
        ),
    )
    .unwrap();
    let sim_args = |password: &str| {
        SimArgs::try_parse_from([
            "sim",
            "--mqtt",
            &mqtt,
            "--devices",
            "5",
            "--types",
            "lock",
            "--id-prefix",
            "5ca1c0",
            "--username",
            fleet_user,
            "--password",
            password,
            "--credentials",
            file.to_str().unwrap(),
        ])
        .unwrap()
        .a
    };
    let sim = gatehouse_tools::simulate_skaben::Simulation::start(&sim_args(fleet_pw))
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), sim.all_connected())
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let r = sim.stop().await.unwrap();
    assert_eq!((r.in_sync, r.differs), (5, 0), "{r}");
    let stats = b.server.get("/api/stats").await.1;
    assert_eq!(stats["mqtt_refused_logins"], 0, "{stats}");
    // A wrong password: refused, and the tool says so.
    let sim = gatehouse_tools::simulate_skaben::Simulation::start(&sim_args("wrong-password"))
        .await
        .unwrap();
    let why = tokio::time::timeout(std::time::Duration::from_secs(10), sim.refused())
        .await
        .expect("the refusal stops the simulation");
    assert!(why.contains("refused the login"), "{why}");
    let err = sim.stop().await.unwrap_err().to_string();
    assert!(err.contains("refused the login"), "{err}");
    // The bench logs in the same way (the broker's reference phase needs its own topics).
    let args = BenchArgs::try_parse_from([
        "bench",
        "--mqtt",
        &mqtt,
        "--devices",
        "5",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--id-prefix",
        "5ca1d0",
        "--username",
        fleet_user,
        "--password",
        fleet_pw,
        "--no-reference",
    ])
    .unwrap()
    .a;
    let r = gatehouse_tools::bench_skaben::measure(&args).await.unwrap();
    let s = r.server.as_ref().unwrap();
    assert!(s.round_trips > 50, "{r}");
    assert_eq!((s.timeouts, s.errors), (0, 0), "{r}");
}
