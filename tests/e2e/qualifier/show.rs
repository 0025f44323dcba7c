//! `qualifier show --user`: a user's memberships, partner ids, regions, last seen and next
//! timer, read from the changelog with the qualifier running or stopped.

use std::time::Duration;

use super::{QualifierTest, post, trait_event};

const RULES: &str = "inactivity: 120d\ntraits: [{ id: 1 }, { id: 2 }]\nsegments:\n  - { id: 100, name: fans, rule: T1 }\n  - { id: 200, rule: T2 }\n";

#[tokio::test]
async fn show_prints_what_the_changelog_holds_running_or_not() {
    let test = QualifierTest::new(3).await;
    let definitions = test.definitions(RULES);
    let q = test.start(&definitions, "a").await;
    let (status, body) = post(
        &q.ingest,
        &[
            trait_event("u1", 1, "2026-11-29T10:00:00Z", Some(6)),
            trait_event("u1", 1, "2026-11-29T10:00:01Z", Some(2)),
            r#"{"type":"id_sync","user":"u1","data_partner":1234,"partner_uuid":"p-1"}"#.to_owned(),
            trait_event("u2", 2, "2026-11-29T10:00:00Z", None),
        ],
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let config = definitions.to_str().unwrap();
    let args = ["show", "--user", "u1", "--config", config];
    let (code, out, err) = testkit::wait_for(
        "u1's partner id in the changelog",
        Duration::from_secs(30),
        || test.command(&args),
        |(code, out, _)| *code == 0 && out.contains("p-1"),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    for line in [
        "user u1: present (",
        // The id sync has no time of its own: seen when it arrived.
        "last seen     20",
        "next timer    2027-03-29T10:00:00.000Z",
        "regions       2, 6\n",
        "  1234         p-1\n",
        "memberships   1\n",
        "  100          2026-11-29T10:00:00.000Z  fans                 T1\n",
    ] {
        assert!(out.contains(line), "no `{line}` in:\n{out}");
    }

    // Stopped: the changelog still answers, as JSON too.
    drop(q);
    let (code, out, err) = test.command(&["show", "--user", "u1", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["status"], "present");
    assert_eq!(report["memberships"][0]["segment"], 100);
    assert_eq!(report["partner_ids"][0]["ids"][0], "p-1");
    assert_eq!(report["regions"], serde_json::json!([2, 6]));
    assert_eq!(report["next_timer"], serde_json::Value::Null, "no --config");
    assert!(report["last_seen"].as_str().unwrap() > "2026-11-29T10:00:01Z");

    let (code, _, err) = test.command(&["show", "--user", "nobody"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nobody: no record in"), "{err}");
}
