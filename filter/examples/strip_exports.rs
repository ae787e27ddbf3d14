//! Removes from the built filter the proxy-wasm exports it does not implement, so that the host
//! never crosses into the VM for them (the SDK exports every hook; a host skips a hook the module
//! does not export, as Envoy and keyrealm-host do). `scripts/build-wasm.sh` runs it after every
//! build:
//!
//! ```sh
//! cargo run --release -p keyrealm-filter --example strip_exports -- target/wasm32-wasip1/release/keyrealm_filter.wasm
//! ```
//!
//! What is removed is an explicit *remove* list, [`keyrealm_filter::exports::STRIPPED`]: an
//! export the list does not name is kept, so a new or renamed SDK export that a host needs can
//! never be dropped by accident (a keep list would drop it). Each removed hook names the SDK
//! method that would need it, and `filter/tests/exports.rs` fails if the adapter implements one.
//! After stripping, every export of [`keyrealm_filter::exports::REQUIRED`] must still be there,
//! else the tool fails and leaves the file as it was.
//!
//! Only the export section changes; every other section is copied byte for byte. Running it on
//! a stripped module is a no-op (idempotent). The result is written to a temporary file next to
//! the module and renamed over it, so a reader never sees half a module, and cargo's own copy
//! (`deps/keyrealm_filter.wasm`, hard-linked to the module) is not modified.

use std::path::Path;
use std::process::ExitCode;

use keyrealm_filter::exports::{is_stripped, REQUIRED};
use wasm_encoder::{ExportKind, ExportSection, Module, RawSection};
use wasmparser::{ExternalKind, Parser, Payload};

fn export_kind(kind: ExternalKind) -> ExportKind {
    match kind {
        ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        ExternalKind::Tag => ExportKind::Tag,
    }
}

/// The module without the stripped exports, and the names removed.
fn strip(wasm: &[u8]) -> Result<(Vec<u8>, Vec<String>), String> {
    let mut module = Module::new();
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| e.to_string())?;
        if let Payload::ExportSection(reader) = &payload {
            let mut exports = ExportSection::new();
            for export in reader.clone() {
                let export = export.map_err(|e| e.to_string())?;
                if is_stripped(export.name) {
                    removed.push(export.name.to_string());
                } else {
                    exports.export(export.name, export_kind(export.kind), export.index);
                    kept.push(export.name.to_string());
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
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|name| !kept.iter().any(|k| k == name))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the module does not export {} (is it the keyrealm filter?); left unchanged",
            missing.join(", ")
        ));
    }
    Ok((module.finish(), removed))
}

fn strip_file(path: &Path) -> Result<Vec<String>, String> {
    let wasm = std::fs::read(path).map_err(|e| e.to_string())?;
    let (stripped, removed) = strip(&wasm)?;
    if removed.is_empty() {
        return Ok(removed);
    }
    // Validate what we wrote: the rewrite must still be a well-formed module.
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&stripped)
        .map_err(|e| format!("the stripped module does not validate: {e}"))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".stripping");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, &stripped).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())?;
    Ok(removed)
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: strip_exports <module.wasm>");
        return ExitCode::FAILURE;
    };
    match strip_file(Path::new(&path)) {
        Ok(removed) if removed.is_empty() => {
            println!("{path}: already stripped");
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
