//! The chaos runs' own broker: `deploy/local/kafka.sh` with `KAFKA_PORT` and
//! `KAFKA_STATE_DIR`, so that stopping it never touches the broker other tests and people
//! share on 9092.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rdkafka::ClientConfig;
use telemetry::KafkaSettings;

/// A single-node broker on `127.0.0.1:<port>` (controller on `port + 1`) with its state in
/// `<repo>/.kafka-chaos`.
#[derive(Debug)]
pub struct ChaosBroker {
    port: u16,
    state_dir: PathBuf,
    script: PathBuf,
}

impl ChaosBroker {
    /// `CHAOS_KAFKA_PORT` (default 29092).
    pub fn from_env() -> Self {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let port = std::env::var("CHAOS_KAFKA_PORT")
            .ok()
            .map(|p| {
                p.parse()
                    .unwrap_or_else(|_| panic!("CHAOS_KAFKA_PORT: not a port: {p}"))
            })
            .unwrap_or(29092);
        assert_ne!(
            port, 9092,
            "CHAOS_KAFKA_PORT must not be the shared broker's port"
        );
        Self {
            port,
            state_dir: repo.join(".kafka-chaos"),
            script: repo.join("deploy/local/kafka.sh"),
        }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn run(&self, action: &str) -> Result<String, String> {
        let output = Command::new(&self.script)
            .arg(action)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_STATE_DIR", &self.state_dir)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.script.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "`KAFKA_PORT={} KAFKA_STATE_DIR={} {} {action}` failed ({}):\n{text}",
                self.port,
                self.state_dir.display(),
                self.script.display(),
                output.status
            ))
        }
    }

    /// Starts the broker (a no-op when it runs) and waits until it answers; panics with
    /// kafka.sh's output when it cannot: a fault run never passes without its broker.
    pub fn up(&self) {
        if let Err(e) = self.run("up") {
            panic!("cannot start the chaos broker: {e}");
        }
        if let Err(e) = self.settings().check_connection(Duration::from_secs(30)) {
            panic!(
                "the chaos broker at {} does not answer after start: {e}",
                self.brokers()
            );
        }
    }

    /// Stops the broker; no JVM of it is left (kafka.sh checks).
    pub fn down(&self) {
        if let Err(e) = self.run("down") {
            panic!("cannot stop the chaos broker: {e}");
        }
    }

    /// Stops the broker if it runs; for clean-up paths, where a second panic would abort.
    pub fn down_quietly(&self) {
        if let Err(e) = self.run("down") {
            eprintln!("chaos: {e}");
        }
    }

    /// Client settings for this broker (what the services get as `KAFKA_BROKERS`).
    pub fn settings(&self) -> KafkaSettings {
        let brokers = self.brokers();
        KafkaSettings::from_lookup(|name| (name == "KAFKA_BROKERS").then(|| brokers.clone()))
            .unwrap()
    }

    pub fn client_config(&self) -> ClientConfig {
        self.settings().client_config("segment-relay-chaos")
    }

    /// Creates `name` and waits until every partition has a leader.
    pub async fn create_topic(&self, name: &str, partitions: i32, config: &[(&str, &str)]) {
        testkit::kafka::create_topic_on(&self.client_config(), name, partitions, config).await;
    }
}
