//! A real HTTPS endpoint for tests: a fresh CA and a `localhost`/`127.0.0.1` certificate per
//! receiver, every request recorded (method, path, headers, body, arrival time), and a
//! behaviour (status, delay, or a script of next responses) that can change mid-test.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

use crate::wait_until;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub received_at: Instant,
    /// The status the receiver answered with.
    pub status: u16,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How the receiver answers. A scripted response, if any, is used (once) before the default.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub delay: Duration,
    /// A JSON body (e.g. an OAuth token response); empty for none.
    pub body: String,
}

impl Response {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
            body: String::new(),
        }
    }

    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    #[must_use]
    pub fn json(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }
}

#[derive(Debug)]
struct Behaviour {
    default: Response,
    script: VecDeque<Response>,
}

#[derive(Debug)]
struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    behaviour: Mutex<Behaviour>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running HTTPS receiver; stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    ca_pem: String,
    ca_dir: tempfile::TempDir,
    shared: Arc<Shared>,
    handle: Handle<SocketAddr>,
}

impl Receiver {
    /// Starts a receiver on a free loopback port answering `200` at once.
    pub async fn start() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "segment-relay test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let tls = RustlsConfig::from_pem(
            leaf.pem().into_bytes(),
            leaf_key.serialize_pem().into_bytes(),
        )
        .await
        .unwrap();

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            behaviour: Mutex::new(Behaviour {
                default: Response::status(200),
                script: VecDeque::new(),
            }),
        });
        let app = axum::Router::new()
            .fallback(record)
            .with_state(shared.clone());
        let handle = Handle::new();
        let server = axum_server::from_tcp_rustls(listener, tls)
            .unwrap()
            .handle(handle.clone());
        tokio::spawn(async move { server.serve(app.into_make_service()).await });

        let ca_dir = tempfile::tempdir().unwrap();
        let ca_pem = ca.pem();
        std::fs::write(ca_dir.path().join("ca.pem"), &ca_pem).unwrap();
        Self {
            addr,
            ca_pem,
            ca_dir,
            shared,
            handle,
        }
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    /// The CA certificate (PEM) that signed the receiver's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate as a file, for a service's `ca_file`.
    pub fn ca_file(&self) -> PathBuf {
        self.ca_dir.path().join("ca.pem")
    }

    /// An HTTP client that trusts this receiver (and nothing else).
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    }

    /// From now on answer every request with `status` after `delay`.
    pub fn respond(&self, status: u16, delay: Duration) {
        self.respond_with(Response::status(status).delay(delay));
    }

    /// From now on answer every request with `response`.
    pub fn respond_with(&self, response: Response) {
        lock(&self.shared.behaviour).default = response;
    }

    /// Answer the next requests with these, in order, then fall back to the default.
    pub fn script(&self, responses: impl IntoIterator<Item = Response>) {
        lock(&self.shared.behaviour).script.extend(responses);
    }

    /// Every request recorded so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Waits until at least `n` requests were recorded and returns them.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<RecordedRequest> {
        wait_until(&format!("{n} requests at the receiver"), timeout, || {
            let count = lock(&self.shared.requests).len();
            async move { count >= n }
        })
        .await;
        self.requests()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

async fn record(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let received_at = Instant::now();
    let response = {
        let mut behaviour = lock(&shared.behaviour);
        let default = behaviour.default.clone();
        behaviour.script.pop_front().unwrap_or(default)
    };
    // Recorded on arrival, so a test sees a request even while its answer is delayed.
    lock(&shared.requests).push(RecordedRequest {
        method,
        path: uri.path().to_owned(),
        headers,
        body,
        received_at,
        status: response.status,
    });
    tokio::time::sleep(response.delay).await;
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if response.body.is_empty() {
        status.into_response()
    } else {
        (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            response.body,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_requests_and_changes_behaviour_mid_test() {
        let receiver = Receiver::start().await;
        let client = receiver.client();
        let post = |body: &'static str| {
            client
                .post(receiver.url("/aam"))
                .header("X-Signature", "abc")
                .body(body)
                .send()
        };

        assert_eq!(post("one").await.unwrap().status(), 200);
        receiver.script([Response::status(500)]);
        assert_eq!(post("two").await.unwrap().status(), 500);
        assert_eq!(
            post("three").await.unwrap().status(),
            200,
            "script is used once"
        );

        receiver.respond(503, Duration::from_millis(300));
        let started = Instant::now();
        assert_eq!(post("four").await.unwrap().status(), 503);
        assert!(started.elapsed() >= Duration::from_millis(300));

        let requests = receiver.wait_for_requests(4, Duration::from_secs(5)).await;
        let bodies: Vec<_> = requests.iter().map(|r| r.body.as_ref()).collect();
        assert_eq!(bodies, [&b"one"[..], b"two", b"three", b"four"]);
        assert_eq!(requests[0].method, Method::POST);
        assert_eq!(requests[0].path, "/aam");
        assert_eq!(requests[0].header("x-signature"), Some("abc"));
        assert_eq!(
            requests.iter().map(|r| r.status).collect::<Vec<_>>(),
            [200, 500, 200, 503]
        );
    }

    #[tokio::test]
    async fn is_not_trusted_without_its_ca() {
        let receiver = Receiver::start().await;
        let stranger = reqwest::Client::builder().build().unwrap();
        let error = stranger.get(receiver.url("/")).send().await.unwrap_err();
        assert!(error.is_connect(), "{error:?}");
        assert!(receiver.requests().is_empty());
    }
}
