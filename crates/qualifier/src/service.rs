//! Builds and runs the qualifier: the processing thread (exactly-once loop), the ingest API,
//! and the definitions watcher, until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::Context as _;
use telemetry::ServiceRuntime;

use crate::config::Definitions;
use crate::config::kafka::KafkaConfig;
use crate::ingest::auth::{IngestAuth, TokensFile, watch_tokens};
use crate::ingest::tls::IngestTls;
use crate::ingest::{EventWriter, router, serve};
use crate::metrics::Metrics;
use crate::processor::{Processor, SharedDefinitions, Topology};

/// Where the qualifier listens, besides the admin port.
#[derive(Debug, Clone)]
pub struct Options {
    pub definitions_path: PathBuf,
    pub ingest_addr: SocketAddr,
    pub limits: crate::ingest::IngestLimits,
    /// Who may use the ingest API ([`IngestAuth::open`] without a tokens file).
    pub ingest_auth: IngestAuth,
    /// The tokens file to watch for rotations, if any.
    pub ingest_tokens_file: Option<TokensFile>,
    /// HTTPS on the ingest port, if a certificate was given.
    pub ingest_tls: Option<IngestTls>,
}

pub async fn run(
    options: Options,
    definitions: Definitions,
    mut topology: Topology,
    runtime: &ServiceRuntime,
) -> anyhow::Result<()> {
    let metrics = Metrics::register(&runtime.registry).context("cannot register metrics")?;
    let kafka = runtime.kafka.clone();
    let topics = [
        topology.events_topic.clone(),
        topology.changelog_topic.clone(),
        topology.status_topic.clone(),
        topology.status_batch_topic.clone(),
        topology.dlq_topic.clone(),
    ];
    let counts = tokio::task::spawn_blocking(move || {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        kafka.require_topics(&names)
    })
    .await?
    .map_err(anyhow::Error::msg)?;
    // A user's state is written to the changelog partition numbered like their input partition
    // and restored from there: any other count loses or misplaces state.
    if let Some(problem) = crate::topics::copartition_problem(
        &topology.events_topic,
        counts[0],
        &topology.changelog_topic,
        counts[1],
    ) {
        anyhow::bail!(
            "refusing to start: {problem} (`qualifier topics check` verifies every topic)"
        );
    }

    if let Some(topic) = topology.delivery_log_topic.clone() {
        let kafka = runtime.kafka.clone();
        let found = tokio::task::spawn_blocking(move || kafka.require_topics(&[&topic])).await?;
        if let Err(problem) = found {
            tracing::warn!(%problem, "Erasures will not hide users' delivery log records: create the topic, or set kafka.delivery_log_topic: \"\" (KAFKA_DELIVERY_LOG_TOPIC=\"\") if delivery runs without its log.");
            topology.delivery_log_topic = None;
        }
    }

    // The file as it was loaded, not read again: an edit made since is applied.
    let loaded = definitions
        .files
        .content(&options.definitions_path)
        .unwrap_or_default()
        .to_vec();
    let running_kafka = definitions.kafka.clone();
    let definitions: SharedDefinitions = Arc::new(RwLock::new(Arc::new(definitions)));
    let writer = Arc::new(
        EventWriter::new(&runtime.kafka, &topology.events_topic)
            .context("cannot create the ingest producer")?,
    );

    let stop = runtime.shutdown.child_token();
    let app = router(
        writer.clone(),
        metrics.clone(),
        options.limits,
        options.ingest_auth.clone(),
    );
    let served = serve(
        options.ingest_addr,
        app,
        options
            .ingest_tls
            .as_ref()
            .map(|tls| tls.acceptor().clone()),
        options.limits.read_timeout,
        stop.clone(),
    )
    .await
    .with_context(|| {
        format!(
            "cannot listen on INGEST_ADDR (--ingest-addr) {}: set it to an address and port \
             this process may bind and no other process holds",
            options.ingest_addr
        )
    })?;
    // The ingest server runs as long as the process: one that ended early fails `/livez`.
    let ingest_running = runtime.health.liveness().must_run("ingest");
    let ingest_stop = stop.clone();
    let ingest = tokio::spawn(async move {
        served.await;
        if ingest_stop.is_cancelled() {
            ingest_running.finish();
        }
    });
    if let Some(file) = options.ingest_tokens_file {
        tokio::spawn(watch_tokens(file, options.ingest_auth, stop.clone()));
    }
    if let Some(tls) = options.ingest_tls {
        tokio::spawn(tls.watch(stop.clone()));
    }
    let watcher = tokio::spawn(watch_definitions(
        options.definitions_path.clone(),
        loaded,
        definitions.clone(),
        running_kafka,
        stop.clone(),
    ));

    let (kafka, health, processing_stop) =
        (runtime.kafka.clone(), runtime.health.clone(), stop.clone());
    let processing = tokio::task::spawn_blocking(move || {
        let processor =
            Processor::start(&kafka, topology, definitions, metrics, health.liveness())?;
        processor.run(&processing_stop, &health)
    });
    let result = processing.await.context("the processing thread panicked")?;
    stop.cancel();
    // Up to 10 s while the broker is slow: off the async threads.
    let _ = tokio::task::spawn_blocking(move || writer.flush()).await;
    let _ = watcher.await;
    ingest.await.context("the ingest server panicked")?;
    result.context("processing failed")
}

/// Replaces the definitions when the file changes and the new one is valid. The topics, group
/// and instance id stay those of the start (`running_kafka`): a changed `kafka:` block is a WARN
/// naming the keys, and takes effect at the next restart.
async fn watch_definitions(
    path: PathBuf,
    mut current: Vec<u8>,
    definitions: SharedDefinitions,
    running_kafka: KafkaConfig,
    stop: tokio_util::sync::CancellationToken,
) {
    while let Some(bytes) = telemetry::watch::file_change(&path, &current, &stop).await {
        let env = |name: &str| std::env::var(name).ok();
        match Definitions::parse_with_env(&path, &String::from_utf8_lossy(&bytes), &env) {
            Ok(new) => {
                let changed = running_kafka.changed_keys(&new.kafka);
                if !changed.is_empty() {
                    tracing::warn!(file = %path.display(), keys = %changed.join(", "), "The kafka block changed: it takes effect at the next restart; the running topics, group and instance id stay in force.");
                }
                tracing::info!(file = %path.display(), segments = new.segments.len(), traits = new.traits.len(), "Definitions reloaded.");
                *definitions.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(new);
            }
            Err(error) => {
                tracing::error!(%error, "The changed definitions file is invalid and was rejected; the running definitions stay in force.");
            }
        }
        current = bytes;
    }
}
