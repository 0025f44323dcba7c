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
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use model::{ChangeReason, Origin, PartnerIds, SegmentChange, SegmentStatus, SegmentStatusUpdate};
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use serde::Deserialize;
use telemetry::KafkaSettings;

use crate::auth::HmacSigner;
use crate::batcher::{DestinationBatch, EventSource, RoutedEvent};
use crate::config::{AuthConfig, DeliveryConfig, DestinationConfig};
use crate::offsets::PartitionAssignment;
use crate::payload::{idempotency_key, write_body};
use crate::router::Router;
use crate::sender::{USER_AGENT, request_headers};

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
        router.route(&sourced.update, &mut targets);
        if !targets.contains(&index) {
            writer.rendering.not_sent.push(format!(
                "{}: none of its segments is mapped by destination {destination_id} (or it is \
                 targeted at another data partner): nothing is sent",
                describe(&sourced)
            ));
            continue;
        }
        // As a lane does: a batch takes events until it is full, or one would not fit.
        if let Err(event) = batch.add(routed(sourced)) {
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

fn routed(sourced: SourcedUpdate) -> RoutedEvent {
    RoutedEvent {
        update: Arc::new(sourced.update),
        source: sourced.position.map(|(partition, offset)| EventSource {
            // The generation never reaches the request (the key uses partition and offset).
            assignment: PartitionAssignment {
                partition,
                generation: 0,
            },
            offset,
            catch_up: false,
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
            let user = batch
                .events
                .first()
                .map_or("?", |e| e.update.user_id.as_str());
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
        // What the HTTP stack adds (reqwest's defaults and hyper's `host`), then delivery's own.
        let mut headers = vec![
            ("host".to_owned(), authority(&destination.url)),
            ("user-agent".to_owned(), USER_AGENT.to_owned()),
            ("accept".to_owned(), "*/*".to_owned()),
        ];
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

// ---------------------------------------------------------------------------------------------
// Updates as JSON.

/// A `SegmentStatusUpdate` as JSON: the proto's fields by their names, the enums by the
/// names after their prefix (`"ACTIVE"` for `SEGMENT_STATUS_ACTIVE`). Only `user_id` and
/// `changes` are required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonUpdate {
    user_id: String,
    #[serde(default)]
    regions: Vec<u32>,
    #[serde(default)]
    partner_ids: Vec<JsonPartnerIds>,
    changes: Vec<JsonChange>,
    /// Default `REALTIME`.
    #[serde(default)]
    origin: Option<JsonEnum<OriginName>>,
    /// Default: now.
    produced_unix_ms: Option<i64>,
    #[serde(default)]
    sequence: u64,
    only_data_partner_id: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonPartnerIds {
    data_partner_id: u64,
    #[serde(default)]
    partner_uuids: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonChange {
    segment_id: u64,
    status: JsonEnum<StatusName>,
    /// Default `UNSPECIFIED`.
    reason: Option<JsonEnum<ReasonName>>,
    time_unix_ms: i64,
}

/// A proto enum written by its value's name without the enum's prefix.
trait EnumNames {
    /// The key whose value this is, for error messages.
    const KEY: &'static str;
    /// The prefix of the proto names (`SEGMENT_STATUS_`).
    const PREFIX: &'static str;
    fn from_proto_name(name: &str) -> Option<i32>;
    fn proto_name(value: i32) -> Option<&'static str>;
    /// Values not accepted from JSON (`UNSPECIFIED` where it makes the update invalid).
    fn refused(_value: i32) -> bool {
        false
    }
}

#[derive(Debug)]
struct StatusName;
impl EnumNames for StatusName {
    const KEY: &'static str = "status";
    const PREFIX: &'static str = "SEGMENT_STATUS_";
    fn from_proto_name(name: &str) -> Option<i32> {
        SegmentStatus::from_str_name(name).map(|v| v as i32)
    }
    fn proto_name(value: i32) -> Option<&'static str> {
        SegmentStatus::try_from(value).ok().map(|v| v.as_str_name())
    }
    fn refused(value: i32) -> bool {
        value == SegmentStatus::Unspecified as i32
    }
}

#[derive(Debug)]
struct ReasonName;
impl EnumNames for ReasonName {
    const KEY: &'static str = "reason";
    const PREFIX: &'static str = "CHANGE_REASON_";
    fn from_proto_name(name: &str) -> Option<i32> {
        ChangeReason::from_str_name(name).map(|v| v as i32)
    }
    fn proto_name(value: i32) -> Option<&'static str> {
        ChangeReason::try_from(value).ok().map(|v| v.as_str_name())
    }
}

#[derive(Debug)]
struct OriginName;
impl EnumNames for OriginName {
    const KEY: &'static str = "origin";
    const PREFIX: &'static str = "ORIGIN_";
    fn from_proto_name(name: &str) -> Option<i32> {
        Origin::from_str_name(name).map(|v| v as i32)
    }
    fn proto_name(value: i32) -> Option<&'static str> {
        Origin::try_from(value).ok().map(|v| v.as_str_name())
    }
    fn refused(value: i32) -> bool {
        value == Origin::Unspecified as i32
    }
}

/// An enum value read from its short name; an unknown name is an error listing the names.
#[derive(Debug)]
struct JsonEnum<E: EnumNames>(i32, std::marker::PhantomData<E>);

impl<'de, E: EnumNames> Deserialize<'de> for JsonEnum<E> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::try_from(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl<E: EnumNames> TryFrom<String> for JsonEnum<E> {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        match E::from_proto_name(&format!("{}{name}", E::PREFIX)) {
            Some(value) if !E::refused(value) => Ok(Self(value, std::marker::PhantomData)),
            _ => {
                // The names the generated code knows, so a new value needs no change here.
                let names: Vec<String> = (0..64)
                    .filter(|&v| !E::refused(v))
                    .filter_map(E::proto_name)
                    .map(|n| format!("\"{}\"", n.trim_start_matches(E::PREFIX)))
                    .collect();
                Err(format!(
                    "{} must be one of {}, got {name:?}",
                    E::KEY,
                    names.join(", ")
                ))
            }
        }
    }
}

impl JsonUpdate {
    fn into_update(self, now_unix_ms: i64) -> SegmentStatusUpdate {
        let mut update = SegmentStatusUpdate {
            user_id: self.user_id,
            regions: self.regions,
            partner_ids: self
                .partner_ids
                .into_iter()
                .map(|p| PartnerIds {
                    data_partner_id: p.data_partner_id,
                    partner_uuids: p.partner_uuids,
                })
                .collect(),
            changes: self
                .changes
                .into_iter()
                .map(|c| SegmentChange {
                    segment_id: c.segment_id,
                    status: c.status.0,
                    reason: c.reason.map_or(ChangeReason::Unspecified as i32, |r| r.0),
                    time_unix_ms: c.time_unix_ms,
                })
                .collect(),
            origin: self.origin.map_or(Origin::Realtime as i32, |o| o.0),
            produced_unix_ms: self.produced_unix_ms.unwrap_or(now_unix_ms),
            sequence: self.sequence,
            ..SegmentStatusUpdate::default()
        };
        update.only_data_partner_id = self.only_data_partner_id;
        update
    }
}

/// Reads updates written as JSON in `text` (from `input`, for error messages): objects one
/// after another (one per line, NDJSON), or one array of them. `produced_unix_ms` defaults to
/// `now_unix_ms`. An update delivery would not accept (no user id, no change) is an error,
/// as is any JSON error, each naming the line.
pub fn parse_updates(
    text: &str,
    input: &str,
    now_unix_ms: i64,
) -> Result<Vec<SegmentStatusUpdate>, RenderError> {
    let json_error = |error: serde_json::Error| {
        let (line, column) = (error.line(), error.column());
        let text = error.to_string();
        let message = text
            .strip_suffix(&format!(" at line {line} column {column}"))
            .unwrap_or(&text)
            .to_owned();
        RenderError::Json {
            input: input.to_owned(),
            line,
            column,
            message,
        }
    };
    // The checks the consumer makes of every input message, update by update.
    let check = |place: String, json: JsonUpdate| {
        let update = json.into_update(now_unix_ms);
        crate::consumer::decode(&update.encode_to_vec()).map_err(|reason| {
            RenderError::InvalidUpdate {
                input: input.to_owned(),
                place,
                reason,
            }
        })
    };
    if text.trim_start().starts_with('[') {
        let updates: Vec<JsonUpdate> = serde_json::from_str(text).map_err(json_error)?;
        return updates
            .into_iter()
            .enumerate()
            .map(|(i, json)| check(format!("update {} of the array", i + 1), json))
            .collect();
    }
    let mut updates = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<JsonUpdate>();
    loop {
        let start = stream.byte_offset();
        let Some(next) = stream.next() else { break };
        let skipped = text[start..].len() - text[start..].trim_start().len();
        let line = line_at(text, start + skipped);
        let place = format!("update {} (line {line})", updates.len() + 1);
        updates.push(check(place, next.map_err(json_error)?)?);
    }
    Ok(updates)
}

/// The 1-based line of byte `offset` in `text`.
fn line_at(text: &str, offset: usize) -> usize {
    1 + text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

// ---------------------------------------------------------------------------------------------
// Updates from a topic.

/// Updates read from a topic position, and what was read there that delivery would not send.
#[derive(Debug, Default)]
pub struct TopicRead {
    pub updates: Vec<SourcedUpdate>,
    pub not_sent: Vec<String>,
}

/// Reads the messages at offsets `offset .. offset + count` of `topic`'s `partition`, as
/// delivery reads them (`read_committed`, decoded and checked). Blocks.
pub fn read_topic(
    kafka: &KafkaSettings,
    topic: &str,
    partition: i32,
    offset: i64,
    count: u64,
) -> anyhow::Result<TopicRead> {
    let partitions = kafka
        .require_topics(&[topic])
        .map_err(anyhow::Error::msg)?
        .first()
        .copied()
        .unwrap_or(0);
    if partition < 0 || partition as usize >= partitions {
        anyhow::bail!(
            "--partition {partition}: topic `{topic}` has partitions 0 to {}",
            partitions.saturating_sub(1)
        );
    }
    let probe: BaseConsumer = kafka
        .client_config("segment-relay-render")
        .create()
        .context("cannot create a Kafka client")?;
    let (low, high) = probe
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .with_context(|| format!("cannot read the offsets of {topic}/{partition}"))?;
    if low == high {
        anyhow::bail!(
            "--offset {offset}: {topic}/{partition} holds no message now (its next offset is {high})"
        );
    }
    if offset < low || offset >= high {
        anyhow::bail!(
            "--offset {offset}: {topic}/{partition} holds offsets {low} to {} now",
            high - 1
        );
    }
    let end = offset
        .saturating_add(i64::try_from(count).unwrap_or(i64::MAX))
        .min(high);
    let mut read = TopicRead::default();
    kafka
        .read_ranges(
            topic,
            &[(partition, rdkafka::Offset::Offset(offset), end)],
            false,
            Duration::from_secs(30),
            |message| {
                let at = message.offset();
                match crate::consumer::decode(message.payload().unwrap_or_default()) {
                    Ok(update) => read.updates.push(SourcedUpdate {
                        update,
                        position: Some((partition, at)),
                    }),
                    Err(reason) => read.not_sent.push(format!(
                        "{topic}/{partition}@{at}: {reason}: delivery dead-letters it as undecodable"
                    )),
                }
            },
        )
        .with_context(|| format!("cannot read {topic}/{partition} at offsets {offset} to {}", end - 1))?;
    let found = read.updates.len() + read.not_sent.len();
    if (found as i64) < end - offset {
        read.not_sent.push(format!(
            "{} of the offsets {offset} to {} hold no message (transaction markers, or aborted writes)",
            end - offset - found as i64,
            end - 1
        ));
    }
    Ok(read)
}

// ---------------------------------------------------------------------------------------------
// The command.

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
    let now = crate::sender::unix_ms_now();
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

#[cfg(test)]
mod tests;
