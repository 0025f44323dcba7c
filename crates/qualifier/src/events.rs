//! The JSON event shapes of the ingest API and `qualifier onboard`, validated into
//! `TraitEvent`s. A body is a JSON array of events or NDJSON (one event per line).
//!
//! ```json
//! {"type":"trait","user":"<id>","trait":101,"time":"2026-11-28T10:00:00Z","region":6}
//! {"type":"id_sync","user":"<id>","data_partner":1234,"partner_uuid":"<string>"}
//! {"type":"opt_out","user":"<id>","time":"2026-11-28T10:00:00Z"}
//! ```

use model::pb::{IdSync, OptOut, TraitRealization, trait_event};
use model::{Origin, TraitEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum JsonEvent {
    Trait {
        user: String,
        #[serde(rename = "trait")]
        trait_id: u64,
        time: String,
        region: Option<u32>,
    },
    IdSync {
        user: String,
        data_partner: u64,
        partner_uuid: String,
    },
    OptOut {
        user: String,
        time: String,
    },
}

/// One rejected line (1-based; for a JSON array, the element's position).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineError {
    pub line: usize,
    pub error: String,
}

fn parse_time(text: &str) -> Result<i64, String> {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("`time`: not an RFC 3339 time like 2026-11-28T10:00:00Z ({e})"))?;
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| "`time`: out of range".to_owned())
}

fn convert(event: JsonEvent, origin: Origin) -> Result<TraitEvent, String> {
    let (user, event) = match event {
        JsonEvent::Trait {
            user,
            trait_id,
            time,
            region,
        } => {
            let time_unix_ms = parse_time(&time)?;
            (
                user,
                trait_event::Event::TraitRealization(TraitRealization {
                    trait_id,
                    time_unix_ms,
                    region,
                }),
            )
        }
        JsonEvent::IdSync {
            user,
            data_partner,
            partner_uuid,
        } => {
            if partner_uuid.is_empty() {
                return Err("`partner_uuid`: must not be empty".to_owned());
            }
            (
                user,
                trait_event::Event::IdSync(IdSync {
                    data_partner_id: data_partner,
                    partner_uuid,
                    time_unix_ms: 0,
                }),
            )
        }
        JsonEvent::OptOut { user, time } => (
            user,
            trait_event::Event::OptOut(OptOut {
                time_unix_ms: parse_time(&time)?,
            }),
        ),
    };
    if user.is_empty() {
        return Err("`user`: must not be empty".to_owned());
    }
    Ok(TraitEvent {
        user_id: user,
        origin: origin as i32,
        event: Some(event),
    })
}

/// Parses a whole body; all-or-nothing: any bad line → every error, no events.
pub fn parse_body(body: &[u8], origin: Origin) -> Result<Vec<TraitEvent>, Vec<LineError>> {
    let text = std::str::from_utf8(body).map_err(|e| {
        vec![LineError {
            line: 1,
            error: format!("body is not UTF-8: {e}"),
        }]
    })?;
    let mut events = Vec::new();
    let mut errors = Vec::new();
    if text.trim_start().starts_with('[') {
        let items: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|e| {
            vec![LineError {
                line: e.line(),
                error: format!("not a JSON array of events: {e}"),
            }]
        })?;
        for (i, item) in items.into_iter().enumerate() {
            match serde_json::from_value::<JsonEvent>(item)
                .map_err(|e| e.to_string())
                .and_then(|e| convert(e, origin))
            {
                Ok(event) => events.push(event),
                Err(error) => errors.push(LineError { line: i + 1, error }),
            }
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<JsonEvent>(line)
                .map_err(|e| e.to_string())
                .and_then(|e| convert(e, origin))
            {
                Ok(event) => events.push(event),
                Err(error) => errors.push(LineError { line: i + 1, error }),
            }
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_and_arrays_of_the_three_shapes() {
        let body =
            br#"{"type":"trait","user":"u1","trait":101,"time":"2016-07-27T16:17:22Z","region":6}

{"type":"id_sync","user":"u1","data_partner":1234,"partner_uuid":"p-1"}
{"type":"opt_out","user":"u2","time":"2016-07-27T16:17:22.5Z"}
"#;
        let events = parse_body(body, Origin::Realtime).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(
            events[0].event,
            Some(trait_event::Event::TraitRealization(TraitRealization {
                trait_id: 101,
                time_unix_ms: 1_469_636_242_000,
                region: Some(6)
            }))
        );
        assert_eq!(
            events[2].event,
            Some(trait_event::Event::OptOut(OptOut {
                time_unix_ms: 1_469_636_242_500
            }))
        );
        let array = br#"[{"type":"opt_out","user":"u2","time":"2016-07-27T16:17:22Z"}]"#;
        let events = parse_body(array, Origin::Batch).unwrap();
        assert_eq!(events[0].origin(), Origin::Batch);
    }

    #[test]
    fn every_bad_line_is_reported_and_nothing_is_accepted() {
        let body = br#"{"type":"trait","user":"u1","trait":101,"time":"2016-07-27T16:17:22Z"}
{"type":"trait","user":"u1","trait":"x","time":"2016-07-27T16:17:22Z"}
{"type":"trait","user":"","trait":1,"time":"2016-07-27T16:17:22Z"}
{"type":"trait","user":"u1","trait":1,"time":"yesterday"}
{"type":"nope","user":"u1"}
{"type":"opt_out","user":"u1","time":"2016-07-27T16:17:22Z","extra":1}
not json
"#;
        let errors = parse_body(body, Origin::Realtime).unwrap_err();
        assert_eq!(
            errors.iter().map(|e| e.line).collect::<Vec<_>>(),
            [2, 3, 4, 5, 6, 7]
        );
        assert!(
            errors[1].error.contains("`user`: must not be empty"),
            "{errors:?}"
        );
        assert!(
            errors[2].error.contains("`time`: not an RFC 3339 time"),
            "{errors:?}"
        );
        assert!(
            errors[3].error.contains("unknown variant `nope`"),
            "{errors:?}"
        );
        assert!(errors[4].error.contains("extra"), "{errors:?}");
    }
}
