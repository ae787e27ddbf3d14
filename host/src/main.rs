//! `keyrealm-host --config envoy.yaml`: serves an envoy.yaml subset with proxy-wasm filters.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// A proxy-wasm host on wasmtime that serves the same envoy.yaml as Envoy.
#[derive(Parser, Debug)]
#[command(name = "keyrealm-host", version)]
struct Cli {
    /// The Envoy configuration file (the subset described in docs/host.md).
    #[arg(short = 'c', long = "config")]
    config: PathBuf,
    /// `serve` (default) or `validate` (check the configuration and the modules, then exit).
    #[arg(long = "mode", default_value = "serve", value_parser = ["serve", "validate"])]
    mode: String,
    /// Worker threads (default: number of cores).
    #[arg(long = "concurrency")]
    concurrency: Option<usize>,
    /// Time budget of one call into a guest, in milliseconds.
    #[arg(long = "call-budget-ms", default_value_t = 1000)]
    call_budget_ms: u64,
    /// Also append the log to this file (like Envoy's --log-path).
    #[arg(long = "log-path")]
    log_path: Option<PathBuf>,
    /// The longest a filter may keep a request paused, in seconds.
    #[arg(long = "pause-limit-s", default_value_t = 60)]
    pause_limit_s: u64,
    /// Memory limit of one instance, in MiB.
    #[arg(long = "memory-limit-mib", default_value_t = 256)]
    memory_limit_mib: usize,
    /// Set any limit by name, e.g. `--limit table_elements=20000` (repeatable; the names and
    /// defaults are in docs/host.md).
    #[arg(long = "limit", value_name = "NAME=VALUE")]
    limits: Vec<String>,
    /// On SIGTERM or SIGINT, how long requests in flight may take to finish, in seconds.
    #[arg(long = "drain-time-s", default_value_t = 30)]
    drain_time_s: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    if cli.mode == "validate" {
        return match keyrealm_host::validate(&cli.config) {
            Ok(()) => {
                println!("configuration '{}' OK", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keyrealm-host: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyrealm-host: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut limits = keyrealm_host::Limits {
            call_budget: std::time::Duration::from_millis(cli.call_budget_ms.max(1)),
            memory_bytes: cli.memory_limit_mib.max(1) << 20,
            pause_limit: std::time::Duration::from_secs(cli.pause_limit_s.max(1)),
            ..Default::default()
        };
        for assignment in &cli.limits {
            if let Err(e) = limits.set(assignment) {
                eprintln!("keyrealm-host: {e}");
                return ExitCode::FAILURE;
            }
        }
        let options = keyrealm_host::HostOptions {
            workers: cli.concurrency,
            limits,
            log_path: cli.log_path.clone(),
            ..Default::default()
        };
        let host = match keyrealm_host::start_with_options(&cli.config, options).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("keyrealm-host: {e}");
                return ExitCode::FAILURE;
            }
        };
        for a in host.listener_addrs() {
            tracing::info!("listening on {a}");
        }
        if let Some(a) = host.admin_addr() {
            tracing::info!("admin on {a}");
        }
        let signal = wait_for_signal().await;
        let drain = std::time::Duration::from_secs(cli.drain_time_s);
        tracing::info!("{signal}: draining (at most {drain:?})");
        host.drain(drain).await;
        tracing::info!("drained; exiting");
        ExitCode::SUCCESS
    })
}

/// Waits for SIGTERM or SIGINT (Ctrl-C) and names it.
async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
