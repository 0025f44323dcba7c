//! `delivery render`'s JSON input: `SegmentStatusUpdate`s by the proto's field names, the
//! enums by their names without the prefix, one object per line or one array.

use model::{ChangeReason, Origin, PartnerIds, SegmentChange, SegmentStatus, SegmentStatusUpdate};
use prost::Message as _;
use serde::Deserialize;

use super::RenderError;

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
