//! Finding the key in a request, and removing it (`hide_credentials`).
//!
//! For each configured name, in order: the headers, then the query string, then the body. The
//! first location that carries the name decides: one string value is the key; the name more than
//! once is a duplicate; a value that is not a string is ignored and the next name is tried.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;
use serde_json::Value;

use crate::config::Config;
use crate::engine::Headers;

/// What one location says about one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<'a> {
    Absent,
    /// Present, but not a string (`?apikey` without `=`, a JSON number, `null`, a boolean).
    NotString,
    One(Cow<'a, str>),
    Many,
}

/// The outcome of looking for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extraction {
    /// A key (possibly empty) found under `key_names[name]`.
    Key {
        value: String,
        name: usize,
    },
    Duplicate,
    NoKey,
    /// The body decides and it has not arrived yet.
    NeedBody,
}

/// Where the key of a request is looked for.
pub struct RequestParts<'a> {
    pub headers: &'a Headers,
    /// The raw query string (after `?`, without `#fragment`), if any.
    pub query: Option<&'a str>,
    /// The parsed body; `None` while it is still to come.
    pub body: Option<&'a ParsedBody>,
}

/// Finds the key of a request as the configuration says.
pub fn extract(cfg: &Config, parts: &RequestParts<'_>) -> Extraction {
    for (i, key_name) in cfg.key_names.iter().enumerate() {
        let mut found = Found::Absent;
        if cfg.key_in_header {
            found = find_header(parts.headers, &key_name.header_form);
        }
        if found == Found::Absent && cfg.key_in_query {
            if let Some(query) = parts.query {
                found = find_urlencoded(query, &key_name.name);
            }
        }
        if found == Found::Absent && cfg.key_in_body {
            match parts.body {
                Some(body) => found = body.find(&key_name.name),
                None => return Extraction::NeedBody,
            }
        }
        match found {
            Found::One(value) => {
                return Extraction::Key {
                    value: value.into_owned(),
                    name: i,
                }
            }
            Found::Many => return Extraction::Duplicate,
            Found::Absent | Found::NotString => {}
        }
    }
    Extraction::NoKey
}

/// Header names compare case-insensitively, with `_` equal to `-`.
/// `header_form` is already lower case with `-` only.
pub fn header_name_matches(header: &str, header_form: &str) -> bool {
    header.len() == header_form.len()
        && header.bytes().zip(header_form.bytes()).all(|(h, f)| {
            let h = match h {
                b'_' => b'-',
                b'A'..=b'Z' => h + 32,
                _ => h,
            };
            h == f
        })
}

pub fn find_header<'a>(headers: &'a Headers, header_form: &str) -> Found<'a> {
    let mut found = Found::Absent;
    for (name, value) in headers.iter() {
        if name.starts_with(':') || !header_name_matches(name, header_form) {
            continue;
        }
        if found != Found::Absent {
            return Found::Many;
        }
        found = Found::One(Cow::Borrowed(value));
    }
    found
}

// ---------------------------------------------------------------------------------------------
// application/x-www-form-urlencoded (query strings and form bodies)
// ---------------------------------------------------------------------------------------------

/// Decodes `%XX` and `+` (as a space). Malformed escapes are kept as they are; invalid
/// UTF-8 becomes U+FFFD.
pub fn url_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('+') {
        return percent_decode_str(s).decode_utf8_lossy();
    }
    // `+` is replaced before %-decoding so that an escaped `%2B` stays a `+`.
    let spaced = s.replace('+', " ");
    Cow::Owned(percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
}

/// Splits one `name[=value]` pair; the name is decoded, the value is left raw.
fn split_pair(pair: &str) -> (Cow<'_, str>, Option<&str>) {
    match pair.split_once('=') {
        Some((name, value)) => (url_decode(name), Some(value)),
        None => (url_decode(pair), None),
    }
}

/// Looks `name` up in a urlencoded string: names match exactly after decoding.
pub fn find_urlencoded<'a>(encoded: &'a str, name: &str) -> Found<'a> {
    let mut found = Found::Absent;
    for pair in encoded.split('&') {
        if pair.is_empty() {
            continue;
        }
        let (pair_name, value) = split_pair(pair);
        if pair_name != name {
            continue;
        }
        if found != Found::Absent {
            return Found::Many;
        }
        found = match value {
            Some(v) => Found::One(url_decode(v)),
            None => Found::NotString,
        };
    }
    found
}

/// Removes every `name` pair, keeping the other pairs in order and exactly as they were encoded.
/// `None` when the name is not there (nothing to change).
pub fn remove_urlencoded(encoded: &str, name: &str) -> Option<String> {
    let mut removed = false;
    let mut kept: Vec<&str> = Vec::new();
    for pair in encoded.split('&') {
        if !pair.is_empty() && split_pair(pair).0 == name {
            removed = true;
        } else {
            kept.push(pair);
        }
    }
    removed.then(|| kept.join("&"))
}

/// Splits a `:path` into the path and the query string (without the `?`).
pub fn split_path(path: &str) -> (&str, Option<&str>) {
    let path = path.split('#').next().unwrap_or(path);
    match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    }
}

/// The `:path` with `name` removed from its query string; `None` when it is not there.
pub fn path_without_query_name(path: &str, name: &str) -> Option<String> {
    let (p, q) = split_path(path);
    let q = q?;
    let rest = remove_urlencoded(q, name)?;
    if rest.is_empty() {
        Some(p.to_string())
    } else {
        Some(format!("{p}?{rest}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

/// A request body, parsed according to its content type.
#[derive(Debug)]
pub enum ParsedBody {
    /// No body, a malformed one, or a content type we do not read.
    Unusable,
    Form(String),
    Json(serde_json::Map<String, Value>),
    Multipart(Multipart),
}

/// The kind of body a `Content-Type` announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyKind {
    Form,
    Json,
    Multipart { boundary: String },
    Other,
}

pub fn body_kind(content_type: Option<&str>) -> BodyKind {
    let Some(ct) = content_type else {
        return BodyKind::Other;
    };
    let mut params = ct.split(';');
    let mime = params
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/x-www-form-urlencoded" => BodyKind::Form,
        "application/json" => BodyKind::Json,
        m if m.starts_with("application/") && m.ends_with("+json") => BodyKind::Json,
        "multipart/form-data" => {
            for param in params {
                if let Some((k, v)) = param.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("boundary") {
                        let v = v.trim().trim_matches('"');
                        if !v.is_empty() {
                            return BodyKind::Multipart {
                                boundary: v.to_string(),
                            };
                        }
                    }
                }
            }
            BodyKind::Other
        }
        _ => BodyKind::Other,
    }
}

impl ParsedBody {
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> ParsedBody {
        if body.is_empty() {
            return ParsedBody::Unusable;
        }
        match body_kind(content_type) {
            BodyKind::Form => match std::str::from_utf8(body) {
                Ok(s) => ParsedBody::Form(s.to_string()),
                Err(_) => ParsedBody::Unusable,
            },
            BodyKind::Json => match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(map)) => ParsedBody::Json(map),
                _ => ParsedBody::Unusable,
            },
            BodyKind::Multipart { boundary } => match Multipart::parse(body, &boundary) {
                Some(m) => ParsedBody::Multipart(m),
                None => ParsedBody::Unusable,
            },
            BodyKind::Other => ParsedBody::Unusable,
        }
    }

    pub fn find(&self, name: &str) -> Found<'_> {
        match self {
            ParsedBody::Unusable => Found::Absent,
            ParsedBody::Form(s) => find_urlencoded(s, name),
            ParsedBody::Json(map) => match map.get(name) {
                None => Found::Absent,
                Some(Value::String(s)) => Found::One(Cow::Borrowed(s.as_str())),
                Some(Value::Array(_)) | Some(Value::Object(_)) => Found::Many,
                Some(_) => Found::NotString,
            },
            ParsedBody::Multipart(m) => m.find(name),
        }
    }

    /// The body re-encoded without `name`; `None` when the name is not there.
    pub fn without(&self, name: &str) -> Option<Vec<u8>> {
        match self {
            ParsedBody::Unusable => None,
            ParsedBody::Form(s) => remove_urlencoded(s, name).map(String::into_bytes),
            ParsedBody::Json(map) => {
                if !map.contains_key(name) {
                    return None;
                }
                let mut map = map.clone();
                map.shift_remove(name);
                serde_json::to_vec(&Value::Object(map)).ok()
            }
            ParsedBody::Multipart(m) => m.without(name),
        }
    }
}

/// A `multipart/form-data` body: the original bytes and where each part is.
#[derive(Debug)]
pub struct Multipart {
    raw: Vec<u8>,
    parts: Vec<Part>,
}

#[derive(Debug)]
struct Part {
    name: Option<String>,
    /// From the part's `--boundary` up to the next one.
    span: (usize, usize),
    value: (usize, usize),
}

fn find_bytes(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > haystack.len() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

impl Multipart {
    /// Parses a body; `None` when it is malformed (no closing delimiter, a part without headers).
    pub fn parse(body: &[u8], boundary: &str) -> Option<Multipart> {
        let dash = format!("--{boundary}");
        let delim = format!("\r\n--{boundary}");
        // The first delimiter may start the body or follow a preamble.
        let mut pos = if body.starts_with(dash.as_bytes()) {
            0
        } else {
            find_bytes(body, delim.as_bytes(), 0)? + 2
        };
        let mut parts = Vec::new();
        loop {
            let after = pos + dash.len();
            let rest = body.get(after..)?;
            if rest.starts_with(b"--") {
                break; // the close delimiter
            }
            // Transport padding, then CRLF.
            let line_end = find_bytes(body, b"\r\n", after)?;
            if body[after..line_end]
                .iter()
                .any(|b| *b != b' ' && *b != b'\t')
            {
                return None;
            }
            let headers_start = line_end + 2;
            let next = find_bytes(body, delim.as_bytes(), headers_start)?;
            let headers_end = find_bytes(&body[..next], b"\r\n\r\n", headers_start)
                .map(|p| (p, p + 4))
                .or_else(|| {
                    // A part with no headers at all starts with the blank line.
                    body[headers_start..next]
                        .starts_with(b"\r\n")
                        .then_some((headers_start, headers_start + 2))
                })?;
            let headers = std::str::from_utf8(&body[headers_start..headers_end.0]).ok()?;
            let name = headers
                .split("\r\n")
                .find_map(|line| {
                    let (k, v) = line.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case("content-disposition")
                        .then_some(v)
                })
                .and_then(disposition_name);
            parts.push(Part {
                name,
                span: (pos, next + 2),
                value: (headers_end.1, next),
            });
            pos = next + 2;
        }
        Some(Multipart {
            raw: body.to_vec(),
            parts,
        })
    }

    pub fn find(&self, name: &str) -> Found<'_> {
        let mut found = Found::Absent;
        for part in &self.parts {
            if part.name.as_deref() != Some(name) {
                continue;
            }
            if found != Found::Absent {
                return Found::Many;
            }
            found = Found::One(String::from_utf8_lossy(
                &self.raw[part.value.0..part.value.1],
            ));
        }
        found
    }

    pub fn without(&self, name: &str) -> Option<Vec<u8>> {
        if !self.parts.iter().any(|p| p.name.as_deref() == Some(name)) {
            return None;
        }
        let mut out = Vec::with_capacity(self.raw.len());
        let mut cursor = 0;
        for part in &self.parts {
            if part.name.as_deref() == Some(name) {
                out.extend_from_slice(&self.raw[cursor..part.span.0]);
                cursor = part.span.1;
            }
        }
        out.extend_from_slice(&self.raw[cursor..]);
        Some(out)
    }
}

/// The `name` parameter of a `Content-Disposition: form-data; name="..."` header.
fn disposition_name(value: &str) -> Option<String> {
    let mut params = value.split(';');
    let kind = params.next()?.trim();
    if !kind.eq_ignore_ascii_case("form-data") {
        return None;
    }
    for param in params {
        let (k, v) = param.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("name") {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            return Some(v.replace("\\\"", "\""));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_decoding_keeps_malformed_escapes() {
        assert_eq!(url_decode("a%20b+c"), "a b c");
        assert_eq!(url_decode("100%"), "100%");
        assert_eq!(url_decode("%zz%4"), "%zz%4");
        assert_eq!(url_decode("%E2%9C%93"), "✓");
        assert!(matches!(url_decode("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn urlencoded_lookup_and_removal() {
        assert_eq!(
            find_urlencoded("a=1&apikey=k", "apikey"),
            Found::One("k".into())
        );
        assert_eq!(find_urlencoded("apikey", "apikey"), Found::NotString);
        assert_eq!(
            find_urlencoded("apikey=&x", "apikey"),
            Found::One("".into())
        );
        assert_eq!(find_urlencoded("apikey=1&apikey=2", "apikey"), Found::Many);
        assert_eq!(find_urlencoded("apikey[]=1", "apikey"), Found::Absent);
        assert_eq!(find_urlencoded("a=b=c", "a"), Found::One("b=c".into()));
        assert_eq!(
            remove_urlencoded("a=1&apikey=k&&b", "apikey").as_deref(),
            Some("a=1&&b")
        );
        assert_eq!(remove_urlencoded("a=1", "apikey"), None);
        assert_eq!(
            path_without_query_name("/p?apikey=k", "apikey").as_deref(),
            Some("/p")
        );
        assert_eq!(path_without_query_name("/p", "apikey"), None);
        assert_eq!(split_path("/a?b=1#frag"), ("/a", Some("b=1")));
    }

    #[test]
    fn content_types() {
        assert_eq!(
            body_kind(Some("application/JSON; charset=utf-8")),
            BodyKind::Json
        );
        assert_eq!(body_kind(Some("application/vnd.api+json")), BodyKind::Json);
        assert_eq!(
            body_kind(Some("application/x-www-form-urlencoded")),
            BodyKind::Form
        );
        assert_eq!(
            body_kind(Some("multipart/form-data; boundary=\"a b\"")),
            BodyKind::Multipart {
                boundary: "a b".into()
            }
        );
        assert_eq!(body_kind(Some("multipart/form-data")), BodyKind::Other);
        assert_eq!(body_kind(Some("text/plain")), BodyKind::Other);
        assert_eq!(body_kind(None), BodyKind::Other);
    }

    #[test]
    fn multipart_with_preamble_and_a_part_without_headers() {
        let body = b"preamble\r\n--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--B\r\n\r\nanonymous\r\n--B\r\nContent-Disposition: form-data; filename=\"f\"; name=\"apikey\"\r\n\r\nk\r\n--B--\r\nepilogue";
        let m = Multipart::parse(body, "B").unwrap();
        assert_eq!(m.find("a"), Found::One("x".into()));
        assert_eq!(m.find("apikey"), Found::One("k".into()));
        assert_eq!(m.find("f"), Found::Absent);
        let without = m.without("apikey").unwrap();
        assert_eq!(
            String::from_utf8(without).unwrap(),
            "preamble\r\n--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--B\r\n\r\nanonymous\r\n--B--\r\nepilogue"
        );
        assert!(Multipart::parse(b"--B\r\nno end", "B").is_none());
    }
}
