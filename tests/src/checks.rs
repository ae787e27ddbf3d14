//! Collects the failed expectations of a scenario, so that one gateway start can check many cases
//! and a failure report lists every case that went wrong, with what was expected and seen.

use std::fmt::Debug;

use crate::client::Reply;

#[derive(Default)]
pub struct Checks {
    failures: Vec<String>,
    passed: usize,
}

impl Checks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `case` as failed unless `ok`; `detail` says what was seen.
    pub fn check(&mut self, case: &str, ok: bool, detail: impl FnOnce() -> String) {
        if ok {
            self.passed += 1;
        } else {
            self.failures.push(format!("{case}: {}", detail()));
        }
    }

    pub fn eq<T: PartialEq + Debug>(&mut self, case: &str, actual: T, expected: T) {
        let ok = actual == expected;
        self.check(case, ok, || {
            format!("expected {expected:?}, got {actual:?}")
        });
    }

    /// The reply has `status`.
    pub fn status(&mut self, case: &str, reply: &Reply, status: u16) {
        self.check(case, reply.status == status, || {
            format!("expected status {status}, got {}", reply.summary())
        });
    }

    /// The reply is the filter's error answer: `status`, JSON `message`, JSON content type, and
    /// for a 401 a `WWW-Authenticate: Key…` header.
    pub fn error(&mut self, case: &str, reply: &Reply, status: u16, message: &str) {
        self.status(case, reply, status);
        if reply.status != status {
            return;
        }
        self.eq(
            &format!("{case} (message)"),
            reply.message().as_deref(),
            Some(message),
        );
        let content_type = reply.header("content-type").unwrap_or("");
        self.check(
            &format!("{case} (content-type)"),
            content_type == "application/json; charset=utf-8",
            || format!("expected `application/json; charset=utf-8`, got {content_type:?}"),
        );
        if status == 401 {
            let www = reply.header("www-authenticate").unwrap_or("");
            self.check(
                &format!("{case} (WWW-Authenticate)"),
                www.starts_with("Key"),
                || format!("expected `Key…`, got {www:?}"),
            );
        }
    }

    /// Panics listing every failed case, if any.
    pub fn finish(self) {
        eprintln!("{} checks passed", self.passed);
        if !self.failures.is_empty() {
            panic!(
                "{} of {} checks failed:\n  - {}",
                self.failures.len(),
                self.failures.len() + self.passed,
                self.failures.join("\n  - ")
            );
        }
    }
}
