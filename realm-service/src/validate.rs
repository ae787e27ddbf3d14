//! Value checks shared by the handlers. Each adds to a list of [`InvalidParameter`]s so that one
//! 400 names every field at fault.

use crate::error::{ApiError, InvalidParameter};

pub const MAX_NAME: usize = 255;
pub const MAX_TAG: usize = 128;
pub const MAX_LIST: usize = 100;
/// Realm `ttl` / `negative_ttl` in minutes.
pub const MIN_REALM_TTL: i64 = 5;
pub const MAX_REALM_TTL: i64 = 525_600;
pub const DEFAULT_REALM_TTL: i64 = 10;
/// Key `ttl` in seconds (ten years at most).
pub const MAX_KEY_TTL: i64 = 315_360_000;
pub const MAX_SECRET: usize = 1024;

#[derive(Default)]
pub struct Checks(Vec<InvalidParameter>);

impl Checks {
    pub fn text(&mut self, field: &str, value: &str, max: usize) {
        let chars = value.chars().count();
        if value.trim().is_empty() {
            self.0.push(InvalidParameter::new(
                field,
                "min_length",
                "must not be empty",
            ));
        } else if chars > max {
            self.0.push(InvalidParameter::new(
                field,
                "max_length",
                format!("must be at most {max} characters"),
            ));
        }
    }

    pub fn opt_text(&mut self, field: &str, value: Option<&str>, max: usize) {
        if let Some(v) = value {
            self.text(field, v, max);
        }
    }

    pub fn list(&mut self, field: &str, values: Option<&[String]>, max_each: usize) {
        let Some(values) = values else { return };
        if values.len() > MAX_LIST {
            self.0.push(InvalidParameter::new(
                field,
                "max_items",
                format!("at most {MAX_LIST} entries"),
            ));
        }
        for (i, v) in values.iter().enumerate() {
            self.text(&format!("{field}[{i}]"), v, max_each);
        }
    }

    pub fn range(&mut self, field: &str, value: Option<i64>, min: i64, max: i64, unit: &str) {
        if let Some(v) = value {
            if v < min || v > max {
                self.0.push(InvalidParameter::new(
                    field,
                    if v < min { "min" } else { "max" },
                    format!("must be from {min} to {max} {unit}"),
                ));
            }
        }
    }

    pub fn push(&mut self, field: &str, rule: &str, reason: impl Into<String>) {
        self.0.push(InvalidParameter::new(field, rule, reason));
    }

    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(self.0))
        }
    }
}

/// Removes repeats, keeping the first occurrence's position.
pub fn dedup<T: PartialEq + Clone>(values: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(values.len());
    for v in values {
        if !out.contains(v) {
            out.push(v.clone());
        }
    }
    out
}
