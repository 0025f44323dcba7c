//! Kafka client settings shared by every service, read from the environment so that the same
//! image runs against the local broker and a managed SASL_SSL cluster.

use std::fmt;

use rdkafka::ClientConfig;

use crate::Secret;

mod cluster;
pub mod commits;

pub use cluster::is_transient;

/// `KAFKA_SECURITY_PROTOCOL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// SASL mechanisms librdkafka supports in our build (no GSSAPI/Kerberos).
const SASL_MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// Every problem found in the Kafka environment variables, reported at once.
#[derive(Debug, thiserror::Error)]
pub struct KafkaConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for KafkaConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid Kafka settings in the environment:")?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

/// Validated Kafka connection settings.
///
/// | variable | meaning | default |
/// |---|---|---|
/// | `KAFKA_BROKERS` | bootstrap servers, comma-separated `host:port` | `127.0.0.1:9092` |
/// | `KAFKA_SECURITY_PROTOCOL` | `plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl` | `plaintext` |
/// | `KAFKA_SASL_MECHANISM` | `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` | none |
/// | `KAFKA_SASL_USERNAME` | SASL user | none |
/// | `KAFKA_SASL_PASSWORD` / `KAFKA_SASL_PASSWORD_FILE` | SASL password, or a file holding it | none |
/// | `KAFKA_SSL_CA_LOCATION` | PEM file of CA certificates to trust | system roots |
/// | `KAFKA_SSL_CERTIFICATE_LOCATION`, `KAFKA_SSL_KEY_LOCATION` | client certificate and key (mTLS) | none |
/// | `KAFKA_CLIENT_ID` | client id shown in broker logs and quotas, for every client of the process | each client's own (`qualifier`, `qualifier-ingest`, `delivery-<topic>`, `delivery-dlq`, …) |
/// | `KAFKA_DEBUG` | librdkafka's `debug` contexts (e.g. `cgrp,fetch`), logged at debug level under the target `librdkafka` (`RUST_LOG=info,librdkafka=debug`) | none |
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub security_protocol: SecurityProtocol,
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<Secret>,
    pub ssl_ca_location: Option<String>,
    pub ssl_certificate_location: Option<String>,
    pub ssl_key_location: Option<String>,
    pub client_id: Option<String>,
    /// librdkafka's `debug` contexts (`KAFKA_DEBUG`), for reproducing a client problem.
    pub debug: Option<String>,
}

/// librdkafka's debug contexts (its CONFIGURATION.md, `debug`).
const DEBUG_CONTEXTS: [&str; 21] = [
    "generic",
    "broker",
    "topic",
    "metadata",
    "feature",
    "queue",
    "msg",
    "protocol",
    "cgrp",
    "security",
    "fetch",
    "interceptor",
    "plugin",
    "consumer",
    "admin",
    "eos",
    "mock",
    "assignor",
    "conf",
    "telemetry",
    "all",
];

impl KafkaSettings {
    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Self, KafkaConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads and validates settings from `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, KafkaConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut problems = Vec::new();

        let brokers = get("KAFKA_BROKERS").unwrap_or_else(|| "127.0.0.1:9092".to_owned());
        let brokers = match parse_brokers(&brokers) {
            Ok(list) => list,
            Err(broker_problems) => {
                problems.extend(broker_problems);
                brokers
            }
        };

        let security_protocol = match get("KAFKA_SECURITY_PROTOCOL").map(|v| v.to_ascii_lowercase())
        {
            None => SecurityProtocol::Plaintext,
            Some(v) => match v.as_str() {
                "plaintext" => SecurityProtocol::Plaintext,
                "ssl" => SecurityProtocol::Ssl,
                "sasl_plaintext" => SecurityProtocol::SaslPlaintext,
                "sasl_ssl" => SecurityProtocol::SaslSsl,
                _ => {
                    problems.push(format!(
                        "KAFKA_SECURITY_PROTOCOL: must be one of plaintext, ssl, sasl_plaintext, sasl_ssl; got `{v}`"
                    ));
                    SecurityProtocol::Plaintext
                }
            },
        };

        let sasl_mechanism = get("KAFKA_SASL_MECHANISM").map(|v| v.to_ascii_uppercase());
        let sasl_username = get("KAFKA_SASL_USERNAME");
        let sasl_password = match (get("KAFKA_SASL_PASSWORD"), get("KAFKA_SASL_PASSWORD_FILE")) {
            (Some(_), Some(_)) => {
                problems.push(
                    "KAFKA_SASL_PASSWORD and KAFKA_SASL_PASSWORD_FILE: set only one".to_owned(),
                );
                None
            }
            (Some(password), None) => Some(Secret::new(password)),
            (None, Some(path)) => match std::fs::read_to_string(&path) {
                Ok(password) => Some(Secret::new(password.trim_end_matches(['\r', '\n']))),
                Err(e) => {
                    problems.push(format!(
                        "KAFKA_SASL_PASSWORD_FILE: cannot read `{path}`: {e}"
                    ));
                    None
                }
            },
            (None, None) => None,
        };

        if security_protocol.uses_sasl() {
            match &sasl_mechanism {
                None => problems.push(format!(
                    "KAFKA_SASL_MECHANISM: required with KAFKA_SECURITY_PROTOCOL={}; one of {}",
                    security_protocol.as_librdkafka(),
                    SASL_MECHANISMS.join(", ")
                )),
                Some(m) if !SASL_MECHANISMS.contains(&m.as_str()) => problems.push(format!(
                    "KAFKA_SASL_MECHANISM: must be one of {}; got `{m}`",
                    SASL_MECHANISMS.join(", ")
                )),
                Some(_) => {}
            }
            if sasl_username.is_none() {
                problems.push("KAFKA_SASL_USERNAME: required with SASL".to_owned());
            }
            if sasl_password.is_none() {
                problems.push(
                    "KAFKA_SASL_PASSWORD (or KAFKA_SASL_PASSWORD_FILE): required with SASL"
                        .to_owned(),
                );
            }
        } else if sasl_mechanism.is_some() || sasl_username.is_some() || sasl_password.is_some() {
            problems.push(format!(
                "KAFKA_SASL_*: set, but KAFKA_SECURITY_PROTOCOL is {}; set it to sasl_ssl (or sasl_plaintext) or remove them",
                security_protocol.as_librdkafka()
            ));
        }

        let ssl_ca_location = get("KAFKA_SSL_CA_LOCATION");
        let ssl_certificate_location = get("KAFKA_SSL_CERTIFICATE_LOCATION");
        let ssl_key_location = get("KAFKA_SSL_KEY_LOCATION");
        let uses_tls = matches!(
            security_protocol,
            SecurityProtocol::Ssl | SecurityProtocol::SaslSsl
        );
        for (name, value) in [
            ("KAFKA_SSL_CA_LOCATION", &ssl_ca_location),
            ("KAFKA_SSL_CERTIFICATE_LOCATION", &ssl_certificate_location),
            ("KAFKA_SSL_KEY_LOCATION", &ssl_key_location),
        ] {
            if let Some(path) = value {
                if !uses_tls {
                    problems.push(format!(
                        "{name}: set, but KAFKA_SECURITY_PROTOCOL is {} (no TLS); set it to ssl or sasl_ssl",
                        security_protocol.as_librdkafka()
                    ));
                } else if !std::path::Path::new(path).is_file() {
                    problems.push(format!("{name}: `{path}` is not a readable file"));
                }
            }
        }
        if ssl_certificate_location.is_some() != ssl_key_location.is_some() {
            problems.push(
                "KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION: set both or neither"
                    .to_owned(),
            );
        }

        let debug = get("KAFKA_DEBUG");
        if let Some(debug) = &debug {
            for context in debug.split(',').map(str::trim) {
                if !DEBUG_CONTEXTS.contains(&context) {
                    problems.push(format!(
                        "KAFKA_DEBUG: `{context}` is not a librdkafka debug context; use a comma-separated list of {}",
                        DEBUG_CONTEXTS.join(", ")
                    ));
                }
            }
        }

        if !problems.is_empty() {
            return Err(KafkaConfigError { problems });
        }
        Ok(Self {
            brokers,
            security_protocol,
            sasl_mechanism,
            sasl_username,
            sasl_password,
            ssl_ca_location,
            ssl_certificate_location,
            ssl_key_location,
            client_id: get("KAFKA_CLIENT_ID"),
            debug,
        })
    }

    /// A librdkafka client config with the connection settings; callers add what their role
    /// needs (group id, transactional id, …). `default_client_id` is used unless
    /// `KAFKA_CLIENT_ID` is set.
    pub fn client_config(&self, default_client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set(
                "client.id",
                self.client_id.as_deref().unwrap_or(default_client_id),
            )
            .set("security.protocol", self.security_protocol.as_librdkafka());
        if let Some(debug) = &self.debug {
            config.set("debug", debug);
        }
        if let Some(mechanism) = &self.sasl_mechanism {
            config.set("sasl.mechanism", mechanism);
        }
        if let Some(username) = &self.sasl_username {
            config.set("sasl.username", username);
        }
        if let Some(password) = &self.sasl_password {
            config.set("sasl.password", password.expose());
        }
        for (key, value) in [
            ("ssl.ca.location", &self.ssl_ca_location),
            ("ssl.certificate.location", &self.ssl_certificate_location),
            ("ssl.key.location", &self.ssl_key_location),
        ] {
            if let Some(value) = value {
                config.set(key, value);
            }
        }
        config
    }

    /// A librdkafka consumer config: [`Self::client_config`] with a bounded prefetch. By
    /// default librdkafka fetches ahead up to 64 MB (and 100,000 messages a partition) per
    /// consumer, in fetch responses of up to 50 MB. Ours hand what they poll on at once (to a
    /// lane's queue, a transaction, a restore), so a few MB keep fetching ahead. More is RSS:
    /// held while the consumer lives, and kept by the C allocator after it is gone (a
    /// qualifier that restored 1M users held ~55 MB more, ~58 B per user, in glibc's heap).
    /// A consumer whose queue is full fetches again 10 ms later, not librdkafka's 1 s: with a
    /// small queue, a second's pause each time it fills made a restore ten times slower.
    pub fn consumer_config(&self, default_client_id: &str) -> ClientConfig {
        let mut config = self.client_config(default_client_id);
        config
            .set("queued.max.messages.kbytes", "8192")
            .set("queued.min.messages", "10000")
            .set("fetch.max.bytes", "4194304")
            .set("fetch.queue.backoff.ms", "10");
        config
    }

    /// A librdkafka producer config: [`Self::client_config`] plus what every producer of ours
    /// needs so that a write is neither lost nor doubled when brokers fail. `acks=all`: the
    /// leader acknowledges once every in-sync replica (at least `min.insync.replicas`) has the
    /// write, so a leader that dies right after acknowledging does not take it along, and with
    /// fewer in-sync replicas the write fails instead of being kept on too few.
    /// `enable.idempotence=true`: the retries after a leader change or a timed-out request are
    /// written once and in order. Callers add their own tuning (linger, timeouts, a
    /// transactional id), never a weaker `acks`.
    pub fn producer_config(&self, default_client_id: &str) -> ClientConfig {
        let mut config = self.client_config(default_client_id);
        config.set("acks", "all").set("enable.idempotence", "true");
        config
    }
}

/// `KAFKA_BROKERS` as librdkafka's `bootstrap.servers`: the comma-separated `host:port`
/// entries, spaces around them dropped; or one problem per bad entry.
fn parse_brokers(brokers: &str) -> Result<String, Vec<String>> {
    const EXAMPLE: &str = "example: `kafka-0:9092,kafka-1:9092,kafka-2:9092`";
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for entry in brokers.split(',').map(str::trim) {
        match entry.rsplit_once(':') {
            _ if entry.is_empty() => problems.push(format!(
                "KAFKA_BROKERS: an empty entry in `{brokers}` (two commas in a row, or one at an end); list host:port entries separated by commas ({EXAMPLE})"
            )),
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                entries.push(entry);
            }
            Some((host, port)) if !host.is_empty() => problems.push(format!(
                "KAFKA_BROKERS: `{entry}` has no valid port (`{port}`): give a port from 1 to 65535 ({EXAMPLE})"
            )),
            _ => problems.push(format!(
                "KAFKA_BROKERS: `{entry}` is not host:port: add the port the broker listens on ({EXAMPLE})"
            )),
        }
    }
    if problems.is_empty() {
        Ok(entries.join(","))
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests;
