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
