//! Header maps: request/response headers and trailers, and the HTTP call response maps.

use crate::wasm::hostcalls::CountedLinker;
use wasmtime::{Caller, Linker};

use super::{
    deserialize_map, finish, read_bytes, read_string, return_bytes, serialize_map, write_u32,
    AbiResult,
};
use crate::wasm::{get_value, replace_value, HeaderList, HostState, Status};

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

/// Whether `map` stays within the guest's header limits.
fn within_limits(state: &HostState, map: &HeaderList) -> bool {
    let limits = &state.plugin.limits;
    let bytes: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
    map.len() <= limits.header_pairs && bytes <= limits.header_map_bytes
}

/// Applies `edit` to a writable map: `BadArgument` when the map does not exist (as Envoy),
/// `InternalFailure` (nothing changed) when the result would pass the header limits.
fn edit_map(
    state: &mut HostState,
    map_type: i32,
    edit: impl FnOnce(&mut HeaderList),
) -> AbiResult<()> {
    let current = map_mut(state, map_type).ok_or(Status::BadArgument)?;
    let mut edited = current.clone();
    edit(&mut edited);
    if !within_limits(state, &edited) {
        return Err(Status::InternalFailure.into());
    }
    if let Some(map) = map_mut(state, map_type) {
        *map = edited;
    }
    Ok(())
}

/// `proxy_get_header_map_pairs`: the whole map, serialized (an absent map is empty).
fn get_header_map_pairs(
    mut caller: Caller<'_, HostState>,
    map_type: i32,
    ret_ptr: i32,
    ret_size: i32,
) -> wasmtime::Result<i32> {
    let bytes = serialize_map(
        map_ref(caller.data(), map_type)
            .map(Vec::as_slice)
            .unwrap_or(&[]),
    );
    finish(return_bytes(&mut caller, &bytes, ret_ptr, ret_size))
}

/// `proxy_set_header_map_pairs`: replaces the whole map.
fn set_header_map_pairs(
    mut caller: Caller<'_, HostState>,
    map_type: i32,
    ptr: i32,
    size: i32,
) -> wasmtime::Result<i32> {
    finish((|| -> AbiResult<()> {
        let bytes = read_bytes(&mut caller, ptr, size)?;
        let pairs = deserialize_map(&bytes).ok_or(Status::BadArgument)?;
        edit_map(caller.data_mut(), map_type, |map| *map = pairs)
    })())
}

/// `proxy_get_header_map_value`: the first value of a name.
fn get_header_map_value(
    mut caller: Caller<'_, HostState>,
    map_type: i32,
    key: i32,
    key_size: i32,
    ret_ptr: i32,
    ret_size: i32,
) -> wasmtime::Result<i32> {
    finish((|| -> AbiResult<()> {
        let name = read_string(&mut caller, key, key_size)?;
        // As Envoy: a map that is not available is a bad argument, a missing name not found.
        let map = map_ref(caller.data(), map_type).ok_or(Status::BadArgument)?;
        let value = get_value(map, &name)
            .map(<[u8]>::to_vec)
            .ok_or(Status::NotFound)?;
        return_bytes(&mut caller, &value, ret_ptr, ret_size)
    })())
}

/// `proxy_remove_header_map_value`.
fn remove_header_map_value(
    mut caller: Caller<'_, HostState>,
    map_type: i32,
    key: i32,
    key_size: i32,
) -> wasmtime::Result<i32> {
    finish((|| -> AbiResult<()> {
        let name = read_string(&mut caller, key, key_size)?;
        let map = map_mut(caller.data_mut(), map_type).ok_or(Status::BadArgument)?;
        map.retain(|(k, _)| !k.eq_ignore_ascii_case(&name));
        Ok(())
    })())
}

/// Reads a name and a value from the guest and applies `edit` to the map (within the limits).
fn edit_with_pair(
    caller: &mut Caller<'_, HostState>,
    map_type: i32,
    (key, key_size): (i32, i32),
    (value, value_size): (i32, i32),
    edit: fn(&mut HeaderList, &str, Vec<u8>),
) -> wasmtime::Result<i32> {
    finish((|| -> AbiResult<()> {
        let name = read_string(caller, key, key_size)?;
        let value = read_bytes(caller, value, value_size)?;
        edit_map(caller.data_mut(), map_type, |map| edit(map, &name, value))
    })())
}

/// Defines the host function `$name(map_type, key, key_size, value, value_size)`, which applies
/// `$edit` to the map with the name and value the guest passes (see [`edit_with_pair`]).
macro_rules! pair_edit {
    ($(#[$doc:meta])* $name:ident, $edit:expr) => {
        $(#[$doc])*
        fn $name(
            mut caller: Caller<'_, HostState>,
            map_type: i32,
            key: i32,
            key_size: i32,
            value: i32,
            value_size: i32,
        ) -> wasmtime::Result<i32> {
            edit_with_pair(&mut caller, map_type, (key, key_size), (value, value_size), $edit)
        }
    };
}

pair_edit!(
    /// `proxy_replace_header_map_value`: replaces every value of the name (or adds it).
    replace_header_map_value,
    replace_value
);

pair_edit!(
    /// `proxy_add_header_map_value`: adds a value (names are kept lower case).
    add_header_map_value,
    |map, name, value| map.push((name.to_ascii_lowercase(), value))
);

/// `proxy_get_header_map_size`: the bytes of a map's names and values (Envoy's `byteSize`);
/// `BadArgument` for a map that is not available.
fn get_header_map_size(
    mut caller: Caller<'_, HostState>,
    map_type: i32,
    ret_size: i32,
) -> wasmtime::Result<i32> {
    finish((|| -> AbiResult<()> {
        let map = map_mut(caller.data_mut(), map_type).ok_or(Status::BadArgument)?;
        let size: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
        write_u32(&mut caller, ret_size, size as u32)
    })())
}

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.counted("env", "proxy_get_header_map_pairs", get_header_map_pairs)?;
    linker.counted("env", "proxy_set_header_map_pairs", set_header_map_pairs)?;
    linker.counted("env", "proxy_get_header_map_value", get_header_map_value)?;
    linker.counted(
        "env",
        "proxy_remove_header_map_value",
        remove_header_map_value,
    )?;
    linker.counted(
        "env",
        "proxy_replace_header_map_value",
        replace_header_map_value,
    )?;
    linker.counted("env", "proxy_add_header_map_value", add_header_map_value)?;
    linker.counted("env", "proxy_get_header_map_size", get_header_map_size)?;
    Ok(())
}
