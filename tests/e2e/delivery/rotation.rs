//! Secrets and CA bundles rotated in their mounted files, the way Kubernetes updates a Secret
//! volume (a new data directory, then the `..data` symlink swapped), are used by the running
//! process for its next request: no restart, nothing lost.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use testkit::receiver::{Receiver, Response};

use super::oauth::test_ca_bundle;
use super::{DeliveryTest, T0, change, destination, update, wait_for_users};

/// A Secret volume as the kubelet lays it out: `..data` → a timestamped directory holding the
/// files, and one symlink per key → `..data/<key>`.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn new(dir: &Path, files: &[(&str, &[u8])]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut volume = Self {
            dir: dir.to_owned(),
            generation: 0,
        };
        volume.write(files);
        for (key, _) in files {
            std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key)).unwrap();
        }
        volume
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Writes a new data directory and swaps `..data` to it atomically (rename over).
    fn write(&mut self, files: &[(&str, &[u8])]) {
        self.generation += 1;
        let data = format!("..2026_11_30_00_00_00.{}", self.generation);
        std::fs::create_dir(self.dir.join(&data)).unwrap();
        for (key, content) in files {
            std::fs::write(self.dir.join(&data).join(key), content).unwrap();
        }
        let staged = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&data, &staged).unwrap();
        std::fs::rename(&staged, self.dir.join("..data")).unwrap();
    }
}

fn hmac_sha256(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    STANDARD.encode(mac.finalize().into_bytes())
}

fn basic(client_id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{client_id}:{secret}")))
}

#[tokio::test]
async fn a_rotated_hmac_key_and_oauth_client_secret_are_used_without_restart() {
    let test = DeliveryTest::new(1).await;
    let run = testkit::unique_name("rot");
    let [key_a, key_b, secret_a, secret_b] =
        ["key-a", "key-b", "secret-a", "secret-b"].map(|s| format!("{s}-{run}"));
    let dir = tempfile::tempdir().unwrap();
    let mut volume = SecretVolume::new(
        &dir.path().join("secrets"),
        &[
            ("hmac-key", key_a.as_bytes()),
            ("client-secret", secret_a.as_bytes()),
        ],
    );

    let hmac_partner = Receiver::start().await;
    // A slow partner: when the files change, a change is usually in flight to it and already
    // delivered to the other one, so the two destinations restart from different positions
    // (the case that made this test wait for a token no change would ask for).
    hmac_partner.respond_with(Response::status(200).delay(Duration::from_millis(1500)));
    let (oauth_partner, tokens) = (Receiver::start().await, Receiver::start().await);
    tokens.respond_with(Response::status(200).json(format!(
        r#"{{"access_token":"tok-{run}","token_type":"bearer","expires_in":3600}}"#
    )));
    let ca = test_ca_bundle(&[&oauth_partner, &tokens]);
    let destinations = [
        destination(
            71,
            &hmac_partner,
            &format!(
                ", auth: {{ hmac: {{ key_file: \"{}\" }} }}",
                volume.path("hmac-key").display()
            ),
        ),
        destination(
            72,
            &oauth_partner,
            &format!(
                ", auth: {{ oauth2: {{ token_url: \"{}\", client_id: relay, client_secret_file: \"{}\" }} }}",
                tokens.url("/oauth2/token"),
                volume.path("client-secret").display()
            ),
        )
        .replace(
            &oauth_partner.ca_file().display().to_string(),
            &ca.display().to_string(),
        ),
    ];
    let config = test.config(&destinations);
    let mut service = test.start(&config, &[]).await;
    let pid = service.pid();

    let mut users = 0;
    let mut send = async || {
        users += 1;
        let user = format!("u{users}");
        test.produce(
            &test.topic,
            &[update(&user, &[], &[], vec![change(14356, true, T0)])],
        )
        .await;
        users
    };
    let sent = send().await;
    wait_for_users(&hmac_partner, sent, Duration::from_secs(20)).await;
    wait_for_users(&oauth_partner, sent, Duration::from_secs(20)).await;
    let first = &hmac_partner.requests()[0];
    assert_eq!(
        first.header("x-signature"),
        Some(hmac_sha256(&key_a, &first.body).as_str())
    );
    assert_eq!(
        tokens.requests()[0].header("authorization"),
        Some(basic("relay", &secret_a).as_str())
    );

    volume.write(&[
        ("hmac-key", key_b.as_bytes()),
        ("client-secret", secret_b.as_bytes()),
    ]);
    let rotated = Instant::now();
    // Changes keep flowing; within a few polls of the files, requests use the new secrets. Each
    // destination restarts from its own position, so a change may reach one partner before the
    // reload and the other after it: changes go on until both show the rotation.
    let signed_with = |key: &str| {
        hmac_partner
            .requests()
            .iter()
            .position(|r| r.header("x-signature") == Some(hmac_sha256(key, &r.body).as_str()))
    };
    let token_with = |secret: &str| {
        tokens
            .requests()
            .iter()
            .any(|r| r.header("authorization") == Some(basic("relay", secret).as_str()))
    };
    let b_from = loop {
        if let Some(at) = signed_with(&key_b)
            && token_with(&secret_b)
        {
            break at;
        }
        assert!(
            rotated.elapsed() < Duration::from_secs(30),
            "30 s after the rotation: a request signed with the rotated key: {}; a token requested with the rotated client secret: {}",
            signed_with(&key_b).is_some(),
            token_with(&secret_b)
        );
        let sent = send().await;
        wait_for_users(&hmac_partner, sent, Duration::from_secs(20)).await;
        wait_for_users(&oauth_partner, sent, Duration::from_secs(20)).await;
    };
    // One more change after both rotations: it is signed with the new key only.
    let sent = send().await;
    let hmac_requests = wait_for_users(&hmac_partner, sent, Duration::from_secs(20)).await;
    wait_for_users(&oauth_partner, sent, Duration::from_secs(20)).await;
    for (i, request) in hmac_requests.iter().enumerate() {
        let key = if i < b_from { &key_a } else { &key_b };
        assert_eq!(
            request.header("x-signature"),
            Some(hmac_sha256(key, &request.body).as_str()),
            "request {i} of {}: signed with the key in force (rotated from request {b_from})",
            hmac_requests.len()
        );
    }
    // Every user reached both partners, and the process that did it is the one started.
    for (partner, name) in [(&hmac_partner, "71"), (&oauth_partner, "72")] {
        assert_eq!(
            super::delivered_users(partner).len(),
            users,
            "destination {name}: every user delivered"
        );
    }
    assert_eq!(service.exit_status(), None, "the service is still running");
    assert_eq!(service.pid(), pid);
    let log = service.log();
    for secret in [&key_a, &key_b, &secret_a, &secret_b] {
        assert!(!log.contains(secret.as_str()), "a secret reached the log");
    }
    assert!(log.contains("A config file changed"), "{log}");
}

#[tokio::test]
async fn a_rotated_ca_bundle_is_trusted_without_restart() {
    let test = DeliveryTest::new(1).await;
    let partner = Receiver::start().await;
    let stranger = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The bundle first holds another CA: the partner's certificate is not trusted.
    let mut volume = SecretVolume::new(
        &dir.path().join("ca"),
        &[("ca.pem", stranger.ca_pem().as_bytes())],
    );
    let entry = destination(73, &partner, ", retry_backoff_ms: 10").replace(
        &partner.ca_file().display().to_string(),
        &volume.path("ca.pem").display().to_string(),
    );
    let config = test.config(&[entry]);
    let service = test.start(&config, &[]).await;
    // Dated now: a failing change is retried, not dead-lettered as older than max_backlog_age.
    test.produce(&test.topic, &[super::update_now("u1")]).await;
    testkit::wait_until(
        "a TLS failure with the wrong CA",
        Duration::from_secs(20),
        || async { service.log().contains("Request to partner failed") },
    )
    .await;
    assert!(
        partner.requests().is_empty(),
        "no request reached the untrusted partner"
    );

    volume.write(&[("ca.pem", partner.ca_pem().as_bytes())]);
    let rotated = std::time::Instant::now();
    while partner.requests().is_empty() {
        assert!(
            rotated.elapsed() < Duration::from_secs(30),
            "no request reached the partner 30 s after its CA was rotated in; log:\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = partner.requests();
    assert_eq!(requests[0].status, 200);
    assert_eq!(
        super::entries([super::json(&requests[0].body)])
            .into_iter()
            .map(|(user, _, _)| user)
            .collect::<Vec<_>>(),
        ["u1"]
    );
}
