//! The host's log: guest log lines (`proxy_log`, WASI stdout/stderr) and the host's own warnings
//! and errors, in Envoy's line format (`[time][thread][level][component] message`), kept in a
//! bounded in-memory buffer (`log_kept_bytes`) and optionally appended to a file (`--log-path`,
//! like Envoy's).

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;

/// Envoy's names of the proxy-wasm log levels.
pub fn level_name(level: u32) -> &'static str {
    match level {
        0 => "trace",
        1 => "debug",
        2 => "info",
        3 => "warning",
        4 => "error",
        _ => "critical",
    }
}

/// A log shared by everything in one running host.
pub struct HostLog {
    file: Option<Mutex<std::fs::File>>,
    lines: Mutex<Kept>,
    kept_bytes: usize,
}

#[derive(Default)]
struct Kept {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Default for HostLog {
    fn default() -> Self {
        HostLog::new(crate::limits::Limits::default().log_kept_bytes)
    }
}

impl HostLog {
    /// A log that keeps at most `kept_bytes` of lines in memory.
    pub fn new(kept_bytes: usize) -> Self {
        HostLog {
            file: None,
            lines: Mutex::default(),
            kept_bytes,
        }
    }

    /// A log that also appends to `path`.
    pub fn with_file(path: &Path, kept_bytes: usize) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(HostLog {
            file: Some(Mutex::new(file)),
            ..HostLog::new(kept_bytes)
        })
    }

    /// Writes one line at `level` (proxy-wasm numbering) for `component`.
    pub fn write(&self, level: u32, component: &str, message: &str) {
        let now = time_text();
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("main");
        let line = format!(
            "[{now}][{thread}][{}][{component}] {message}",
            level_name(level)
        );
        if let Some(file) = &self.file {
            let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(f, "{line}");
        }
        let mut kept = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        kept.bytes += line.len();
        kept.lines.push_back(line);
        while kept.bytes > self.kept_bytes {
            match kept.lines.pop_front() {
                Some(old) => kept.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// Bytes of the lines kept in memory.
    pub fn kept_bytes(&self) -> usize {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }

    /// The kept lines, oldest first, newline-terminated.
    pub fn text(&self) -> String {
        let kept = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for l in kept.lines.iter() {
            out.push_str(l);
            out.push('\n');
        }
        out
    }
}

/// UTC time as `YYYY-MM-DD HH:MM:SS.mmm`.
fn time_text() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_envoys_shape() {
        let log = HostLog::default();
        log.write(4, "wasm", "wasm log keyrealm keyrealm: bad field");
        let text = log.text();
        assert!(
            text.contains("][error][wasm] wasm log keyrealm keyrealm: bad field\n"),
            "{text}"
        );
        assert!(text.starts_with("[20"), "{text}");
    }

    #[test]
    fn kept_lines_are_bounded_in_bytes() {
        let log = HostLog::new(1000);
        for _ in 0..100 {
            log.write(2, "wasm", &"x".repeat(100));
        }
        assert!(log.kept_bytes() <= 1000, "{}", log.kept_bytes());
        assert!(log.text().lines().count() >= 5);
    }
}
