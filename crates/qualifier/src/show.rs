//! `qualifier show --user U`: what the qualifier knows about one user, read from its compacted
//! changelog (the partition the user's key goes to), with the qualifier running or not.

use std::fmt::Write as _;

use anyhow::Context as _;
use model::changelog::{Gatherer, Key};
use model::{TraitPart, UserState, rfc3339_ms as rfc3339};
use prost::Message as _;
use rdkafka::Message as _;
use serde::Serialize;
use telemetry::KafkaSettings;

use crate::config::Definitions;
use crate::evaluate::next_due;

/// Where the user's latest changelog record is, and what it holds.
#[derive(Debug)]
pub struct Found {
    pub partition: i32,
    pub offset: i64,
    /// `None`: a tombstone (the user was forgotten: inactivity or erasure).
    pub state: Option<UserState>,
}

/// The user's latest record in `topic`: read from the partitions their key goes to, and from
/// every other partition only if it is in none of those. `None`: never recorded. Blocks.
pub fn find(kafka: &KafkaSettings, topic: &str, user: &str) -> anyhow::Result<Option<Found>> {
    let ends = kafka
        .partition_ends(topic)
        .with_context(|| format!("cannot read the partitions of {topic}"))?;
    let partitions = telemetry::partition::key_partitions(user.as_bytes(), ends.len() as i32);
    let found = find_in(kafka, topic, user, Some(&partitions))?;
    if found.is_some() {
        return Ok(found);
    }
    let rest: Vec<i32> = ends
        .iter()
        .map(|&(p, _)| p)
        .filter(|p| !partitions.contains(p))
        .collect();
    if rest.is_empty() {
        return Ok(None);
    }
    eprintln!(
        "{user} is not in partition(s) {partitions:?} of {topic} (where its key goes): reading the other {} partitions",
        rest.len()
    );
    find_in(kafka, topic, user, Some(&rest))
}

fn find_in(
    kafka: &KafkaSettings,
    topic: &str,
    user: &str,
    partitions: Option<&[i32]>,
) -> anyhow::Result<Option<Found>> {
    let mut found: Option<Found> = None;
    let mut undecodable = None;
    // The user's trait parts, for a record whose histories are apart (`model::changelog`).
    let mut gatherer = Gatherer::default();
    kafka
        .read_to_end(topic, partitions, |message| {
            match Key::parse(message.key().unwrap_or_default()) {
                Some(Key::User(id)) if id == user => {}
                Some(Key::Part { user: id, trait_id }) if id == user => {
                    match message.payload().map(TraitPart::decode).transpose() {
                        Ok(part) => gatherer.part(user, trait_id, part),
                        // Its previous part stands, as the qualifier's restore has it.
                        Err(error) => eprintln!("{topic} partition {} offset {}: an undecodable trait part of {user} ({trait_id}) was skipped: {error}", message.partition(), message.offset()),
                    }
                    return;
                }
                _ => return,
            }
            let mut state = match message.payload().map(UserState::decode).transpose() {
                Ok(state) => state,
                Err(error) => {
                    undecodable = Some((message.partition(), message.offset(), error));
                    return;
                }
            };
            match &mut state {
                Some(state) => {
                    let previous = found.take().and_then(|f| f.state);
                    gatherer.user(state, previous);
                }
                None => gatherer.forget(user),
            }
            found = Some(Found {
                partition: message.partition(),
                offset: message.offset(),
                state,
            });
        })
        .with_context(|| format!("cannot read {topic}"))?;
    if let (None, Some((partition, offset, error))) = (&found, undecodable) {
        anyhow::bail!("{topic} partition {partition} offset {offset}: not a user state: {error}");
    }
    Ok(found)
}

/// What `show` prints, as JSON with `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub user: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// `present`, `forgotten` (a tombstone) or `opted_out`.
    pub status: &'static str,
    pub last_seen: Option<String>,
    /// When the qualifier evaluates the user next without an event; needs the definitions.
    pub next_timer: Option<String>,
    pub regions: Vec<u32>,
    pub partner_ids: Vec<PartnerIdsReport>,
    pub memberships: Vec<MembershipReport>,
    pub opted_out_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PartnerIdsReport {
    pub data_partner: u64,
    /// Oldest sync first; the first is evicted next past `max_partner_ids`.
    pub ids: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct MembershipReport {
    pub segment: u64,
    pub since: String,
    /// The segment's name and rule, from the definitions (`None`: not given, or no longer
    /// defined).
    pub name: Option<String>,
    pub rule: Option<String>,
}

/// The report of a found record; `definitions` (if given) name the segments and set the timer.
pub fn report(
    user: &str,
    topic: &str,
    found: Found,
    definitions: Option<&Definitions>,
    now: i64,
) -> Report {
    let state = found.state.unwrap_or_default();
    let status = if state.opted_out {
        "opted_out"
    } else if state.user_id.is_empty() {
        "forgotten"
    } else {
        "present"
    };
    let segment = |id: u64| {
        definitions
            .and_then(|d| d.segment_index.get(&id).map(|&i| &d.segments[i]))
            .map(|s| (s.name.clone(), s.rule_text.clone()))
    };
    Report {
        user: user.to_owned(),
        topic: topic.to_owned(),
        partition: found.partition,
        offset: found.offset,
        status,
        last_seen: (state.last_seen_unix_ms > 0).then(|| rfc3339(state.last_seen_unix_ms)),
        next_timer: definitions
            .filter(|_| status == "present")
            .and_then(|d| next_due(d, &state, now))
            .map(rfc3339),
        regions: state.regions.clone(),
        partner_ids: state
            .partner_ids
            .iter()
            .map(|p| PartnerIdsReport {
                data_partner: p.data_partner_id,
                ids: p.partner_uuids.clone(),
            })
            .collect(),
        memberships: state
            .memberships
            .iter()
            .map(|m| {
                let (name, rule) = segment(m.segment_id).unzip();
                MembershipReport {
                    segment: m.segment_id,
                    since: rfc3339(m.since_unix_ms),
                    name,
                    rule,
                }
            })
            .collect(),
        opted_out_at: state.opted_out.then(|| rfc3339(state.opted_out_unix_ms)),
    }
}

/// The report as a readable table.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let _ = writeln!(
        out,
        "user {}: {} ({} partition {}, offset {})",
        report.user, report.status, report.topic, report.partition, report.offset
    );
    if let Some(at) = &report.opted_out_at {
        let _ = writeln!(out, "opted out     {at}");
    }
    let _ = writeln!(out, "last seen     {}", dash(&report.last_seen));
    let _ = writeln!(
        out,
        "next timer    {}",
        match (&report.next_timer, report.status) {
            (Some(at), _) => at.clone(),
            (None, "present") => "- (pass --config segments.yaml to compute it)".to_owned(),
            (None, _) => "-".to_owned(),
        }
    );
    let regions: Vec<String> = report.regions.iter().map(u32::to_string).collect();
    let _ = writeln!(out, "regions       {}", none_if_empty(&regions.join(", ")));
    if report.partner_ids.is_empty() {
        let _ = writeln!(out, "partner ids   -");
    } else {
        let _ = writeln!(out, "partner ids   (data partner: ids, oldest first)");
        for ids in &report.partner_ids {
            let _ = writeln!(out, "  {:<12} {}", ids.data_partner, ids.ids.join(", "));
        }
    }
    let _ = writeln!(out, "memberships   {}", report.memberships.len());
    if !report.memberships.is_empty() {
        let _ = writeln!(
            out,
            "  {:<12} {:<25} {:<20} rule",
            "segment", "since", "name"
        );
        for m in &report.memberships {
            let _ = writeln!(
                out,
                "  {:<12} {:<25} {:<20} {}",
                m.segment,
                m.since,
                dash(&m.name),
                dash(&m.rule)
            );
        }
    }
    out
}

fn none_if_empty(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

#[cfg(test)]
mod tests {
    use model::PartnerIds;
    use model::pb::Membership;

    use super::*;

    #[test]
    fn a_report_names_segments_and_sets_the_timer_from_the_definitions() {
        let definitions = Definitions::parse(
            std::path::Path::new("s.yaml"),
            "inactivity: 10d\ntraits: [{ id: 1 }]\nsegments: [{ id: 7, name: fans, rule: T1 }]\n",
        )
        .unwrap();
        let state = UserState {
            user_id: "u1".to_owned(),
            regions: vec![6],
            partner_ids: vec![PartnerIds {
                data_partner_id: 1234,
                partner_uuids: vec!["a".to_owned(), "b".to_owned()],
            }],
            memberships: vec![
                Membership {
                    segment_id: 7,
                    since_unix_ms: 0,
                    refreshed_unix_ms: 0,
                },
                Membership {
                    segment_id: 8,
                    since_unix_ms: 86_400_000,
                    refreshed_unix_ms: 0,
                },
            ],
            last_seen_unix_ms: 86_400_000,
            ..UserState::default()
        };
        let found = || Found {
            partition: 2,
            offset: 9,
            state: Some(state.clone()),
        };
        let shown = report("u1", "changelog", found(), Some(&definitions), 86_400_000);
        assert_eq!(
            shown.next_timer.as_deref(),
            Some("1970-01-12T00:00:00.000Z")
        );
        assert_eq!(shown.memberships[0].name.as_deref(), Some("fans"));
        assert_eq!(shown.memberships[1].name, None);
        let text = render(&shown);
        for line in [
            "user u1: present (changelog partition 2, offset 9)",
            "last seen     1970-01-02T00:00:00.000Z",
            "regions       6\n",
            "  1234         a, b\n",
            "memberships   2\n",
            "  7            1970-01-01T00:00:00.000Z  fans                 T1\n",
            "  8            1970-01-02T00:00:00.000Z  -                    -\n",
        ] {
            assert!(text.contains(line), "no `{line}` in:\n{text}");
        }
        let without = render(&report_without(found()));
        assert!(
            without.contains("next timer    - (pass --config"),
            "{without}"
        );
        let forgotten = report(
            "u1",
            "t",
            Found {
                partition: 0,
                offset: 1,
                state: None,
            },
            None,
            0,
        );
        assert_eq!(forgotten.status, "forgotten");
        assert_eq!(
            render(&forgotten),
            "user u1: forgotten (t partition 0, offset 1)\nlast seen     -\nnext timer    -\nregions       -\npartner ids   -\nmemberships   0\n"
        );
    }

    fn report_without(found: Found) -> Report {
        report("u1", "changelog", found, None, 0)
    }
}
