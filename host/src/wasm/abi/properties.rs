//! Properties (`proxy_get_property`, `proxy_set_property`): the attributes filters commonly read,
//! encoded as Envoy encodes them (strings as bytes, integers as 8-byte little-endian).

use crate::wasm::hostcalls::CountedLinker;
use wasmtime::{Caller, Linker};

use super::{finish, read_bytes, return_bytes, serialize_map, AbiResult};
use crate::wasm::get_value;
use crate::wasm::{HostState, Status, StreamState};

fn int(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn request_header(s: &StreamState, name: &str) -> Option<Vec<u8>> {
    s.request_headers
        .as_ref()
        .and_then(|h| get_value(h, name))
        .map(<[u8]>::to_vec)
}

/// Looks a property path up; `None` when it is unknown or has no value here.
pub fn lookup(state: &HostState, path: &[&[u8]]) -> Option<Vec<u8>> {
    let plugin = &state.plugin.config;
    let text: Vec<&str> = path
        .iter()
        .map(|p| std::str::from_utf8(p).unwrap_or("\u{0}"))
        .collect();
    match text.as_slice() {
        ["plugin_name"] => return Some(plugin.name.clone().into_bytes()),
        ["plugin_root_id"] => return Some(plugin.root_id.clone().into_bytes()),
        ["plugin_vm_id"] => return Some(plugin.vm_id.clone().into_bytes()),
        _ => {}
    }
    let s = state.stream()?;
    let joined = path.join(&0u8);
    if let Some(v) = s.properties.get(&joined) {
        return Some(v.clone());
    }
    match text.as_slice() {
        ["request", "path"] => request_header(s, ":path"),
        ["request", "url_path"] => request_header(s, ":path")
            .map(|p| p.split(|b| *b == b'?').next().unwrap_or_default().to_vec()),
        ["request", "query"] => {
            request_header(s, ":path").map(|p| match p.iter().position(|b| *b == b'?') {
                Some(i) => p[i + 1..].to_vec(),
                None => Vec::new(),
            })
        }
        ["request", "host"] => request_header(s, ":authority"),
        ["request", "method"] => request_header(s, ":method"),
        ["request", "scheme"] => request_header(s, ":scheme"),
        ["request", "id"] => request_header(s, "x-request-id"),
        ["request", "referer"] => request_header(s, "referer"),
        ["request", "useragent"] => request_header(s, "user-agent"),
        ["request", "protocol"] => Some(s.info.protocol.clone().into_bytes()),
        ["request", "headers"] => s.request_headers.as_ref().map(|h| serialize_map(h)),
        ["request", "headers", name] => request_header(s, name),
        ["response", "code"] => s
            .response_headers
            .as_ref()
            .and_then(|h| get_value(h, ":status"))
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
            .map(int),
        ["response", "headers"] => s.response_headers.as_ref().map(|h| serialize_map(h)),
        ["response", "headers", name] => s
            .response_headers
            .as_ref()
            .and_then(|h| get_value(h, name))
            .map(<[u8]>::to_vec),
        ["source", "address"] => s.info.source.map(|a| a.to_string().into_bytes()),
        ["source", "port"] => s.info.source.map(|a| int(i64::from(a.port()))),
        ["destination", "address"] => s.info.destination.map(|a| a.to_string().into_bytes()),
        ["destination", "port"] => s.info.destination.map(|a| int(i64::from(a.port()))),
        _ => None,
    }
}

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.counted(
        "env",
        "proxy_get_property",
        |mut caller: Caller<'_, HostState>,
         path: i32,
         path_size: i32,
         ret_ptr: i32,
         ret_size: i32| {
            finish((|| -> AbiResult<()> {
                let raw = read_bytes(&mut caller, path, path_size)?;
                let parts: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
                let value = lookup(caller.data(), &parts).ok_or(Status::NotFound)?;
                return_bytes(&mut caller, &value, ret_ptr, ret_size)
            })())
        },
    )?;
    linker.counted(
        "env",
        "proxy_set_property",
        |mut caller: Caller<'_, HostState>,
         path: i32,
         path_size: i32,
         value: i32,
         value_size: i32| {
            finish((|| -> AbiResult<()> {
                let path = read_bytes(&mut caller, path, path_size)?;
                let value = read_bytes(&mut caller, value, value_size)?;
                if let Some(s) = caller.data_mut().stream_mut() {
                    s.properties.insert(path, value);
                }
                Ok(())
            })())
        },
    )?;
    Ok(())
}
