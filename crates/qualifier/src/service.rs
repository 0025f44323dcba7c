//! Builds and runs the qualifier: the processing thread (exactly-once loop), the ingest API,
//! and the definitions watcher, until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::Context as _;
use telemetry::ServiceRuntime;

use crate::config::Definitions;
use crate::ingest::{EventWriter, serve};
use crate::metrics::Metrics;
use crate::processor::{Processor, SharedDefinitions, Topology};

/// Where the qualifier listens, besides the admin port.
#[derive(Debug, Clone)]
pub struct Options {
    pub definitions_path: PathBuf,
    pub ingest_addr: SocketAddr,
    pub limits: crate::ingest::IngestLimits,
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
    anyhow::ensure!(
        counts[1] >= counts[0],
        "topic `{}` has {} partitions but `{}` has {}: the changelog needs one partition per input partition",
        topology.changelog_topic,
        counts[1],
        topology.events_topic,
        counts[0]
    );

    if let Some(topic) = topology.delivery_log_topic.clone() {
        let kafka = runtime.kafka.clone();
        let found = tokio::task::spawn_blocking(move || kafka.require_topics(&[&topic])).await?;
        if let Err(problem) = found {
            tracing::warn!(%problem, "Erasures will not hide users' delivery log records: create the topic, or set DELIVERY_LOG_TOPIC=\"\" if delivery runs without its log.");
            topology.delivery_log_topic = None;
        }
    }

    let loaded = std::fs::read(&options.definitions_path).unwrap_or_default();
    let definitions: SharedDefinitions = Arc::new(RwLock::new(Arc::new(definitions)));
    let writer = Arc::new(
        EventWriter::new(&runtime.kafka, &topology.events_topic)
            .context("cannot create the ingest producer")?,
    );

    let stop = runtime.shutdown.child_token();
    let ingest = tokio::spawn(serve(
        options.ingest_addr,
        writer.clone(),
        metrics.clone(),
        options.limits,
        stop.clone(),
    ));
    let watcher = tokio::spawn(watch_definitions(
        options.definitions_path.clone(),
        loaded,
        definitions.clone(),
        stop.clone(),
    ));

    let (kafka, health, processing_stop) =
        (runtime.kafka.clone(), runtime.health.clone(), stop.clone());
    let processing = tokio::task::spawn_blocking(move || {
        let processor = Processor::start(&kafka, topology, definitions, metrics)?;
        processor.run(&processing_stop, &health)
    });
    let result = processing.await.context("the processing thread panicked")?;
    stop.cancel();
    writer.flush();
    let _ = watcher.await;
    ingest
        .await
        .context("the ingest server panicked")?
        .context("the ingest server failed")?;
    result.context("processing failed")
}

/// Replaces the definitions when the file changes and the new one is valid.
async fn watch_definitions(
    path: PathBuf,
    mut current: Vec<u8>,
    definitions: SharedDefinitions,
    stop: tokio_util::sync::CancellationToken,
) {
    while let Some(bytes) = telemetry::watch::file_change(&path, &current, &stop).await {
        match Definitions::parse(&path, &String::from_utf8_lossy(&bytes)) {
            Ok(new) => {
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
