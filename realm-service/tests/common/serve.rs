//! The built `realm-service` binary as a process of a test: `serve` on a free loopback port, its
//! log kept, killed with SIGKILL when dropped.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::HttpClient;

/// The built binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_realm-service");

/// `realm-service serve` on a free loopback port over `database` (a SQLite file or a PostgreSQL
/// URL), with `REALM_ADMIN_TOKEN` set to `admin_token` (when given) and the test's own `REALM_*`
/// settings removed; stderr is piped.
pub fn serve_command(database: impl AsRef<OsStr>, admin_token: Option<&str>) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--database"])
        .arg(database)
        .env_remove("REALM_LISTEN")
        .env_remove("REALM_DATABASE")
        .env_remove("REALM_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(token) = admin_token {
        command.env("REALM_ADMIN_TOKEN", token);
    }
    command
}

/// `realm-service token <action> --name <name> --database <database>` (`create` prints the new
/// token), with the test's own `REALM_DATABASE` removed.
pub fn token_command(action: &str, name: &str, database: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["token", action, "--name", name, "--database"])
        .arg(database)
        .env_remove("REALM_DATABASE");
    command
}

/// A serving `realm-service` process; killed with SIGKILL when dropped.
pub struct ServiceProcess {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl ServiceProcess {
    /// [`serve_command`] with `REALM_LOG=info`.
    pub fn serve(database: impl AsRef<OsStr>, admin_token: Option<&str>) -> ServiceProcess {
        ServiceProcess::start(serve_command(database, admin_token), "info")
    }

    /// Starts `command` with `REALM_LOG=<log_filter>`, keeping everything it logs, and waits (at
    /// most 30 s) for the address it listens on.
    pub fn start(mut command: Command, log_filter: &str) -> ServiceProcess {
        let mut child = command
            .env("REALM_LOG", log_filter)
            .spawn()
            .expect("start realm-service");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(String::new()));
        let kept = log.clone();
        // Reads the log (sending the listening address when it shows), keeps all of it.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                kept.push_str(&line);
                kept.push('\n');
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr.parse().expect("listening address"),
            Err(_) => {
                let _ = child.kill();
                panic!("realm-service did not print 'listening on' within 30 s");
            }
        };
        ServiceProcess {
            child,
            addr,
            log,
            reader: Some(reader),
        }
    }

    pub fn client(&self) -> HttpClient {
        HttpClient::new(self.addr)
    }

    /// SIGKILL: no shutdown code runs, nothing is flushed by the process.
    pub fn kill_9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait");
    }

    /// Stops the process and returns everything it logged.
    pub fn stop_and_read_log(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.clone()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
