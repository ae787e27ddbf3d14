//! OpenAPI shapes of the constrained request fields, built from the limits in [`crate::validate`]
//! so that `/openapi.json` and the checks the handlers run cannot drift apart: a value the
//! document allows is accepted, and one it forbids is refused with a 400.
//!
//! Used through `#[schema(schema_with = ...)]` on the fields of [`crate::model`].

use utoipa::openapi::schema::{
    ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::RefOr;

use crate::validate::{
    MAX_KEY_TTL, MAX_LIST, MAX_NAME, MAX_REALM_TTL, MAX_SECRET, MAX_TAG, MIN_REALM_TTL,
};

/// The characters Rust's `char::is_whitespace` (Unicode `White_Space`) treats as whitespace,
/// as inclusive ranges. A name made only of these is refused ([`crate::validate::Checks::text`]
/// trims with the same definition).
pub const WHITESPACE: &[(char, char)] = &[
    ('\u{0009}', '\u{000D}'),
    ('\u{0020}', '\u{0020}'),
    ('\u{0085}', '\u{0085}'),
    ('\u{00A0}', '\u{00A0}'),
    ('\u{1680}', '\u{1680}'),
    ('\u{2000}', '\u{200A}'),
    ('\u{2028}', '\u{2029}'),
    ('\u{202F}', '\u{202F}'),
    ('\u{205F}', '\u{205F}'),
    ('\u{3000}', '\u{3000}'),
];

/// A regular expression (ECMA-262 and Python `re` alike) that matches a string holding at least
/// one character outside [`WHITESPACE`]. Written with explicit `\uXXXX` escapes rather than `\S`,
/// whose meaning differs between regex engines.
pub fn not_blank_pattern() -> String {
    let mut class = String::from("[^");
    for &(from, to) in WHITESPACE {
        class.push_str(&format!("\\u{:04X}", from as u32));
        if to != from {
            class.push_str(&format!("-\\u{:04X}", to as u32));
        }
    }
    class.push(']');
    class
}

fn types(kind: Type, nullable: bool) -> SchemaType {
    if nullable {
        SchemaType::from_iter([kind, Type::Null])
    } else {
        SchemaType::Type(kind)
    }
}

/// A text field: 1 to `max` characters, not only whitespace.
fn text_builder(max: usize, nullable: bool, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(types(Type::String, nullable))
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(not_blank_pattern()))
        .description(Some(description))
}

fn text(max: usize, nullable: bool, description: &str) -> Schema {
    Schema::Object(text_builder(max, nullable, description).build())
}

/// A list of text fields: at most [`MAX_LIST`] entries, each 1 to `max` characters.
fn text_list(max: usize, description: &str) -> Schema {
    Schema::Array(
        ArrayBuilder::new()
            .schema_type(types(Type::Array, true))
            .items(text_builder(
                max,
                false,
                &format!("1 to {max} characters, not only whitespace."),
            ))
            .max_items(Some(MAX_LIST))
            .description(Some(description))
            .build(),
    )
}

/// An integer from `min` to `max`.
fn integer(min: i64, max: i64, description: &str) -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(types(Type::Integer, true))
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(min))
            .maximum(Some(max))
            .description(Some(description))
            .build(),
    )
}

fn name_description() -> String {
    format!("1 to {MAX_NAME} characters, not only whitespace.")
}

pub fn name() -> Schema {
    text(MAX_NAME, false, &name_description())
}

pub fn optional_name() -> Schema {
    text(MAX_NAME, true, &name_description())
}

pub fn username() -> Schema {
    text(
        MAX_NAME,
        false,
        &format!("1 to {MAX_NAME} characters, not only whitespace; unique within the realm."),
    )
}

pub fn optional_username() -> Schema {
    text(
        MAX_NAME,
        true,
        &format!("1 to {MAX_NAME} characters, not only whitespace; unique within the realm."),
    )
}

pub fn groups() -> Schema {
    text_list(
        MAX_NAME,
        &format!("Group names: at most {MAX_LIST}, each 1 to {MAX_NAME} characters; repeats are dropped."),
    )
}

pub fn tags() -> Schema {
    text_list(
        MAX_TAG,
        &format!("At most {MAX_LIST} tags, each 1 to {MAX_TAG} characters."),
    )
}

pub fn realm_ttl() -> Schema {
    integer(
        MIN_REALM_TTL,
        MAX_REALM_TTL,
        &format!("Minutes, {MIN_REALM_TTL} to {MAX_REALM_TTL}; default 10."),
    )
}

pub fn key_ttl() -> Schema {
    integer(
        1,
        MAX_KEY_TTL,
        &format!("Seconds until the key expires, 1 to {MAX_KEY_TTL}; without it the key does not expire."),
    )
}

/// The secret presented to the identity endpoint: any non-empty string.
pub fn presented_secret() -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .description(Some("The key the client presented to the gateway."))
            .build(),
    )
}

/// `CreateKey`: one of `{type: "new"}` (the service generates the secret; giving one is 400)
/// and `{type: "legacy", secret}`, each with optional `tags` and `ttl`.
pub fn create_key() -> RefOr<Schema> {
    let variant = |kind: &str, secret: Schema, secret_required: bool, description: &str| {
        let mut object = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "type",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some([kind])),
            )
            .required("type")
            .property("secret", secret)
            .property("tags", tags())
            .property("ttl", key_ttl())
            .additional_properties(Some(
                utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
            ))
            .description(Some(description));
        if secret_required {
            object = object.required("secret");
        }
        object.build()
    };
    let legacy_secret = Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_SECRET))
            .description(Some(format!(
                "The existing key, 1 to {MAX_SECRET} characters; unique within the realm."
            )))
            .build(),
    );
    let no_secret = Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::Null)
            .description(Some(
                "Generated by the service for type new; giving one is 400.",
            ))
            .build(),
    );
    RefOr::T(Schema::OneOf(
        OneOfBuilder::new()
            .item(variant(
                "new",
                no_secret,
                false,
                "A key whose secret the service generates (krk_ followed by 43 base62 characters).",
            ))
            .item(variant(
                "legacy",
                legacy_secret,
                true,
                "A key whose secret you give, to bring an existing key over.",
            ))
            .description(Some(
                "`type: new` generates the secret; `type: legacy` takes `secret`. The secret is in the answer only.",
            ))
            .build(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_table_is_rusts_definition() {
        let listed = |c: char| WHITESPACE.iter().any(|&(from, to)| from <= c && c <= to);
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            assert_eq!(listed(c), c.is_whitespace(), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn pattern_is_a_negated_class_of_escapes() {
        let pattern = not_blank_pattern();
        assert!(pattern.starts_with("[^\\u0009-\\u000D\\u0020"), "{pattern}");
        assert!(pattern.ends_with("\\u3000]"), "{pattern}");
    }
}
