//! What every segment-relay service shares at run time: logging, the Prometheus registry and
//! admin HTTP server (`/metrics`, `/healthz`, `/livez`, `/readyz`) with the liveness watchdog,
//! Kafka client settings from the environment, the `kafka:` config block read one way by
//! every service, secrets that never print, and the shutdown signal.

mod admin;
pub mod clock;
pub mod config;
mod errors;
mod kafka;
pub mod lag;
pub mod liveness;
mod logging;
mod metrics;
pub mod partition;
pub mod produce;
mod runtime;
mod secret;
mod shutdown;
pub mod watch;

pub use admin::{AdminServer, Health, new_registry};
pub use errors::{ConfigError, exit_code};
pub use kafka::{KafkaConfigError, KafkaSettings, SecurityProtocol, commits, is_transient};
pub use lag::ConsumerLag;
pub use liveness::{Heartbeat, Liveness, Waiter, Waiting};
pub use logging::{LogFormat, LoggingError, init_logging};
pub use metrics::{MetricHandle, partitions_revoked, register_all};
pub use prometheus;
pub use runtime::{ServiceRuntime, StartError};
pub use secret::Secret;
pub use shutdown::shutdown_signal;
