//! The WASI preview1 imports a wasip1 proxy-wasm module needs: `fd_write` into the log,
//! `environ_*` from `vm_config.environment_variables`, clocks, random, `proc_exit`; the rest
//! answer `ENOSYS`/`EBADF` (no file system, no arguments).

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::wasm::hostcalls::CountedLinker;
use wasmtime::{Caller, Linker};

use super::{read_bytes, write_bytes, write_u32, write_u64, AbiError, AbiResult};
use crate::wasm::HostState;

const MODULE: &str = "wasi_snapshot_preview1";
const ESUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;
const ENOSYS: i32 = 52;
/// The most one `fd_write` copies out of guest memory (and logs).
pub const MAX_WRITE: usize = 1 << 20;

fn errno(result: AbiResult<()>) -> wasmtime::Result<i32> {
    match result {
        Ok(()) => Ok(ESUCCESS),
        Err(AbiError::Status(_)) => Ok(EFAULT),
        Err(AbiError::Trap(e)) => Err(e),
    }
}

fn monotonic_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// `KEY=VALUE\0` strings of the instance's environment.
fn environ(state: &HostState) -> Vec<Vec<u8>> {
    state
        .plugin
        .env
        .iter()
        .map(|(k, v)| {
            let mut s = format!("{k}={v}").into_bytes();
            s.push(0);
            s
        })
        .collect()
}

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.counted(
        MODULE,
        "fd_write",
        |mut caller: Caller<'_, HostState>, fd: i32, iovs: i32, iovs_len: i32, ret: i32| {
            if fd != 1 && fd != 2 {
                return Ok(EBADF);
            }
            errno((|| -> AbiResult<()> {
                let count = usize::try_from(iovs_len).unwrap_or(0).min(1024);
                let table = read_bytes(&mut caller, iovs, (count * 8) as i32)?;
                // Every iovec is checked, but at most MAX_WRITE bytes are copied: iovecs may all
                // point at the same large region (1024 x the guest's memory otherwise).
                let mut out = Vec::new();
                let mut written: u64 = 0;
                for iov in table.chunks_exact(8) {
                    let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                    let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                    super::check_range(&mut caller, ptr as i32, len as usize)?;
                    written += u64::from(len);
                    let take = len.min((MAX_WRITE - out.len()) as u32);
                    out.extend(read_bytes(&mut caller, ptr as i32, take as i32)?);
                }
                let text = String::from_utf8_lossy(&out);
                let plugin = caller.data().plugin.log_name().to_string();
                let max = caller.data().plugin.limits.log_line_bytes;
                let line = crate::wasm::cut_line(text.trim_end_matches('\n'), max);
                let line = line.as_ref();
                if !line.is_empty() {
                    caller.data_mut().guest_log(if fd == 1 { 2 } else { 4 }, line);
                    if fd == 1 {
                        tracing::info!(target: "wasm", plugin = %plugin, stream = "stdout", "{line}");
                    } else {
                        tracing::warn!(target: "wasm", plugin = %plugin, stream = "stderr", "{line}");
                    }
                }
                write_u32(&mut caller, ret, u32::try_from(written).unwrap_or(u32::MAX))
            })())
        },
    )?;
    linker.counted(
        MODULE,
        "environ_sizes_get",
        |mut caller: Caller<'_, HostState>, count_ptr: i32, size_ptr: i32| {
            let env = environ(caller.data());
            let size: usize = env.iter().map(Vec::len).sum();
            errno((|| {
                write_u32(&mut caller, count_ptr, env.len() as u32)?;
                write_u32(&mut caller, size_ptr, size as u32)
            })())
        },
    )?;
    linker.counted(
        MODULE,
        "environ_get",
        |mut caller: Caller<'_, HostState>, environ_ptr: i32, buf_ptr: i32| {
            let env = environ(caller.data());
            errno((|| {
                let mut offset = buf_ptr as u32;
                for (i, entry) in env.iter().enumerate() {
                    write_u32(
                        &mut caller,
                        environ_ptr.wrapping_add((i * 4) as i32),
                        offset,
                    )?;
                    write_bytes(&mut caller, offset as i32, entry)?;
                    offset = offset.wrapping_add(entry.len() as u32);
                }
                Ok(())
            })())
        },
    )?;
    linker.counted(
        MODULE,
        "args_sizes_get",
        |mut caller: Caller<'_, HostState>, count_ptr: i32, size_ptr: i32| {
            errno((|| {
                write_u32(&mut caller, count_ptr, 0)?;
                write_u32(&mut caller, size_ptr, 0)
            })())
        },
    )?;
    linker.counted(
        MODULE,
        "args_get",
        |_c: Caller<'_, HostState>, _a: i32, _b: i32| Ok(ESUCCESS),
    )?;
    linker.counted(
        MODULE,
        "clock_time_get",
        |mut caller: Caller<'_, HostState>, id: i32, _precision: i64, ret: i32| {
            let nanos = match id {
                0 => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos() as u64,
                1..=3 => monotonic_nanos(),
                _ => return Ok(EINVAL),
            };
            errno(write_u64(&mut caller, ret, nanos))
        },
    )?;
    linker.counted(
        MODULE,
        "clock_res_get",
        |mut caller: Caller<'_, HostState>, _id: i32, ret: i32| {
            errno(write_u64(&mut caller, ret, 1_000))
        },
    )?;
    linker.counted(
        MODULE,
        "random_get",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| {
            let len = len as u32 as usize;
            if len > 1 << 20 {
                return Ok(EINVAL);
            }
            let mut buf = vec![0u8; len];
            if getrandom::fill(&mut buf).is_err() {
                return Ok(ENOSYS);
            }
            errno(write_bytes(&mut caller, ptr, &buf))
        },
    )?;
    linker.counted(
        MODULE,
        "proc_exit",
        |_caller: Caller<'_, HostState>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "the module called proc_exit({code})"
            )))
        },
    )?;
    linker.counted(MODULE, "sched_yield", |_c: Caller<'_, HostState>| {
        Ok(ESUCCESS)
    })?;
    linker.counted(MODULE, "fd_close", |_c: Caller<'_, HostState>, _fd: i32| {
        Ok(EBADF)
    })?;
    linker.counted(
        MODULE,
        "fd_fdstat_get",
        |_c: Caller<'_, HostState>, _fd: i32, _r: i32| Ok(EBADF),
    )?;
    linker.counted(
        MODULE,
        "fd_filestat_get",
        |_c: Caller<'_, HostState>, _fd: i32, _r: i32| Ok(EBADF),
    )?;
    linker.counted(
        MODULE,
        "fd_prestat_get",
        |_c: Caller<'_, HostState>, _fd: i32, _r: i32| Ok(EBADF),
    )?;
    linker.counted(
        MODULE,
        "fd_prestat_dir_name",
        |_c: Caller<'_, HostState>, _fd: i32, _p: i32, _l: i32| Ok(EBADF),
    )?;
    linker.counted(
        MODULE,
        "fd_read",
        |_c: Caller<'_, HostState>, _fd: i32, _i: i32, _l: i32, _r: i32| Ok(EBADF),
    )?;
    linker.counted(
        MODULE,
        "fd_seek",
        |_c: Caller<'_, HostState>, _fd: i32, _o: i64, _w: i32, _r: i32| Ok(EBADF),
    )?;
    linker.counted(
        MODULE,
        "path_open",
        |_c: Caller<'_, HostState>,
         _fd: i32,
         _df: i32,
         _p: i32,
         _pl: i32,
         _of: i32,
         _rb: i64,
         _ri: i64,
         _ff: i32,
         _r: i32| Ok(ENOSYS),
    )?;
    linker.counted(
        MODULE,
        "poll_oneoff",
        |_c: Caller<'_, HostState>, _i: i32, _o: i32, _n: i32, _r: i32| Ok(ENOSYS),
    )?;
    Ok(())
}
