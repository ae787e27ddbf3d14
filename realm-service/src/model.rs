//! The JSON shapes of the API: what clients send and what they get back.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A control plane: the thing whose data planes call the identity endpoint.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ControlPlane {
    pub id: Uuid,
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateControlPlane {
    #[schema(schema_with = crate::schema::name)]
    pub name: String,
}

/// A data-plane token as listed (the token itself is never shown again).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DataPlaneToken {
    pub id: Uuid,
    pub name: Option<String>,
    pub control_plane_id: Uuid,
    pub created_at: String,
}

/// The answer to creating a data-plane token: the only time `token` is shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedDataPlaneToken {
    pub id: Uuid,
    pub name: Option<String>,
    pub control_plane_id: Uuid,
    /// `krdp_` followed by 43 base62 characters. Store it now: it cannot be read again.
    pub token: String,
    pub created_at: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDataPlaneToken {
    #[schema(schema_with = crate::schema::optional_name)]
    pub name: Option<String>,
}

/// A realm: a home for consumers, shared by the control planes it allows.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Realm {
    pub id: Uuid,
    pub name: String,
    /// Minutes a data plane may cache a found key.
    pub ttl: i64,
    /// Minutes a data plane may cache a key that was not found.
    pub negative_ttl: i64,
    /// Group names every consumer of the realm belongs to.
    pub consumer_groups: Vec<String>,
    pub allowed_control_planes: Vec<Uuid>,
    pub allow_all_control_planes: bool,
    pub created_at: String,
    pub updated_at: String,
}

/// A realm body: `CreateRealm` (name required) and `UpdateRealm` (every field optional) share
/// every field but the name, so both are written once here.
macro_rules! realm_body {
    ($(#[$meta:meta])* $body:ident { $(#[$name_meta:meta])* name: $name:ty }) => {
        $(#[$meta])*
        #[derive(Debug, Default, Deserialize, ToSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $body {
            $(#[$name_meta])*
            pub name: $name,
            /// Control planes whose data planes may authenticate; each must exist (a PATCH
            /// replaces the list as a whole).
            #[serde(default, deserialize_with = "uuids")]
            pub allowed_control_planes: Option<Vec<Uuid>>,
            pub allow_all_control_planes: Option<bool>,
            /// Minutes a data plane may cache a found key.
            #[serde(default, deserialize_with = "integer")]
            #[schema(schema_with = crate::schema::realm_ttl)]
            pub ttl: Option<i64>,
            /// Minutes a data plane may cache a miss.
            #[serde(default, deserialize_with = "integer")]
            #[schema(schema_with = crate::schema::realm_ttl)]
            pub negative_ttl: Option<i64>,
            #[schema(schema_with = crate::schema::groups)]
            pub consumer_groups: Option<Vec<String>>,
        }
    };
}

realm_body!(CreateRealm {
    #[schema(schema_with = crate::schema::name)]
    name: String
});

realm_body!(UpdateRealm {
    #[schema(schema_with = crate::schema::optional_name)]
    name: Option<String>
});

/// A consumer of a realm.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Consumer {
    pub id: Uuid,
    pub username: String,
    pub custom_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub tags: Vec<String>,
    /// The consumer's own groups (the realm's groups are added when it authenticates).
    pub consumer_groups: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConsumer {
    #[schema(schema_with = crate::schema::username)]
    pub username: String,
    #[schema(schema_with = crate::schema::optional_name)]
    pub custom_id: Option<String>,
    #[serde(rename = "type")]
    #[schema(schema_with = crate::schema::optional_name)]
    pub kind: Option<String>,
    #[schema(schema_with = crate::schema::tags)]
    pub tags: Option<Vec<String>>,
    #[schema(schema_with = crate::schema::groups)]
    pub consumer_groups: Option<Vec<String>>,
}

/// Every field optional; `custom_id` and `type` may be set to null to clear them.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateConsumer {
    #[schema(schema_with = crate::schema::optional_username)]
    pub username: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(schema_with = crate::schema::optional_name)]
    pub custom_id: Option<Option<String>>,
    #[serde(default, rename = "type", deserialize_with = "nullable")]
    #[schema(schema_with = crate::schema::optional_name)]
    pub kind: Option<Option<String>>,
    #[schema(schema_with = crate::schema::tags)]
    pub tags: Option<Vec<String>>,
    #[schema(schema_with = crate::schema::groups)]
    pub consumer_groups: Option<Vec<String>>,
}

/// Distinguishes "absent" (None) from "null" (Some(None)).
fn nullable<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

/// An optional integer field. JSON has numbers, not integers: as in JSON Schema's `integer`,
/// a number with no fractional part (`60.0`, `6e1`) is one. Beyond the `i64` range it saturates,
/// so the range check names the field; a fraction is a 400 (`type`).
fn integer<'de, D>(de: D) -> Result<Option<i64>, D::Error>
where
    D: Deserializer<'de>,
{
    use serde::de::{Error, Unexpected};
    let Some(number) = Option::<serde_json::Number>::deserialize(de)? else {
        return Ok(None);
    };
    if let Some(n) = number.as_i64() {
        return Ok(Some(n));
    }
    if number.as_u64().is_some() {
        return Ok(Some(i64::MAX));
    }
    match number.as_f64() {
        // `as` saturates at the i64 bounds.
        Some(f) if f.is_finite() && f.fract() == 0.0 => Ok(Some(f as i64)),
        Some(f) => Err(D::Error::invalid_type(Unexpected::Float(f), &"an integer")),
        None => Err(D::Error::custom("not a number")),
    }
}

/// A UUID in a request body, in the hyphenated form `format: uuid` means
/// ([`crate::extract::parse_uuid`]).
struct Hyphenated(Uuid);

impl<'de> Deserialize<'de> for Hyphenated {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        use serde::de::{Error, Unexpected};
        let text = String::deserialize(de)?;
        crate::extract::parse_uuid(&text)
            .map(Hyphenated)
            .ok_or_else(|| D::Error::invalid_value(Unexpected::Str(&text), &"a hyphenated UUID"))
    }
}

fn uuid<'de, D: Deserializer<'de>>(de: D) -> Result<Uuid, D::Error> {
    Hyphenated::deserialize(de).map(|h| h.0)
}

fn uuids<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Vec<Uuid>>, D::Error> {
    Ok(Option::<Vec<Hyphenated>>::deserialize(de)?
        .map(|ids| ids.into_iter().map(|h| h.0).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveConsumer {
    #[serde(deserialize_with = "uuid")]
    pub target_realm_id: Uuid,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MovedConsumer {
    pub realm_id: Uuid,
}

/// `new`: the service generates the secret. `legacy`: the client gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    New,
    Legacy,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::New => "new",
            KeyType::Legacy => "legacy",
        }
    }
    pub fn parse(s: &str) -> KeyType {
        if s == "legacy" {
            KeyType::Legacy
        } else {
            KeyType::New
        }
    }
}

/// Its OpenAPI schema is written by hand ([`crate::schema::create_key`]): a `oneOf` of the
/// `new` and `legacy` shapes, which a derived schema cannot say.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[serde(rename = "type")]
    pub kind: KeyType,
    /// Required for `legacy`, refused for `new`. 1 to 1024 characters.
    pub secret: Option<String>,
    pub tags: Option<Vec<String>>,
    /// Seconds until the key expires (1 to 315360000).
    #[serde(default, deserialize_with = "integer")]
    pub ttl: Option<i64>,
}

impl utoipa::PartialSchema for CreateKey {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::schema::create_key()
    }
}

impl ToSchema for CreateKey {}

/// A key as listed: never the secret.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Key {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: KeyType,
    pub tags: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    /// RFC 3339, or null for a key that does not expire.
    pub expires_at: Option<String>,
}

/// The answer to creating a key: the only response that ever holds `secret`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedKey {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: KeyType,
    pub secret: String,
    pub tags: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    pub expires_at: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthenticateRequest {
    /// The key the client presented to the gateway.
    #[schema(schema_with = crate::schema::presented_secret)]
    pub secret: String,
}

/// The authenticated consumer, as a data plane needs it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Identity {
    pub id: Uuid,
    pub username: String,
    pub custom_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub tags: Vec<String>,
    /// The realm's groups followed by the consumer's own, without repeats.
    pub consumer_group_names: Vec<String>,
    /// Minutes the data plane may cache this answer.
    pub ttl: i64,
    /// Minutes the data plane may cache a miss in this realm.
    pub negative_ttl: i64,
    pub credential: Credential,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Credential {
    pub id: Uuid,
    pub created_at: String,
    pub tags: Vec<String>,
    pub expires_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// Every list answer: Konnect's cursor paging.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub meta: PageMeta,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PageMeta {
    pub page: PageInfo,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PageInfo {
    /// Path and query of the next page, or null on the last page.
    pub next: Option<String>,
    /// Path and query of the previous page, or null on the first page.
    pub previous: Option<String>,
    /// The page size used.
    pub size: u32,
}
