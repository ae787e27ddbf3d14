//! `realm-service`: serve the realm API, or mint an admin token.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use realm_service::{create_admin_token, revoke_admin_token, spawn, Database, ServiceConfig};

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
        /// SQLite database file (created and migrated on start; one process serves a file), or
        /// a PostgreSQL URL `postgres://USER[:PASSWORD]@HOST:PORT/DBNAME` for any number of
        /// replicas on one database.
        #[arg(long, env = "REALM_DATABASE", default_value = "./realm.db")]
        database: String,
        /// An admin token (at least 32 characters) to accept (prefer the environment variable: command lines are visible
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
        /// SQLite database file or PostgreSQL URL.
        #[arg(long, env = "REALM_DATABASE", default_value = "./realm.db")]
        database: String,
    },
    /// Revoke every admin token minted with this name (every replica refuses it within a second).
    Revoke {
        /// The name given to `token create`.
        #[arg(long)]
        name: String,
        /// SQLite database file or PostgreSQL URL.
        #[arg(long, env = "REALM_DATABASE", default_value = "./realm.db")]
        database: String,
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
            database: Database::parse(&database),
            admin_token: admin_token.filter(|t| !t.is_empty()),
            console: !no_console,
        }),
        Command::Token {
            command: TokenCommand::Create { name, database },
        } => run(async move {
            match create_admin_token(&Database::parse(&database), &name).await {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot create the admin token");
                    ExitCode::FAILURE
                }
            }
        }),
        Command::Token {
            command: TokenCommand::Revoke { name, database },
        } => run(async move {
            match revoke_admin_token(&Database::parse(&database), &name).await {
                Ok(0) => {
                    tracing::error!(name, "no admin token has this name");
                    ExitCode::FAILURE
                }
                Ok(n) => {
                    println!("revoked {n} admin token(s) named {name}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot revoke the admin token");
                    ExitCode::FAILURE
                }
            }
        }),
    }
}

/// Runs `task` on a new multi-threaded runtime.
fn run(task: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(task),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: ServiceConfig) -> ExitCode {
    run(async move {
        let database = config.database.describe();
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
