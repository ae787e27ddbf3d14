//! Logging: `proxy_log`, `proxy_get_log_level`.

use crate::wasm::hostcalls::CountedLinker;
use wasmtime::{Caller, Linker};

use super::{finish, read_bytes, write_u32, AbiResult};
use crate::wasm::{HostState, Status};

/// `proxy_log`: one guest line at `level`, cut at `log_line_bytes`.
fn proxy_log(
    mut caller: Caller<'_, HostState>,
    level: i32,
    ptr: i32,
    size: i32,
) -> wasmtime::Result<i32> {
    finish((|| -> AbiResult<()> {
        if !(0..=5).contains(&level) {
            return Err(Status::BadArgument.into());
        }
        let bytes = read_bytes(&mut caller, ptr, size)?;
        let text = String::from_utf8_lossy(&bytes);
        let message =
            crate::wasm::cut_line(&text, caller.data().plugin.limits.log_line_bytes).into_owned();
        let plugin = caller.data().plugin.log_name().to_string();
        if level as u32 >= caller.data().plugin.log_level {
            caller.data_mut().guest_log(level as u32, &message);
        }
        match level {
            0 => tracing::trace!(target: "wasm", plugin = %plugin, "{message}"),
            1 => tracing::debug!(target: "wasm", plugin = %plugin, "{message}"),
            2 => tracing::info!(target: "wasm", plugin = %plugin, "{message}"),
            3 => tracing::warn!(target: "wasm", plugin = %plugin, "{message}"),
            _ => tracing::error!(target: "wasm", plugin = %plugin, "{message}"),
        }
        Ok(())
    })())
}

/// `proxy_get_log_level`.
fn get_log_level(mut caller: Caller<'_, HostState>, ret: i32) -> wasmtime::Result<i32> {
    let level = caller.data().plugin.log_level;
    finish(write_u32(&mut caller, ret, level))
}

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.counted("env", "proxy_log", proxy_log)?;
    linker.counted("env", "proxy_get_log_level", get_log_level)?;
    Ok(())
}
