//! The `delivery render` command: read the updates (JSON or a topic position), render them,
//! print the requests on stdout and what is not sent on stderr.

use std::path::PathBuf;

use anyhow::Context as _;
use telemetry::KafkaSettings;

use super::{RenderedRequest, SourcedUpdate, find_destination, parse_updates, read_topic, render};
use crate::config::DeliveryConfig;

/// Where `delivery render` reads its updates.
#[derive(Debug, Clone)]
pub enum RenderInput {
    /// JSON from this file, or from stdin.
    Json(Option<PathBuf>),
    /// Protobuf messages at a topic position.
    Topic {
        topic: String,
        partition: i32,
        offset: i64,
        count: u64,
    },
}

/// `delivery render`: prints the requests on stdout, one after another with a blank line
/// between, and on stderr a summary of each and what is not sent.
pub async fn run(
    config: &DeliveryConfig,
    kafka: impl FnOnce() -> anyhow::Result<KafkaSettings>,
    destination_id: u64,
    input: RenderInput,
) -> anyhow::Result<()> {
    find_destination(config, destination_id)?;
    let now = telemetry::clock::unix_ms();
    let (updates, mut not_sent, input_topic) = match input {
        RenderInput::Json(path) => {
            let (text, name) = read_json_input(path.as_deref())?;
            let updates = parse_updates(&text, &name, now)?
                .into_iter()
                .map(|update| SourcedUpdate {
                    update,
                    position: None,
                })
                .collect();
            (updates, Vec::new(), config.kafka.dlq_topic.clone())
        }
        RenderInput::Topic {
            topic,
            partition,
            offset,
            count,
        } => {
            let kafka = kafka()?;
            let name = topic.clone();
            let read = tokio::task::spawn_blocking(move || {
                read_topic(&kafka, &topic, partition, offset, count)
            })
            .await
            .context("the topic reader panicked")??;
            (read.updates, read.not_sent, name)
        }
    };
    let rendering = render(config, destination_id, &input_topic, updates, now)?;
    not_sent.extend(rendering.not_sent);
    print(&rendering.requests, &not_sent, destination_id)
}

fn read_json_input(path: Option<&std::path::Path>) -> anyhow::Result<(String, String)> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--input {}: cannot read it", path.display()))?;
            Ok((text, path.display().to_string()))
        }
        None => {
            let text = std::io::read_to_string(std::io::stdin())
                .context("cannot read the updates (JSON) from stdin")?;
            Ok((text, "stdin".to_owned()))
        }
    }
}

fn print(
    requests: &[RenderedRequest],
    not_sent: &[String],
    destination_id: u64,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for (i, request) in requests.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        writeln!(out, "{request}")?;
        eprintln!(
            "request {} of {}: {} users, {} updates, {} body bytes",
            i + 1,
            requests.len(),
            request.users,
            request.updates,
            request.body.len()
        );
    }
    out.flush()?;
    for line in not_sent {
        eprintln!("not sent: {line}");
    }
    if requests.is_empty() {
        eprintln!("nothing would be sent to destination {destination_id}");
    }
    Ok(())
}
