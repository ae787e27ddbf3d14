//! Who a request is, once authenticated: what goes into the `X-Consumer-*` headers.

/// A consumer as the upstream sees it, with the credential that authenticated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub consumer_id: String,
    pub username: Option<String>,
    pub custom_id: Option<String>,
    /// The credential's id (never the key); `None` for the anonymous consumer.
    pub credential_id: Option<String>,
    /// Consumer group names, comma-separated; `None` when there are none.
    pub groups: Option<String>,
}
