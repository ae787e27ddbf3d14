//! Linked but unsupported: gRPC calls and streams, foreign functions. Each answers a status the
//! Rust SDK accepts as an error, so a guest can handle it instead of panicking.

use crate::wasm::hostcalls::CountedLinker;
use wasmtime::{Caller, Linker};

use super::{finish, write_u32};
use crate::wasm::{HostState, Status};

type Ret = wasmtime::Result<i32>;

/// `proxy_grpc_call`: gRPC is not supported (`InternalFailure`, as Envoy without the cluster).
#[allow(clippy::too_many_arguments)]
fn grpc_call(
    _c: Caller<'_, HostState>,
    _service: i32,
    _service_size: i32,
    _service_name: i32,
    _service_name_size: i32,
    _method: i32,
    _method_size: i32,
    _metadata: i32,
    _metadata_size: i32,
    _message: i32,
    _message_size: i32,
    _timeout: i32,
    _ret_token: i32,
) -> Ret {
    Ok(Status::InternalFailure as i32)
}

/// `proxy_grpc_stream`: not supported (`InternalFailure`).
#[allow(clippy::too_many_arguments)]
fn grpc_stream(
    _c: Caller<'_, HostState>,
    _service: i32,
    _service_size: i32,
    _service_name: i32,
    _service_name_size: i32,
    _method: i32,
    _method_size: i32,
    _metadata: i32,
    _metadata_size: i32,
    _ret_token: i32,
) -> Ret {
    Ok(Status::InternalFailure as i32)
}

/// `proxy_grpc_send`: no such stream (`NotFound`).
fn grpc_send(_c: Caller<'_, HostState>, _token: i32, _ptr: i32, _len: i32, _end: i32) -> Ret {
    Ok(Status::NotFound as i32)
}

/// `proxy_grpc_cancel` and `proxy_grpc_close`: no such call (`NotFound`).
fn grpc_end(_c: Caller<'_, HostState>, _token: i32) -> Ret {
    Ok(Status::NotFound as i32)
}

/// `proxy_get_status`: there is never a gRPC status to report: code 0, empty message.
fn get_status(
    mut caller: Caller<'_, HostState>,
    ret_code: i32,
    ret_ptr: i32,
    ret_size: i32,
) -> Ret {
    finish((|| {
        write_u32(&mut caller, ret_code, 0)?;
        write_u32(&mut caller, ret_ptr, 0)?;
        write_u32(&mut caller, ret_size, 0)
    })())
}

/// `proxy_call_foreign_function`: no foreign functions (`NotFound`).
fn call_foreign_function(
    _c: Caller<'_, HostState>,
    _name: i32,
    _name_size: i32,
    _args: i32,
    _args_size: i32,
    _ret_ptr: i32,
    _ret_size: i32,
) -> Ret {
    Ok(Status::NotFound as i32)
}

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.counted("env", "proxy_grpc_call", grpc_call)?;
    linker.counted("env", "proxy_grpc_stream", grpc_stream)?;
    linker.counted("env", "proxy_grpc_send", grpc_send)?;
    linker.counted("env", "proxy_grpc_cancel", grpc_end)?;
    linker.counted("env", "proxy_grpc_close", grpc_end)?;
    linker.counted("env", "proxy_get_status", get_status)?;
    linker.counted("env", "proxy_call_foreign_function", call_foreign_function)?;
    Ok(())
}
