//! The whole system of one scenario, as real processes on the chaos broker: the qualifier
//! (with its ingest API), two delivery workers, and partner-sim serving three partners (or more,
//! see [`SystemSpec::extra_destinations`]).
//!
//! Every scenario has its own topics and consumer groups. partner-sim is started last (with a
//! certificate made here), so that its outage window, counted from its start, falls into the
//! load.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use testkit::service::{Service, ServiceBuilder, free_port};

use crate::broker::ChaosBroker;
use crate::proxy::FaultProxy;

/// One partner destination: delivery's side (id, segment mapping) and partner-sim's (path).
#[derive(Debug, Clone)]
pub struct Destination {
    pub id: u64,
    pub path: String,
    /// Our segment id → the partner's `Segment_ID`.
    pub segments: Vec<(u64, String)>,
}

impl Destination {
    fn new(id: u64, path: &str, segments: SegmentMapping) -> Self {
        Self {
            id,
            path: path.to_owned(),
            segments: segments
                .iter()
                .map(|&(ours, theirs)| (ours, theirs.to_owned()))
                .collect(),
        }
    }
}

/// Our segment id → the partner's `Segment_ID`, as a constant.
type SegmentMapping = &'static [(u64, &'static str)];

/// The three partners of every scenario (id, path, segment mapping): HMAC (sha256), OAuth
/// 2.0, and HMAC (sha1) — the last is the one the scenarios make fail or slow; the other two
/// show it does not affect them.
const DESTINATIONS: [(u64, &str, SegmentMapping); 3] = [
    (423, "/acme", &[(1, "a-1"), (2, "a-2"), (3, "a-3")]),
    (424, "/oauth", &[(2, "o-2"), (3, "o-3"), (4, "o-4")]),
    (FAULTY_ID, FAULTY_PATH, &[(1, "f-1"), (4, "f-4")]),
];

/// The destination the scenarios break.
pub const FAULTY_ID: u64 = 425;
pub const FAULTY_PATH: &str = "/faulty";

/// The id of the first extra destination (see [`SystemSpec::extra_destinations`]).
const FIRST_EXTRA_ID: u64 = 430;

/// The segments an extra destination maps, by its index: two of the four, in turn.
const EXTRA_SEGMENTS: [[u64; 2]; 6] = [[1, 2], [2, 3], [3, 4], [4, 1], [1, 3], [2, 4]];

/// The scenarios' segment definitions: four segments over traits 1 and 2 living `$ttl1` and
/// `$ttl2` (`0`: for ever) and trait 3 for ever.
macro_rules! definitions {
    ($ttl1:literal, $ttl2:literal) => {
        concat!(
            "inactivity: 120d\n",
            "traits:\n",
            "  - { id: 1, ttl: ",
            $ttl1,
            " }\n",
            "  - { id: 2, ttl: ",
            $ttl2,
            " }\n",
            "  - { id: 3, ttl: 0 }\n",
            "segments:\n",
            "  - { id: 1, name: one, rule: \"T1\" }\n",
            "  - { id: 2, name: one-and-two, rule: \"T1 AND T2\" }\n",
            "  - { id: 3, name: two-or-three, rule: \"T2 OR T3\" }\n",
            "  - { id: 4, name: three-not-one, rule: \"T3 AND NOT T1\" }\n",
        )
    };
}

/// Traits with short lives, so that status 0 follows status 1 within a run. With these rules
/// a user's status in a segment cannot change twice within a second, so a change is
/// identified by (user, segment, status, `DateTime` in seconds).
const DEFINITIONS: &str = definitions!("6s", "10s");

/// The cluster scenarios' rules: the same segments over traits that never expire. Every
/// change is then dated by its event and follows from the user's events in order alone, not
/// from when they were processed, so the output of a run interrupted by faults must equal,
/// change for change, the output of an uninterrupted run over the same input (with expiring
/// traits, an event processed after a stall can legitimately find its trait already expired).
pub const TIMELESS_DEFINITIONS: &str = definitions!("0", "0");

/// The longest trait TTL: after the load stops, the qualifier's timers go on producing
/// changes this long.
pub const LONGEST_TTL: Duration = Duration::from_secs(10);

const HMAC_KEY_A: &str = "chaos-acme-key";
const HMAC_KEY_F: &str = "chaos-faulty-key";
const OAUTH_SECRET: &str = "chaos-oauth-secret";

/// How a scenario sets the system up.
#[derive(Debug, Clone)]
pub struct SystemSpec {
    /// partner-sim `behaviour` of the faulty partner (a YAML flow mapping).
    pub faulty_behaviour: String,
    /// delivery's `defaults` (a YAML flow mapping).
    pub delivery_defaults: String,
    pub workers: usize,
    /// Put a [`FaultProxy`] between delivery and the faulty partner.
    pub proxy_faulty: bool,
    /// Healthy HMAC (sha256) partners besides the three (ids from 430, paths `/extra-430`, …,
    /// each mapping two segments to ids of its own), served by partner-sim like `/acme`.
    /// Default 0.
    pub extra_destinations: usize,
    /// The qualifier's segment definitions. Default: traits living 6 s, 10 s and forever.
    pub definitions: &'static str,
}

impl Default for SystemSpec {
    fn default() -> Self {
        Self {
            faulty_behaviour: "{ latency_ms: [2, 20] }".to_owned(),
            delivery_defaults: "{ batch: { max_users: 100, linger_ms: 100 }, max_in_flight: 2, \
                                queue_capacity: 1000, retry_backoff_ms: 100, \
                                circuit: { failure_threshold: 5, cooldown_ms: 2000 } }"
                .to_owned(),
            workers: 2,
            proxy_faulty: false,
            extra_destinations: 0,
            definitions: DEFINITIONS,
        }
    }
}

impl SystemSpec {
    /// Every destination of the system: the three partners, then the extra ones. Delivery's
    /// and partner-sim's configurations and the ledger are made from this list.
    pub fn destinations(&self) -> Vec<Destination> {
        let base = DESTINATIONS
            .iter()
            .map(|&(id, path, segments)| Destination::new(id, path, segments));
        let extra = (FIRST_EXTRA_ID..)
            .zip(EXTRA_SEGMENTS.iter().cycle())
            .take(self.extra_destinations)
            .map(|(id, segments)| Destination {
                id,
                path: format!("/extra-{id}"),
                segments: segments
                    .iter()
                    .map(|&s| (s, format!("e{id}-{s}")))
                    .collect(),
            });
        base.chain(extra).collect()
    }
}

/// Topic names of one scenario.
#[derive(Debug, Clone)]
pub struct Topics {
    pub events: String,
    pub status: String,
    pub status_batch: String,
    pub changelog: String,
    pub qualifier_dlq: String,
    pub dlq: String,
    pub delivery_log: String,
}

impl Topics {
    /// Every topic named by `unique(<role>)`.
    fn named(unique: impl Fn(&str) -> String) -> Self {
        Self {
            events: unique("events"),
            status: unique("status"),
            status_batch: unique("status-batch"),
            changelog: unique("changelog"),
            qualifier_dlq: unique("qualifier-dlq"),
            dlq: unique("dlq"),
            delivery_log: unique("delivery-log"),
        }
    }
}

pub const PARTITIONS: i32 = 6;

/// How to start the scenario's services: everything but the processes.
#[derive(Debug)]
pub struct Launch {
    pub brokers: String,
    pub topics: Topics,
    pub ingest: String,
    ingest_port: u16,
    pub qualifier_group: String,
    pub delivery_group: String,
    definitions: PathBuf,
    pub delivery_config: PathBuf,
    /// The coalesced-change report of every delivery process started (workers, restarts,
    /// replays): the ledger reads them all.
    coalesced_reports: std::sync::Mutex<Vec<PathBuf>>,
}

/// The running system.
#[derive(Debug)]
pub struct System {
    /// Between delivery and the faulty partner, when the spec asked for it.
    pub proxy: Option<FaultProxy>,
    pub launch: Launch,
    pub qualifier: Service,
    pub workers: Vec<Service>,
    pub sim: Service,
    /// [`SystemSpec::destinations`] of the spec it was started with.
    destinations: Vec<Destination>,
    _dir: tempfile::TempDir,
}

/// A CA and a `127.0.0.1` certificate signed by it, as PEM files in `dir`.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "segment-relay chaos CA");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    paths
}

/// Creates `plain` topics and the compacted `changelog`, [`PARTITIONS`] partitions each.
async fn create_topics(broker: &ChaosBroker, plain: &[&String], changelog: &str) {
    for topic in plain {
        broker.create_topic(topic, PARTITIONS, &[]).await;
    }
    broker
        .create_topic(changelog, PARTITIONS, &[("cleanup.policy", "compact")])
        .await;
}

impl System {
    /// Creates the scenario's topics and starts qualifier, delivery workers and partner-sim,
    /// each ready.
    pub async fn start(broker: &ChaosBroker, name: &str, spec: &SystemSpec) -> Self {
        let unique = |what: &str| testkit::unique_name(&format!("chaos-{name}-{what}"));
        let topics = Topics::named(unique);
        create_topics(
            broker,
            &[
                &topics.events,
                &topics.status,
                &topics.status_batch,
                &topics.qualifier_dlq,
                &topics.dlq,
                &topics.delivery_log,
            ],
            &topics.changelog,
        )
        .await;

        let destinations = spec.destinations();
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = certificates(dir.path());
        let sim_port = free_port();
        let proxy = spec.proxy_faulty.then(|| FaultProxy::start(sim_port));
        let faulty_port = proxy.as_ref().map_or(sim_port, |p| p.port);
        let definitions = dir.path().join("segments.yaml");
        std::fs::write(&definitions, spec.definitions).unwrap();
        let delivery_config = dir.path().join("destinations.yaml");
        let delivery_group = unique("delivery");
        std::fs::write(
            &delivery_config,
            delivery_yaml(
                &topics,
                &delivery_group,
                spec,
                &destinations,
                (sim_port, faulty_port),
                &ca,
            ),
        )
        .unwrap();
        let sim_config = dir.path().join("partner-sim.yaml");
        std::fs::write(&sim_config, sim_yaml(spec, &destinations)).unwrap();

        let ingest_port = free_port();
        let launch = Launch {
            brokers: broker.brokers(),
            topics,
            ingest: format!("http://127.0.0.1:{ingest_port}/v1/events"),
            ingest_port,
            qualifier_group: unique("qualifier"),
            delivery_group,
            definitions,
            delivery_config,
            coalesced_reports: std::sync::Mutex::default(),
        };
        let qualifier = launch.start_qualifier().await;
        let mut workers = Vec::new();
        for _ in 0..spec.workers {
            workers.push(launch.start_worker().await);
        }
        wait_balanced(&workers, &launch.topics.status).await;
        let mut sim = ServiceBuilder::new("partner-sim")
            .arg("--config")
            .arg(sim_config.to_str().unwrap())
            .arg("--listen")
            .arg(format!("127.0.0.1:{sim_port}"))
            .arg("--tls-cert")
            .arg(cert.to_str().unwrap())
            .arg("--tls-key")
            .arg(key.to_str().unwrap())
            .spawn();
        sim.wait_ready(Duration::from_secs(30)).await;
        Self {
            proxy,
            launch,
            qualifier,
            workers,
            sim,
            destinations,
            _dir: dir,
        }
    }

    /// Every destination, as delivery and partner-sim were configured: what the ledger
    /// accounts for.
    pub fn destinations(&self) -> &[Destination] {
        &self.destinations
    }

    /// What partner-sim accepted and its statistics, for the ledger.
    pub async fn partner_record(&self) -> crate::ledger::PartnerRecord {
        crate::ledger::PartnerRecord {
            accepted: self.sim_json("/accepted").await,
            stats: self.sim_json("/stats").await,
        }
    }

    /// GETs a JSON document from partner-sim's admin port.
    pub async fn sim_json(&self, path: &str) -> serde_json::Value {
        reqwest::get(self.sim.admin_url(path))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Panics naming the process and its log if a service ended.
    pub fn assert_running(&mut self) {
        let mut all: Vec<(&str, &mut Service)> = vec![("qualifier", &mut self.qualifier)];
        all.push(("partner-sim", &mut self.sim));
        for worker in &mut self.workers {
            all.push(("delivery", worker));
        }
        for (name, service) in all {
            if let Some(status) = service.exit_status() {
                panic!(
                    "{name} exited ({status}) though nothing stopped it; its log:\n{}",
                    tail(&service.log(), 60)
                );
            }
        }
    }
}

/// The qualifier's instance id in every scenario.
const QUALIFIER_INSTANCE: &str = "chaos-0";

impl Launch {
    /// Starts (or restarts) the qualifier, always with the same instance id, so a restart
    /// fences what a killed incarnation left open.
    pub async fn start_qualifier(&self) -> Service {
        self.spawn_qualifier(&self.topics, &self.qualifier_group, self.ingest_port)
            .await
    }

    /// The qualifier's transactional id (`<group>-<instance>`): the cluster scenarios kill
    /// its transaction coordinator.
    pub fn transactional_id(&self) -> String {
        format!("{}-{QUALIFIER_INSTANCE}", self.qualifier_group)
    }

    async fn spawn_qualifier(&self, topics: &Topics, group: &str, ingest_port: u16) -> Service {
        let service = ServiceBuilder::new("qualifier")
            .arg("--config")
            .arg(self.definitions.to_str().unwrap())
            .env("KAFKA_BROKERS", &self.brokers)
            .env("LOG_FORMAT", "json")
            .env("INGEST_ADDR", format!("127.0.0.1:{ingest_port}"))
            .env("KAFKA_GROUP_ID", group)
            .env("KAFKA_INSTANCE_ID", QUALIFIER_INSTANCE)
            .env("KAFKA_EVENTS_TOPIC", &topics.events)
            .env("KAFKA_STATUS_TOPIC", &topics.status)
            .env("KAFKA_STATUS_BATCH_TOPIC", &topics.status_batch)
            .env("KAFKA_CHANGELOG_TOPIC", &topics.changelog)
            .env("KAFKA_DLQ_TOPIC", &topics.qualifier_dlq);
        // librdkafka's own account of the qualifier's clients, for a failure to reproduce.
        let service = match std::env::var("CHAOS_QUALIFIER_KAFKA_DEBUG") {
            Ok(contexts) => service
                .env("KAFKA_DEBUG", contexts)
                .env("RUST_LOG", "info,librdkafka=debug"),
            Err(_) => service,
        };
        let mut service = service.spawn();
        service.wait_ready(Duration::from_secs(60)).await;
        service
    }

    /// A second qualifier, with a group and output topics of its own, reading the scenario's
    /// events topic from the start, uninterrupted (no fault touches it): the reference the
    /// cluster scenarios compare the faulted run's output with. Returns it, its topics and group.
    pub async fn start_reference_qualifier(
        &self,
        broker: &ChaosBroker,
    ) -> (Service, Topics, String) {
        let unique = |what: &str| testkit::unique_name(&format!("chaos-reference-{what}"));
        let topics = Topics {
            events: self.topics.events.clone(),
            ..Topics::named(unique)
        };
        create_topics(
            broker,
            &[&topics.status, &topics.status_batch, &topics.qualifier_dlq],
            &topics.changelog,
        )
        .await;
        let group = unique("qualifier");
        let service = self.spawn_qualifier(&topics, &group, free_port()).await;
        (service, topics, group)
    }

    /// JSON logs (the partition assignments are read from them).
    fn delivery(&self) -> ServiceBuilder {
        ServiceBuilder::new("delivery")
            .arg("--config")
            .arg(self.delivery_config.to_str().unwrap())
            .env("KAFKA_BROKERS", &self.brokers)
            .env("LOG_FORMAT", "json")
            .env("CHAOS_ACME_KEY", HMAC_KEY_A)
            .env("CHAOS_FAULTY_KEY", HMAC_KEY_F)
            .env("CHAOS_OAUTH_SECRET", OAUTH_SECRET)
    }

    /// Starts a delivery process with a coalesced-change report of its own.
    fn spawn_delivery(&self, builder: ServiceBuilder) -> Service {
        let mut reports = self.coalesced_reports.lock().unwrap();
        let report = self
            .delivery_config
            .with_file_name(format!("coalesced-{}.jsonl", reports.len()));
        reports.push(report.clone());
        builder
            .env("DELIVERY_COALESCED_REPORT", report.to_str().unwrap())
            .spawn()
    }

    /// Every delivery process's coalesced-change report so far.
    pub fn coalesced_reports(&self) -> Vec<PathBuf> {
        self.coalesced_reports.lock().unwrap().clone()
    }

    /// Starts one more delivery worker (ready).
    pub async fn start_worker(&self) -> Service {
        let mut service = self.spawn_delivery(self.delivery());
        service.wait_ready(Duration::from_secs(60)).await;
        service
    }
}

/// How many partitions of `topic` a delivery worker owns, by its last "Partitions
/// assigned/revoked" log line (JSON): its `owned` field, what the worker held after that change
/// (the cooperative protocol moves only some partitions in a rebalance).
fn owned_partitions(log: &str, topic: &str) -> usize {
    let mut owned: usize = 0;
    for line in log.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if event["topic"] != topic {
            continue;
        }
        if let Some("Partitions assigned." | "Partitions revoked.") = event["message"].as_str() {
            owned = event["owned"]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(0);
        }
    }
    owned
}

/// Waits until every worker owns some partitions of `topic` and together all of them, so the
/// load does not start in the middle of the group's first rebalance.
async fn wait_balanced(workers: &[Service], topic: &str) {
    let partitions = usize::try_from(PARTITIONS).unwrap();
    testkit::wait_until(
        "the delivery workers to share the partitions",
        Duration::from_secs(60),
        || {
            let owned: Vec<usize> = workers
                .iter()
                .map(|w| owned_partitions(&w.log(), topic))
                .collect();
            async move { owned.iter().all(|&n| n > 0) && owned.iter().sum::<usize>() == partitions }
        },
    )
    .await;
}

/// The last `lines` lines of a log.
pub fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `ports`: partner-sim's, and the one the faulty destination posts to (a proxy's, or the
/// same).
fn delivery_yaml(
    topics: &Topics,
    group: &str,
    spec: &SystemSpec,
    destinations: &[Destination],
    (sim_port, faulty_port): (u16, u16),
    ca: &Path,
) -> String {
    let auth = |d: &Destination| match d.id {
        424 => format!(
            "{{ oauth2: {{ token_url: \"https://127.0.0.1:{sim_port}/oauth/token\", client_id: segment-relay, client_secret_env: CHAOS_OAUTH_SECRET }} }}"
        ),
        FAULTY_ID => {
            "{ hmac: { key_env: CHAOS_FAULTY_KEY, header: X-Signature, algorithm: sha1 } }"
                .to_owned()
        }
        _ => "{ hmac: { key_env: CHAOS_ACME_KEY, header: X-Signature, algorithm: sha256 } }"
            .to_owned(),
    };
    let destinations: String = destinations
        .iter()
        .map(|d| {
            let segments: Vec<String> = d
                .segments
                .iter()
                .map(|(ours, theirs)| format!("\"{ours}\": \"{theirs}\""))
                .collect();
            let port = if d.id == FAULTY_ID { faulty_port } else { sim_port };
            format!(
                "  - {{ id: {}, url: \"https://127.0.0.1:{port}{}\", ca_file: \"{}\", client_id: \"{}\", \
                 user_dpid: 20915, segments: {{ {} }}, auth: {} }}\n",
                d.id,
                d.path,
                ca.display(),
                d.id,
                segments.join(", "),
                auth(d)
            )
        })
        .collect();
    format!(
        "kafka:\n  group_id: {group}\n  topic: {}\n  batch_topic: {}\n  dlq_topic: {}\n  delivery_log_topic: {}\n  \
         commit_interval_ms: 200\n  session_timeout_ms: 6000\n  drain_timeout_ms: 15000\n\
         defaults: {}\ndestinations:\n{destinations}",
        topics.status, topics.status_batch, topics.dlq, topics.delivery_log, spec.delivery_defaults
    )
}

/// partner-sim's endpoints: the OAuth partner, the faulty one (with the spec's behaviour),
/// and the others like `/acme`.
fn sim_yaml(spec: &SystemSpec, destinations: &[Destination]) -> String {
    let endpoints: String = destinations
        .iter()
        .map(|d| {
            let (auth, behaviour) = match d.id {
                424 => (
                    format!(
                        "{{ oauth2: {{ client_id: segment-relay, client_secret: {OAUTH_SECRET}, token_path: /oauth/token, token_ttl_s: 20 }} }}"
                    ),
                    "{ latency_ms: [2, 20] }",
                ),
                FAULTY_ID => (
                    format!(
                        "{{ hmac: {{ key: {HMAC_KEY_F}, header: X-Signature, algorithm: sha1 }} }}"
                    ),
                    spec.faulty_behaviour.as_str(),
                ),
                _ => (
                    format!(
                        "{{ hmac: {{ key: {HMAC_KEY_A}, header: X-Signature, algorithm: sha256 }} }}"
                    ),
                    "{ latency_ms: [2, 20] }",
                ),
            };
            format!(
                "  - {{ path: {}, destination_id: {}, auth: {auth}, behaviour: {behaviour} }}\n",
                d.path, d.id
            )
        })
        .collect();
    format!("endpoints:\n{endpoints}")
}
