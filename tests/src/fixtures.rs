//! Shared set-ups of the scenarios: a realm service with a control plane, its data-plane token
//! and a realm that allows it (the seed's first steps), and the control-plane consumers of Kong's
//! key-auth tests.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::realm::RealmService;

/// A realm service with one control plane, its data-plane token and one realm allowing it.
pub struct RealmWorld {
    pub service: RealmService,
    pub cp_id: String,
    pub token: String,
    pub realm_id: String,
}

impl RealmWorld {
    /// Starts a realm service and creates control plane `cp`, a data-plane token for it and a
    /// realm `prod` with `allowed_control_planes: [cp]`, through the admin API.
    pub async fn start() -> anyhow::Result<Self> {
        let service = RealmService::start().await?;
        let cp_id = service.create_control_plane("cp").await?;
        let token = service.create_data_plane_token(&cp_id).await?;
        let realm_id = service
            .create_realm(json!({"name": "prod", "allowed_control_planes": [cp_id]}))
            .await?;
        Ok(Self {
            service,
            cp_id,
            token,
            realm_id,
        })
    }

    /// Creates another realm that allows this control plane.
    pub async fn another_realm(&self, name: &str) -> anyhow::Result<String> {
        self.service
            .create_realm(json!({"name": name, "allowed_control_planes": [self.cp_id]}))
            .await
    }

    /// `realm_service` for a filter configuration: `clusters` (region → cluster) and the token
    /// inline.
    pub fn realm_service_config(&self, clusters: Value) -> Value {
        json!({"clusters": clusters, "token": self.token, "timeout_ms": 2000})
    }
}

/// An identity_realms entry for realm `id` in `region` (`None`: the `default` cluster).
pub fn realm_entry(id: &str, region: Option<&str>) -> Value {
    json!({"scope": "realm", "id": id, "region": region})
}

/// The identity_realms entry for the control plane's own consumers.
pub fn cp_entry() -> Value {
    json!({"scope": "cp", "id": null})
}

/// `sha256:<hex>` of `key`, the hashed form a configuration may hold.
pub fn sha256_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Kong's key-auth test consumers as control-plane consumers.
pub mod kong {
    use super::*;

    pub const BOB_ID: &str = "0b0b0b0b-0000-4000-8000-00000000b0b0";
    pub const BOB_CUSTOM_ID: &str = "bob-custom";
    pub const BOB_CREDENTIAL_ID: &str = "0b0b0b0b-0000-4000-8000-0000000c0001";
    pub const BOB_HASHED_CREDENTIAL_ID: &str = "0b0b0b0b-0000-4000-8000-0000000c0002";
    /// Bob's plaintext key, as in Kong's tests.
    pub const BOB_KEY: &str = "kong";
    /// Bob's second key, held in the configuration only as `sha256:` of this.
    pub const BOB_HASHED_KEY: &str = "hashed-secret-of-bob";
    pub const NOBODY_ID: &str = "0a0a0a0a-0000-4000-8000-0000000a0a0a";
    pub const NOBODY_USERNAME: &str = "no-body";

    /// bob (custom id, a plaintext and a hashed key) and no-body (the anonymous consumer).
    pub fn consumers() -> Value {
        json!([
            {
                "id": BOB_ID, "username": "bob", "custom_id": BOB_CUSTOM_ID, "tags": [],
                "keyauth_credentials": [
                    {"id": BOB_CREDENTIAL_ID, "key": BOB_KEY},
                    {"id": BOB_HASHED_CREDENTIAL_ID, "key": sha256_key(BOB_HASHED_KEY)},
                ],
            },
            {"id": NOBODY_ID, "username": NOBODY_USERNAME, "tags": [], "keyauth_credentials": []},
        ])
    }

    /// A control-plane-only filter configuration with Kong's consumers plus `overrides`.
    pub fn config(overrides: Value) -> Value {
        let mut config = json!({"consumers": consumers()});
        if let (Some(config), Value::Object(overrides)) = (config.as_object_mut(), overrides) {
            config.extend(overrides);
        }
        config
    }
}
