//! The in-process API suite of `tests/api` (the very same modules), on PostgreSQL: one list of
//! tests, two stores. One throwaway cluster for this test binary, a fresh database per test.

#[path = "../common/mod.rs"]
mod common;

const STORE: common::StoreKind = common::StoreKind::Postgres;

#[path = "../api/consumers.rs"]
mod consumers;
#[path = "../api/control_planes.rs"]
mod control_planes;
#[path = "../api/errors.rs"]
mod errors;
#[path = "../api/identity.rs"]
mod identity;
#[path = "../api/key_check.rs"]
mod key_check;
#[path = "../api/keys.rs"]
mod keys;
#[path = "../api/pagination.rs"]
mod pagination;
#[path = "../api/races.rs"]
mod races;
#[path = "../api/realms.rs"]
mod realms;
