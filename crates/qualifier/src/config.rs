//! `segments.yaml`: traits (with time-to-live), segments (with rules), the inactivity
//! period and the `kafka:` block ([`kafka`]), validated into [`Definitions`] with every problem
//! reported at once, each naming the file, the segment (or key) and the line and column.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A map by trait or segment id, looked up on every event: foldhash rather than SipHash (the
/// keys come from the operator's definitions, not from users).
pub type IdMap<V> = HashMap<u64, V, foldhash::fast::RandomState>;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::rules::{self, Expr, Program};

pub mod kafka;

use kafka::KafkaConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    inactivity: Option<Spanned<String>>,
    max_partner_ids: Option<Spanned<u32>>,
    max_data_partners: Option<Spanned<u32>>,
    max_regions: Option<Spanned<u32>>,
    refresh_after: Option<Spanned<DurationText>>,
    #[serde(default)]
    traits: Vec<RawTrait>,
    #[serde(default)]
    segments: Vec<RawSegment>,
    #[serde(default)]
    kafka: telemetry::config::RawKafkaBlock,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrait {
    id: u64,
    ttl: Option<Spanned<DurationText>>,
}

/// A duration written as `30d`, `2s` or `0`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DurationText {
    Zero(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSegment {
    id: Spanned<u64>,
    name: Option<String>,
    rule: Spanned<String>,
    refresh_after: Option<Spanned<DurationText>>,
}

/// A trait and how long a realization of it stays alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraitDef {
    /// Time-to-live in ms; 0 = never expires. Default 120 days.
    pub ttl_ms: i64,
}

/// A segment and its compiled rule.
#[derive(Debug, Clone)]
pub struct SegmentDef {
    pub id: u64,
    pub name: String,
    /// The rule as written in the file.
    pub rule_text: String,
    pub rule: Expr,
    pub program: Program,
    /// Re-publish each still-active membership's 1 this long after the last (`refresh_after`,
    /// or the file's default); `None`: never.
    pub refresh_ms: Option<i64>,
}

/// What the qualifier keeps of a trait's realizations: the newest `count`, and none older
/// than `horizon_ms` (the time-to-live) — enough to decide every rule that uses the trait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub count: u32,
    pub horizon_ms: Option<i64>,
}

/// Validated definitions.
#[derive(Debug, Clone)]
pub struct Definitions {
    /// Users unseen this long drop out of everything. Default 120 days.
    pub inactivity_ms: i64,
    /// How much of a user's input is kept, so that no input can grow a user's state (and its
    /// updates) past Kafka's message limit.
    pub limits: UserLimits,
    /// A stable hash of what decides memberships (inactivity, traits' time-to-live, segments'
    /// rules): users evaluated under another fingerprint are re-evaluated (see
    /// `UserState::definitions_fingerprint`). Never 0.
    pub fingerprint: u64,
    pub traits: IdMap<TraitDef>,
    pub segments: Vec<SegmentDef>,
    /// Per trait used by a rule: what to keep.
    pub retention: IdMap<Retention>,
    /// Per trait: the distinct `WITHIN` windows rules use (a realization crossing one can
    /// change a segment without a new event).
    pub windows: IdMap<Vec<i64>>,
    /// Whether any segment has a `refresh_after` (else no evaluation looks for refreshes).
    pub refreshing: bool,
    /// Per trait: the segments (indices into `segments`) whose rules use it — all an event of
    /// that trait can change while no time boundary has passed.
    pub segments_by_trait: IdMap<Vec<usize>>,
    /// Segment id → index into `segments`.
    pub segment_index: IdMap<usize>,
    /// The segments (indices) whose rules hold for a user with no realizations at all (e.g.
    /// `T1 OR NOT T2`): with `segments_by_trait`, all a new user's first event can change.
    pub hold_when_empty: Vec<usize>,
    /// The `kafka:` block (topics, group, instance id) with the environment's overrides: read
    /// at start-up; a reload that changes it takes effect at the next restart.
    pub kafka: KafkaConfig,
    /// The file as [`Definitions::load`] read it (empty after [`Definitions::parse`]): what the
    /// reload watcher starts from, so an edit made after the load is applied.
    pub files: telemetry::watch::Files,
}

/// Caps on what one user accumulates from ID syncs and regions (segments.yaml's
/// `max_partner_ids`, `max_data_partners`, `max_regions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserLimits {
    /// Partner ids kept per user and data partner; a new one past it evicts the id synced
    /// longest ago, which then leaves every segment.
    pub partner_ids: usize,
    /// Data partners a user keeps ids at; a new one past it evicts the data partner synced
    /// longest ago, with all its ids.
    pub data_partners: usize,
    /// Regions kept per user; regions seen after that many are not added.
    pub regions: usize,
}

impl Default for UserLimits {
    fn default() -> Self {
        Self {
            partner_ids: 16,
            data_partners: 16,
            regions: 64,
        }
    }
}

/// The largest changelog record the definitions may allow, in bytes: under the 1 MB
/// `max.message.bytes` of a default broker with room for the record's overhead.
pub const MAX_STATE_BYTES: usize = 900_000;

impl Definitions {
    /// An upper bound of a user's changelog record (and of any update of theirs) under these
    /// definitions: every id, region, kept realization and membership at its limit.
    pub fn worst_case_state_bytes(&self) -> usize {
        // Field tags and lengths: at most 1 + 3 bytes per id string, 11 per varint.
        let id = crate::evaluate::MAX_ID_BYTES + 4;
        let partner_ids = self.limits.data_partners * (11 + 4 + self.limits.partner_ids * id);
        let regions = self.limits.regions * 6 + 4;
        let traits: usize = self
            .retention
            .values()
            .map(|keep| 11 + 4 + keep.count as usize * 11)
            .sum();
        let memberships = self.segments.len() * (2 + 11 + 11);
        // The user id, last seen, opt-out, sequences and tags.
        let scalars = id + 5 * 11 + 16;
        partner_ids + regions + traits + memberships + scalars
    }
}

pub const DEFAULT_TTL_MS: i64 = 120 * 86_400_000;
pub const DEFAULT_INACTIVITY_MS: i64 = 120 * 86_400_000;

pub use telemetry::ConfigError;

impl Definitions {
    /// Reads, parses and validates `path`, with the `kafka:` block's overrides from the process
    /// environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut files = telemetry::watch::Files::default();
        let text = files.read_config(path, "definitions")?;
        let definitions = Self::parse_with_env(path, &text, &|name| std::env::var(name).ok())?;
        Ok(Self {
            files,
            ..definitions
        })
    }

    /// Parses and validates `text` (read from `path`) as written, without the environment.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse_with_env(path, text, &|_| None)
    }

    /// Parses and validates `text` (read from `path`), looking the `kafka:` block's overrides
    /// up with `env`.
    pub fn parse_with_env(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let fail = |problems| ConfigError::new(path, "definitions", problems);
        let raw: RawFile = serde_saphyr::from_str(text).map_err(|e| fail(vec![e.to_string()]))?;
        let (kafka, mut problems) = KafkaConfig::read(raw.kafka, env);

        let inactivity_ms = match &raw.inactivity {
            None => DEFAULT_INACTIVITY_MS,
            Some(spanned) => match rules::parse_duration(&spanned.value) {
                Some(ms) if ms > 0 => ms,
                _ => {
                    problems.push(format!(
                        "inactivity (line {}): `{}` is not a positive duration (a number and s, m, h or d, e.g. `120d`)",
                        spanned.referenced.line(),
                        spanned.value
                    ));
                    DEFAULT_INACTIVITY_MS
                }
            },
        };

        let defaults = UserLimits::default();
        let mut limit = |name: &str, raw: &Option<Spanned<u32>>, default: usize| match raw {
            None => default,
            Some(spanned) if (1..=1024).contains(&spanned.value) => spanned.value as usize,
            Some(spanned) => {
                problems.push(format!(
                    "{name} (line {}): {} is out of range; write a number from 1 to 1024 (default {default})",
                    spanned.referenced.line(),
                    spanned.value
                ));
                default
            }
        };
        let limits = UserLimits {
            partner_ids: limit(
                "max_partner_ids",
                &raw.max_partner_ids,
                defaults.partner_ids,
            ),
            data_partners: limit(
                "max_data_partners",
                &raw.max_data_partners,
                defaults.data_partners,
            ),
            regions: limit("max_regions", &raw.max_regions, defaults.regions),
        };

        let mut duration = |key: &str, raw: &Option<Spanned<DurationText>>| -> Option<i64> {
            let spanned = raw.as_ref()?;
            let parsed = match &spanned.value {
                DurationText::Zero(0) => Some(0),
                DurationText::Zero(_) => None,
                DurationText::Text(text) => rules::parse_duration(text),
            };
            if parsed.is_none() {
                problems.push(format!(
                    "{key} (line {}): not a duration; write e.g. `25d`, `12h`, or `0` for never",
                    spanned.referenced.line()
                ));
            }
            parsed
        };
        let default_refresh = duration("refresh_after", &raw.refresh_after).filter(|&ms| ms > 0);
        let refresh: Vec<Option<i64>> = raw
            .segments
            .iter()
            .map(|s| {
                match duration(
                    &format!("segment {} refresh_after", s.id.value),
                    &s.refresh_after,
                ) {
                    Some(0) => None,
                    Some(ms) => Some(ms),
                    None => default_refresh,
                }
            })
            .collect();

        let mut traits = IdMap::default();
        for (i, raw_trait) in raw.traits.iter().enumerate() {
            let ttl_ms = match &raw_trait.ttl {
                None => DEFAULT_TTL_MS,
                Some(spanned) => {
                    let parsed = match &spanned.value {
                        DurationText::Zero(0) => Some(0),
                        DurationText::Zero(_) => None,
                        DurationText::Text(text) => rules::parse_duration(text),
                    };
                    parsed.unwrap_or_else(|| {
                        problems.push(format!(
                            "traits[{i}] (id {}) ttl (line {}): not a duration; write e.g. `30d`, `2s`, or `0` for never",
                            raw_trait.id,
                            spanned.referenced.line()
                        ));
                        DEFAULT_TTL_MS
                    })
                }
            };
            if traits.insert(raw_trait.id, TraitDef { ttl_ms }).is_some() {
                problems.push(format!(
                    "traits[{i}]: trait id {} is defined twice",
                    raw_trait.id
                ));
            }
        }

        let mut segments = Vec::new();
        let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
        for (raw_segment, &refresh_ms) in raw.segments.iter().zip(&refresh) {
            let id = raw_segment.id.value;
            let id_line = raw_segment.id.referenced.line();
            if let Some(first_line) = seen.insert(id, id_line) {
                problems.push(format!(
                    "segment {id} (line {id_line}, column {}): duplicate segment id (first defined at line {first_line})",
                    raw_segment.id.referenced.column()
                ));
            }
            let (line, column) = rule_position(text, &raw_segment.rule);
            match rules::parse(&raw_segment.rule.value) {
                Ok(rule) => {
                    for condition in rule.conditions() {
                        if !traits.contains_key(&condition.trait_id) {
                            problems.push(format!(
                                "segment {id} (line {line}): rule uses T{}, which is not in `traits` (add `- {{ id: {} }}` there)",
                                condition.trait_id, condition.trait_id
                            ));
                        }
                    }
                    let program = Program::compile(&rule);
                    segments.push(SegmentDef {
                        id,
                        name: raw_segment.name.clone().unwrap_or_else(|| id.to_string()),
                        rule_text: raw_segment.rule.value.clone(),
                        rule,
                        program,
                        refresh_ms,
                    });
                }
                Err(error) => problems.push(format!(
                    "segment {id} (line {line}, column {}): {} in rule `{}`",
                    column.map_or(error.column, |c| c + error.column - 1),
                    error.message,
                    raw_segment.rule.value
                )),
            }
        }

        if !problems.is_empty() {
            return Err(fail(problems));
        }
        let mut retention: IdMap<Retention> = IdMap::default();
        let mut windows: IdMap<Vec<i64>> = IdMap::default();
        for condition in segments.iter().flat_map(|s| s.rule.conditions()) {
            let ttl_ms = traits[&condition.trait_id].ttl_ms;
            let keep = retention.entry(condition.trait_id).or_insert(Retention {
                count: 1,
                horizon_ms: (ttl_ms > 0).then_some(ttl_ms),
            });
            keep.count = keep.count.max(condition.count_needed());
            if let Some(window) = condition.within_ms {
                let list = windows.entry(condition.trait_id).or_default();
                if !list.contains(&window) {
                    list.push(window);
                }
            }
        }
        let mut segments_by_trait: IdMap<Vec<usize>> = IdMap::default();
        for (index, segment) in segments.iter().enumerate() {
            for condition in segment.rule.conditions() {
                let list = segments_by_trait.entry(condition.trait_id).or_default();
                if list.last() != Some(&index) {
                    list.push(index);
                }
            }
        }
        let segment_index = segments
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
        // No realization is alive at any time, so this does not depend on `now`.
        let mut stack = Vec::new();
        let hold_when_empty = segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.program.evaluate(&NoRealizations, 0, &mut stack))
            .map(|(i, _)| i)
            .collect();
        let definitions = Self {
            fingerprint: fingerprint(inactivity_ms, &traits, &segments),
            refreshing: segments.iter().any(|s| s.refresh_ms.is_some()),
            inactivity_ms,
            limits,
            traits,
            segments,
            retention,
            windows,
            segments_by_trait,
            segment_index,
            hold_when_empty,
            kafka,
            files: telemetry::watch::Files::default(),
        };
        let worst = definitions.worst_case_state_bytes();
        if worst > MAX_STATE_BYTES {
            return Err(fail(vec![format!(
                "a user at every limit would take up to {worst} bytes in one Kafka record, more than the {MAX_STATE_BYTES} allowed: lower max_partner_ids ({}), max_data_partners ({}) or max_regions ({}), or the counts rules keep (`T1 >= N`), or split the segments ({}) over several qualifiers",
                limits.partner_ids,
                limits.data_partners,
                limits.regions,
                definitions.segments.len()
            )]));
        }
        Ok(definitions)
    }
}

/// FNV-1a over the parts of the definitions that decide memberships, in id order: the same
/// for the same rules whatever the file's layout, comments or segment names.
fn fingerprint(inactivity_ms: i64, traits: &IdMap<TraitDef>, segments: &[SegmentDef]) -> u64 {
    let mut hash = FNV_OFFSET;
    let mut feed = |bytes: &[u8]| hash = fnv1a(hash, bytes);
    feed(&inactivity_ms.to_le_bytes());
    let mut traits: Vec<_> = traits.iter().collect();
    traits.sort_unstable_by_key(|(id, _)| **id);
    for (id, def) in traits {
        feed(&id.to_le_bytes());
        feed(&def.ttl_ms.to_le_bytes());
    }
    let mut segments: Vec<_> = segments.iter().collect();
    segments.sort_unstable_by_key(|s| s.id);
    for segment in segments {
        feed(&segment.id.to_le_bytes());
        feed(segment.rule_text.as_bytes());
        feed(&[0]);
    }
    hash.max(1)
}

/// FNV-1a's starting value.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a of `bytes`, continuing from `hash`: stable across processes and versions (unlike the
/// std hashers), for what must come out the same on every qualifier.
pub fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A user without any realization.
struct NoRealizations;

impl crate::rules::TraitTimes for NoRealizations {
    fn live_times(&self, _trait_id: u64, _now: i64) -> &[i64] {
        &[]
    }
}

/// The line of a rule in the file, and its first column when the rule is on one line (a
/// quoted scalar's column is past its quote).
fn rule_position(text: &str, rule: &Spanned<String>) -> (u64, Option<usize>) {
    let line = rule.referenced.line();
    let column = usize::try_from(rule.referenced.column()).unwrap_or(0);
    let source_line = text
        .lines()
        .nth(usize::try_from(line).unwrap_or(1).saturating_sub(1))
        .unwrap_or("");
    let first = source_line.chars().nth(column.saturating_sub(1));
    let start = if matches!(first, Some('"' | '\'')) {
        column + 1
    } else {
        column
    };
    let on_one_line = source_line
        .chars()
        .skip(start.saturating_sub(1))
        .collect::<String>()
        .starts_with(rule.value.as_str());
    (line, (column > 0 && on_one_line).then_some(start))
}

#[cfg(test)]
mod tests;
