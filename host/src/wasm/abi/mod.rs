//! The proxy-wasm ABI 0.2.1 host functions, one module per area. Each module registers its
//! functions on the linker with `add_to_linker`.
//!
//! Rules every host function follows:
//! - guest memory is read by copying out, with bounds checked first; a bad pointer answers
//!   `InvalidMemoryAccess` and never panics the host;
//! - memory handed to the guest comes from the guest's own allocator (`proxy_on_memory_allocate`),
//!   and no slice of guest memory is held across that call (the memory may grow during it);
//! - statuses are the ones the Rust SDK expects for each call.

pub mod buffers;
pub mod headers;
pub mod http_call;
pub mod logging;
pub mod metrics;
pub mod properties;
pub mod shared_data;
pub mod streams;
pub mod timers;
pub mod unsupported;
pub mod wasi;

use wasmtime::{Caller, Extern, Linker, Memory};

use super::{HeaderList, HostState, Status};

/// Why a host function stopped: a status for the guest, or a trap that ends the guest call.
#[derive(Debug)]
pub enum AbiError {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for AbiError {
    fn from(s: Status) -> Self {
        AbiError::Status(s)
    }
}

pub type AbiResult<T> = Result<T, AbiError>;

/// Turns a host function's result into what wasmtime expects: a status code or a trap.
pub fn finish(result: AbiResult<()>) -> wasmtime::Result<i32> {
    match result {
        Ok(()) => Ok(Status::Ok as i32),
        Err(AbiError::Status(s)) => Ok(s as i32),
        Err(AbiError::Trap(e)) => Err(e),
    }
}

/// Registers every ABI area (proxy-wasm and WASI) on the linker.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    super::hostcalls::register_guest_alloc();
    logging::add_to_linker(linker)?;
    buffers::add_to_linker(linker)?;
    headers::add_to_linker(linker)?;
    http_call::add_to_linker(linker)?;
    metrics::add_to_linker(linker)?;
    properties::add_to_linker(linker)?;
    shared_data::add_to_linker(linker)?;
    streams::add_to_linker(linker)?;
    timers::add_to_linker(linker)?;
    unsupported::add_to_linker(linker)?;
    wasi::add_to_linker(linker)?;
    Ok(())
}

pub(crate) fn memory(caller: &mut Caller<'_, HostState>) -> AbiResult<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(AbiError::Trap(wasmtime::Error::msg(
            "the module exports no memory",
        ))),
    }
}

/// Copies `len` bytes at `ptr` out of guest memory.
pub(crate) fn read_bytes(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> AbiResult<Vec<u8>> {
    let mem = memory(caller)?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    if len == 0 {
        return Ok(Vec::new());
    }
    let end = ptr.checked_add(len).ok_or(Status::InvalidMemoryAccess)?;
    let data = mem.data(&*caller);
    match data.get(ptr..end) {
        Some(slice) => Ok(slice.to_vec()),
        None => Err(Status::InvalidMemoryAccess.into()),
    }
}

pub(crate) fn read_string(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> AbiResult<String> {
    let bytes = read_bytes(caller, ptr, len)?;
    String::from_utf8(bytes).map_err(|_| Status::BadArgument.into())
}

pub(crate) fn write_bytes(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    bytes: &[u8],
) -> AbiResult<()> {
    let mem = memory(caller)?;
    mem.write(&mut *caller, ptr as u32 as usize, bytes)
        .map_err(|_| Status::InvalidMemoryAccess.into())
}

pub(crate) fn write_u32(caller: &mut Caller<'_, HostState>, ptr: i32, value: u32) -> AbiResult<()> {
    write_bytes(caller, ptr, &value.to_le_bytes())
}

pub(crate) fn write_u64(caller: &mut Caller<'_, HostState>, ptr: i32, value: u64) -> AbiResult<()> {
    write_bytes(caller, ptr, &value.to_le_bytes())
}

/// Allocates `size` bytes with the guest's allocator; returns the guest address.
pub(crate) fn guest_alloc(caller: &mut Caller<'_, HostState>, size: usize) -> AbiResult<u32> {
    let func = ["proxy_on_memory_allocate", "malloc"]
        .iter()
        .find_map(|name| caller.get_export(name).and_then(Extern::into_func))
        .ok_or_else(|| {
            AbiError::Trap(wasmtime::Error::msg(
                "the module exports no proxy_on_memory_allocate",
            ))
        })?;
    let typed = func.typed::<i32, i32>(&*caller).map_err(|e| {
        AbiError::Trap(e.context("proxy_on_memory_allocate has the wrong signature"))
    })?;
    let size = i32::try_from(size).map_err(|_| Status::InvalidMemoryAccess)?;
    super::hostcalls::count_guest_alloc(caller.data());
    let ptr = typed.call(&mut *caller, size).map_err(AbiError::Trap)?;
    if ptr == 0 {
        return Err(Status::InvalidMemoryAccess.into());
    }
    Ok(ptr as u32)
}

/// Hands `bytes` to the guest: allocates with its allocator, copies, and writes the address and
/// size to the two return pointers. Empty data is returned as (0, 0), as Envoy does.
pub(crate) fn return_bytes(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    ret_ptr: i32,
    ret_size: i32,
) -> AbiResult<()> {
    // Check the return slots before allocating, so a bad pointer does not leak guest memory.
    check_range(caller, ret_ptr, 4)?;
    check_range(caller, ret_size, 4)?;
    let addr = if bytes.is_empty() {
        0
    } else {
        let addr = guest_alloc(caller, bytes.len())?;
        // The allocation may have grown memory: fetch the memory again, no slice kept.
        write_bytes(caller, addr as i32, bytes)?;
        addr
    };
    write_u32(caller, ret_ptr, addr)?;
    write_u32(caller, ret_size, bytes.len() as u32)
}

pub(crate) fn check_range(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: usize,
) -> AbiResult<()> {
    let mem = memory(caller)?;
    let end = (ptr as u32 as usize)
        .checked_add(len)
        .ok_or(Status::InvalidMemoryAccess)?;
    if end > mem.data_size(&*caller) {
        return Err(Status::InvalidMemoryAccess.into());
    }
    Ok(())
}

/// Serializes a header map the way proxy-wasm does: count, (name len, value len) pairs, then
/// each name and value followed by a NUL byte.
pub fn serialize_map(map: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut size = 4;
    for (k, v) in map {
        size += 8 + k.len() + v.len() + 2;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (k, v) in map {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in map {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Parses a serialized map; `None` when it is malformed.
pub fn deserialize_map(bytes: &[u8]) -> Option<HeaderList> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let mut sizes = Vec::with_capacity(count.min(1024));
    let mut pos = 4usize;
    for _ in 0..count {
        let k = u32::from_le_bytes(bytes.get(pos..pos + 4)?.try_into().ok()?) as usize;
        let v = u32::from_le_bytes(bytes.get(pos + 4..pos + 8)?.try_into().ok()?) as usize;
        sizes.push((k, v));
        pos += 8;
    }
    let mut out = Vec::with_capacity(sizes.len());
    for (k, v) in sizes {
        let key = bytes.get(pos..pos.checked_add(k)?)?;
        pos += k + 1;
        let value = bytes.get(pos..pos.checked_add(v)?)?;
        pos += v + 1;
        out.push((
            String::from_utf8(key.to_vec()).ok()?.to_ascii_lowercase(),
            value.to_vec(),
        ));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_round_trip() {
        let map = vec![
            (":path".to_string(), b"/a".to_vec()),
            ("x".to_string(), Vec::new()),
        ];
        assert_eq!(deserialize_map(&serialize_map(&map)), Some(map));
        assert_eq!(deserialize_map(&[1, 0, 0, 0, 200, 0, 0, 0]), None);
        assert_eq!(deserialize_map(&[5, 0, 0]), None);
    }
}
