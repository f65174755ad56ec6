//! The `rockhound` command line. Today: `rockhound serve`, the real HTTP server.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rockhound_engine::server::Server;
use rockhound_engine::{Millis, SyncConfig, UserId};
use rockhound_sim::http::{self, AppState};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

/// Exit code for bad arguments (SPEC §5).
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "rockhound",
    version,
    about = "Deterministic simulation harness for the Rockhound sync engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the sync HTTP API (SPEC §3.5) on a real socket.
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// A development user as NAME:TOKEN; repeat for more users.
        #[arg(long = "user", value_name = "NAME:TOKEN", required = true)]
        users: Vec<String>,
        /// Configuration preset: development, production or offline_heavy.
        #[arg(long, default_value = "production")]
        preset: String,
        /// Override an entity type's conflict strategy, as ENTITY=STRATEGY (e.g.
        /// tag=manual); repeatable.
        #[arg(long = "strategy", value_name = "ENTITY=STRATEGY")]
        strategies: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve {
            addr,
            users,
            preset,
            strategies,
        } => serve(addr, &users, &preset, &strategies),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn parse_users(users: &[String]) -> anyhow::Result<BTreeMap<String, UserId>> {
    let mut tokens = BTreeMap::new();
    for entry in users {
        let Some((name, token)) = entry.split_once(':') else {
            bail!("--user {entry:?} must be NAME:TOKEN");
        };
        rockhound_engine::ids::check_id("user name", name)?;
        if token.is_empty() {
            bail!("--user {entry:?} has an empty token");
        }
        if tokens
            .insert(token.to_owned(), UserId::from(name))
            .is_some()
        {
            bail!("token of --user {entry:?} is already used by another user");
        }
    }
    Ok(tokens)
}

/// The real server's clock: the one place in the workspace that reads the wall clock, since
/// `rockhound serve` is not a simulation.
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> Millis {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Millis(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM. Registration happens here, not on first poll.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("ctrl-c: finishing open requests and stopping"),
            _ = terminate.recv() => tracing::info!("sigterm: finishing open requests and stopping"),
        }
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

fn serve(
    addr: SocketAddr,
    users: &[String],
    preset: &str,
    strategies: &[String],
) -> anyhow::Result<()> {
    let tokens = parse_users(users)?;
    let mut config = SyncConfig::preset(preset).with_context(|| {
        format!("unknown preset {preset:?}; use development, production or offline_heavy")
    })?;
    for entry in strategies {
        let Some((entity, strategy)) = entry.split_once('=') else {
            bail!("--strategy {entry:?} must be ENTITY=STRATEGY");
        };
        config
            .entities
            .set_strategy(entity.parse()?, strategy.parse()?);
    }
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        // Register for Ctrl-C and SIGTERM before announcing the address, so a signal sent
        // as soon as the address is known already stops the server cleanly.
        let shutdown = shutdown_signal()?;
        // Printed on stdout so scripts starting `--addr 127.0.0.1:0` learn the port.
        println!("listening on http://{local}");
        tracing::info!(%local, users = tokens.len(), preset, "rockhound serve started");
        let state = AppState::new(Server::new(config), tokens, Arc::new(wall_clock));
        http::serve(listener, http::router(state), shutdown).await?;
        tracing::info!("rockhound serve stopped");
        Ok(())
    })
}
