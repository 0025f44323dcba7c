//! The JSON event shapes of the ingest API and `qualifier onboard`, validated into
//! `TraitEvent`s. A body is a JSON array of events or NDJSON (one event per line).
//!
//! ```json
//! {"type":"trait","user":"<id>","trait":101,"time":"2026-11-28T10:00:00Z","region":6}
//! {"type":"id_sync","user":"<id>","data_partner":1234,"partner_uuid":"<string>"}
//! {"type":"opt_out","user":"<id>","time":"2026-11-28T10:00:00Z"}
//! {"type":"forget","user":"<id>"}
//! ```

use model::pb::{Forget, IdSync, OptOut, TraitRealization, trait_event};
use model::{Origin, TraitEvent};
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::evaluate::{InvalidEvent, MAX_ID_BYTES, validate};

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
    Forget {
        user: String,
        time: Option<String>,
    },
}

/// One rejected line (1-based; for a JSON array, the element's position).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineError {
    pub line: usize,
    pub error: String,
}

/// The most line errors a rejected body reports; the rest are only counted. A 10 MiB body of
/// one-character lines would otherwise make five million error messages (half a gigabyte) out
/// of bytes that cost the client nothing.
pub const MAX_REPORTED_ERRORS: usize = 100;

/// Why a body was rejected: the first [`MAX_REPORTED_ERRORS`] bad lines, and how many more.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BodyErrors {
    pub errors: Vec<LineError>,
    /// Bad lines beyond the reported ones (`more_errors` in the API, left out when 0).
    #[serde(rename = "more_errors", skip_serializing_if = "is_zero")]
    pub more: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl BodyErrors {
    fn push(&mut self, line: usize, error: String) {
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(LineError { line, error });
        } else {
            self.more += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Every bad line, reported or not.
    pub fn count(&self) -> usize {
        self.errors.len() + self.more
    }
}

fn parse_time(text: &str) -> Result<i64, String> {
    model::unix_ms_from_rfc3339(text).map_err(|e| format!("`time`: {e}"))
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
        JsonEvent::Forget { user, time } => (
            user,
            trait_event::Event::Forget(Forget {
                time_unix_ms: time.as_deref().map(parse_time).transpose()?.unwrap_or(0),
            }),
        ),
    };
    let event = TraitEvent {
        user_id: user,
        origin: origin as i32,
        event: Some(event),
    };
    // The same checks the processor applies to what it reads from Kafka.
    match validate(&event) {
        Ok(()) => Ok(event),
        Err(InvalidEvent::NoUser) => Err("`user`: must not be empty".to_owned()),
        Err(InvalidEvent::UserIdTooLong(n)) => Err(format!(
            "`user`: {n} bytes long, more than the {MAX_ID_BYTES} allowed"
        )),
        Err(InvalidEvent::PartnerUuidTooLong(n)) => Err(format!(
            "`partner_uuid`: {n} bytes long, more than the {MAX_ID_BYTES} allowed"
        )),
        Err(InvalidEvent::Empty) => Err("no event".to_owned()),
    }
}

/// What a body's lines became: the events, until the first bad line; then only the errors.
struct Collected {
    origin: Origin,
    events: Vec<TraitEvent>,
    errors: BodyErrors,
}

impl Collected {
    fn add(&mut self, line: usize, event: Result<JsonEvent, serde_json::Error>) {
        match event
            .map_err(|e| e.to_string())
            .and_then(|e| convert(e, self.origin))
        {
            // A rejected body produces nothing: stop keeping events once a line is bad.
            Ok(event) if self.errors.is_empty() => self.events.push(event),
            Ok(_) => {}
            Err(error) => {
                self.errors.push(line, error);
                self.events = Vec::new();
            }
        }
    }
}

/// A JSON array read one element at a time, so a large array never exists as a whole
/// `serde_json::Value` tree besides the events made from it.
struct ArrayOfEvents<'a>(&'a mut Collected);

impl<'de> DeserializeSeed<'de> for ArrayOfEvents<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ArrayOfEvents<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut position = 0;
        while let Some(item) = seq.next_element::<serde_json::Value>()? {
            position += 1;
            self.0.add(position, serde_json::from_value(item));
        }
        Ok(())
    }
}

/// Parses a whole body; all-or-nothing: any bad line → the errors (the first
/// [`MAX_REPORTED_ERRORS`] of them), no events.
pub fn parse_body(body: &[u8], origin: Origin) -> Result<Vec<TraitEvent>, BodyErrors> {
    let mut collected = Collected {
        origin,
        events: Vec::new(),
        errors: BodyErrors::default(),
    };
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(e) => {
            let line = 1 + body[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            collected
                .errors
                .push(line, format!("body is not UTF-8: {e}"));
            return Err(collected.errors);
        }
    };
    if text.trim_start().starts_with('[') {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let parsed = ArrayOfEvents(&mut collected)
            .deserialize(&mut deserializer)
            .and_then(|()| deserializer.end());
        if let Err(e) = parsed {
            collected
                .errors
                .push(e.line(), format!("not a JSON array of events: {e}"));
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            collected.add(i + 1, serde_json::from_str::<JsonEvent>(line));
        }
    }
    if collected.errors.is_empty() {
        Ok(collected.events)
    } else {
        Err(collected.errors)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

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
        let errors = parse_body(body, Origin::Realtime).unwrap_err().errors;
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

    /// What every body must do: parse, quickly, into valid events or into at most
    /// [`MAX_REPORTED_ERRORS`] errors that each name a line inside the body.
    fn check_body(body: &[u8]) -> Result<(), TestCaseError> {
        let parsed = testkit::fuzz::within(Duration::from_secs(2), "parsing a body", || {
            parse_body(body, Origin::Batch)
        });
        let lines = body.split(|&b| b == b'\n').count().max(1);
        match parsed {
            Ok(events) => {
                for event in &events {
                    prop_assert_eq!(crate::evaluate::validate(event), Ok(()));
                    prop_assert_eq!(event.origin(), Origin::Batch);
                }
            }
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                prop_assert!(errors.errors.len() <= MAX_REPORTED_ERRORS);
                for error in &errors.errors {
                    prop_assert!(
                        (1..=lines.max(body.len())).contains(&error.line),
                        "line {} outside the body",
                        error.line
                    );
                    prop_assert!(!error.error.is_empty());
                }
            }
        }
        Ok(())
    }

    fn ingest_corpus() -> Vec<(String, Vec<u8>)> {
        testkit::fuzz::corpus(env!("CARGO_MANIFEST_DIR"), "ingest")
    }

    #[test]
    fn every_body_in_the_corpus_parses_or_fails_cleanly() {
        for (name, bytes) in ingest_corpus() {
            if let Err(failure) = check_body(&bytes) {
                panic!("corpus file {name}: {failure}");
            }
        }
        // The valid seeds stay valid: a parser change that rejects them shows here.
        for name in [
            "array.json",
            "blank-lines.ndjson",
            "crlf.ndjson",
            "ndjson-three-shapes.ndjson",
        ] {
            let bytes = std::fs::read(
                testkit::fuzz::corpus_dir(env!("CARGO_MANIFEST_DIR"), "ingest").join(name),
            )
            .unwrap();
            assert!(parse_body(&bytes, Origin::Realtime).is_ok(), "{name}");
        }
    }

    /// A valid event as JSON, and what it must become.
    fn arb_event() -> impl Strategy<Value = (String, TraitEvent)> {
        let user = "[a-zA-Z0-9_-]{1,40}";
        let time = 0_i64..4_000_000_000_000;
        let rfc3339 = |ms: i64| {
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .unwrap()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        prop_oneof![
            (user, any::<u64>(), time.clone(), proptest::option::of(any::<u32>())).prop_map(
                move |(user, trait_id, ms, region)| {
                    let region_json = region.map(|r| format!(r#","region":{r}"#)).unwrap_or_default();
                    (
                        format!(r#"{{"type":"trait","user":"{user}","trait":{trait_id},"time":"{}"{region_json}}}"#, rfc3339(ms)),
                        TraitEvent {
                            user_id: user,
                            origin: Origin::Realtime as i32,
                            event: Some(trait_event::Event::TraitRealization(TraitRealization {
                                trait_id,
                                time_unix_ms: ms,
                                region,
                            })),
                        },
                    )
                }
            ),
            (user, any::<u64>(), "[a-z0-9-]{1,36}").prop_map(|(user, data_partner, uuid)| (
                format!(r#"{{"type":"id_sync","user":"{user}","data_partner":{data_partner},"partner_uuid":"{uuid}"}}"#),
                TraitEvent {
                    user_id: user,
                    origin: Origin::Realtime as i32,
                    event: Some(trait_event::Event::IdSync(IdSync {
                        data_partner_id: data_partner,
                        partner_uuid: uuid,
                        time_unix_ms: 0,
                    })),
                },
            )),
            (user, time.clone()).prop_map(move |(user, ms)| (
                format!(r#"{{"type":"opt_out","user":"{user}","time":"{}"}}"#, rfc3339(ms)),
                TraitEvent {
                    user_id: user,
                    origin: Origin::Realtime as i32,
                    event: Some(trait_event::Event::OptOut(OptOut { time_unix_ms: ms })),
                },
            )),
            (user, time).prop_map(move |(user, ms)| (
                format!(r#"{{"type":"forget","user":"{user}","time":"{}"}}"#, rfc3339(ms)),
                TraitEvent {
                    user_id: user,
                    origin: Origin::Realtime as i32,
                    event: Some(trait_event::Event::Forget(Forget { time_unix_ms: ms })),
                },
            )),
        ]
    }

    proptest! {
        #![proptest_config(testkit::fuzz::config())]

        /// Fuzzing the ingest parser: arbitrary bytes and mutated corpus bodies; no panic, no
        /// hang, a bounded error list.
        #[test]
        fn fuzz_ingest_parser(body in testkit::fuzz::bytes(ingest_corpus().into_iter().map(|(_, b)| b).collect())) {
            check_body(&body)?;
        }

    }

    proptest! {
        /// Valid events, as NDJSON or as an array, come out exactly as they went in (a
        /// property of the parser, on proptest's default case count).
        #[test]
        fn valid_events_round_trip(events in proptest::collection::vec(arb_event(), 1..20), array in any::<bool>()) {
            let lines: Vec<&str> = events.iter().map(|(json, _)| json.as_str()).collect();
            let body = if array { format!("[{}]", lines.join(",")) } else { lines.join("\n") };
            let parsed = parse_body(body.as_bytes(), Origin::Realtime);
            let expected: Vec<TraitEvent> = events.into_iter().map(|(_, e)| e).collect();
            prop_assert_eq!(parsed, Ok(expected));
        }
    }
}
