//! The realm service's authenticate call: the request the filter sends and how it reads the answer.

use std::sync::Arc;

use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::identity::Identity;

/// The body of `POST /{realmId}/v0/authenticate`: `{"secret":"<key>"}`.
pub fn authenticate_body(key: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(key.len() + 16);
    body.extend_from_slice(b"{\"secret\":");
    // Serialising a &str into a Vec cannot fail; fall back to an empty string all the same.
    if serde_json::to_writer(&mut body, key).is_err() {
        body.truncate(10);
        body.extend_from_slice(b"\"\"");
    }
    body.push(b'}');
    body
}

/// What a realm said about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RealmAnswer {
    Found {
        identity: Arc<Identity>,
        ttl_ms: u64,
        /// The credential's expiry (ms since the epoch), if it has one.
        expires_at_ms: Option<u64>,
    },
    NotFound {
        negative_ttl_ms: u64,
    },
    /// The realm could not answer; the cause is for the log (never holds the key).
    Unavailable {
        cause: String,
    },
}

/// The answer to an HTTP call, as the host delivers it. `status` is `None` when the call failed
/// (timeout, connection failure: the host delivers no headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallResponse {
    pub status: Option<u32>,
    pub body: Vec<u8>,
}

/// Used when an answer lacks `ttl` / `negative_ttl` (the realm service's own default).
pub const DEFAULT_TTL_MINUTES: f64 = 10.0;

#[derive(Deserialize)]
struct FoundBody {
    id: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    custom_id: Option<String>,
    #[serde(default)]
    consumer_group_names: Option<Vec<String>>,
    #[serde(default)]
    ttl: Option<f64>,
    credential: FoundCredential,
}

#[derive(Deserialize)]
struct FoundCredential {
    id: String,
    #[serde(default)]
    expires_at: Option<String>,
}

#[derive(Deserialize)]
struct NotFoundBody {
    #[serde(default)]
    negative_ttl: Option<f64>,
}

fn minutes_to_ms(minutes: Option<f64>) -> u64 {
    let m = minutes.unwrap_or(DEFAULT_TTL_MINUTES);
    if m.is_finite() && m > 0.0 {
        // Saturating float-to-int conversion.
        (m * 60_000.0) as u64
    } else {
        0
    }
}

fn header_safe(s: &str) -> bool {
    !s.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f)
}

/// Classifies the answer to an authenticate call: 201 found, 404 with `negative_ttl` not found,
/// anything else (and no answer at all) unavailable.
pub fn classify(response: &CallResponse) -> RealmAnswer {
    let unavailable = |cause: String| RealmAnswer::Unavailable { cause };
    let Some(status) = response.status else {
        return unavailable("no response (timeout or connection failure)".to_string());
    };
    match status {
        201 | 200 => {
            let body: FoundBody = match serde_json::from_slice(&response.body) {
                Ok(b) => b,
                Err(e) => return unavailable(format!("malformed {status} answer: {e}")),
            };
            let expires_at_ms = match body.credential.expires_at.as_deref() {
                None => None,
                Some(s) => match parse_rfc3339_ms(s) {
                    Some(ms) => Some(ms),
                    None => {
                        return unavailable(format!(
                            "malformed {status} answer: credential.expires_at {s:?} is not RFC 3339"
                        ))
                    }
                },
            };
            let groups = body
                .consumer_group_names
                .filter(|g| !g.is_empty())
                .map(|g| g.join(","));
            let identity = Identity {
                consumer_id: body.id,
                username: body.username,
                custom_id: body.custom_id,
                credential_id: Some(body.credential.id),
                groups,
            };
            let fields = [
                Some(&identity.consumer_id),
                identity.username.as_ref(),
                identity.custom_id.as_ref(),
                identity.credential_id.as_ref(),
                identity.groups.as_ref(),
            ];
            if fields.iter().flatten().any(|f| !header_safe(f)) {
                return unavailable(format!(
                    "malformed {status} answer: control characters in a consumer field"
                ));
            }
            RealmAnswer::Found {
                identity: Arc::new(identity),
                ttl_ms: minutes_to_ms(body.ttl),
                expires_at_ms,
            }
        }
        // The realm service's "not found" always carries `negative_ttl`; a 404 without it comes
        // from something else (a proxy's missing route, a wrong service behind the cluster) and
        // must not turn good keys into 401s.
        404 => match serde_json::from_slice::<NotFoundBody>(&response.body) {
            Ok(NotFoundBody {
                negative_ttl: Some(negative),
            }) => RealmAnswer::NotFound {
                negative_ttl_ms: minutes_to_ms(Some(negative)),
            },
            _ => unavailable(
                "404 without negative_ttl: not the realm service's answer (wrong cluster or route?)"
                    .to_string(),
            ),
        },
        401 => unavailable("401: the data-plane token was refused".to_string()),
        403 => unavailable("403: the realm does not allow this control plane".to_string()),
        other => unavailable(format!("unexpected status {other}")),
    }
}

/// Parses an RFC 3339 timestamp (`2026-01-02T03:04:05.678Z`, `...+02:00`) into milliseconds
/// since the Unix epoch. Times before 1970 give 0.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    Some(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_timestamps_parse() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2026-11-29T03:37:07Z"),
            Some(1_795_923_427_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-29T03:37:07.25Z"),
            Some(1_795_923_427_250)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-29T05:37:07.123456+02:00"),
            Some(1_795_923_427_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T00:00:00Z"),
            Some(951_782_400_000)
        );
        assert_eq!(parse_rfc3339_ms("2026-11-29"), None);
        assert_eq!(parse_rfc3339_ms("2026-13-29T03:37:07Z"), None);
        assert_eq!(parse_rfc3339_ms("2026-11-29T03:37:07"), None);
        assert_eq!(parse_rfc3339_ms("2026-11-29T03:37:07+0200"), None);
    }

    #[test]
    fn the_secret_is_json_escaped() {
        assert_eq!(
            authenticate_body("a\"b\\c"),
            br#"{"secret":"a\"b\\c"}"#.to_vec()
        );
    }

    #[test]
    fn answers_are_classified() {
        let found = CallResponse {
            status: Some(201),
            body: br#"{"id":"c1","username":"ariel","custom_id":null,"type":"x","tags":[],
                "consumer_group_names":["gold","beta"],"ttl":10,"negative_ttl":5,
                "credential":{"id":"k1","created_at":"2026-01-01T00:00:00Z","tags":[],
                "expires_at":"2026-11-29T03:37:07Z"}}"#
                .to_vec(),
        };
        match classify(&found) {
            RealmAnswer::Found {
                identity,
                ttl_ms,
                expires_at_ms,
            } => {
                assert_eq!(identity.consumer_id, "c1");
                assert_eq!(identity.username.as_deref(), Some("ariel"));
                assert_eq!(identity.custom_id, None);
                assert_eq!(identity.credential_id.as_deref(), Some("k1"));
                assert_eq!(identity.groups.as_deref(), Some("gold,beta"));
                assert_eq!(ttl_ms, 600_000);
                assert_eq!(expires_at_ms, Some(1_795_923_427_000));
            }
            other => panic!("unexpected {other:?}"),
        }
        let missing = CallResponse {
            status: Some(404),
            body: br#"{"status":404,"title":"Not Found","negative_ttl":7}"#.to_vec(),
        };
        assert_eq!(
            classify(&missing),
            RealmAnswer::NotFound {
                negative_ttl_ms: 420_000
            }
        );
        for status in [None, Some(401), Some(403), Some(500), Some(503), Some(400)] {
            let r = CallResponse {
                status,
                body: vec![],
            };
            assert!(
                matches!(classify(&r), RealmAnswer::Unavailable { .. }),
                "{status:?}"
            );
        }
        let garbage = CallResponse {
            status: Some(201),
            body: b"not json".to_vec(),
        };
        assert!(matches!(
            classify(&garbage),
            RealmAnswer::Unavailable { .. }
        ));
    }
}
