//! `realm-service`: serve the realm API, or mint an admin token.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use realm_service::{create_admin_token, spawn, ServiceConfig};

#[derive(Parser)]
#[command(
    name = "realm-service",
    version,
    about = "Realms, consumers and API keys for keyrealm"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the admin and identity API.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "REALM_LISTEN", default_value = "127.0.0.1:8001")]
        listen: SocketAddr,
        /// SQLite database file (created and migrated on start).
        #[arg(long, env = "REALM_DATABASE", default_value = "./realm.db")]
        database: PathBuf,
        /// An admin token to accept (prefer the environment variable: command lines are visible
        /// to other users).
        #[arg(long, env = "REALM_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Do not serve the web console at /console/.
        #[arg(long)]
        no_console: bool,
    },
    /// Admin tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a new admin token and print it (once: only its hash is stored).
    Create {
        /// A name to recognise the token by.
        #[arg(long)]
        name: String,
        /// SQLite database file.
        #[arg(long, env = "REALM_DATABASE", default_value = "./realm.db")]
        database: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REALM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        Command::Serve {
            listen,
            database,
            admin_token,
            no_console,
        } => serve(ServiceConfig {
            listen,
            database,
            admin_token: admin_token.filter(|t| !t.is_empty()),
            console: !no_console,
        }),
        Command::Token {
            command: TokenCommand::Create { name, database },
        } => match create_admin_token(&database, &name) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot create the admin token");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(config: ServiceConfig) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let database = config.database.display().to_string();
        let service = match spawn(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(database, "listening on {}", service.local_addr());
        wait_for_signal().await;
        tracing::info!("shutting down");
        service.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
