//! Authenticated ingest against the real binary: bearer tokens from a tokens file mounted the
//! way a Kubernetes Secret is (a symlink swapped on update), rotated without a restart, never
//! logged; HTTPS on the ingest port with a certificate renewed without a restart; a bad tokens
//! file stops start-up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use testkit::service::metric_value;

use super::{QualifierTest, no_more, now, trait_event, updates};

const RULES: &str = "traits: [{ id: 1 }]\nsegments: [{ id: 100, rule: T1 }]\n";
const OLD: &str = "old-token-6f1d2c3b4a59687706f1";
const NEW: &str = "new-token-0a1b2c3d4e5f60718293";
const SECOND: &str = "second-token-9e8d7c6b5a493827";

/// A directory laid out like a Secret volume: `tokens` → `..data/tokens`, `..data` → a
/// timestamped directory; [`SecretDir::update`] swaps `..data` atomically, as the kubelet does.
struct SecretDir {
    dir: tempfile::TempDir,
    version: u32,
}

impl SecretDir {
    fn new(tokens: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut secret = Self { dir, version: 0 };
        secret.update(tokens);
        std::os::unix::fs::symlink("..data/tokens", secret.path()).unwrap();
        secret
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    fn update(&mut self, tokens: &str) {
        self.version += 1;
        let version = format!("..2026_11_30_{}", self.version);
        std::fs::create_dir(self.dir.path().join(&version)).unwrap();
        std::fs::write(self.dir.path().join(&version).join("tokens"), tokens).unwrap();
        let staged = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &staged).unwrap();
        std::fs::rename(&staged, self.dir.path().join("..data")).unwrap();
    }
}

/// POSTs one event with an optional bearer token; returns (status, WWW-Authenticate, body).
async fn post_as(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    event: String,
) -> (u16, Option<String>, serde_json::Value) {
    let mut request = client.post(url).body(event);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        status,
        challenge,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn ingest_needs_one_of_the_tokens_and_a_rotated_file_applies_without_restart() {
    let test = QualifierTest::new(1).await;
    let mut secret = SecretDir::new(&format!("# ingest clients\n{OLD}\n\n{SECOND}\n"));
    let tokens_file = secret.path();
    let q = test
        .start_with(
            &test.definitions(RULES),
            "a",
            &[("INGEST_TOKENS_FILE", tokens_file.to_str().unwrap())],
        )
        .await;
    let reader = test.reader(&test.status);
    let client = reqwest::Client::new();
    let event = |user: &str| trait_event(user, 1, &now(), None);

    let (status, challenge, body) = post_as(&client, &q.ingest, None, event("refused-1")).await;
    assert_eq!(
        (status, challenge.as_deref()),
        (401, Some("Bearer")),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("missing bearer token"),
        "{body}"
    );
    for wrong in [NEW, &OLD[..20], &format!("{OLD}0")] {
        let (status, challenge, body) =
            post_as(&client, &q.ingest, Some(wrong), event("refused-2")).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(
            challenge.as_deref(),
            Some(r#"Bearer error="invalid_token""#)
        );
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("invalid bearer token"),
            "{body}"
        );
    }
    for (token, user) in [(OLD, "old-1"), (SECOND, "second-1")] {
        let (status, _, body) = post_as(&client, &q.ingest, Some(token), event(user)).await;
        assert_eq!((status, &body), (202, &serde_json::json!({"accepted": 1})));
    }

    // Rotation: OLD is replaced by NEW in the Secret; no restart.
    secret.update(&format!("{NEW}\n{SECOND}\n"));
    let refused_before_reload = Arc::new(AtomicU32::new(0));
    testkit::wait_until(
        "the rotated token file to apply",
        telemetry::watch::CONFIG_POLL_INTERVAL * 3,
        || {
            let (client, url, event) = (client.clone(), q.ingest.clone(), event("new-1"));
            let refused = refused_before_reload.clone();
            async move {
                let status = post_as(&client, &url, Some(NEW), event).await.0;
                if status == 401 {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                status == 202
            }
        },
    )
    .await;
    let (status, _, _) = post_as(&client, &q.ingest, Some(OLD), event("refused-3")).await;
    assert_eq!(status, 401, "the removed token is refused");
    let (status, _, _) = post_as(&client, &q.ingest, Some(SECOND), event("second-2")).await;
    assert_eq!(
        status, 202,
        "the token kept across the rotation still works"
    );

    // An invalid rotation (a token too short) is refused; the running tokens stay.
    secret.update("short-token\n");
    tokio::time::sleep(telemetry::watch::CONFIG_POLL_INTERVAL * 2).await;
    let (status, _, _) = post_as(&client, &q.ingest, Some(NEW), event("new-2")).await;
    assert_eq!(
        status, 202,
        "an invalid tokens file keeps the running tokens"
    );

    // What users see: the accepted events' users qualified, and only they.
    let mut users: Vec<String> = updates(&reader, 5, Duration::from_secs(20))
        .await
        .into_iter()
        .map(|u| u.user_id)
        .collect();
    users.sort();
    assert_eq!(users, ["new-1", "new-2", "old-1", "second-1", "second-2"]);
    no_more(&reader, Duration::from_secs(2)).await;

    let metrics = q.service.metrics().await;
    assert_eq!(
        metric_value(&metrics, r#"qualifier_ingest_requests_total{code="401"}"#),
        Some(f64::from(5 + refused_before_reload.load(Ordering::Relaxed)))
    );
    let log = q.service.log();
    assert!(log.contains("Ingest tokens reloaded."), "{log}");
    assert!(
        log.contains("The changed ingest tokens file is invalid"),
        "{log}"
    );
    for token in [OLD, NEW, SECOND, "short-token", &OLD[..20]] {
        assert!(
            !log.contains(token),
            "the log holds a token `{token}`:\n{log}"
        );
    }
}

#[tokio::test]
async fn a_bad_tokens_file_stops_start_up_naming_the_file_the_line_and_the_fix() {
    let test = QualifierTest::new(1).await;
    let secret = SecretDir::new(&format!("{OLD}\nsecret shorter\n# fine\nshort-secret\n"));
    let (code, stderr) = refused_start(
        tokio::process::Command::new(testkit::service::binary("qualifier"))
            .args(["--config", test.definitions(RULES).to_str().unwrap()])
            .env("INGEST_TOKENS_FILE", secret.path())
            .env("KAFKA_INSTANCE_ID", "a")
            .env("ADMIN_ADDR", "127.0.0.1:0")
            .env("KAFKA_BROKERS", &testkit::kafka::settings().brokers),
    )
    .await;
    assert_eq!(code, 1, "{stderr}");
    let path = secret.path().display().to_string();
    for expected in [
        "--ingest-tokens-file (INGEST_TOKENS_FILE)",
        &format!("{path}: invalid ingest tokens file"),
        "line 2: whitespace inside a token",
        "line 4: the token is 12 characters long, at least 16 are needed (make one with e.g. `openssl rand -hex 32`)",
    ] {
        assert!(
            stderr.contains(expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
    for token in [OLD, "secret shorter", "short-secret"] {
        assert!(!stderr.contains(token), "stderr holds a token:\n{stderr}");
    }
}

/// Runs a qualifier that must refuse to start: its exit code and stderr, or a panic if it is
/// still running after 30 s (it started although it should not have).
async fn refused_start(command: &mut tokio::process::Command) -> (i32, String) {
    command.kill_on_drop(true);
    let (code, _, stderr) = tokio::time::timeout(
        Duration::from_secs(30),
        testkit::service::run_to_end(command),
    )
    .await
    .expect("the qualifier started: it should have refused to");
    (code, stderr)
}

/// A fresh CA and a `localhost`/`127.0.0.1` certificate it signed: (CA PEM, cert, key).
fn certificate() -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ingest test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

fn trusting(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[tokio::test]
async fn https_ingest_works_with_the_ca_refuses_plain_http_and_takes_a_renewed_certificate() {
    let test = QualifierTest::new(1).await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificate();
    let cert_file = write(dir.path(), "tls.crt", &cert);
    let key_file = write(dir.path(), "tls.key", &key);
    let secret = SecretDir::new(&format!("{OLD}\n"));
    let q = test
        .start_with(
            &test.definitions(RULES),
            "a",
            &[
                ("INGEST_TOKENS_FILE", secret.path().to_str().unwrap()),
                ("INGEST_TLS_CERT_FILE", cert_file.to_str().unwrap()),
                ("INGEST_TLS_KEY_FILE", key_file.to_str().unwrap()),
            ],
        )
        .await;
    let reader = test.reader(&test.status);
    let https = q.ingest.replacen("http://", "https://", 1);
    let event = |user: &str| trait_event(user, 1, &now(), None);

    let (status, _, body) = post_as(&trusting(&ca), &https, Some(OLD), event("tls-1")).await;
    assert_eq!(status, 202, "{body}");
    let (status, _, _) = post_as(&trusting(&ca), &https, None, event("tls-refused")).await;
    assert_eq!(status, 401, "TLS does not replace the token");
    let plain = reqwest::Client::new()
        .post(&q.ingest)
        .bearer_auth(OLD)
        .body(event("plain"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP to the TLS port: {plain:?}");
    let (other_ca, _, _) = certificate();
    let untrusted = trusting(&other_ca)
        .post(&https)
        .bearer_auth(OLD)
        .body(event("untrusted"))
        .send()
        .await;
    assert!(
        untrusted.is_err(),
        "a client not trusting the CA: {untrusted:?}"
    );

    // Renewal: a certificate from another CA replaces the files; no restart.
    let (renewed_ca, renewed_cert, renewed_key) = certificate();
    write(dir.path(), "tls.key", &renewed_key);
    write(dir.path(), "tls.crt", &renewed_cert);
    testkit::wait_until(
        "the renewed certificate to be served",
        telemetry::watch::CONFIG_POLL_INTERVAL * 3,
        || {
            let (client, url, event) = (trusting(&renewed_ca), https.clone(), event("tls-2"));
            async move {
                let response = client.post(&url).bearer_auth(OLD).body(event).send().await;
                response.is_ok_and(|r| r.status().as_u16() == 202)
            }
        },
    )
    .await;

    let users: Vec<String> = updates(&reader, 2, Duration::from_secs(20))
        .await
        .into_iter()
        .map(|u| u.user_id)
        .collect();
    assert_eq!(users, ["tls-1", "tls-2"]);
    no_more(&reader, Duration::from_secs(2)).await;
    let log = q.service.log();
    assert!(log.contains("Ingest TLS certificate reloaded."), "{log}");
    assert!(!log.contains(OLD), "the log holds the token:\n{log}");

    // loadgen as an authenticated HTTPS client: the token from the environment, the CA.
    let ca_file = write(dir.path(), "ca.pem", &renewed_ca);
    let loadgen = |token: Option<&str>| {
        let mut command = tokio::process::Command::new(testkit::service::binary("loadgen"));
        command
            .args([
                "--ingest",
                &https,
                "--ingest-ca-file",
                ca_file.to_str().unwrap(),
            ])
            .args([
                "--count", "3", "--rate", "0", "--users", "1", "--traits", "1",
            ])
            .args([
                "--id-sync-share",
                "0",
                "--opt-out-share",
                "0",
                "--user-prefix",
                "loadgen-",
            ])
            .env_remove("INGEST_TOKEN");
        if let Some(token) = token {
            command.env("INGEST_TOKEN", token);
        }
        command
    };
    let (code, stdout, stderr) = testkit::service::run_to_end(&mut loadgen(Some(OLD))).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("sent 3 events"), "{stdout}");
    let (code, stdout, stderr) = testkit::service::run_to_end(&mut loadgen(None)).await;
    assert_ne!(code, 0, "{stdout}{stderr}");
    assert!(stderr.contains("ingest answered 401"), "{stderr}");
}

#[tokio::test]
async fn a_certificate_and_a_key_that_do_not_match_stop_start_up_naming_the_files() {
    let test = QualifierTest::new(1).await;
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, _) = certificate();
    let (_, _, other_key) = certificate();
    let cert_file = write(dir.path(), "tls.crt", &cert);
    let key_file = write(dir.path(), "tls.key", &other_key);
    let not_pem = write(dir.path(), "empty.crt", "not a certificate\n");
    let start = |cert: &Path, key: &Path| {
        let mut command = tokio::process::Command::new(testkit::service::binary("qualifier"));
        command
            .args(["--config", test.definitions(RULES).to_str().unwrap()])
            .env("INGEST_TLS_CERT_FILE", cert)
            .env("INGEST_TLS_KEY_FILE", key)
            .env("KAFKA_INSTANCE_ID", "a")
            .env("ADMIN_ADDR", "127.0.0.1:0")
            .env("KAFKA_BROKERS", &testkit::kafka::settings().brokers);
        command
    };
    let (code, stderr) = refused_start(&mut start(&cert_file, &key_file)).await;
    assert_eq!(code, 1, "{stderr}");
    let expected = format!(
        "--ingest-tls-cert-file / --ingest-tls-key-file (INGEST_TLS_CERT_FILE / INGEST_TLS_KEY_FILE): {}: cannot serve this key with the certificate {}",
        key_file.display(),
        cert_file.display()
    );
    assert!(
        stderr.contains(&expected),
        "missing `{expected}` in:\n{stderr}"
    );
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");

    let (code, stderr) = refused_start(&mut start(&not_pem, &key_file)).await;
    assert_eq!(code, 1, "{stderr}");
    let expected = format!("{}: no `BEGIN CERTIFICATE` block", not_pem.display());
    assert!(
        stderr.contains(&expected),
        "missing `{expected}` in:\n{stderr}"
    );
}
