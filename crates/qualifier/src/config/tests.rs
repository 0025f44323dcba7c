//! segments.yaml: the documented example loads; problems name the segment, line and column;
//! unknown keys, bad durations and out-of-range user limits are refused; the fingerprint.

use super::*;

const EXAMPLE: &str = r#"inactivity: 120d             # users unseen this long drop out of everything
traits:
  - { id: 101, ttl: 30d }
  - { id: 102 }
  - { id: 103, ttl: 0 }
segments:
  - id: 14356
    name: sports-fans
    rule: "T101 AND (T102 OR NOT T103)"
  - id: 12176
    rule: T102 >= 3 WITHIN 7d
"#;

#[test]
fn the_documented_example_loads() {
    let defs = Definitions::parse(Path::new("segments.yaml"), EXAMPLE).unwrap();
    assert_eq!(defs.inactivity_ms, DEFAULT_INACTIVITY_MS);
    assert_eq!(defs.traits[&101].ttl_ms, 30 * 86_400_000);
    assert_eq!(defs.traits[&102].ttl_ms, DEFAULT_TTL_MS);
    assert_eq!(defs.traits[&103].ttl_ms, 0);
    assert_eq!(defs.segments.len(), 2);
    assert_eq!(defs.segments[0].name, "sports-fans");
    assert_eq!(defs.segments[1].name, "12176");
    assert_eq!(
        defs.retention[&102],
        Retention {
            count: 4,
            horizon_ms: Some(DEFAULT_TTL_MS)
        }
    );
    assert_eq!(
        defs.retention[&103],
        Retention {
            count: 2,
            horizon_ms: None
        }
    );
    assert_eq!(defs.windows[&102], [7 * 86_400_000]);
}

#[test]
fn errors_give_segment_line_and_column() {
    let text = r#"traits:
  - { id: 101 }
segments:
  - id: 1
    rule: "T101 AND (T102"
  - id: 2
    rule: T101 OR T999
  - id: 1
    rule: T101
  - id: 3
    rule: T101 WITHIN 3x
"#;
    let error = Definitions::parse(Path::new("segments.yaml"), text).unwrap_err();
    let text = error.to_string();
    for expected in [
        "segments.yaml: invalid definitions",
        "segment 1 (line 5, column 26): expected `)`, found the end of the rule in rule `T101 AND (T102`",
        "segment 2 (line 7): rule uses T999, which is not in `traits`",
        "segment 1 (line 8, column 9): duplicate segment id (first defined at line 4)",
        "segment 3 (line 11, column 23): `3x` is not a duration",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

#[test]
fn unknown_keys_and_bad_durations_are_refused() {
    let error = Definitions::parse(Path::new("s.yaml"), "traits: []\nsegmnts: []\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("segmnts"), "{error}");
    let error = Definitions::parse(
        Path::new("s.yaml"),
        "inactivity: soon\ntraits:\n  - { id: 1, ttl: 5y }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("inactivity (line 1): `soon` is not a positive duration"),
        "{error}"
    );
    assert!(
        error.contains("traits[0] (id 1) ttl (line 3): not a duration"),
        "{error}"
    );
}

#[test]
fn user_limits_default_to_a_state_well_under_the_message_limit_and_refuse_more() {
    let defs = Definitions::parse(Path::new("s.yaml"), EXAMPLE).unwrap();
    assert_eq!(defs.limits, UserLimits::default());
    assert!(defs.worst_case_state_bytes() < MAX_STATE_BYTES / 4);
    let error = Definitions::parse(
        Path::new("s.yaml"),
        "max_partner_ids: 1024
max_data_partners: 64
traits: []
",
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("more than the 900000 allowed: lower max_partner_ids (1024)"),
        "{error}"
    );
    let error = Definitions::parse(
        Path::new("s.yaml"),
        "max_regions: 0
traits: []
",
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains(
            "max_regions (line 1): 0 is out of range; write a number from 1 to 1024 (default 64)"
        ),
        "{error}"
    );
}

#[test]
fn the_fingerprint_follows_the_rules_not_the_layout() {
    let parse = |text: &str| Definitions::parse(Path::new("s.yaml"), text).unwrap();
    let base = parse(
        "traits: [{ id: 1 }, { id: 2 }]\nsegments: [{ id: 10, rule: T1 }, { id: 20, rule: T2 }]\n",
    );
    let relaid = parse(
        "# a comment\nsegments:\n  - { id: 20, rule: T2, name: b }\n  - { id: 10, rule: T1 }\ntraits:\n  - { id: 2 }\n  - { id: 1 }\nmax_regions: 8\n",
    );
    assert_eq!(base.fingerprint, relaid.fingerprint);
    for changed in [
        "traits: [{ id: 1 }, { id: 2 }]\nsegments: [{ id: 10, rule: T2 }, { id: 20, rule: T2 }]\n",
        "traits: [{ id: 1 }, { id: 2 }]\nsegments: [{ id: 10, rule: T1 }]\n",
        "traits: [{ id: 1, ttl: 1d }, { id: 2 }]\nsegments: [{ id: 10, rule: T1 }, { id: 20, rule: T2 }]\n",
        "inactivity: 30d\ntraits: [{ id: 1 }, { id: 2 }]\nsegments: [{ id: 10, rule: T1 }, { id: 20, rule: T2 }]\n",
    ] {
        assert_ne!(parse(changed).fingerprint, base.fingerprint, "{changed}");
    }
}

/// The reload watcher starts from what the load parsed, not from a second read of the file: an
/// edit made between the two would never be applied.
#[test]
fn load_records_the_bytes_it_parsed_for_the_reload_watcher() {
    let path = std::env::temp_dir().join(format!("segments-load-{}.yaml", std::process::id()));
    std::fs::write(&path, EXAMPLE).unwrap();
    let loaded = Definitions::load(&path).unwrap();
    std::fs::write(&path, "edited after the load").unwrap();
    assert_eq!(loaded.files.content(&path), Some(EXAMPLE.as_bytes()));
    assert_eq!(
        Definitions::parse(&path, EXAMPLE)
            .unwrap()
            .files
            .content(&path),
        None
    );
    std::fs::remove_file(&path).unwrap();
}
