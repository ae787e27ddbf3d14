//! `echo-upstream --listen 127.0.0.1:8080`: an HTTP server that answers every request with 200 and
//! a JSON description of what it received (like httpbin's `/anything`).

use std::net::SocketAddr;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Answers any request with 200 and a JSON echo of it (like httpbin's /anything)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "ECHO_LISTEN")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {}: {err}", args.listen))?;
    eprintln!("echo-upstream listening on {}", listener.local_addr()?);
    keyrealm_tests::echo::serve(listener).await?;
    Ok(())
}
