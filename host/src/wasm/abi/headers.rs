//! Header maps: request/response headers and trailers, and the HTTP call response maps.

use wasmtime::{Caller, Linker};

use super::{
    deserialize_map, finish, read_bytes, read_string, return_bytes, serialize_map, AbiResult,
};
use crate::wasm::{HeaderList, HostState, Status};

const REQUEST_HEADERS: i32 = 0;
const REQUEST_TRAILERS: i32 = 1;
const RESPONSE_HEADERS: i32 = 2;
const RESPONSE_TRAILERS: i32 = 3;
const CALL_RESPONSE_HEADERS: i32 = 6;
const CALL_RESPONSE_TRAILERS: i32 = 7;

fn map_ref(state: &HostState, map_type: i32) -> Option<&HeaderList> {
    match map_type {
        CALL_RESPONSE_HEADERS => state.call_response.as_ref().map(|c| &c.headers),
        CALL_RESPONSE_TRAILERS => state.call_response.as_ref().map(|c| &c.trailers),
        _ => {
            let s = state.stream()?;
            match map_type {
                REQUEST_HEADERS => s.request_headers.as_ref(),
                REQUEST_TRAILERS => s.request_trailers.as_ref(),
                RESPONSE_HEADERS => s.response_headers.as_ref(),
                RESPONSE_TRAILERS => s.response_trailers.as_ref(),
                _ => None,
            }
        }
    }
}

fn map_mut(state: &mut HostState, map_type: i32) -> Option<&mut HeaderList> {
    let s = state.stream_mut()?;
    match map_type {
        REQUEST_HEADERS => s.request_headers.as_mut(),
        REQUEST_TRAILERS => s.request_trailers.as_mut(),
        RESPONSE_HEADERS => s.response_headers.as_mut(),
        RESPONSE_TRAILERS => s.response_trailers.as_mut(),
        _ => None,
    }
}

/// The first value of `name`, as Envoy answers.
pub fn get_value<'a>(map: &'a HeaderList, name: &str) -> Option<&'a [u8]> {
    map.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// Replaces the value of `name` (the first occurrence keeps its place, others are removed), or
/// appends it.
pub fn replace_value(map: &mut HeaderList, name: &str, value: Vec<u8>) {
    let name = name.to_ascii_lowercase();
    let mut value = Some(value);
    map.retain_mut(|(k, v)| {
        if *k != name {
            return true;
        }
        match value.take() {
            Some(new) => {
                *v = new;
                true
            }
            None => false,
        }
    });
    if let Some(v) = value {
        map.push((name, v));
    }
}

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut caller: Caller<'_, HostState>, map_type: i32, ret_ptr: i32, ret_size: i32| {
            let bytes = serialize_map(
                map_ref(caller.data(), map_type)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]),
            );
            finish(return_bytes(&mut caller, &bytes, ret_ptr, ret_size))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut caller: Caller<'_, HostState>, map_type: i32, ptr: i32, size: i32| {
            finish((|| -> AbiResult<()> {
                let bytes = read_bytes(&mut caller, ptr, size)?;
                let pairs = deserialize_map(&bytes).ok_or(Status::BadArgument)?;
                if let Some(map) = map_mut(caller.data_mut(), map_type) {
                    *map = pairs;
                }
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut caller: Caller<'_, HostState>,
         map_type: i32,
         key: i32,
         key_size: i32,
         ret_ptr: i32,
         ret_size: i32| {
            finish((|| -> AbiResult<()> {
                let name = read_string(&mut caller, key, key_size)?;
                let value = map_ref(caller.data(), map_type)
                    .and_then(|m| get_value(m, &name))
                    .map(<[u8]>::to_vec)
                    .ok_or(Status::NotFound)?;
                return_bytes(&mut caller, &value, ret_ptr, ret_size)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut caller: Caller<'_, HostState>, map_type: i32, key: i32, key_size: i32| {
            finish((|| -> AbiResult<()> {
                let name = read_string(&mut caller, key, key_size)?;
                if let Some(map) = map_mut(caller.data_mut(), map_type) {
                    map.retain(|(k, _)| !k.eq_ignore_ascii_case(&name));
                }
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut caller: Caller<'_, HostState>,
         map_type: i32,
         key: i32,
         key_size: i32,
         value: i32,
         value_size: i32| {
            finish((|| -> AbiResult<()> {
                let name = read_string(&mut caller, key, key_size)?;
                let value = read_bytes(&mut caller, value, value_size)?;
                if let Some(map) = map_mut(caller.data_mut(), map_type) {
                    replace_value(map, &name, value);
                }
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut caller: Caller<'_, HostState>,
         map_type: i32,
         key: i32,
         key_size: i32,
         value: i32,
         value_size: i32| {
            finish((|| -> AbiResult<()> {
                let name = read_string(&mut caller, key, key_size)?;
                let value = read_bytes(&mut caller, value, value_size)?;
                if let Some(map) = map_mut(caller.data_mut(), map_type) {
                    map.push((name.to_ascii_lowercase(), value));
                }
                Ok(())
            })())
        },
    )?;
    Ok(())
}
