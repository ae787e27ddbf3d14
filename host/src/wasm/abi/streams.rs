//! Stream control: continue, close, local responses, effective context, `proxy_done`.

use crate::wasm::hostcalls::CountedLinker;
use wasmtime::{Caller, Linker};

use super::{deserialize_map, finish, read_bytes, AbiResult};
use crate::wasm::{HostState, LocalResponse, Status};

// proxy-wasm stream types.
const HTTP_REQUEST: i32 = 0;
const HTTP_RESPONSE: i32 = 1;
const DOWNSTREAM: i32 = 2;
const UPSTREAM: i32 = 3;

/// `proxy_continue_stream`, answered as Envoy answers it: `Ok` for the HTTP request and
/// response (on the root context too, where there is nothing to continue) and the downstream,
/// `Unimplemented` for the upstream, `BadArgument` for anything else.
fn continue_stream(mut caller: Caller<'_, HostState>, stream_type: i32) -> wasmtime::Result<i32> {
    let status = match stream_type {
        HTTP_REQUEST | HTTP_RESPONSE => {
            if let Some(s) = caller.data_mut().controlled_stream() {
                if stream_type == HTTP_REQUEST {
                    s.request_continued = true;
                } else {
                    s.response_continued = true;
                }
            }
            Status::Ok
        }
        DOWNSTREAM => Status::Ok,
        UPSTREAM => Status::Unimplemented,
        _ => Status::BadArgument,
    };
    Ok(status as i32)
}

/// `proxy_close_stream`: resets the HTTP stream; `Ok` for the four stream types (as Envoy,
/// also where there is no stream), `BadArgument` for anything else.
fn close_stream(mut caller: Caller<'_, HostState>, stream_type: i32) -> wasmtime::Result<i32> {
    let status = match stream_type {
        HTTP_REQUEST | HTTP_RESPONSE => {
            if let Some(s) = caller.data_mut().controlled_stream() {
                s.closed = true;
            }
            Status::Ok
        }
        DOWNSTREAM | UPSTREAM => Status::Ok,
        _ => Status::BadArgument,
    };
    Ok(status as i32)
}

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.counted("env", "proxy_continue_stream", continue_stream)?;
    linker.counted("env", "proxy_close_stream", close_stream)?;
    linker.counted(
        "env",
        "proxy_send_local_response",
        |mut caller: Caller<'_, HostState>,
         status: i32,
         details: i32,
         details_size: i32,
         body: i32,
         body_size: i32,
         headers: i32,
         headers_size: i32,
         _grpc_status: i32| {
            finish((|| -> AbiResult<()> {
                let details = read_bytes(&mut caller, details, details_size)?;
                let body = read_bytes(&mut caller, body, body_size)?;
                let header_bytes = read_bytes(&mut caller, headers, headers_size)?;
                let headers = deserialize_map(&header_bytes).ok_or(Status::BadArgument)?;
                let status = u16::try_from(status)
                    .ok()
                    // Any three-digit status Envoy sends (1xx is not a final answer).
                    .filter(|s| (200..=999).contains(s))
                    .unwrap_or(500);
                if let Some(s) = caller.data_mut().controlled_stream() {
                    s.local_response = Some(LocalResponse {
                        status,
                        details: String::from_utf8_lossy(&details).into_owned(),
                        body,
                        headers,
                    });
                }
                Ok(())
            })())
        },
    )?;
    linker.counted(
        "env",
        "proxy_set_effective_context",
        |mut caller: Caller<'_, HostState>, context_id: i32| {
            let state = caller.data_mut();
            let id = context_id as u32;
            if id == state.root_context_id || state.streams.contains_key(&id) {
                state.effective_context = id;
                Ok(Status::Ok as i32)
            } else {
                Ok(Status::BadArgument as i32)
            }
        },
    )?;
    linker.counted("env", "proxy_done", |_caller: Caller<'_, HostState>| {
        Ok(0i32)
    })?;
    Ok(())
}
