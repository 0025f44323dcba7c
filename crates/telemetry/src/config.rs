//! The `kafka:` block of a service's config file — what the service reads and writes (topics,
//! consumer groups, instance id, timings) — read the same way by every service: each key is
//! optional with a default, and the environment variable `KAFKA_<KEY>` (the key in upper case)
//! overrides it (default < file < environment). An environment value is parsed and checked
//! exactly like the file's, and every problem names the key (or the variable) and the fix.
//!
//! Where Kafka is and how to reach it (brokers, security, secrets) is not in the block: it comes
//! from the environment only ([`crate::KafkaSettings`]), the same for every service.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The `kafka:` block as written: each key's scalar kept as text, so that a file value and an
/// environment value go through the same parsing.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct RawKafkaBlock(BTreeMap<String, Written>);

/// One value of the block as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// A scalar, as text: `10000`, `segment-status`, `""`.
    Scalar(String),
    /// `key:` or `key: null`: as if the key were not there (its default applies).
    Null,
    /// A list or a map, which no key takes.
    Nested,
}

impl<'de> Deserialize<'de> for Written {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WrittenVisitor)
    }
}

struct WrittenVisitor;

impl<'de> Visitor<'de> for WrittenVisitor {
    type Value = Written;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a single value (text or number)")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Written, E> {
        Ok(Written::Scalar(v.to_string()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Written, E> {
        Ok(Written::Scalar(v.to_string()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Written, E> {
        Ok(Written::Scalar(v.to_string()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Written, E> {
        Ok(Written::Scalar(v.to_string()))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Written, E> {
        Ok(Written::Scalar(v.to_string()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Written, E> {
        Ok(Written::Scalar(v.to_string()))
    }
    fn visit_str<E>(self, v: &str) -> Result<Written, E> {
        Ok(Written::Scalar(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Written, E> {
        Ok(Written::Scalar(v))
    }
    fn visit_unit<E>(self) -> Result<Written, E> {
        Ok(Written::Null)
    }
    fn visit_none<E>(self) -> Result<Written, E> {
        Ok(Written::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Written, D::Error> {
        Written::deserialize(deserializer)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Written, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Written::Nested)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Written, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Written::Nested)
    }
}

/// The environment variable that overrides `key` of the block: `KAFKA_<KEY>`.
pub fn env_var(key: &str) -> String {
    format!("KAFKA_{}", key.to_ascii_uppercase())
}

/// The connection settings, read from the environment only (see [`crate::KafkaSettings`]): a
/// block key of the same name is pointed at its variable.
const CONNECTION_VARIABLES: [&str; 4] = [
    "KAFKA_BROKERS",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_CLIENT_ID",
    "KAFKA_DEBUG",
];

fn is_connection_variable(name: &str) -> bool {
    CONNECTION_VARIABLES.contains(&name)
        || name.starts_with("KAFKA_SASL_")
        || name.starts_with("KAFKA_SSL_")
}

/// Reads a service's `kafka:` block key by key, each from the environment or else the file,
/// collecting every problem; [`KafkaBlock::finish`] adds the keys the service never asked for
/// (unknown keys), so the known keys are exactly those the service reads.
pub struct KafkaBlock<'a> {
    written: BTreeMap<String, Written>,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Every key read so far, with how a problem names it (the key, or the variable that set it).
    labels: BTreeMap<&'static str, String>,
    problems: Vec<String>,
}

impl fmt::Debug for KafkaBlock<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaBlock")
            .field("written", &self.written)
            .field("labels", &self.labels)
            .field("problems", &self.problems)
            .finish_non_exhaustive()
    }
}

impl<'a> KafkaBlock<'a> {
    /// The block as written (empty when the file has none), and where environment variables
    /// are looked up (the process environment, or a map in tests).
    pub fn new(written: RawKafkaBlock, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            written: written.0,
            env,
            labels: BTreeMap::new(),
            problems: Vec::new(),
        }
    }

    /// The value of `key` — the environment's if its variable is set (even to `""`), else the
    /// file's — with its label; `None`: neither sets it.
    fn value(&mut self, key: &'static str) -> Option<(String, String)> {
        let var = env_var(key);
        let (label, value) = if let Some(value) = (self.env)(&var) {
            (format!("{var} (environment, overrides kafka.{key})"), value)
        } else {
            let label = format!("kafka.{key}");
            match self.written.get(key) {
                Some(Written::Scalar(value)) => (label, value.clone()),
                Some(Written::Nested) => {
                    self.problems.push(format!(
                        "{label}: must be a single value (text or number), not a list or a map"
                    ));
                    self.labels.insert(key, label);
                    return None;
                }
                Some(Written::Null) | None => {
                    self.labels.insert(key, label);
                    return None;
                }
            }
        };
        self.labels.insert(key, label.clone());
        Some((label, value))
    }

    /// Records a problem with `key` that involves more than its own value (e.g. two keys that
    /// must differ), named as the value was set.
    pub fn problem(&mut self, key: &'static str, message: impl fmt::Display) {
        let label = self
            .labels
            .get(key)
            .cloned()
            .unwrap_or_else(|| format!("kafka.{key}"));
        self.problems.push(format!("{label}: {message}"));
    }

    /// A topic name, `default` when unset.
    pub fn topic(&mut self, key: &'static str, default: &str) -> String {
        self.checked(key, check_topic_name, &format!(" (default `{default}`)"))
            .unwrap_or_else(|| default.to_owned())
    }

    /// A topic name that `""` turns off (`None`), `default` when unset.
    pub fn optional_topic(&mut self, key: &'static str, default: &str) -> Option<String> {
        let check = |name: &str| match name.trim() {
            "" => Ok(()),
            _ => check_topic_name(name),
        };
        let hint = format!(" (default `{default}`; `\"\"` turns it off)");
        match self.checked(key, check, &hint) {
            None => Some(default.to_owned()),
            Some(value) if value.trim().is_empty() => None,
            Some(value) => Some(value),
        }
    }

    /// A consumer group or instance id, `default` when unset.
    pub fn id(&mut self, key: &'static str, default: &str) -> String {
        self.checked(key, check_id, &format!(" (default `{default}`)"))
            .unwrap_or_else(|| default.to_owned())
    }

    /// A consumer group or instance id without a default.
    pub fn optional_id(&mut self, key: &'static str) -> Option<String> {
        self.checked(key, check_id, "")
    }

    /// The value of `key` (`None` when unset), its problem with `check` recorded with `hint`
    /// after the reason (the value is returned all the same: start-up fails on the problem).
    fn checked(
        &mut self,
        key: &'static str,
        check: impl Fn(&str) -> Result<(), String>,
        hint: &str,
    ) -> Option<String> {
        let (label, value) = self.value(key)?;
        if let Err(why) = check(&value) {
            self.problems.push(format!("{label}: {why}{hint}"));
        }
        Some(value)
    }

    /// A duration in milliseconds within `range`, `default` when unset; `why` (may be empty)
    /// says where the range comes from.
    pub fn millis(
        &mut self,
        key: &'static str,
        default: u64,
        range: RangeInclusive<u64>,
        why: &str,
    ) -> u64 {
        let Some((label, value)) = self.value(key) else {
            return default;
        };
        let Ok(ms) = value.trim().parse::<u64>() else {
            self.problems.push(format!(
                "{label}: `{value}` is not a whole number of milliseconds; write e.g. `{default}` (the default)"
            ));
            return default;
        };
        if !range.contains(&ms) {
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            };
            self.problems.push(format!(
                "{label}: must be between {} and {}{why}, got {ms}",
                range.start(),
                range.end()
            ));
        }
        ms
    }

    /// Every problem found, with one for each key of the file that was never read (an unknown
    /// key, e.g. a typo), naming the known keys.
    pub fn finish(mut self) -> Vec<String> {
        let known: Vec<&str> = self.labels.keys().copied().collect();
        for key in self.written.keys() {
            if self.labels.contains_key(key.as_str()) {
                continue;
            }
            let var = env_var(key);
            let hint = if is_connection_variable(&var) {
                format!(
                    "where Kafka is and how to reach it comes from the environment only: set {var} (README, \"Kafka settings\"); "
                )
            } else {
                String::new()
            };
            self.problems.push(format!(
                "kafka.{key}: unknown key; {hint}the keys of this block are {}",
                known.join(", ")
            ));
        }
        self.problems
    }
}

/// Why `name` is not a topic name Kafka accepts: 1 to 249 of `a-z A-Z 0-9 . _ -`, not `.` or `..`.
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "`{name}` is not a topic name: `{c}` is not allowed; use only a-z, A-Z, 0-9, `.`, `_` and `-`"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("`{name}` is not a topic name"));
    }
    if name.len() > 249 {
        return Err(format!(
            "`{name}` is {} characters long; a topic name has at most 249",
            name.len()
        ));
    }
    Ok(())
}

/// Why `id` is not a usable consumer group or instance id: empty, or with a space or control
/// character (a trailing space from a shell or a manifest makes another group).
pub fn check_id(id: &str) -> Result<(), String> {
    if id.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{id}` contains a space or a control character; write the id without them"
        ));
    }
    Ok(())
}

/// A problem for each environment variable of `renamed` (`(old variable, block key)`) that is
/// set: a deployment that still sets one must not run on the default unawares.
pub fn renamed_variables(
    env: &dyn Fn(&str) -> Option<String>,
    renamed: &[(&str, &str)],
) -> Vec<String> {
    renamed
        .iter()
        .filter(|(old, _)| env(old).is_some())
        .map(|(old, key)| {
            format!(
                "{old} is set, but is no longer read: set kafka.{key} in the config file or {} instead, and remove {old}",
                env_var(key)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests;
