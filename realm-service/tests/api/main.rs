//! In-process (`oneshot`) tests of every endpoint: success and each error case, on SQLite.

#[path = "../common/mod.rs"]
mod common;

/// This crate runs the suite on SQLite; `tests/api_postgres` runs the same modules on PostgreSQL.
const STORE: common::StoreKind = common::StoreKind::Sqlite;

mod consumers;
mod control_planes;
mod errors;
mod identity;
mod key_check;
mod keys;
mod pagination;
mod races;
mod realms;
