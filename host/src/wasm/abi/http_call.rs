//! `proxy_http_call`: records the call and returns a token. The worker starts the call after
//! the current guest call returns and delivers the answer later, on the root context.

use std::time::Duration;

use crate::wasm::hostcalls::CountedLinker;
use wasmtime::{Caller, Linker};

use super::{deserialize_map, finish, read_bytes, read_string, write_u32, AbiResult};
use crate::wasm::{HostState, PendingHttpCall, Status};

/// Calls whose timeout is 0 (or absurdly long) are capped to this.
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.counted(
        "env",
        "proxy_http_call",
        |mut caller: Caller<'_, HostState>,
         upstream: i32,
         upstream_size: i32,
         headers: i32,
         headers_size: i32,
         body: i32,
         body_size: i32,
         trailers: i32,
         trailers_size: i32,
         timeout_ms: i32,
         ret_token: i32| {
            finish((|| -> AbiResult<()> {
                let cluster = read_string(&mut caller, upstream, upstream_size)?;
                let header_bytes = read_bytes(&mut caller, headers, headers_size)?;
                let body = read_bytes(&mut caller, body, body_size)?;
                let trailer_bytes = read_bytes(&mut caller, trailers, trailers_size)?;
                let headers = deserialize_map(&header_bytes).ok_or(Status::BadArgument)?;
                let trailers = deserialize_map(&trailer_bytes).ok_or(Status::BadArgument)?;
                if !caller.data().plugin.clusters.contains_key(&cluster) {
                    return Err(Status::BadArgument.into());
                }
                // Envoy requires these three pseudo-headers.
                for required in [":method", ":path", ":authority"] {
                    if !headers.iter().any(|(k, v)| k == required && !v.is_empty()) {
                        return Err(Status::BadArgument.into());
                    }
                }
                let timeout = match timeout_ms as u32 {
                    0 => MAX_CALL_TIMEOUT,
                    ms => Duration::from_millis(u64::from(ms)).min(MAX_CALL_TIMEOUT),
                };
                super::check_range(&mut caller, ret_token, 4)?;
                let state = caller.data_mut();
                let token = state.next_token;
                let context_id = state.effective_context;
                let call = PendingHttpCall {
                    token,
                    context_id,
                    cluster,
                    headers,
                    body,
                    trailers,
                    timeout,
                };
                // The instance's limits on outstanding calls and the bytes they hold.
                let limits = &state.plugin.limits;
                let bytes = state.outstanding_call_bytes + call.bytes();
                if state.outstanding_calls >= limits.pending_calls || bytes > limits.buffer_bytes {
                    return Err(Status::InternalFailure.into());
                }
                state.outstanding_calls += 1;
                state.outstanding_call_bytes = bytes;
                state.next_token = state.next_token.wrapping_add(1).max(1);
                state.pending_calls.push(call);
                write_u32(&mut caller, ret_token, token)
            })())
        },
    )?;
    Ok(())
}
