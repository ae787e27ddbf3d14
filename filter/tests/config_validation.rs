//! The configuration: defaults, and refusals that name the field and the reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyrealm_filter::config::{parse, Config, ConfigError, Source};

fn env(name: &str) -> Option<String> {
    match name {
        "KEYREALM_DP_TOKEN" => Some("dp-token".into()),
        "EMPTY_TOKEN" => Some(String::new()),
        _ => None,
    }
}

fn ok(json: &str) -> Config {
    parse(json.as_bytes(), 0, &env).unwrap_or_else(|e| panic!("refused: {e}"))
}

fn refused(json: &str) -> ConfigError {
    match parse(json.as_bytes(), 0, &env) {
        Ok(_) => panic!("accepted: {json}"),
        Err(e) => e,
    }
}

const REALM: &str =
    r#"{"scope":"realm","id":"8a1f6c1e-2b2c-4d7e-9a57-0f4d2f1c9b11","region":"us"}"#;
const SERVICE: &str = r#""realm_service":{"clusters":{"us":"realm_us","default":"realm_default"},"token_env":"KEYREALM_DP_TOKEN"}"#;

#[test]
fn empty_configuration_takes_every_default() {
    for doc in ["", "{}", "  \n"] {
        let c = ok(doc);
        assert_eq!(c.key_names.len(), 1);
        assert_eq!(c.key_names[0].name, "apikey");
        assert!(c.key_in_header && c.key_in_query && !c.key_in_body);
        assert!(
            c.hide_credentials,
            "hide_credentials defaults to true (Kong >= 3.14)"
        );
        assert!(c.run_on_preflight);
        assert!(c.anonymous.is_none());
        assert_eq!(c.www_authenticate, "Key");
        assert!(matches!(c.sources.as_slice(), [Source::ControlPlane]));
        assert!(c.credentials.is_empty());
        assert!(c.realm_service.is_none());
    }
}

#[test]
fn nulls_mean_defaults_as_in_a_deck_file() {
    let c = ok(
        r#"{"key_names":null,"key_in_header":null,"hide_credentials":null,"anonymous":null,
                  "realm":null,"identity_realms":null,"consumers":null,"realm_service":null}"#,
    );
    assert_eq!(c.key_names[0].name, "apikey");
    assert!(c.hide_credentials);
}

#[test]
fn realm_service_defaults_and_resolution() {
    let c = ok(&format!(
        r#"{{"identity_realms":[{REALM},{{"scope":"cp","id":null}}],{SERVICE}}}"#
    ));
    let rs = c.realm_service.as_ref().unwrap();
    assert_eq!(rs.timeout_ms, 1000);
    assert_eq!(rs.stale_if_error_ms, 300_000);
    assert_eq!(rs.max_cached_found, 10_000);
    assert_eq!(rs.max_cached_not_found, 10_000);
    assert_eq!(rs.authorization, "Bearer dp-token");
    match &c.sources[0] {
        Source::Realm(r) => {
            assert_eq!(r.cluster, "realm_us");
            assert_eq!(
                r.authority, "realm_us",
                "authority defaults to the cluster name"
            );
            assert_eq!(
                r.path,
                "/8a1f6c1e-2b2c-4d7e-9a57-0f4d2f1c9b11/v0/authenticate"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(c.sources[1], Source::ControlPlane));

    let c = ok(r#"{"identity_realms":[{"scope":"realm","id":"r1"}],
                   "realm_service":{"clusters":{"default":"realm_default"},"authority":"realm-service",
                   "token":"t0k","timeout_ms":250}}"#);
    match &c.sources[0] {
        Source::Realm(r) => {
            assert_eq!(
                r.cluster, "realm_default",
                "region null uses the default cluster"
            );
            assert_eq!(r.authority, "realm-service");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.realm_service.unwrap().timeout_ms, 250);
}

#[test]
fn the_realm_appears_in_www_authenticate() {
    assert_eq!(
        ok(r#"{"realm":"kong"}"#).www_authenticate,
        r#"Key realm="kong""#
    );
}

#[test]
fn refusals_name_the_field_and_the_reason() {
    let cases: Vec<(String, &str, &str)> = vec![
        (r#"{"key_name":["x"]}"#.into(), "key_name", "unknown field `key_name`"),
        (r#"{"key_names":"apikey"}"#.into(), "key_names", "invalid type"),
        (r#"{"key_names":[]}"#.into(), "key_names", "at least one"),
        (r#"{"key_names":["api key"]}"#.into(), "key_names[0]", "A-Z a-z 0-9 _ -"),
        (r#"{"key_names":["ok","a.b"]}"#.into(), "key_names[1]", "A-Z a-z 0-9 _ -"),
        (r#"{"key_in_body":"yes"}"#.into(), "key_in_body", "invalid type"),
        (r#"{"realm":"a\"b"}"#.into(), "realm", "double quotes"),
        (r#"{"identity_realms":[]}"#.into(), "identity_realms", "at least one"),
        (r#"{"identity_realms":[{"scope":"global"}]}"#.into(), "identity_realms[0].scope", "not one of"),
        (r#"{"identity_realms":[{"scope":"cp","id":"x"}]}"#.into(), "identity_realms[0].id", "null for scope cp"),
        (r#"{"identity_realms":[{"scope":"cp","idd":null}]}"#.into(), "identity_realms[0].idd", "unknown field `idd`"),
        (format!(r#"{{"identity_realms":[{{"scope":"realm","id":null,"region":"us"}}],{SERVICE}}}"#), "identity_realms[0].id", "required for scope realm"),
        (format!(r#"{{"identity_realms":[{{"scope":"realm","id":"a/b","region":"us"}}],{SERVICE}}}"#), "identity_realms[0].id", "realm id"),
        (format!(r#"{{"identity_realms":[{{"scope":"realm","id":"r","region":"eu"}}],{SERVICE}}}"#), "identity_realms[0].region", "no cluster for region \"eu\""),
        (format!(r#"{{"identity_realms":[{REALM},{REALM}],{SERVICE}}}"#), "identity_realms[1]", "listed twice"),
        (format!(r#"{{"identity_realms":[{REALM}]}}"#), "realm_service", "required"),
        (format!(r#"{{"identity_realms":[{REALM}],"realm_service":{{"clusters":{{"us":"c"}}}}}}"#), "realm_service", "one of token or token_env"),
        (format!(r#"{{"identity_realms":[{REALM}],"realm_service":{{"clusters":{{"us":"c"}},"token":"a","token_env":"B"}}}}"#), "realm_service.token", "not both"),
        (format!(r#"{{"identity_realms":[{REALM}],"realm_service":{{"clusters":{{"us":"c"}},"token_env":"NOPE"}}}}"#), "realm_service.token_env", "NOPE is not set"),
        (format!(r#"{{"identity_realms":[{REALM}],"realm_service":{{"clusters":{{"us":"c"}},"token_env":"EMPTY_TOKEN"}}}}"#), "realm_service.token_env", "not set or empty"),
        (format!(r#"{{"identity_realms":[{REALM}],"realm_service":{{"clusters":{{"us":"c"}},"token":"a b"}}}}"#), "realm_service.token", "visible ASCII"),
        (r#"{"realm_service":{"clusters":{"us":"c"},"timeout_ms":0}}"#.into(), "realm_service.timeout_ms", "between 1 and"),
        (r#"{"realm_service":{"clusters":{"us":"c"},"timeout_ms":-5}}"#.into(), "realm_service.timeout_ms", "invalid value"),
        (r#"{"realm_service":{"clusters":{"us":""}}}"#.into(), "realm_service.clusters.us", "must not be empty"),
        (r#"{"realm_service":{"cluster":{"us":"c"}}}"#.into(), "realm_service.cluster", "unknown field `cluster`"),
        (r#"{"consumers":[{"username":"a"}]}"#.into(), "consumers[0].id", "required"),
        (r#"{"consumers":[{"id":"c1"}]}"#.into(), "consumers[0]", "username or a custom_id"),
        (r#"{"consumers":[{"id":"c1","username":"a"},{"id":"c1","username":"b"}]}"#.into(), "consumers[1].id", "used by another consumer"),
        (r#"{"consumers":[{"id":"c1","username":"a"},{"id":"c2","username":"a"}]}"#.into(), "consumers[1].username", "used by another consumer"),
        (r#"{"consumers":[{"id":"c1","username":"a","keyauth_credentials":[{"key":"k"}]}]}"#.into(), "consumers[0].keyauth_credentials[0].id", "required"),
        (r#"{"consumers":[{"id":"c1","username":"a","keyauth_credentials":[{"id":"k1","key":""}]}]}"#.into(), "consumers[0].keyauth_credentials[0].key", "must not be empty"),
        (r#"{"consumers":[{"id":"c1","username":"a","keyauth_credentials":[{"id":"k1","key":"sha256:abc"}]}]}"#.into(), "consumers[0].keyauth_credentials[0].key", "64 hex digits"),
        (r#"{"consumers":[{"id":"c1","username":"a","keyauth_credentials":[{"id":"k1","key":"x","ttl":0}]}]}"#.into(), "consumers[0].keyauth_credentials[0].ttl", "at least 1 second"),
        (r#"{"consumers":[{"id":"c1","username":"a","keyauth_credentials":[{"id":"k1","key":"same"}]},
                          {"id":"c2","username":"b","keyauth_credentials":[{"id":"k2","key":"same"}]}]}"#.into(),
         "consumers[1].keyauth_credentials[0].key", "another credential"),
        // The same key once in plaintext and once as its sha256 is a duplicate too.
        (r#"{"consumers":[{"id":"c1","username":"a","keyauth_credentials":[{"id":"k1","key":"abc"},
             {"id":"k2","key":"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}]}]}"#.into(),
         "consumers[0].keyauth_credentials[1].key", "another credential"),
        (r#"{"consumers":[{"id":"c1","username":"a","keyauth_credentials":[{"id":"k1","key":"x"},{"id":"k1","key":"y"}]}]}"#.into(),
         "consumers[0].keyauth_credentials[1].id", "used by another credential"),
        (r#"{"key_names":["apikey"],}"#.into(), "configuration", "trailing comma"),
        (r#"[1,2]"#.into(), "configuration", "must be a JSON object"),
    ];
    for (json, field, reason) in cases {
        let e = refused(&json);
        assert_eq!(e.field, field, "field for {json}: {e}");
        assert!(
            e.reason.contains(reason),
            "reason for {json}: {e} (wanted {reason:?})"
        );
        let line = e.to_string();
        assert!(line.starts_with(&format!("{field}: ")), "{line}");
        assert!(!line.contains('\n'), "one line: {line}");
    }
}

#[test]
fn token_env_is_read_only_when_a_realm_is_used() {
    // No realm entry: a missing variable is not an error (the service is not called).
    ok(r#"{"realm_service":{"clusters":{"us":"c"},"token_env":"NOPE"}}"#);
}

#[test]
fn refusal_messages_never_contain_secrets() {
    let e = refused(&format!(
        r#"{{"identity_realms":[{REALM}],"realm_service":{{"clusters":{{"us":"c"}},"token":"se cret"}}}}"#
    ));
    assert!(!e.to_string().contains("se cret"), "{e}");
    let e = refused(
        r#"{"consumers":[{"id":"c1","username":"a","keyauth_credentials":[{"id":"k1","key":"topsecret"},{"id":"k2","key":"topsecret"}]}]}"#,
    );
    assert!(!e.to_string().contains("topsecret"), "{e}");
}

#[test]
fn anonymous_resolves_by_id_then_username() {
    let consumers = r#""consumers":[{"id":"anon-id","username":"guest"},{"id":"guest2","username":"anon-id-2"}]"#;
    let c = ok(&format!(r#"{{"anonymous":"anon-id",{consumers}}}"#));
    assert_eq!(
        c.anonymous.unwrap().identity.unwrap().consumer_id,
        "anon-id"
    );
    let c = ok(&format!(r#"{{"anonymous":"guest",{consumers}}}"#));
    assert_eq!(
        c.anonymous.unwrap().identity.unwrap().consumer_id,
        "anon-id"
    );
    // Naming nobody is accepted: the request gets a 500 (Kong's behaviour).
    let c = ok(&format!(r#"{{"anonymous":"nobody",{consumers}}}"#));
    assert!(c.anonymous.unwrap().identity.is_none());
    // An empty string means no anonymous consumer (older Kong configurations use "").
    assert!(ok(r#"{"anonymous":""}"#).anonymous.is_none());
}

#[test]
fn keys_are_kept_as_digests_only() {
    let c = ok(
        r#"{"consumers":[{"id":"c1","username":"a","keyauth_credentials":[{"id":"k1","key":"plain-key"}]}]}"#,
    );
    let debug = format!("{c:?}");
    assert!(!debug.contains("plain-key"), "{debug}");
}

#[test]
fn consumer_names_are_non_empty_and_custom_ids_unique_as_in_kong() {
    // Kong's strings have a minimum length of 1 and custom_id is unique: an empty username
    // would otherwise satisfy "a username or a custom_id" and go upstream as an empty
    // X-Consumer-Username.
    let cases = [
        (
            r#"{"consumers":[{"id":"c1","username":""}]}"#,
            "consumers[0].username",
            "must not be empty",
        ),
        (
            r#"{"consumers":[{"id":"c1","username":"a","custom_id":""}]}"#,
            "consumers[0].custom_id",
            "must not be empty",
        ),
        (
            r#"{"consumers":[{"id":"c1","custom_id":"x"},{"id":"c2","custom_id":"x"}]}"#,
            "consumers[1].custom_id",
            "used by another consumer",
        ),
    ];
    for (json, field, reason) in cases {
        let e = refused(json);
        assert_eq!(e.field, field, "field for {json}: {e}");
        assert!(e.reason.contains(reason), "reason for {json}: {e}");
    }
}
