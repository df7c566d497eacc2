//! Runs `bench acon` from the command line without the gatehouse binary, e.g. against the
//! in-process reference server:
//!
//! ```text
//! cargo run --release -p gatehouse-tools --example bench_reference -- --reference --conns 100 --seconds 5
//! ```

use clap::Parser;
use gatehouse_tools::bench_acon::{self, BenchAconArgs};

#[derive(Parser)]
#[command(
    about = "Load an ACon server (or the reference server) and report messages/s and latency"
)]
struct Cli {
    #[command(flatten)]
    bench: BenchAconArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    bench_acon::run(Cli::parse().bench).await
}
