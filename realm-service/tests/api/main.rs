//! In-process (`oneshot`) tests of every endpoint: success and each error case.

#[path = "../common/mod.rs"]
mod common;

mod consumers;
mod control_planes;
mod errors;
mod identity;
mod key_check;
mod keys;
mod pagination;
mod races;
mod realms;
