//! Linked but unsupported: gRPC calls and streams, foreign functions. Each answers a status the
//! Rust SDK accepts as an error, so a guest can handle it instead of panicking.

use wasmtime::{Caller, Linker};

use super::{finish, write_u32};
use crate::wasm::{HostState, Status};

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |_c: Caller<'_, HostState>,
         _a: i32,
         _b: i32,
         _c2: i32,
         _d: i32,
         _e: i32,
         _f: i32,
         _g: i32,
         _h: i32,
         _i: i32,
         _j: i32,
         _timeout: i32,
         _ret: i32| Ok(Status::InternalFailure as i32),
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |_c: Caller<'_, HostState>,
         _a: i32,
         _b: i32,
         _c2: i32,
         _d: i32,
         _e: i32,
         _f: i32,
         _g: i32,
         _h: i32,
         _ret: i32| { Ok(Status::InternalFailure as i32) },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |_c: Caller<'_, HostState>, _token: i32, _ptr: i32, _len: i32, _end: i32| {
            Ok(Status::NotFound as i32)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_cancel",
        |_c: Caller<'_, HostState>, _token: i32| Ok(Status::NotFound as i32),
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_close",
        |_c: Caller<'_, HostState>, _token: i32| Ok(Status::NotFound as i32),
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut caller: Caller<'_, HostState>, ret_code: i32, ret_ptr: i32, ret_size: i32| {
            finish((|| {
                write_u32(&mut caller, ret_code, 0)?;
                write_u32(&mut caller, ret_ptr, 0)?;
                write_u32(&mut caller, ret_size, 0)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |_c: Caller<'_, HostState>, _n: i32, _ns: i32, _a: i32, _as: i32, _rp: i32, _rs: i32| {
            Ok(Status::NotFound as i32)
        },
    )?;
    Ok(())
}
