//! Time: `proxy_get_current_time_nanoseconds` and the tick timer of the root context.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::wasm::hostcalls::CountedLinker;
use wasmtime::{Caller, Linker};

use super::{finish, write_u64};
use crate::wasm::HostState;

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.counted(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut caller: Caller<'_, HostState>, ret: i32| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            finish(write_u64(&mut caller, ret, now.as_nanos() as u64))
        },
    )?;
    linker.counted(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut caller: Caller<'_, HostState>, period: i32| {
            let state = caller.data_mut();
            state.tick_period = Duration::from_millis(u64::from(period as u32));
            state.tick_changed = true;
            Ok(0i32)
        },
    )?;
    Ok(())
}
