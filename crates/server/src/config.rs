//! verre.toml, as the server takes it: the typed sections of verre-config (every key in
//! docs/CONFIG.md). The gateway takes the backends, policy, keys, `[gateway]`, `[cost]`,
//! `[audit]` and `[http]`; the review UI and delivery worker `[review]` and `[delivery]`
//! ([`crate::review::ReviewSettings::from_config`]).

pub use verre_config::{
    AuditConfig, BackendConfig, BackendKind, ConfigError, CostConfig, DeliveryConfig, GdprConfig,
    HealthConfig, HttpConfig, KeyLimits, ListPrice, ModelRoute, Retention, ReviewConfig,
    VerreConfig, WebhookConfig,
};

/// The name this type had when verre-server parsed verre.toml itself.
pub type GatewayConfig = VerreConfig;
