//! `simulate acon` against the reference server: the boards run their course and stop.

use std::time::Duration;

use clap::Parser;
use gatehouse_tools::reference;
use gatehouse_tools::simulate_acon::{self, SimulateAconArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    simulate: SimulateAconArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boards_stop_after_count_answers() {
    let listener = reference::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(reference::serve(listener));
    let args = Cli::try_parse_from([
        "simulate",
        "--addr",
        &addr,
        "--count",
        "3",
        "--interval",
        "0.05",
        "--seed",
        "42",
    ])
    .unwrap()
    .simulate;
    // Only a guard against hanging the test suite, not a timing assertion.
    let finished = tokio::time::timeout(Duration::from_secs(60), simulate_acon::run(args)).await;
    finished.expect("simulate did not finish").unwrap();
}
