//! The `rockhound` command line (README.md, docs/scenarios.md): the simulation commands `run`, `check`,
//! `explore`, `shrink`, `export` and `replay` (in [`commands`]), and `serve`, the real HTTP
//! server.

mod commands;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rockhound_engine::server::tables::ServerStore;
use rockhound_engine::server::{AnyStore, Server};
use rockhound_engine::{Millis, SyncConfig, UserId};
use rockhound_io::http::serve::{ServeLimits, Stopped, serve_tcp};
use rockhound_io::http::{self, AppState};
use rockhound_io::postgres_store::PostgresStore;
use rockhound_io::sqlite_store::SqliteStore;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use commands::{CheckArgs, Exit, ExploreArgs, RunArgs};

#[derive(Parser)]
#[command(
    name = "rockhound",
    version,
    about = "Deterministic simulation harness for the Rockhound sync engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Check every simulated device's coordinator invariants after every step it takes (a
    /// broken one stops the run); slower, and the trace is the same.
    #[arg(long, global = true)]
    paranoid: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run one or more scenario files, each with its own seed, `--seed` or `--seeds`.
    Run(RunArgs),
    /// Run the whole scenario suite (`scenarios/` and `scenarios/negative/`): the main job.
    Check(CheckArgs),
    /// Run the scenario suite and write its reports (the committed baseline is
    /// `rockhound report --out reports`).
    Report {
        /// The suite's folder.
        #[arg(long, default_value = "scenarios")]
        dir: PathBuf,
        /// Where to write the pages.
        #[arg(long, default_value = "reports")]
        out: PathBuf,
        /// Runs at once.
        #[arg(long, default_value_t = commands::default_jobs(), value_parser = commands::parse_jobs)]
        jobs: usize,
    },
    /// Design comparisons: each file's variants on the same seeds, side by side.
    Compare {
        /// Comparison files (`scenarios/compare/*.toml`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Override the files' seed ranges (inclusive A..B).
        #[arg(long, value_parser = commands::parse_seeds)]
        seeds: Option<RangeInclusive<u64>>,
        /// Where to write the pages.
        #[arg(long, default_value = "reports/compare")]
        out: PathBuf,
    },
    /// Swarm testing: one random scenario per seed; failing seeds are saved as files.
    Explore(ExploreArgs),
    /// Combine the results of `explore --shard K/N --format json` runs (each shard's folder:
    /// its `results.jsonl` and saved scenario files) into one summary, one coverage table
    /// and one folder of failing seeds, as one unsharded `explore` would report them.
    Merge(commands::MergeArgs),
    /// Delta-debug a failing run into a minimal scenario that fails the same checker.
    Shrink {
        /// The failing scenario; without it, the swarm scenario of `--seed`.
        file: Option<PathBuf>,
        /// The failing seed (default: the file's own).
        #[arg(long)]
        seed: Option<u64>,
        /// Where to write the shrunk scenario.
        #[arg(long, default_value = "shrunk.toml")]
        out: PathBuf,
    },
    /// Write any seeded run as an editable scenario file that replays to the same digest.
    Export {
        /// The scenario; without it, the swarm scenario of `--seed`.
        file: Option<PathBuf>,
        /// The seed (default: the file's own).
        #[arg(long)]
        seed: Option<u64>,
        /// Where to write the scenario.
        #[arg(long, default_value = "exported.toml")]
        out: PathBuf,
    },
    /// Two traces side by side (two seeds, or one seed on two builds): the first event where
    /// they part, then the events per kind and the ops' final statuses that differ. Exit 0
    /// when they are the same, 1 when they differ.
    Diff {
        /// The first trace (JSON Lines, from `run --trace`).
        a: PathBuf,
        /// The second trace.
        b: PathBuf,
    },
    /// The life of one op, told in order: enqueue, each batch it rode in, each failure and
    /// the wait it drew, the server's decision and why, the answer its device took, the
    /// pulls that carried it to the other devices, where it ended. FILE is a trace (`.jsonl`,
    /// from `run --trace`) or a scenario, which is run first; without `--op`, the ops its
    /// violations name. Exit 0 told, 1 the run broke a rule (its ops told), 2 unreadable or
    /// no such op
    Explain {
        /// A trace (`.jsonl`) or a scenario file.
        file: PathBuf,
        /// The seed of a scenario (default: the file's own, else 0).
        #[arg(long)]
        seed: Option<u64>,
        /// The op (its id, as the trace writes it).
        #[arg(long)]
        op: Option<String>,
    },
    /// Run a scenario file with its recorded seed and check its recorded digest.
    Replay {
        /// The scenario file (from `export`, `explore` or `shrink`).
        file: PathBuf,
        /// Override the recorded seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Write the trace as JSON Lines to this file.
        #[arg(long)]
        trace: Option<PathBuf>,
    },
    /// Serve the sync HTTP API (docs/api.md) on a real socket.
    Serve(ServeArgs),
}

/// The options of `rockhound serve`.
#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// A development user as NAME:TOKEN; repeat for more users. Tokens on the command line
    /// are visible to other local users: prefer --users-file or ROCKHOUND_USERS.
    #[arg(long = "user", value_name = "NAME:TOKEN")]
    users: Vec<String>,
    /// A file of users, one NAME:TOKEN per line (blank lines and # comments skipped).
    #[arg(long, value_name = "PATH")]
    users_file: Option<PathBuf>,
    /// Configuration preset: development, production or offline_heavy.
    #[arg(long, default_value = "production")]
    preset: String,
    /// Override an entity type's conflict strategy, as ENTITY=STRATEGY (e.g.
    /// tag=manual); repeatable.
    #[arg(long = "strategy", value_name = "ENTITY=STRATEGY")]
    strategies: Vec<String>,
    /// Worker threads serving requests (default: one per core).
    #[arg(long, default_value_t = default_threads(), value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
    /// The most connections open at once; more are answered 503.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    connections_max: u32,
    /// Milliseconds a client may take to send a request's headers.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    header_timeout_ms: u64,
    /// Milliseconds a client may take to send a request's body.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    body_timeout_ms: u64,
    /// Milliseconds a connection may stay silent before it is closed.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    idle_timeout_ms: u64,
    /// The database: a SQLite file (created if missing), a PostgreSQL URL
    /// (postgres://user:password@host:port/database, as an ordinary role), or :memory: to
    /// keep everything in memory and lose it at exit (docs/database.md).
    #[arg(long, value_name = "PATH|URL", default_value = "rockhound.db", value_parser = parse_db)]
    db: Database,
    /// Seconds between two cleanups (expired idempotency keys, old history, resolved
    /// conflicts, batches and metrics; docs/database.md).
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    cleanup_interval_s: u64,
    /// Milliseconds open requests may take to finish after SIGINT or SIGTERM.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    shutdown_grace_ms: u64,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(Exit::Usage.code())
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // The server logs its requests; the simulation commands print their own report and
    // log only warnings unless RUST_LOG says otherwise.
    let default_filter = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if cli.paranoid {
        rockhound_sim::paranoid::enable();
    }
    let result = match cli.command {
        Command::Run(args) => return ExitCode::from(commands::run(&args)),
        Command::Check(args) => return ExitCode::from(commands::check(&args)),
        Command::Report { dir, out, jobs } => {
            let args = CheckArgs {
                dir,
                seed: None,
                jobs,
                slow: false,
                report: Some(out),
                coverage: None,
                format: commands::Format::Text,
                junit: None,
            };
            return ExitCode::from(commands::check(&args));
        }
        Command::Compare { files, seeds, out } => {
            return ExitCode::from(commands::compare(&files, seeds, &out));
        }
        Command::Explore(args) => return ExitCode::from(commands::explore(&args)),
        Command::Merge(args) => return ExitCode::from(commands::merge(&args)),
        Command::Shrink { file, seed, out } => {
            return ExitCode::from(commands::shrink(file.as_deref(), seed, &out));
        }
        Command::Export { file, seed, out } => {
            return ExitCode::from(commands::export(file.as_deref(), seed, &out));
        }
        Command::Diff { a, b } => return ExitCode::from(commands::diff(&a, &b)),
        Command::Explain { file, seed, op } => {
            return ExitCode::from(commands::explain(&file, seed, op.as_deref()));
        }
        Command::Replay { file, seed, trace } => {
            return ExitCode::from(commands::replay(&file, seed, trace.as_deref()));
        }
        Command::Serve(args) => serve(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(Exit::Usage.code())
        }
    }
}

/// One serving thread per core by default.
fn default_threads() -> u16 {
    u16::try_from(commands::default_jobs())
        .unwrap_or(u16::MAX)
        .clamp(1, 1024)
}

/// The users of `serve`: `--user` entries, then the lines of `--users-file`, then the
/// lines of the `ROCKHOUND_USERS` environment variable.
fn load_users(args: &ServeArgs) -> anyhow::Result<BTreeMap<String, UserId>> {
    let mut entries = args.users.clone();
    if let Some(path) = &args.users_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --users-file {}", path.display()))?;
        entries.extend(user_lines(&text));
    }
    if let Ok(text) = std::env::var("ROCKHOUND_USERS") {
        entries.extend(user_lines(&text));
    }
    if entries.is_empty() {
        bail!("no users: give --user NAME:TOKEN, --users-file PATH or ROCKHOUND_USERS");
    }
    parse_users(&entries)
}

/// The NAME:TOKEN entries of a users file: one per line, blank lines and `#` comments
/// skipped.
fn user_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn parse_users(users: &[String]) -> anyhow::Result<BTreeMap<String, UserId>> {
    let mut tokens = BTreeMap::new();
    for entry in users {
        let Some((name, token)) = entry.split_once(':') else {
            bail!("user entry {:?} must be NAME:TOKEN", redact(entry));
        };
        rockhound_engine::ids::check_id("user name", name)?;
        if token.is_empty() || token.contains(char::is_whitespace) {
            bail!("user {name:?} needs a token without spaces");
        }
        if tokens
            .insert(token.to_owned(), UserId::from(name))
            .is_some()
        {
            bail!("the token of user {name:?} is already used by another user");
        }
    }
    Ok(tokens)
}

/// An entry with everything after its first colon hidden, for error messages.
fn redact(entry: &str) -> String {
    match entry.split_once(':') {
        Some((name, _)) => format!("{name}:…"),
        None => format!("{}…", entry.chars().take(2).collect::<String>()),
    }
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

/// Where `serve` keeps its tables.
#[derive(Clone, Debug)]
enum Database {
    Memory,
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
}

/// `--db`: a path, a PostgreSQL URL or `:memory:`; an empty one (which SQLite would take
/// for a throwaway temporary file) is refused.
fn parse_db(value: &str) -> Result<Database, String> {
    if value.is_empty() {
        return Err("needs a file path, a postgres:// URL, or :memory: to keep nothing".to_owned());
    }
    if value == ":memory:" {
        return Ok(Database::Memory);
    }
    if value.starts_with("postgres://") || value.starts_with("postgresql://") {
        return Ok(Database::Postgres(value.to_owned()));
    }
    Ok(Database::Sqlite(PathBuf::from(value)))
}

/// The server over the database `--db` names.
fn open_server(config: SyncConfig, db: &Database) -> anyhow::Result<Server<AnyStore>> {
    let store: AnyStore = match db {
        Database::Memory => {
            tracing::info!("database: in memory (nothing survives a restart)");
            return Ok(Server::new(config).into_any());
        }
        Database::Sqlite(path) => {
            let store = SqliteStore::open(path)
                .map_err(|e| anyhow::anyhow!("cannot open the database: {}", e.0))?
                .pipelined();
            tracing::info!(db = %path.display(), "database: SQLite");
            Box::new(store)
        }
        Database::Postgres(url) => {
            let store = PostgresStore::open(url, wall_clock())
                .map_err(|e| anyhow::anyhow!("cannot open the database: {}", e.0))?;
            // The URL may hold a password: only the host part is logged.
            let host = url.rsplit_once('@').map_or("", |(_, host)| host);
            tracing::info!(db = host, "database: PostgreSQL");
            Box::new(store)
        }
    };
    let tables = store.tables();
    tracing::info!(
        entities = tables.entities.len(),
        commits = tables.seq,
        "tables read back"
    );
    Ok(Server::with_store(config, store))
}

/// Runs the server's cleanup every `every` (the first one a full interval after start).
async fn clean_up_every(server: Arc<parking_lot::Mutex<Server<AnyStore>>>, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticks.tick().await;
        match server.lock().cleanup(wall_clock()) {
            Ok(report) => tracing::info!(?report, "cleanup"),
            Err(error) => tracing::warn!(%error, "cleanup failed; nothing was removed"),
        }
    }
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let tokens = load_users(args)?;
    let preset = &args.preset;
    let mut config = SyncConfig::preset(preset).with_context(|| {
        format!("unknown preset {preset:?}; use development, production or offline_heavy")
    })?;
    for entry in &args.strategies {
        let Some((entity, strategy)) = entry.split_once('=') else {
            bail!("--strategy {entry:?} must be ENTITY=STRATEGY");
        };
        config
            .entities
            .set_strategy(entity.parse()?, strategy.parse()?);
    }
    config.validate()?;
    let limits = ServeLimits {
        connections_max: args.connections_max as usize,
        header_read_timeout: Duration::from_millis(args.header_timeout_ms),
        body_read_timeout: Duration::from_millis(args.body_timeout_ms),
        idle_timeout: Duration::from_millis(args.idle_timeout_ms),
        shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
    };
    let server = open_server(config, &args.db)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.threads))
        .enable_all()
        .build()?;
    let addr = args.addr;
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
        tracing::info!(%local, users = tokens.len(), preset, threads = args.threads, "rockhound serve started");
        let mut state = AppState::new(server, tokens, Arc::new(wall_clock));
        tokio::spawn(clean_up_every(
            state.server.clone(),
            Duration::from_secs(args.cleanup_interval_s),
        ));
        state.body_read_timeout = Some(limits.body_read_timeout);
        state.yield_between_ops = true;
        let stopped = serve_tcp(listener, http::router(state), limits, shutdown).await?;
        match stopped {
            Stopped::Drained => tracing::info!("rockhound serve stopped"),
            Stopped::GraceExpired => tracing::warn!(
                grace_ms = args.shutdown_grace_ms,
                "rockhound serve stopped with requests still open after the grace period"
            ),
        }
        Ok::<(), anyhow::Error>(())
    })?;
    // Worker threads may still hold dropped connections' tasks; do not wait for them.
    runtime.shutdown_background();
    Ok(())
}
