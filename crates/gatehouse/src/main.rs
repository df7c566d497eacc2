//! The `gatehouse` binary: parses the command line and runs the chosen command.

use std::process::ExitCode;

use gatehouse::cli::{self, BenchCommand, Command, MqttCommand, SimulateCommand};
use gatehouse::rules_cli;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os().collect()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gatehouse: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Command::Openapi = cli.command {
        return openapi();
    }
    let filter = match &cli.command {
        Command::Serve(a) => a.log.clone(),
        _ => "warn".to_string(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Thousands of boards each hold a socket: the soft open-files limit goes up to the hard
    // one, and `serve` budgets its connections below it (`gateway::budget`).
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "cannot raise the open-files limit (soft to hard); connection caps are budgeted below the current one");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gatehouse: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Simulate(SimulateCommand::Acon(args)) => {
                gatehouse_tools::simulate_acon::run(args).await
            }
            Command::Bench(BenchCommand::Acon(args)) => {
                gatehouse_tools::bench_acon::run(args).await
            }
            Command::Simulate(SimulateCommand::Skaben(args)) => {
                gatehouse_tools::simulate_skaben::run(args).await
            }
            Command::Bench(BenchCommand::Skaben(args)) => {
                gatehouse_tools::bench_skaben::run(args).await
            }
            Command::Bench(BenchCommand::Pages(args)) => {
                gatehouse_tools::bench_console::run_pages(args).await
            }
            Command::Bench(BenchCommand::Stream(args)) => {
                gatehouse_tools::bench_console::run_stream(args).await
            }
            Command::Mqtt(MqttCommand::Acl(args)) => mqtt_acl(&args),
            Command::Backup(args) => backup(&args),
            Command::Rules(cmd) => rules_cli::run(cmd).await,
            Command::User(cmd) => gatehouse::user_cli::run(cmd).await,
            // Printed above, before the runtime.
            Command::Openapi => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: cli::ServeArgs) -> anyhow::Result<()> {
    // Listen before anything is served: a SIGTERM that comes right after the first answer
    // must stop the server gracefully, not kill it.
    let signals = Signals::listen();
    let running = gatehouse::server::start(args.settings()).await?;
    signals.wait().await;
    running.shutdown().await
}

/// `gatehouse mqtt acl`: the Mosquitto ACL for the credentials stored in a data directory.
fn mqtt_acl(args: &cli::AclArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let db = args.data_dir.join("gatehouse.db");
    if !db.exists() {
        anyhow::bail!(
            "no database at {} (--data-dir): start gatehouse there once first",
            db.display()
        );
    }
    let mut creds = Vec::new();
    for r in gatehouse::store::sqlite::credentials_at(&db)
        .with_context(|| format!("reading the credentials in {}", db.display()))?
    {
        creds.push(gatehouse::core::access::Credential::load(r)?);
    }
    print!(
        "{}",
        gatehouse::core::access::mosquitto_acl(&args.server_user, &creds)
    );
    Ok(())
}

/// `gatehouse backup FILE`: a consistent copy of the database, the server running or not.
fn backup(args: &cli::BackupArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let db = args.data_dir.join("gatehouse.db");
    let copied = gatehouse::store::sqlite::backup(&db, &args.file, args.force)
        .with_context(|| format!("backing up {} to {}", db.display(), args.file.display()))?;
    println!(
        "copied {} to {}: {} bytes; {} devices, {} messages (newest {}), {} events, {} credentials, {} device types",
        db.display(),
        args.file.display(),
        copied.bytes,
        copied.devices,
        copied.messages,
        copied
            .newest_message_at
            .map_or("none".to_string(), gatehouse::clock::rfc3339),
        copied.events,
        copied.credentials,
        copied.types,
    );
    Ok(())
}

/// SIGTERM and SIGINT, listened for from the moment this is made.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn listen() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Until one of them comes.
    async fn wait(self) {
        #[cfg(unix)]
        {
            let (mut term, mut int) = (self.term, self.int);
            let term = async {
                match term.as_mut() {
                    Some(t) => drop(t.recv().await),
                    None => std::future::pending().await,
                }
            };
            let int = async {
                match int.as_mut() {
                    Some(i) => drop(i.recv().await),
                    None => drop(tokio::signal::ctrl_c().await),
                }
            };
            tokio::select! {
                () = int => tracing::info!("SIGINT received"),
                () = term => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `gatehouse openapi`: the document, pretty-printed with a trailing newline (as the
/// repository's `openapi.json` is kept).
fn openapi() -> ExitCode {
    match gatehouse::http::openapi().to_pretty_json() {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gatehouse: cannot render the OpenAPI document: {e}");
            ExitCode::FAILURE
        }
    }
}
