//! `hide_credentials`: removing the key from the headers, the query string and the body before
//! the request goes upstream.

use std::sync::Arc;

use crate::engine::filter::Filter;
use crate::engine::headers::Headers;
use crate::engine::Host;
use crate::extract::{header_name_matches, path_without_query_name, ParsedBody};

/// Removes `key_names[name]` from the headers and the query string.
pub fn hide_in_headers(filter: &Filter, name: usize, headers: &Headers, host: &mut dyn Host) {
    let Some(key_name) = filter.config().key_names.get(name) else {
        return;
    };
    let mut removed: Vec<&str> = Vec::new();
    for (h, _) in headers.iter() {
        if !h.starts_with(':')
            && header_name_matches(h, &key_name.header_form)
            && !removed.contains(&h)
        {
            removed.push(h);
            host.remove_request_header(h);
        }
    }
    if let Some(path) = headers.get(":path") {
        if let Some(new_path) = path_without_query_name(path, &key_name.name) {
            host.set_request_header(":path", &new_path);
        }
    }
}

/// Removes `key_names[name]` from a buffered body (re-encoded in its own content type), with
/// its headers still paused: the length is corrected.
pub fn hide_in_body(
    filter: &Filter,
    name: usize,
    body: &ParsedBody,
    body_size: usize,
    headers: &Headers,
    host: &mut dyn Host,
) {
    let Some(key_name) = filter.config().key_names.get(name) else {
        return;
    };
    if let Some(new_body) = body.without(&key_name.name) {
        host.replace_request_body(body_size, &new_body);
        if headers.get("content-length").is_some() {
            host.set_request_header("content-length", &new_body.len().to_string());
        }
    }
}

/// A body edit to make when a body arrives after the decision was made on the headers (the key
/// was in a header, and the body may hold it too). The headers' `content-length` was removed
/// when the edit was planned: the proxy frames the edited body.
pub struct BodyEdit {
    pub filter: Arc<Filter>,
    pub name: usize,
    pub content_type: Option<String>,
    /// The body buffered so far.
    pub body_size: usize,
    /// Some of the body has reached the filter (and is held by it).
    pub seen_body: bool,
    /// The whole body has arrived.
    pub complete: bool,
}

impl BodyEdit {
    /// Edits the buffered body (the whole of it, from its first byte).
    pub fn apply(&self, host: &mut dyn Host) {
        if self.body_size == 0 {
            return;
        }
        let Some(bytes) = host.request_body(self.body_size) else {
            return;
        };
        let parsed = ParsedBody::parse(self.content_type.as_deref(), &bytes);
        if let Some(key_name) = self.filter.config().key_names.get(self.name) {
            if let Some(new_body) = parsed.without(&key_name.name) {
                host.replace_request_body(self.body_size, &new_body);
            }
        }
    }
}
