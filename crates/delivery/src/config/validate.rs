//! Validation of the whole file and of each destination: ids, URL, partner ids, the
//! `segments:` map and which auth, built from the raw types into the validated ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::auth::{parse_url, validate_hmac, validate_oauth};
use super::kafka::validate_kafka;
use super::raw::{RawAuth, RawDestination, RawFile, RawTuning, Scalar};
use super::tuning::{checked_range, validate_tuning};
use super::{AuthConfig, DeliveryConfig, DestinationConfig, Problems, Sources};

pub(super) fn validate(
    raw: RawFile,
    sources: &mut Sources<'_>,
    problems: &mut Problems,
) -> DeliveryConfig {
    let kafka = validate_kafka(raw.kafka, sources.env, problems);
    if raw.destinations.is_empty() {
        problems.add(
            "destinations",
            "at least one destination is required (example: `destinations: [{ id: 423, url: https://…, … }]`)",
        );
    }
    let mut seen_ids = BTreeMap::new();
    let destinations: Vec<_> = raw
        .destinations
        .into_iter()
        .enumerate()
        .map(|(i, raw_destination)| {
            let key = format!("destinations[{i}]");
            let destination =
                validate_destination(&key, raw_destination, &raw.defaults, sources, problems);
            if let Some(first) = seen_ids.insert(destination.id, i) {
                problems.add(
                    &format!("{key}.id"),
                    format!(
                        "{} is already the id of destinations[{first}]; ids must be unique",
                        destination.id
                    ),
                );
            }
            Arc::new(destination)
        })
        .collect();
    let queue_budget_bytes = match raw.queue_budget_mb {
        Some(mb) => checked_range(problems, "queue_budget_mb", mb, 1..=65_536, " (MiB)")
            .saturating_mul(1 << 20),
        None => crate::budget::default_bytes(destinations.len()),
    };
    DeliveryConfig {
        kafka,
        destinations,
        queue_budget_bytes: usize::try_from(queue_budget_bytes).unwrap_or(usize::MAX),
        files: std::mem::take(&mut sources.files),
    }
}

fn validate_destination(
    key: &str,
    raw: RawDestination,
    defaults: &RawTuning,
    sources: &mut Sources<'_>,
    problems: &mut Problems,
) -> DestinationConfig {
    let id = raw.id.unwrap_or_else(|| {
        problems.add(
            &format!("{key}.id"),
            "required: the partner's AAM_Destination_Id (example: `id: 423`)",
        );
        0
    });
    if raw.allow_insecure_http.is_some() {
        problems.add(
            &format!("{key}.allow_insecure_http"),
            "this key was renamed to `dangerous_allow_http` (it turns TLS off for this destination and its token endpoint): write `dangerous_allow_http: true` only for tests and local demos, or remove the key",
        );
    }
    let dangerous_allow_http = raw.dangerous_allow_http;
    let url = parse_url(
        &format!("{key}.url"),
        raw.url.as_deref(),
        dangerous_allow_http,
        problems,
    );
    let client_id = raw.client_id.map(|c| c.to_string()).unwrap_or_else(|| {
        problems.add(
            &format!("{key}.client_id"),
            "required: the Client_ID the partner uses (example: `client_id: \"74323\"`)",
        );
        String::new()
    });
    let user_dpid = raw.user_dpid.unwrap_or_else(|| {
        problems.add(
            &format!("{key}.user_dpid"),
            "required: the device-ID namespace (20914 = Android GAID, 20915 = iOS IDFA)",
        );
        0
    });

    let mut segments: BTreeMap<u64, Arc<str>> = BTreeMap::new();
    if raw.segments.is_empty() {
        problems.add(
            &format!("{key}.segments"),
            "map at least one of our segment ids to the partner's Segment_ID (example: `segments: { \"14356\": \"99\" }`)",
        );
    }
    for (ours, theirs) in raw.segments {
        let ours_id = match &ours {
            Scalar::Int(n) => Some(*n),
            Scalar::Str(s) => s.trim().parse().ok(),
        };
        let theirs = theirs.to_string();
        match ours_id {
            Some(ours_id) if !theirs.trim().is_empty() => {
                segments.insert(ours_id, Arc::from(theirs.as_str()));
            }
            Some(_) => problems.add(
                &format!("{key}.segments.{ours}"),
                "the partner's Segment_ID must not be empty",
            ),
            None => problems.add(
                &format!("{key}.segments"),
                format!("`{ours}` is not one of our segment ids (an unsigned integer)"),
            ),
        }
    }
    // Two of our segments behind one partner Segment_ID would give the partner whichever of
    // them changed last: a 0 for the Segment_ID while the user is still in the other one.
    let mut mapped_from: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (&ours, theirs) in &segments {
        mapped_from.entry(theirs.as_ref()).or_default().push(ours);
    }
    for (theirs, ours) in mapped_from.iter().filter(|(_, ours)| ours.len() > 1) {
        let (last, others) = ours.split_last().unwrap_or((&0, &[]));
        let others: Vec<String> = others.iter().map(u64::to_string).collect();
        let all = if ours.len() == 2 { "both" } else { "all" };
        let destination = match &raw.name {
            Some(name) => format!("destination {id} ({name})"),
            None => format!("destination {id}"),
        };
        problems.add(
            &format!("{key}.segments"),
            format!(
                "our segments {} and {last} {all} map to the partner's Segment_ID `{theirs}` in {destination}, so the partner would get whichever changed last (a 0 while the user is still in another); map each Segment_ID from one segment of ours: give the others Segment_IDs of their own, or define one segment whose rule covers them in segments.yaml and map that",
                others.join(", ")
            ),
        );
    }

    let auth = match raw.auth {
        None => AuthConfig::None,
        Some(RawAuth {
            hmac: Some(_),
            oauth2: Some(_),
        }) => {
            problems.add(
                &format!("{key}.auth"),
                "set either `hmac` or `oauth2`, not both",
            );
            AuthConfig::None
        }
        Some(RawAuth {
            hmac: Some(hmac),
            oauth2: None,
        }) => AuthConfig::Hmac(validate_hmac(
            &format!("{key}.auth.hmac"),
            hmac,
            sources,
            problems,
        )),
        Some(RawAuth {
            hmac: None,
            oauth2: Some(oauth),
        }) => AuthConfig::OAuth2(validate_oauth(
            &format!("{key}.auth.oauth2"),
            oauth,
            dangerous_allow_http,
            sources,
            problems,
        )),
        Some(RawAuth {
            hmac: None,
            oauth2: None,
        }) => {
            problems.add(
                &format!("{key}.auth"),
                "set `hmac: {…}` or `oauth2: {…}`, or remove `auth`",
            );
            AuthConfig::None
        }
    };
    let ca_pem = raw
        .ca_file
        .as_deref()
        .and_then(|ca_file| match sources.files.read(ca_file) {
            Ok(pem) => Some(pem),
            Err(e) => {
                problems.add(
                    &format!("{key}.ca_file"),
                    format!("cannot read `{}`: {e}", ca_file.display()),
                );
                None
            }
        });

    let tuning = validate_tuning(key, &raw.tuning, defaults, problems);
    DestinationConfig {
        id,
        name: raw.name.unwrap_or_else(|| id.to_string()),
        url,
        client_id,
        user_dpid,
        data_partner: raw.data_partner,
        segments: segments.into_iter().collect(),
        auth,
        ca_file: raw.ca_file,
        ca_pem,
        dangerous_allow_http,
        rate_limit_rps: std::num::NonZeroU32::new(raw.rate_limit_rps),
        gzip: raw.gzip,
        backfill: raw.backfill,
        timeout: tuning.timeout,
        retries: tuning.retries,
        retry_backoff: tuning.retry_backoff,
        success_codes: tuning.success_codes,
        permanent_codes: tuning.permanent_codes,
        backoff: tuning.backoff,
        max_backlog_age: tuning.max_backlog_age,
        batch: tuning.batch,
        max_in_flight: tuning.max_in_flight,
        queue_capacity: tuning.queue_capacity,
        detach_after: tuning.detach_after,
        circuit: tuning.circuit,
        delivery_log: tuning.delivery_log,
    }
}
