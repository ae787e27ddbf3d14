//! Buffers: request/response bodies, the HTTP call response body, the VM and plugin configuration.

use crate::wasm::hostcalls::CountedLinker;
use wasmtime::{Caller, Linker};

use super::{finish, read_bytes, return_bytes, write_u32, AbiResult};
use crate::wasm::{HostState, Status};

const HTTP_REQUEST_BODY: i32 = 0;
const HTTP_RESPONSE_BODY: i32 = 1;
const HTTP_CALL_RESPONSE_BODY: i32 = 4;
const VM_CONFIGURATION: i32 = 6;
const PLUGIN_CONFIGURATION: i32 = 7;

fn buffer(state: &HostState, buffer_type: i32) -> Option<&[u8]> {
    match buffer_type {
        HTTP_REQUEST_BODY => state.stream()?.request_body.as_deref(),
        HTTP_RESPONSE_BODY => state.stream()?.response_body.as_deref(),
        HTTP_CALL_RESPONSE_BODY => state.call_response.as_ref().map(|c| c.body.as_slice()),
        VM_CONFIGURATION => Some(&state.plugin.config.vm_configuration),
        PLUGIN_CONFIGURATION => Some(&state.plugin.config.configuration),
        _ => None,
    }
}

/// Envoy's rules for `proxy_set_buffer_bytes`: at 0, drop `size` bytes and prepend; at or past
/// the end, append; anything else is a bad argument.
pub fn splice(buf: &mut Vec<u8>, start: usize, size: usize, data: &[u8]) -> Status {
    if start == 0 {
        let drop = size.min(buf.len());
        buf.splice(0..drop, data.iter().copied());
        Status::Ok
    } else if start >= buf.len() {
        buf.extend_from_slice(data);
        Status::Ok
    } else {
        Status::BadArgument
    }
}

/// `proxy_get_buffer_bytes`: up to `max_size` bytes from `start`.
fn get_buffer_bytes(
    mut caller: Caller<'_, HostState>,
    buffer_type: i32,
    start: i32,
    max_size: i32,
    ret_ptr: i32,
    ret_size: i32,
) -> wasmtime::Result<i32> {
    finish((|| -> AbiResult<()> {
        let data = buffer(caller.data(), buffer_type).ok_or(Status::NotFound)?;
        let start = (start as u32 as usize).min(data.len());
        let end = start
            .saturating_add(max_size as u32 as usize)
            .min(data.len());
        let slice = data[start..end].to_vec();
        return_bytes(&mut caller, &slice, ret_ptr, ret_size)
    })())
}

/// `proxy_set_buffer_bytes`: Envoy's splice rules, refused (`InternalFailure`, nothing
/// changed) when the buffer would pass the `buffer_bytes` limit.
fn set_buffer_bytes(
    mut caller: Caller<'_, HostState>,
    buffer_type: i32,
    start: i32,
    size: i32,
    data: i32,
    data_size: i32,
) -> wasmtime::Result<i32> {
    finish((|| -> AbiResult<()> {
        let bytes = read_bytes(&mut caller, data, data_size)?;
        let state = caller.data_mut();
        let limit = state.plugin.limits.buffer_bytes;
        let target = match buffer_type {
            HTTP_REQUEST_BODY => state.stream_mut().and_then(|s| s.request_body.as_mut()),
            HTTP_RESPONSE_BODY => state.stream_mut().and_then(|s| s.response_body.as_mut()),
            HTTP_CALL_RESPONSE_BODY => state.call_response.as_mut().map(|c| &mut c.body),
            _ => None,
        };
        let buf = target.ok_or(Status::NotFound)?;
        let (start, size) = (start as u32 as usize, size as u32 as usize);
        let removed = if start == 0 { size.min(buf.len()) } else { 0 };
        if buf.len() - removed + bytes.len() > limit {
            return Err(Status::InternalFailure.into());
        }
        match splice(buf, start, size, &bytes) {
            Status::Ok => Ok(()),
            other => Err(other.into()),
        }
    })())
}

/// `proxy_get_buffer_status`: a buffer's length, and flags (always 0 here); `NotFound` for a
/// buffer that is not available.
fn get_buffer_status(
    mut caller: Caller<'_, HostState>,
    buffer_type: i32,
    ret_length: i32,
    ret_flags: i32,
) -> wasmtime::Result<i32> {
    finish((|| -> AbiResult<()> {
        let len = buffer(caller.data(), buffer_type)
            .ok_or(Status::NotFound)?
            .len();
        super::check_range(&mut caller, ret_flags, 4)?;
        write_u32(&mut caller, ret_length, len as u32)?;
        write_u32(&mut caller, ret_flags, 0)
    })())
}

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.counted("env", "proxy_get_buffer_bytes", get_buffer_bytes)?;
    linker.counted("env", "proxy_set_buffer_bytes", set_buffer_bytes)?;
    linker.counted("env", "proxy_get_buffer_status", get_buffer_status)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_follows_envoy() {
        let mut b = b"hello".to_vec();
        assert_eq!(splice(&mut b, 0, usize::MAX, b"bye"), Status::Ok);
        assert_eq!(b, b"bye");
        assert_eq!(splice(&mut b, 0, 0, b">"), Status::Ok);
        assert_eq!(b, b">bye");
        assert_eq!(splice(&mut b, 4, 0, b"!"), Status::Ok);
        assert_eq!(b, b">bye!");
        assert_eq!(splice(&mut b, 2, 1, b"x"), Status::BadArgument);
    }
}
