//! Metrics: define, increment, record, get. Values live in the process-wide registry and are
//! exposed on the admin address as Prometheus text.

use crate::wasm::hostcalls::CountedLinker;
use wasmtime::{Caller, Linker};

use super::{finish, read_string, write_u32, write_u64, AbiResult};
use crate::metrics::{MetricError, MetricKind};
use crate::wasm::{HostState, Status};

impl From<MetricError> for super::AbiError {
    fn from(e: MetricError) -> Self {
        super::AbiError::Status(match e {
            MetricError::NotFound => Status::NotFound,
            MetricError::BadArgument => Status::BadArgument,
            MetricError::Limit => Status::InternalFailure,
        })
    }
}

/// The longest metric name a filter may define (Envoy's stat names are far shorter).
pub const MAX_METRIC_NAME: usize = 4096;

pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.counted(
        "env",
        "proxy_define_metric",
        |mut caller: Caller<'_, HostState>, kind: i32, name: i32, name_size: i32, ret_id: i32| {
            finish((|| -> AbiResult<()> {
                let kind = match kind {
                    0 => MetricKind::Counter,
                    1 => MetricKind::Gauge,
                    2 => MetricKind::Histogram,
                    _ => return Err(Status::BadArgument.into()),
                };
                if name_size as u32 as usize > MAX_METRIC_NAME {
                    return Err(Status::BadArgument.into());
                }
                let name = read_string(&mut caller, name, name_size)?;
                super::check_range(&mut caller, ret_id, 4)?;
                let id = caller.data().plugin.metrics.define(kind, &name)?;
                write_u32(&mut caller, ret_id, id)
            })())
        },
    )?;
    linker.counted(
        "env",
        "proxy_increment_metric",
        |caller: Caller<'_, HostState>, id: i32, offset: i64| {
            finish(
                caller
                    .data()
                    .plugin
                    .metrics
                    .increment(id as u32, offset)
                    .map_err(Into::into),
            )
        },
    )?;
    linker.counted(
        "env",
        "proxy_record_metric",
        |caller: Caller<'_, HostState>, id: i32, value: i64| {
            finish(
                caller
                    .data()
                    .plugin
                    .metrics
                    .record(id as u32, value as u64)
                    .map_err(Into::into),
            )
        },
    )?;
    linker.counted(
        "env",
        "proxy_get_metric",
        |mut caller: Caller<'_, HostState>, id: i32, ret: i32| {
            finish((|| -> AbiResult<()> {
                let value = caller.data().plugin.metrics.get(id as u32)?;
                write_u64(&mut caller, ret, value)
            })())
        },
    )?;
    Ok(())
}
