//! Konnect-style cursor paging, the same on every list.
//!
//! A cursor is the (opaque to clients) position of a row: the table's monotonically increasing
//! `seq`. `page[after]` continues after it, `page[before]` goes back before it. Rows created or
//! deleted between two pages never make a walk return a row twice.

use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::model::{Page, PageInfo, PageMeta};

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Query parameters every list accepts.
pub const PAGE_PARAMS: [&str; 3] = ["page[size]", "page[after]", "page[before]"];

#[derive(Debug, Clone)]
pub struct PageRequest {
    pub size: u32,
    pub after: Option<i64>,
    pub before: Option<i64>,
}

impl PageRequest {
    pub fn from_query(query: &QueryParams) -> Result<PageRequest, ApiError> {
        let size = match query.get("page[size]") {
            None => DEFAULT_PAGE_SIZE,
            Some(text) => match text.parse::<u32>() {
                Ok(n)
                    if (1..=MAX_PAGE_SIZE).contains(&n)
                        && text.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    n
                }
                _ => {
                    return Err(ApiError::invalid_field(
                        "page[size]",
                        "range",
                        format!("must be an integer from 1 to {MAX_PAGE_SIZE}"),
                    ))
                }
            },
        };
        let cursor = |name: &str| -> Result<Option<i64>, ApiError> {
            match query.get(name) {
                None => Ok(None),
                Some(text) => decode_cursor(text)
                    .map(Some)
                    .ok_or_else(|| ApiError::invalid_field(name, "cursor", "not a valid cursor")),
            }
        };
        let after = cursor("page[after]")?;
        let before = cursor("page[before]")?;
        if after.is_some() && before.is_some() {
            return Err(ApiError::invalid_field(
                "page[before]",
                "exclusive",
                "page[after] and page[before] cannot be combined",
            ));
        }
        Ok(PageRequest {
            size,
            after,
            before,
        })
    }
}

fn encode_cursor(seq: i64) -> String {
    format!("{seq:x}")
}

/// What a cursor looks like (the lower-case hex of a non-negative `i64`), as the OpenAPI
/// document states it; [`decode_cursor`] accepts exactly the strings this matches.
pub const CURSOR_PATTERN: &str = "^[0-7]?[0-9a-f]{1,15}$";

fn decode_cursor(text: &str) -> Option<i64> {
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if text.is_empty() || text.len() > 16 || !text.bytes().all(hex) {
        return None;
    }
    // 16 digits from 8 on overflow an i64 and are refused here.
    i64::from_str_radix(text, 16).ok()
}

/// Trims rows fetched with `LIMIT size + 1` (in the walk's direction) to one page, in
/// ascending order, and says whether more exist beyond it. Used by every store.
pub fn finish<T>(mut rows: Vec<(i64, T)>, page: &PageRequest) -> (Vec<(i64, T)>, bool) {
    let more = rows.len() > page.size as usize;
    rows.truncate(page.size as usize);
    if page.before.is_some() {
        rows.reverse();
    }
    (rows, more)
}

/// Builds the answer with `next`/`previous` links (`path` plus the list's other query
/// parameters, `filters`).
pub fn page<T>(
    rows: Vec<(i64, T)>,
    more: bool,
    request: &PageRequest,
    path: &str,
    filters: &[(&str, &str)],
) -> Page<T> {
    let link = |cursor_name: &str, seq: i64| {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in filters {
            query.append_pair(name, value);
        }
        query.append_pair("page[size]", &request.size.to_string());
        query.append_pair(cursor_name, &encode_cursor(seq));
        format!("{path}?{}", query.finish())
    };
    let first = rows.first().map(|(seq, _)| *seq);
    let last = rows.last().map(|(seq, _)| *seq);
    let going_back = request.before.is_some();
    let next = match last {
        Some(seq) if going_back || more => Some(link("page[after]", seq)),
        _ => None,
    };
    let previous = match first {
        Some(seq) if (going_back && more) || (!going_back && request.after.is_some()) => {
            Some(link("page[before]", seq))
        }
        _ => None,
    };
    Page {
        data: rows.into_iter().map(|(_, item)| item).collect(),
        meta: PageMeta {
            page: PageInfo {
                next,
                previous,
                size: request.size,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_only_issued_shapes_decode() {
        for seq in [0, 1, 15, 16, 255, 0x7fff_ffff_ffff_ffff] {
            assert_eq!(decode_cursor(&encode_cursor(seq)), Some(seq));
        }
        for bad in [
            "",
            "+1",
            "-0",
            "-1",
            "A",
            "0x1",
            " 1",
            "1 ",
            "g",
            "8000000000000000",
            "ffffffffffffffff",
            "00000000000000001",
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad:?}");
        }
        assert_eq!(decode_cursor("0000000000000001"), Some(1));
    }
}
