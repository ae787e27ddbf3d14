//! The realm service for the end-to-end tests: the real `realm_service` started in-process on a
//! free loopback port with a temporary SQLite database, and a small client for its admin API that
//! goes over HTTP exactly as the seed's story does.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// A running realm service plus an admin client for it.
pub struct RealmService {
    running: Option<realm_service::RunningService>,
    addr: SocketAddr,
    admin_token: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// A centrally-managed consumer with one key, as the seed's story creates it.
#[derive(Clone, Debug)]
pub struct RealmConsumer {
    pub id: String,
    pub username: String,
    pub key_id: String,
    /// The key's secret (shown once by the API).
    pub secret: String,
}

impl RealmService {
    /// Starts the service on 127.0.0.1:0 with a fresh SQLite database and a random admin token.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(None, None).await
    }

    /// Starts a replica on the PostgreSQL database at `url`, accepting `admin_token`.
    pub async fn start_on(url: &str, admin_token: &str) -> anyhow::Result<Self> {
        Self::start_with(Some(url), Some(admin_token)).await
    }

    async fn start_with(url: Option<&str>, admin_token: Option<&str>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("keyrealm-realm-")
            .tempdir()?;
        let admin_token = admin_token
            .map(str::to_string)
            .unwrap_or_else(|| format!("e2e-admin-token-{}", random_suffix()));
        let mut config = match url {
            Some(url) => realm_service::ServiceConfig::new(url),
            None => realm_service::ServiceConfig::new(dir.path().join("realm.db")),
        };
        config.admin_token = Some(admin_token.clone());
        let running = realm_service::spawn(config)
            .await
            .map_err(|err| anyhow::anyhow!("realm_service::spawn failed: {err}"))?;
        let addr = running.local_addr();
        Ok(Self {
            running: Some(running),
            addr,
            admin_token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            _dir: dir,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin token the service was started with.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The service's SQLite file.
    pub fn database_path(&self) -> std::path::PathBuf {
        self._dir.path().join("realm.db")
    }

    /// Stops the service (it no longer accepts connections; open ones are dropped).
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }

    /// Sends an admin request and returns the JSON answer, failing unless the status is `expect`.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        expect: u16,
    ) -> anyhow::Result<Value> {
        let url = format!("http://{}{}", self.addr, path);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.admin_token);
        if let Some(body) = &body {
            req = req.json(body);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = res.status().as_u16();
        let text = res.text().await?;
        if status != expect {
            bail!("{method} {path} {body:?}: expected {expect}, got {status}: {text}");
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON: {text}"))
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.admin(reqwest::Method::POST, path, Some(body), 201)
            .await
    }

    /// `POST /v2/control-planes` → the control plane's id.
    pub async fn create_control_plane(&self, name: &str) -> anyhow::Result<String> {
        let cp = self
            .post("/v2/control-planes", json!({ "name": name }))
            .await?;
        string_field(&cp, "id")
    }

    /// `POST /v2/control-planes/{cp}/data-plane-tokens` → the token (shown once).
    pub async fn create_data_plane_token(&self, cp_id: &str) -> anyhow::Result<String> {
        let token = self
            .post(
                &format!("/v2/control-planes/{cp_id}/data-plane-tokens"),
                json!({ "name": "e2e" }),
            )
            .await?;
        string_field(&token, "token")
    }

    /// `POST /v1/realms` with `body` → the realm's id.
    pub async fn create_realm(&self, body: Value) -> anyhow::Result<String> {
        let realm = self.post("/v1/realms", body).await?;
        string_field(&realm, "id")
    }

    /// `POST /v1/realms/{realm}/consumers` with `body` → the consumer object.
    pub async fn create_consumer(&self, realm_id: &str, body: Value) -> anyhow::Result<Value> {
        self.post(&format!("/v1/realms/{realm_id}/consumers"), body)
            .await
    }

    /// `POST /v1/realms/{realm}/consumers/{consumer}/keys` with `body` → the key object (with
    /// its `secret`).
    pub async fn create_key(
        &self,
        realm_id: &str,
        consumer_id: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        self.post(
            &format!("/v1/realms/{realm_id}/consumers/{consumer_id}/keys"),
            body,
        )
        .await
    }

    /// Creates consumer `username` in the realm with a new key (`type: new`), as the seed does.
    pub async fn consumer_with_key(
        &self,
        realm_id: &str,
        username: &str,
    ) -> anyhow::Result<RealmConsumer> {
        self.consumer_with_key_body(
            realm_id,
            json!({ "username": username }),
            json!({"type": "new"}),
        )
        .await
    }

    /// Creates a consumer (`consumer` body) with one key (`key` body).
    pub async fn consumer_with_key_body(
        &self,
        realm_id: &str,
        consumer: Value,
        key: Value,
    ) -> anyhow::Result<RealmConsumer> {
        let consumer = self.create_consumer(realm_id, consumer).await?;
        let id = string_field(&consumer, "id")?;
        let key = self.create_key(realm_id, &id, key).await?;
        Ok(RealmConsumer {
            username: string_field(&consumer, "username")?,
            id,
            key_id: string_field(&key, "id")?,
            secret: string_field(&key, "secret")?,
        })
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let url = format!("http://{}/metrics", self.addr);
        let res = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| url.clone())?;
        if res.status().as_u16() != 200 {
            bail!("GET {url}: {}", res.status());
        }
        Ok(res.text().await?)
    }

    /// How many `POST /{realm}/v0/authenticate` calls the service has answered (all results):
    /// the sum of `realm_service_authenticate_total`.
    pub async fn authenticate_calls(&self) -> anyhow::Result<u64> {
        Ok(sum_counter(
            &self.metrics().await?,
            "realm_service_authenticate_total",
        ))
    }
}

/// Sums every sample of `name` (any labels) in a Prometheus text exposition.
pub fn sum_counter(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next())
        .filter_map(|value| value.parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}

fn string_field(value: &Value, field: &str) -> anyhow::Result<String> {
    value
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("no string `{field}` in {value}"))
}

/// A suffix unlikely to repeat (time and process id); test tokens need not be cryptographic.
pub fn random_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", nanos, std::process::id())
}

#[cfg(test)]
mod tests {
    use super::sum_counter;

    #[test]
    fn sums_all_label_sets_of_a_counter_and_nothing_else() {
        let text = "# TYPE realm_service_authenticate_total counter\n\
                    realm_service_authenticate_total{result=\"found\"} 3\n\
                    realm_service_authenticate_total{result=\"not_found\"} 2\n\
                    realm_service_authenticate_total_other 7\n\
                    realm_service_authenticate_cache_total{result=\"hit\"} 9\n";
        assert_eq!(sum_counter(text, "realm_service_authenticate_total"), 5);
    }
}
