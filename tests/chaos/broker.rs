//! The chaos runs' own brokers: `deploy/local/kafka.sh` with `KAFKA_PORT` and
//! `KAFKA_STATE_DIR`, so that stopping them never touches the broker other tests and people
//! share on 9092 — a single node, and a three-node cluster (`KAFKA_NODES=3`) whose nodes the
//! cluster scenarios kill, stop and restart one by one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use telemetry::KafkaSettings;

/// A single node on `127.0.0.1:<port>` (controller on `port + 1`) with its state in
/// `<repo>/.kafka-chaos`, or a cluster of `nodes` on `port`, `port + 2`, … with its state in
/// `<repo>/.kafka-chaos-cluster`.
#[derive(Debug, Clone)]
pub struct ChaosBroker {
    port: u16,
    nodes: u16,
    state_dir: PathBuf,
    script: PathBuf,
}

fn port_from_env(name: &str, default: u16) -> u16 {
    let port = std::env::var(name)
        .ok()
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("{name}: not a port: {p}"))
        })
        .unwrap_or(default);
    assert_ne!(port, 9092, "{name} must not be the shared broker's port");
    port
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

impl ChaosBroker {
    /// The single node: `CHAOS_KAFKA_PORT` (default 29092).
    pub fn from_env() -> Self {
        Self {
            port: port_from_env("CHAOS_KAFKA_PORT", 29092),
            nodes: 1,
            state_dir: repo().join(".kafka-chaos"),
            script: repo().join("deploy/local/kafka.sh"),
        }
    }

    /// The three-node cluster: `CHAOS_CLUSTER_PORT` (default 29192; nodes on 29192, 29194,
    /// 29196, controllers on the port after each).
    pub fn cluster_from_env() -> Self {
        Self {
            port: port_from_env("CHAOS_CLUSTER_PORT", 29192),
            nodes: 3,
            state_dir: repo().join(".kafka-chaos-cluster"),
            script: repo().join("deploy/local/kafka.sh"),
        }
    }

    pub fn is_cluster(&self) -> bool {
        self.nodes > 1
    }

    /// Node ids, 1-based (KRaft `node.id`s).
    pub fn nodes(&self) -> std::ops::RangeInclusive<i32> {
        1..=i32::from(self.nodes)
    }

    /// Replicas of every topic: 3 on the cluster (with `min.insync.replicas=2`), else 1.
    pub fn replicas(&self) -> i32 {
        i32::from(self.nodes.min(3))
    }

    pub fn brokers(&self) -> String {
        (0..self.nodes)
            .map(|i| format!("127.0.0.1:{}", self.port + 2 * i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn run(&self, action: &str) -> Result<String, String> {
        self.run_args(&[action])
    }

    fn run_args(&self, args: &[&str]) -> Result<String, String> {
        let action = args.join(" ");
        let output = Command::new(&self.script)
            .args(args)
            .env("KAFKA_NODES", self.nodes.to_string())
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
                "`KAFKA_NODES={} KAFKA_PORT={} KAFKA_STATE_DIR={} {} {action}` failed ({}):\n{text}",
                self.nodes,
                self.port,
                self.state_dir.display(),
                self.script.display(),
                output.status
            ))
        }
    }

    /// Starts the broker or cluster empty, as a fault run begins: the topics of earlier runs
    /// would make each restart, which the scenarios time, slower run after run. Kept, they
    /// once made the single broker's start itself (~2,400 partitions of earlier runs to load)
    /// take longer than the 90 s kafka.sh allows. Panics as [`Self::up`].
    pub fn start_empty(&self) {
        if let Err(e) = self.run("reset") {
            panic!("cannot wipe the chaos broker's data: {e}");
        }
        self.up();
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

    /// Creates `name` ([`Self::replicas`] replicas; the cluster's `min.insync.replicas` is 2)
    /// and waits until every partition has a leader.
    pub async fn create_topic(&self, name: &str, partitions: i32, config: &[(&str, &str)]) {
        testkit::kafka::create_replicated_topic_on(
            &self.client_config(),
            name,
            partitions,
            self.replicas(),
            config,
        )
        .await;
    }

    /// Starts node `node` of the cluster and waits until the cluster lists it again.
    pub fn node_up(&self, node: i32) {
        if let Err(e) = self.run_args(&["node-up", &node.to_string()]) {
            panic!("cannot start node {node}: {e}");
        }
    }

    /// Stops node `node` gracefully (SIGTERM: a controlled shutdown).
    pub fn node_down(&self, node: i32) {
        if let Err(e) = self.run_args(&["node-down", &node.to_string()]) {
            panic!("cannot stop node {node}: {e}");
        }
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`) to node `node`'s JVM.
    pub fn signal(&self, node: i32, signal: &str) {
        let pid = self
            .run_args(&["node-pid", &node.to_string()])
            .unwrap_or_else(|e| panic!("no process for node {node}: {e}"));
        let status = Command::new("kill")
            .args(["-s", signal, pid.trim()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {signal} {pid} failed: {status}");
    }

    fn metadata(&self) -> Result<rdkafka::metadata::Metadata, String> {
        let consumer: BaseConsumer = self.client_config().create().unwrap();
        consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .map_err(|e| e.to_string())
    }

    /// How many partitions of `topics` each node leads.
    pub fn leaders(&self, topics: &[&str]) -> BTreeMap<i32, usize> {
        let metadata = self
            .metadata()
            .unwrap_or_else(|e| panic!("no metadata from the cluster: {e}"));
        let mut out: BTreeMap<i32, usize> = self.nodes().map(|n| (n, 0)).collect();
        for topic in metadata
            .topics()
            .iter()
            .filter(|t| topics.contains(&t.name()))
        {
            for partition in topic.partitions() {
                *out.entry(partition.leader()).or_default() += 1;
            }
        }
        out
    }

    /// The node leading most partitions of `topics` (the lowest id of a tie).
    pub fn busiest_leader(&self, topics: &[&str]) -> (i32, usize) {
        let leaders = self.leaders(topics);
        let most = leaders.values().copied().max().unwrap_or(0);
        let node = leaders
            .iter()
            .find(|(_, n)| **n == most)
            .map(|(node, _)| *node)
            .unwrap();
        (node, most)
    }

    /// Partitions, over every topic (the internal ones too), whose in-sync replicas are fewer
    /// than their replicas; `None` while the cluster does not answer.
    pub fn under_replicated(&self) -> Option<usize> {
        let metadata = self.metadata().ok()?;
        Some(
            metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions())
                .filter(|p| p.leader() < 0 || p.isr().len() < p.replicas().len())
                .count(),
        )
    }

    /// Waits (up to `limit`) until every partition of every topic has all its replicas in
    /// sync, as an operator waits between the steps of a rolling restart; how long it took.
    pub fn wait_fully_replicated(&self, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            match self.under_replicated() {
                Some(0) => return started.elapsed(),
                left => assert!(
                    started.elapsed() < limit,
                    "the cluster is not fully replicated {} s after the fault ended: {left:?} partitions under-replicated",
                    limit.as_secs()
                ),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The transaction coordinator (node id) of `transactional_id` and the transaction's state
    /// (`Ongoing`, `CompleteCommit`, …), from Kafka's own admin client (`DescribeTransactions`);
    /// or why not (e.g. its 3 s timeout passed on a loaded machine).
    pub fn transaction(&self, transactional_id: &str) -> Result<(i32, String), String> {
        let here = repo().join("deploy/local");
        let output = Command::new("java")
            .arg("-cp")
            .arg(format!("{}/lib/*", self.state_dir.display()))
            .arg(here.join("LocalKafkaAdmin.java"))
            .args(["transaction", transactional_id])
            .env("KAFKA_BROKERS", self.brokers())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        let parsed = text
            .trim()
            .split_once(' ')
            .and_then(|(node, state)| Some((node.parse::<i32>().ok()?, state.to_owned())));
        parsed.ok_or_else(|| {
            format!(
                "cannot describe transaction {transactional_id} ({}): {text}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }
}
