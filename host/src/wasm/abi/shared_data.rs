//! Shared data (with CAS) and shared queues, shared by every instance with the same VM id.

use crate::wasm::hostcalls::CountedLinker;
use wasmtime::{Caller, Linker};

use super::{finish, read_bytes, read_string, return_bytes, write_u32, AbiResult};
use crate::wasm::{HostState, Status};

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.counted(
        "env",
        "proxy_get_shared_data",
        |mut caller: Caller<'_, HostState>,
         key: i32,
         key_size: i32,
         ret_ptr: i32,
         ret_size: i32,
         ret_cas: i32| {
            finish((|| -> AbiResult<()> {
                let key = read_string(&mut caller, key, key_size)?;
                let plugin = &caller.data().plugin;
                let (value, cas) = plugin
                    .shared_data
                    .get(&plugin.config.vm_id, &key)
                    .ok_or(Status::NotFound)?;
                super::check_range(&mut caller, ret_cas, 4)?;
                return_bytes(&mut caller, &value, ret_ptr, ret_size)?;
                write_u32(&mut caller, ret_cas, cas)
            })())
        },
    )?;
    linker.counted(
        "env",
        "proxy_set_shared_data",
        |mut caller: Caller<'_, HostState>,
         key: i32,
         key_size: i32,
         value: i32,
         value_size: i32,
         cas: i32| {
            finish((|| -> AbiResult<()> {
                let key = read_string(&mut caller, key, key_size)?;
                let value = read_bytes(&mut caller, value, value_size)?;
                let plugin = &caller.data().plugin;
                match plugin
                    .shared_data
                    .set(&plugin.config.vm_id, &key, value, cas as u32)
                {
                    Status::Ok => Ok(()),
                    other => Err(other.into()),
                }
            })())
        },
    )?;
    linker.counted(
        "env",
        "proxy_register_shared_queue",
        |mut caller: Caller<'_, HostState>, name: i32, name_size: i32, ret_id: i32| {
            finish((|| -> AbiResult<()> {
                let name = read_string(&mut caller, name, name_size)?;
                let state = caller.data_mut();
                let id = state
                    .plugin
                    .queues
                    .register(&state.plugin.config.vm_id, &name)?;
                let context = state.effective_context;
                state.queue_registrations.push((id, context));
                write_u32(&mut caller, ret_id, id)
            })())
        },
    )?;
    linker.counted(
        "env",
        "proxy_resolve_shared_queue",
        |mut caller: Caller<'_, HostState>,
         vm: i32,
         vm_size: i32,
         name: i32,
         name_size: i32,
         ret_id: i32| {
            finish((|| -> AbiResult<()> {
                let vm = read_string(&mut caller, vm, vm_size)?;
                let name = read_string(&mut caller, name, name_size)?;
                let plugin = &caller.data().plugin;
                // An empty VM id names the caller's own.
                let vm = if vm.is_empty() {
                    &plugin.config.vm_id
                } else {
                    &vm
                };
                let id = plugin.queues.resolve(vm, &name).ok_or(Status::NotFound)?;
                write_u32(&mut caller, ret_id, id)
            })())
        },
    )?;
    linker.counted(
        "env",
        "proxy_enqueue_shared_queue",
        |mut caller: Caller<'_, HostState>, id: i32, value: i32, value_size: i32| {
            finish((|| -> AbiResult<()> {
                let value = read_bytes(&mut caller, value, value_size)?;
                match caller.data().plugin.queues.enqueue(id as u32, value) {
                    Status::Ok => Ok(()),
                    other => Err(other.into()),
                }
            })())
        },
    )?;
    linker.counted(
        "env",
        "proxy_dequeue_shared_queue",
        |mut caller: Caller<'_, HostState>, id: i32, ret_ptr: i32, ret_size: i32| {
            finish((|| -> AbiResult<()> {
                let value = caller.data().plugin.queues.dequeue(id as u32)?;
                return_bytes(&mut caller, &value, ret_ptr, ret_size)
            })())
        },
    )?;
    Ok(())
}
