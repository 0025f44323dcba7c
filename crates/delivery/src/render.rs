//! `delivery render`: the exact requests delivery would send one destination for some
//! updates — method, url, every header with the real HMAC signature, and the body — without
//! sending anything. The updates go the service's own way: the router, the destination's
//! segment mapping, [`DestinationBatch`] with its limits, [`write_body`], [`idempotency_key`]
//! and the sender's [`request_headers`], all as one lane (the service spreads users over
//! `max_in_flight` lanes, chosen per process, so which users share a request can differ).
//! `ProcessTime` is now. An OAuth bearer token is fetched at send time, so it is shown as a
//! placeholder; no secret is ever printed.
//!
//! Updates come as JSON (stdin or a file: one object per line, or an array; see
//! [`parse_updates`]) or from a topic position (protobuf, as delivery reads it).

use std::fmt;
use std::sync::Arc;

use model::SegmentStatusUpdate;

use crate::auth::HmacSigner;
use crate::batcher::{DestinationBatch, EventSource, RoutedEvent};
use crate::config::{AuthConfig, DeliveryConfig, DestinationConfig};
use crate::offsets::PartitionAssignment;
use crate::payload::{idempotency_key, write_body};
use crate::router::Router;
use crate::sender::request_headers;
use crate::update::Update;

/// What `render` shows for an OAuth destination's `authorization` header.
pub const BEARER_PLACEHOLDER: &str = "Bearer <fetched at send time>";

/// Why nothing could be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(
        "--destination {id}: no destination with this id in the config; its ids are {configured}"
    )]
    UnknownDestination { id: u64, configured: String },
    #[error("{input}: line {line}, column {column}: {message}")]
    Json {
        input: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{input}: {place}: {reason}; delivery would dead-letter it as undecodable")]
    InvalidUpdate {
        input: String,
        /// `update 2 (line 2)`, or `update 2 of the array`.
        place: String,
        reason: String,
    },
}

/// An update to render, and where it was read when it came from a topic.
#[derive(Debug, Clone)]
pub struct SourcedUpdate {
    pub update: SegmentStatusUpdate,
    /// (partition, offset) on the input topic; `None` for updates given as JSON.
    pub position: Option<(i32, i64)>,
}

/// One request, as delivery would send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedRequest {
    pub method: &'static str,
    pub url: reqwest::Url,
    /// Every header, in lower case as the HTTP stack sends them.
    pub headers: Vec<(String, String)>,
    /// The exact bytes signed: the JSON body, before any gzip.
    pub body: Vec<u8>,
    /// Distinct users in the request.
    pub users: usize,
    /// Updates in the request.
    pub updates: usize,
}

impl RenderedRequest {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The request line, the headers, a blank line and the body (on one line: compact JSON).
impl fmt::Display for RenderedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} {}", self.method, self.url)?;
        for (name, value) in &self.headers {
            writeln!(f, "{name}: {value}")?;
        }
        writeln!(f)?;
        // serde_json writes UTF-8: these are the body's exact bytes.
        f.write_str(&String::from_utf8_lossy(&self.body))
    }
}

/// The requests for some updates, and what was not sent (and why), one line each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendering {
    pub requests: Vec<RenderedRequest>,
    pub not_sent: Vec<String>,
}

/// The destination with id `id`, and its index in the config.
pub fn find_destination(
    config: &DeliveryConfig,
    id: u64,
) -> Result<(usize, &Arc<DestinationConfig>), RenderError> {
    config
        .destinations
        .iter()
        .enumerate()
        .find(|(_, d)| d.id == id)
        .ok_or_else(|| RenderError::UnknownDestination {
            id,
            configured: config
                .destinations
                .iter()
                .map(|d| d.id.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The requests delivery would send destination `destination_id` for `updates`, in order, at
/// `process_time_unix_ms`. `input_topic` goes into the `Idempotency-Key`: the topic read, or
/// for updates without a position the dead-letter topic (their key is then the one
/// `delivery replay` gives them, derived from their content).
pub fn render(
    config: &DeliveryConfig,
    destination_id: u64,
    input_topic: &str,
    updates: Vec<SourcedUpdate>,
    process_time_unix_ms: i64,
) -> Result<Rendering, RenderError> {
    let (index, destination) = find_destination(config, destination_id)?;
    let mut router = Router::new(&config.destinations);
    let mut targets = Vec::new();
    let mut writer = RequestWriter::new(destination, input_topic, process_time_unix_ms);
    let mut batch = DestinationBatch::new(destination.clone());
    for sourced in updates {
        let update = Update::new(&sourced.update);
        router.route(&update, &mut targets);
        if !targets.contains(&index) {
            writer.rendering.not_sent.push(format!(
                "{}: none of its segments is mapped by destination {destination_id} (or it is \
                 targeted at another data partner): nothing is sent",
                describe(&sourced)
            ));
            continue;
        }
        // As a lane does: a batch takes events until it is full, or one would not fit.
        if let Err(event) = batch.add(routed(update, sourced.position)) {
            writer.finish(&mut batch);
            let _fits_an_empty_batch = batch.add(event);
        }
        if batch.is_full() {
            writer.finish(&mut batch);
        }
    }
    if !batch.is_empty() {
        writer.finish(&mut batch);
    }
    Ok(writer.rendering)
}

fn routed(update: Update, position: Option<(i32, i64)>) -> RoutedEvent {
    RoutedEvent {
        held: Default::default(),
        update,
        source: position.map(|(partition, offset)| EventSource {
            // The generation never reaches the request (the key uses partition and offset).
            assignment: PartitionAssignment {
                partition,
                generation: 0,
            },
            offset,
            catch_up: false,
            written_unix_ms: None,
        }),
    }
}

fn describe(sourced: &SourcedUpdate) -> String {
    match sourced.position {
        Some((partition, offset)) => format!(
            "update of user {} at partition {partition} offset {offset}",
            sourced.update.user_id
        ),
        None => format!("update of user {}", sourced.update.user_id),
    }
}

/// Turns full batches into requests, as the lane and the sender do.
struct RequestWriter<'a> {
    destination: &'a DestinationConfig,
    input_topic: &'a str,
    process_time_unix_ms: i64,
    signer: Option<HmacSigner>,
    rendering: Rendering,
}

impl<'a> RequestWriter<'a> {
    fn new(destination: &'a DestinationConfig, input_topic: &'a str, now_unix_ms: i64) -> Self {
        let signer = match &destination.auth {
            AuthConfig::Hmac(hmac) => Some(HmacSigner::new(hmac.clone())),
            AuthConfig::None | AuthConfig::OAuth2(_) => None,
        };
        Self {
            destination,
            input_topic,
            process_time_unix_ms: now_unix_ms,
            signer,
            rendering: Rendering::default(),
        }
    }

    /// Renders the batch (or says why it is not sent) and empties it.
    fn finish(&mut self, batch: &mut DestinationBatch) {
        if batch.is_oversized() {
            let user = batch.events.first().map_or("?", |e| e.update.user_id());
            self.rendering.not_sent.push(format!(
                "user {user}: their entries alone make a {}-byte body, more than the \
                 destination's batch.max_bytes ({}): delivery dead-letters them without a \
                 request (ERROR_CLASS_OVERSIZED)",
                batch.body_bytes(),
                self.destination.batch.max_bytes
            ));
        } else {
            let request = self.request(batch);
            self.rendering.requests.push(request);
        }
        batch.take_events();
    }

    fn request(&self, batch: &DestinationBatch) -> RenderedRequest {
        let destination = self.destination;
        let mut body = Vec::with_capacity(batch.body_bytes());
        write_body(batch, self.process_time_unix_ms, &mut body);
        let key = idempotency_key(batch, self.input_topic);
        let signatures: Vec<_> = self
            .signer
            .as_ref()
            .map(|signer| signer.headers(&body).collect())
            .unwrap_or_default();
        let sent_bytes = if destination.gzip {
            crate::sender::gzip(&body).len()
        } else {
            body.len()
        };
        // What the HTTP stack adds (hyper's `host`), then delivery's own.
        let mut headers = vec![("host".to_owned(), authority(&destination.url))];
        for (name, value) in &request_headers(destination.gzip, &key, &signatures) {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers.push((name.as_str().to_owned(), value));
        }
        if matches!(destination.auth, AuthConfig::OAuth2(_)) {
            headers.push(("authorization".to_owned(), BEARER_PLACEHOLDER.to_owned()));
        }
        headers.push(("content-length".to_owned(), sent_bytes.to_string()));
        RenderedRequest {
            method: "POST",
            url: destination.url.clone(),
            headers,
            body,
            users: batch.users.len(),
            updates: batch.events.len(),
        }
    }
}

/// `host[:port]` as the `host` header carries it (the port only when not the scheme's).
fn authority(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

mod command;
mod json;
mod topic;

pub use command::{RenderInput, run};
pub use json::parse_updates;
pub use topic::{TopicRead, read_topic};

#[cfg(test)]
mod tests;
