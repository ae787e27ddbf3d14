//! What the filter answers and what the upstream sees: the consumer headers of an authenticated
//! request, the local error replies, and what a failed authentication turns into (`anonymous`,
//! 401 or 503).

use std::borrow::Cow;

use crate::config::Config;
use crate::engine::headers::Headers;
use crate::engine::Host;
use crate::extract::header_name_matches;
use crate::identity::Identity;
use crate::metrics::Metric;

/// Headers a client may not send: the filter sets them.
pub const CONSUMER_HEADERS: [&str; 6] = [
    "x-consumer-id",
    "x-consumer-custom-id",
    "x-consumer-username",
    "x-credential-identifier",
    "x-anonymous-consumer",
    "x-consumer-groups",
];

pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// Why authentication failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    NoKey,
    Duplicate,
    Unauthorized,
    Unavailable,
}

/// What a failed authentication becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// The request continues as the `anonymous` consumer.
    Anonymous(&'a Identity),
    /// The filter answers it.
    Reply {
        status: u32,
        message: Cow<'a, str>,
        www_authenticate: Option<&'a str>,
        metric: Metric,
        /// An error line for the log, if the cause is the configuration.
        log: Option<String>,
    },
}

/// Kong's answer to a failure, given `anonymous` and `realm`.
pub fn verdict(config: &Config, failure: Failure) -> Verdict<'_> {
    if let Some(anonymous) = &config.anonymous {
        return match &anonymous.identity {
            Some(identity) => Verdict::Anonymous(identity),
            None => Verdict::Reply {
                status: 500,
                message: Cow::Owned(format!(
                    "anonymous consumer {} is configured but doesn't exist",
                    anonymous.value
                )),
                www_authenticate: None,
                metric: Metric::RequestsAnonymousMissing,
                log: Some(format!(
                    "keyrealm: anonymous consumer {:?} is configured but doesn't exist",
                    anonymous.value
                )),
            },
        };
    }
    let (status, message, metric) = match failure {
        Failure::NoKey => (401, "No API key found in request", Metric::RequestsNoKey),
        Failure::Duplicate => (401, "Duplicate API key found", Metric::RequestsDuplicate),
        Failure::Unauthorized => (401, "Unauthorized", Metric::RequestsUnauthorized),
        Failure::Unavailable => (
            503,
            "Identity realm unavailable",
            Metric::RequestsUnavailable,
        ),
    };
    Verdict::Reply {
        status,
        message: Cow::Borrowed(message),
        www_authenticate: (status == 401).then_some(config.www_authenticate.as_str()),
        metric,
        log: None,
    }
}

/// Answers the effective request locally with `{"message", "request_id"}`.
pub fn send_error(
    host: &mut dyn Host,
    status: u32,
    message: &str,
    www_authenticate: Option<&str>,
    request_id: Option<&str>,
) {
    let body = error_body(message, request_id);
    let mut headers: Vec<(&str, &str)> = vec![("content-type", JSON_CONTENT_TYPE)];
    if let Some(www) = www_authenticate {
        headers.push(("www-authenticate", www));
    }
    host.send_response(status, &headers, &body);
}

/// `{"message": "...", "request_id": "..."}`.
pub fn error_body(message: &str, request_id: Option<&str>) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    map.insert("message".into(), serde_json::Value::String(message.into()));
    if let Some(id) = request_id {
        map.insert("request_id".into(), serde_json::Value::String(id.into()));
    }
    serde_json::to_vec(&serde_json::Value::Object(map))
        .unwrap_or_else(|_| b"{\"message\":\"error\"}".to_vec())
}

/// Removes client-sent consumer headers (also spelled with `_`).
pub fn strip_consumer_headers(headers: &Headers, host: &mut dyn Host) {
    let mut removed: Vec<&str> = Vec::new();
    for (name, _) in headers.iter() {
        let b = name.as_bytes();
        if b.len() < 13 || !b[0].eq_ignore_ascii_case(&b'x') || !matches!(b[1], b'-' | b'_') {
            continue;
        }
        if CONSUMER_HEADERS
            .iter()
            .any(|c| header_name_matches(name, c))
            && !removed.contains(&name)
        {
            removed.push(name);
            host.remove_request_header(name);
        }
    }
}

/// Adds the consumer headers (client-sent copies were removed on the headers, so adding is
/// enough).
pub fn set_identity(identity: &Identity, anonymous: bool, host: &mut dyn Host) {
    host.add_request_header("x-consumer-id", &identity.consumer_id);
    if let Some(v) = &identity.custom_id {
        host.add_request_header("x-consumer-custom-id", v);
    }
    if let Some(v) = &identity.username {
        host.add_request_header("x-consumer-username", v);
    }
    if anonymous {
        host.add_request_header("x-anonymous-consumer", "true");
        return;
    }
    if let Some(v) = &identity.credential_id {
        host.add_request_header("x-credential-identifier", v);
    }
    if let Some(v) = &identity.groups {
        host.add_request_header("x-consumer-groups", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn config(json: &str) -> Config {
        parse(json.as_bytes(), 0, &|_| None).unwrap()
    }

    #[test]
    fn failures_become_kong_s_answers() {
        let c = config(r#"{"realm":"zone"}"#);
        let Verdict::Reply {
            status,
            message,
            www_authenticate,
            ..
        } = verdict(&c, Failure::Unauthorized)
        else {
            panic!()
        };
        assert_eq!((status, &*message), (401, "Unauthorized"));
        assert_eq!(www_authenticate, Some("Key realm=\"zone\""));
        let Verdict::Reply {
            status,
            www_authenticate,
            ..
        } = verdict(&c, Failure::Unavailable)
        else {
            panic!()
        };
        assert_eq!((status, www_authenticate), (503, None));
        let c = config(r#"{"anonymous":"guest","consumers":[{"id":"g","username":"guest"}]}"#);
        assert!(
            matches!(verdict(&c, Failure::NoKey), Verdict::Anonymous(i) if i.consumer_id == "g")
        );
        let c = config(r#"{"anonymous":"ghost"}"#);
        assert!(matches!(
            verdict(&c, Failure::NoKey),
            Verdict::Reply {
                status: 500,
                log: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn error_bodies_carry_the_request_id_when_there_is_one() {
        assert_eq!(error_body("m", None), br#"{"message":"m"}"#);
        assert_eq!(
            error_body("m", Some("r")),
            br#"{"message":"m","request_id":"r"}"#
        );
    }
}
