//! A request's header map as the engine reads it: one buffer and the positions of each name and
//! value in it, so that a host can hand over its own serialisation without a copy per header.
//!
//! The proxy-wasm adapter passes the buffer `proxy_get_header_map_pairs` returns as it is
//! ([`Headers::from_proxy_wasm`]); a native host builds one with [`Headers::push`].

use std::ops::Range;

/// Request headers: `(name, value)` pairs in the order the proxy gave them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    buf: Vec<u8>,
    /// Byte ranges into `buf`: name, value. Each range holds valid UTF-8 (checked when added).
    spans: Vec<(Range<u32>, Range<u32>)>,
}

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Room for `count` headers of `bytes` bytes in all.
    pub fn with_capacity(count: usize, bytes: usize) -> Headers {
        Headers {
            buf: Vec::with_capacity(bytes),
            spans: Vec::with_capacity(count),
        }
    }

    /// Appends a header. Invalid UTF-8 becomes U+FFFD (a header that cannot be text never
    /// matches a key name and never is a key).
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        let n = self.append(name);
        let v = self.append(value);
        self.spans.push((n, v));
    }

    fn append(&mut self, bytes: &[u8]) -> Range<u32> {
        let start = self.buf.len() as u32;
        match std::str::from_utf8(bytes) {
            Ok(_) => self.buf.extend_from_slice(bytes),
            Err(_) => self
                .buf
                .extend_from_slice(String::from_utf8_lossy(bytes).as_bytes()),
        }
        start..self.buf.len() as u32
    }

    /// Takes a map in the proxy-wasm serialisation (what `proxy_get_header_map_pairs` returns):
    /// a little-endian u32 count, then a (name length, value length) pair of u32 per header, then
    /// each name and value followed by a NUL byte. The buffer is kept as it is; only a value that
    /// is not UTF-8 is copied (to its lossy form, appended at the end). A malformed buffer gives
    /// the headers read before the fault.
    pub fn from_proxy_wasm(buf: Vec<u8>) -> Headers {
        let mut headers = Headers {
            spans: Vec::new(),
            buf,
        };
        let count = match read_u32(&headers.buf, 0) {
            Some(c) => c as usize,
            None => return Headers::default(),
        };
        let mut sizes = 4usize;
        let mut data = match count.checked_mul(8).and_then(|n| n.checked_add(4)) {
            Some(d) if d <= headers.buf.len() => d,
            _ => return Headers::default(),
        };
        headers.spans.reserve(count);
        for _ in 0..count {
            let (Some(name_len), Some(value_len)) = (
                read_u32(&headers.buf, sizes),
                read_u32(&headers.buf, sizes + 4),
            ) else {
                break;
            };
            sizes += 8;
            let Some((name_end, value_start, value_end)) =
                data.checked_add(name_len as usize).and_then(|name_end| {
                    let value_start = name_end.checked_add(1)?;
                    let value_end = value_start.checked_add(value_len as usize)?;
                    Some((name_end, value_start, value_end))
                })
            else {
                break;
            };
            if value_end >= headers.buf.len() {
                // The value's NUL must be inside the buffer too.
                break;
            }
            let name = headers.text(data..name_end);
            let value = headers.text(value_start..value_end);
            headers.spans.push((name, value));
            data = value_end + 1;
        }
        headers
    }

    /// `range` as a valid-UTF-8 range of `buf` (a lossy copy appended at the end if needed).
    fn text(&mut self, range: Range<usize>) -> Range<u32> {
        match std::str::from_utf8(&self.buf[range.clone()]) {
            Ok(_) => range.start as u32..range.end as u32,
            Err(_) => {
                let lossy = String::from_utf8_lossy(&self.buf[range]).into_owned();
                let start = self.buf.len() as u32;
                self.buf.extend_from_slice(lossy.as_bytes());
                start..self.buf.len() as u32
            }
        }
    }

    fn str(&self, range: &Range<u32>) -> &str {
        // Every range was checked (or made) valid UTF-8 when it was added.
        std::str::from_utf8(&self.buf[range.start as usize..range.end as usize]).unwrap_or("")
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.spans.iter().map(|(n, v)| (self.str(n), self.str(v)))
    }

    /// The first value of `name` (compared without regard to case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

impl<N: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Headers {
        let mut headers = Headers::new();
        for (n, v) in iter {
            headers.push(n.as_ref(), v.as_ref());
        }
        headers
    }
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    let mut b = [0u8; 4];
    b.copy_from_slice(bytes);
    Some(u32::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serialise(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (n, v) in pairs {
            out.extend_from_slice(&(n.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (n, v) in pairs {
            out.extend_from_slice(n);
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    #[test]
    fn the_proxy_wasm_serialisation_is_read_in_place() {
        let buf = serialise(&[
            (b":path", b"/a?b=c"),
            (b"ApiKey", b"k1"),
            (b"empty", b""),
            (b"x-bin", b"\xff\xfeok"),
        ]);
        let h = Headers::from_proxy_wasm(buf.clone());
        let pairs: Vec<(&str, &str)> = h.iter().collect();
        assert_eq!(
            pairs,
            vec![
                (":path", "/a?b=c"),
                ("ApiKey", "k1"),
                ("empty", ""),
                ("x-bin", "\u{fffd}\u{fffd}ok")
            ]
        );
        assert_eq!(h.get("apikey"), Some("k1"));
        assert_eq!(h.get("nope"), None);
        // Only the non-UTF-8 value was copied.
        assert_eq!(h.buf.len(), buf.len() + "\u{fffd}\u{fffd}ok".len());
    }

    #[test]
    fn a_malformed_buffer_gives_what_was_read_before_the_fault() {
        assert!(Headers::from_proxy_wasm(vec![]).is_empty());
        assert!(Headers::from_proxy_wasm(vec![9, 0, 0, 0]).is_empty());
        let mut buf = serialise(&[(b"a", b"1"), (b"b", b"2")]);
        buf.truncate(buf.len() - 2); // the last value's bytes and NUL are cut
        let h = Headers::from_proxy_wasm(buf);
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![("a", "1")]);
        let mut huge = serialise(&[(b"a", b"1")]);
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Headers::from_proxy_wasm(huge).is_empty());
    }

    #[test]
    fn headers_built_by_a_native_host() {
        let h: Headers = [("a", "1"), ("B", "2")].into_iter().collect();
        assert_eq!(h.len(), 2);
        assert_eq!(h.get("b"), Some("2"));
    }
}
