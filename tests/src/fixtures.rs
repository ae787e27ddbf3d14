//! Shared set-ups of the scenarios: a realm service with a control plane, its data-plane token
//! and a realm that allows it (the seed's first steps), and the control-plane consumers of Kong's
//! key-auth tests.

use std::net::SocketAddr;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::gateway::{GatewaySpec, TOKEN_ENV};
use crate::realm::RealmService;

/// A realm service with one control plane, its data-plane token and one realm allowing it.
pub struct RealmWorld {
    pub service: RealmService,
    pub cp_id: String,
    pub token: String,
    pub realm_id: String,
}

impl RealmWorld {
    /// Starts a realm service and sets it up as [`RealmWorld::on`] does.
    pub async fn start() -> anyhow::Result<Self> {
        Self::on(RealmService::start().await?).await
    }

    /// Creates control plane `cp`, a data-plane token for it and a realm `prod` with
    /// `allowed_control_planes: [cp]` on `service`, through the admin API (the seed's first
    /// steps).
    pub async fn on(service: RealmService) -> anyhow::Result<Self> {
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

    /// A gateway spec sending to `upstream`, with cluster `realm_us` on this realm service.
    pub fn spec(&self, upstream: SocketAddr) -> GatewaySpec {
        let mut spec = GatewaySpec::new(upstream);
        spec.cluster("realm_us", self.service.addr());
        spec
    }

    /// A filter configuration that looks keys up in this realm only, in region `us` (cluster
    /// `realm_us`), with the token inline.
    pub fn realm_listener(&self) -> Value {
        json!({
            "identity_realms": [realm_entry(&self.realm_id, Some("us"))],
            "realm_service": self.realm_service_config(json!({"us": "realm_us"})),
        })
    }

    /// The seed's plugin configuration: key name `apikey`, `identity_realms` [this realm in
    /// region `us`, cp], and the data-plane token from the gateway's environment
    /// ([`TOKEN_ENV`], which the spec must set).
    pub fn seed_listener(&self) -> Value {
        json!({
            "key_names": ["apikey"],
            "identity_realms": [realm_entry(&self.realm_id, Some("us")), cp_entry()],
            "realm_service": {"clusters": {"us": "realm_us"}, "token_env": TOKEN_ENV},
        })
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
