//! Removes from the built filter the proxy-wasm exports it does not implement, so that the host
//! never crosses into the VM for them (the SDK exports every hook; a host skips a hook the module
//! does not export, as Envoy and keyrealm-host do). `scripts/build-wasm.sh` runs it:
//!
//! ```sh
//! cargo run --release -p keyrealm-filter --example strip_exports -- target/wasm32-wasip1/release/keyrealm_filter.wasm
//! ```
//!
//! The file is rewritten in place, section by section: only the export section changes.

use std::process::ExitCode;

use wasm_encoder::{ExportKind, ExportSection, Module, RawSection};
use wasmparser::{ExternalKind, Parser, Payload};

/// The exports the filter needs: the module's set-up, the root context's hooks and the request
/// hooks it implements. Everything else the SDK exports (response hooks, `proxy_on_log`, network
/// filter, gRPC, queue and foreign-function hooks) is removed.
const KEPT: &[&str] = &[
    "memory",
    "_initialize",
    "proxy_abi_version_0_2_1",
    "proxy_on_memory_allocate",
    "proxy_on_context_create",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_tick",
    "proxy_on_http_call_response",
    "proxy_on_request_headers",
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_done",
    "proxy_on_delete",
];

fn export_kind(kind: ExternalKind) -> ExportKind {
    match kind {
        ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        ExternalKind::Tag => ExportKind::Tag,
    }
}

fn strip(wasm: &[u8]) -> Result<(Vec<u8>, Vec<String>), wasmparser::BinaryReaderError> {
    let mut module = Module::new();
    let mut removed = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        if let Payload::ExportSection(reader) = &payload {
            let mut exports = ExportSection::new();
            for export in reader.clone() {
                let export = export?;
                if KEPT.contains(&export.name) {
                    exports.export(export.name, export_kind(export.kind), export.index);
                } else {
                    removed.push(export.name.to_string());
                }
            }
            module.section(&exports);
        } else if let Some((id, range)) = payload.as_section() {
            module.section(&RawSection {
                id,
                data: &wasm[range.start as usize..range.end as usize],
            });
        }
    }
    Ok((module.finish(), removed))
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: strip_exports <module.wasm>");
        return ExitCode::FAILURE;
    };
    let result = std::fs::read(&path)
        .map_err(|err| err.to_string())
        .and_then(|wasm| strip(&wasm).map_err(|err| err.to_string()))
        .and_then(|(stripped, removed)| {
            std::fs::write(&path, stripped).map_err(|err| err.to_string())?;
            Ok(removed)
        });
    match result {
        Ok(removed) if removed.is_empty() => {
            println!("{path}: no unused exports");
            ExitCode::SUCCESS
        }
        Ok(removed) => {
            println!("{path}: removed exports {}", removed.join(", "));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{path}: {err}");
            ExitCode::FAILURE
        }
    }
}
