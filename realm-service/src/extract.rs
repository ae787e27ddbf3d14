//! Request extraction that fails with field-named 400s (never axum's plain-text rejections).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::api::{BODY_READ_TIMEOUT, MAX_BODY_BYTES};
use crate::error::{ApiError, InvalidParameter};

/// A JSON body: `Content-Type: application/json`, at most 1 MiB, every field known.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let mime = v.split(';').next().unwrap_or("").trim();
                mime.eq_ignore_ascii_case("application/json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected a body with Content-Type: application/json",
            ));
        }
        let bytes = read_body(req).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Reads the whole body, at most [`MAX_BODY_BYTES`] (413 beyond; also for a streamed body
/// without a length) and within [`BODY_READ_TIMEOUT`] (408 after it: a client that announces a
/// body and stalls does not hold its connection and task for ever).
pub async fn read_body(req: Request) -> Result<Bytes, ApiError> {
    let read = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES);
    let Ok(result) = tokio::time::timeout(BODY_READ_TIMEOUT, read).await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        ));
    };
    result.map_err(|error| {
        let too_large = std::error::Error::source(&error)
            .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body is larger than 1 MiB",
            )
        } else {
            ApiError::invalid_field("body", "readable", "the request body could not be read")
        }
    })
}

/// Does the JSON text start as an object? Every request body is one; serde would otherwise
/// also build a struct from an array of its fields in order (`["prod", null, true]`).
pub fn is_json_object(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|b| *b == b'{')
}

/// Parses a JSON object into `T`, naming the field at fault when it does not fit.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let blank = bytes
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if !blank && !is_json_object(bytes) {
        return Err(ApiError::invalid_field(
            "body",
            "type",
            "must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let value = match value {
        Ok(v) => v,
        Err(err) => return Err(json_error(err)),
    };
    // Trailing characters after the document are a syntax error too.
    de.end()
        .map_err(|e| ApiError::invalid_field("body", "json", format!("malformed JSON: {e}")))?;
    Ok(value)
}

fn json_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let message = inner.to_string();
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::invalid_field("body", "json", format!("malformed JSON: {message}"));
    }
    let reason = strip_position(&message);
    let parent = if path == "." { String::new() } else { path };
    if let Some(name) = backticked(&message, "unknown field `") {
        // serde_path_to_error already ends the path with the unknown field's name.
        let field = if parent == name || parent.ends_with(&format!(".{name}")) {
            parent
        } else {
            join(&parent, &name)
        };
        return ApiError::invalid_field(field, "unknown", "unknown field");
    }
    if let Some(name) = backticked(&message, "missing field `") {
        return ApiError::invalid_field(join(&parent, &name), "required", "is required");
    }
    let field = if parent.is_empty() {
        "body".to_string()
    } else {
        parent
    };
    let rule = if reason.starts_with("invalid type") {
        "type"
    } else {
        "value"
    };
    ApiError::invalid_field(field, rule, reason)
}

fn backticked(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    let end = rest.find('`')?;
    Some(rest[..end].to_string())
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// A path segment that must be a UUID.
pub fn parse_id(field: &str, value: &str) -> Result<Uuid, ApiError> {
    parse_uuid(value)
        .ok_or_else(|| ApiError::invalid_field(field, "uuid", format!("'{value}' is not a UUID")))
}

/// A UUID in its standard hyphenated form (`format: uuid` in the OpenAPI document), either case.
/// The `uuid` crate also reads the simple, braced and URN forms; ids here are written one way.
pub fn parse_uuid(value: &str) -> Option<Uuid> {
    if value.len() != 36 {
        return None;
    }
    Uuid::parse_str(value).ok()
}

/// The query string as (name, value) pairs; only `allowed` names, each at most once.
pub struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut problems = Vec::new();
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let name = name.into_owned();
            if !allowed.contains(&name.as_str()) {
                problems.push(InvalidParameter::new(
                    name,
                    "unknown",
                    format!("unknown query parameter (allowed: {})", allowed.join(", ")),
                ));
            } else if pairs.iter().any(|(n, _)| *n == name) {
                problems.push(InvalidParameter::new(name, "once", "given more than once"));
            } else {
                pairs.push((name, value.into_owned()));
            }
        }
        if problems.is_empty() {
            Ok(QueryParams(pairs))
        } else {
            Err(ApiError::invalid(problems))
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        list: Option<Vec<String>>,
    }

    fn field_of(body: &str) -> String {
        parse_json::<Body>(body.as_bytes())
            .unwrap_err()
            .invalid_parameters[0]
            .field
            .clone()
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(r#"{"name": 1}"#), "name");
        assert_eq!(field_of(r#"{"list": ["a", 2], "name": "x"}"#), "list[1]");
        assert_eq!(field_of(r#"{"name": "x", "bogus": 1}"#), "bogus");
        assert_eq!(field_of(r#"{}"#), "name");
        assert_eq!(field_of(r#"{"name": "#), "body");
        assert_eq!(field_of(r#"{"name": "x"} trailing"#), "body");
        assert_eq!(field_of(r#"[]"#), "body");
    }

    #[test]
    fn only_an_object_is_a_body() {
        let error = parse_json::<Body>(br#" ["x", ["a"]]"#).unwrap_err();
        assert_eq!(error.invalid_parameters[0].rule.as_deref(), Some("type"));
        for text in ["null", "\"x\"", "1", "true", "[\"x\"]"] {
            assert_eq!(field_of(text), "body", "{text}");
        }
        assert!(parse_json::<Body>(b"\r\n\t {\"name\": \"x\"}").is_ok());
        // An empty body is still reported as malformed JSON.
        let error = parse_json::<Body>(b"  ").unwrap_err();
        assert_eq!(error.invalid_parameters[0].rule.as_deref(), Some("json"));
    }
}
