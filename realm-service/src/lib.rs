//! # realm-service
//!
//! The home of centrally-managed API consumers: realms, the consumers in them and their API
//! keys, behind an admin API with the shape of Kong Konnect's Consumers API v1, plus the identity
//! endpoint (`POST /{realmId}/v0/authenticate`) that data planes — the keyrealm filter in Envoy —
//! call to look a key up. The contract is `shared/spec/realm-api.md`; the user reference is
//! `docs/realm-api.md`.
//!
//! It also serves the realm console, a web UI at `/console/` ([`console`]; off with
//! `--no-console`), which is a client of this same API in-process.
//!
//! Storage goes through one seam ([`store`]): SQLite (WAL, `synchronous=FULL`; the embedded
//! default, one process per file) or PostgreSQL (any number of stateless replicas; every write
//! `NOTIFY`s the others). Secrets and tokens are kept only as SHA-256 hashes. The authenticate
//! path reads only and is served from an in-process cache that every committed write invalidates
//! ([`cache`]), on every replica. Operating replicas: `docs/operations.md`.
//!
//! Use it in-process:
//! ```no_run
//! # async fn demo() -> Result<(), realm_service::Error> {
//! let mut config = realm_service::ServiceConfig::new(std::path::PathBuf::from("realm.db"));
//! config.admin_token = Some("an-admin-token-of-at-least-32-characters".into());
//! let service = realm_service::spawn(config).await?;
//! println!("listening on {}", service.local_addr());
//! service.shutdown().await;
//! # Ok(()) }
//! ```
//! or drive [`app`] with `tower::ServiceExt::oneshot` in tests.

pub mod api;
pub mod cache;
pub mod clock;
pub mod console;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod model;
pub mod pagination;
pub mod schema;
pub mod secrets;
pub mod server;
pub mod state;
pub mod store;
pub mod validate;

pub use api::{app, routes};
pub use error::{ApiError, Error};
pub use server::{spawn, RunningService, ServiceConfig};
pub use state::{create_admin_token, revoke_admin_token, AppState};
pub use store::{Database, Store};
