//! A real HTTPS endpoint for tests: a fresh CA and a `localhost`/`127.0.0.1` certificate per
//! receiver, every request recorded (method, path, headers, body, arrival time), and a
//! behaviour (status, delay, headers, or a script of next responses) that can change mid-test.
//! [`Tls`] asks for a certificate a client must refuse (expired, for another name,
//! self-signed, a CA certificate as the server's), or for plain HTTP.

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
    /// How long after its arrival it was answered (its response's delay).
    pub answered_after: Duration,
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
    /// A body (e.g. an OAuth token response); empty for none.
    pub body: String,
    /// `Content-Type` of a non-empty body. Default `application/json`.
    pub content_type: String,
    /// More response headers (e.g. `Location` of a redirect).
    pub headers: Vec<(String, String)>,
    /// Instead of `body`, a body that never ends (1 KiB every millisecond).
    pub endless_body: bool,
}

impl Response {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
            body: String::new(),
            content_type: "application/json".to_owned(),
            headers: Vec::new(),
            endless_body: false,
        }
    }

    /// A body that never ends: a client that reads a response to its end never finishes.
    #[must_use]
    pub fn endless_body(mut self) -> Self {
        self.endless_body = true;
        self
    }

    /// A body of another content type than JSON.
    #[must_use]
    pub fn body(mut self, content_type: &str, body: impl Into<String>) -> Self {
        self.content_type = content_type.to_owned();
        self.body = body.into();
        self
    }

    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
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

/// What the receiver presents to a client. Every certificate but [`Tls::Valid`]'s must be
/// refused by a client that trusts the receiver's CA ([`Receiver::ca_file`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Issued by the receiver's CA for `localhost` and `127.0.0.1`, valid now.
    Valid,
    /// Issued by the receiver's CA for `localhost` and `127.0.0.1`, but valid only in 2020.
    Expired,
    /// Issued by the receiver's CA, valid now, but for this name only (not the address the
    /// client connects to).
    OtherName(String),
    /// For `localhost` and `127.0.0.1`, valid now, but signed by its own key: not issued by
    /// the receiver's CA.
    SelfSigned,
    /// The receiver's CA certificate itself (basicConstraints CA:TRUE, for `localhost` and
    /// `127.0.0.1`), which is also [`Receiver::ca_file`]: a self-signed CA certificate used as
    /// a server's, which rustls refuses even though it is trusted (`CaUsedAsEndEntity`).
    CaAsServer,
    /// No TLS: plain `http://`.
    None,
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
    /// `https`, or `http` for [`Tls::None`].
    scheme: &'static str,
    ca_pem: String,
    ca_dir: tempfile::TempDir,
    shared: Arc<Shared>,
    handle: Handle<SocketAddr>,
}

impl Receiver {
    /// Starts a receiver on a free loopback port answering `200` at once.
    pub async fn start() -> Self {
        Self::start_with(Tls::Valid).await
    }

    /// Starts a receiver presenting `tls`, on a free loopback port answering `200` at once.
    pub async fn start_with(tls: Tls) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let ca_key_pem = ca_key.serialize_pem();
        let ca_names = if tls == Tls::CaAsServer {
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
        } else {
            Vec::new()
        };
        let mut ca_params = CertificateParams::new(ca_names).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "segment-relay test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let names = match &tls {
            Tls::OtherName(name) => vec![name.clone()],
            _ => vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
        };
        let mut leaf_params = CertificateParams::new(names).unwrap();
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "segment-relay test receiver");
        if tls == Tls::Expired {
            leaf_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            leaf_params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let leaf = if tls == Tls::SelfSigned {
            leaf_params.self_signed(&leaf_key).unwrap()
        } else {
            leaf_params.signed_by(&leaf_key, &ca).unwrap()
        };

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
        if tls == Tls::None {
            let server = axum_server::from_tcp(listener)
                .unwrap()
                .handle(handle.clone());
            tokio::spawn(async move { server.serve(app.into_make_service()).await });
        } else {
            let (certificate, key) = if tls == Tls::CaAsServer {
                (ca.pem(), ca_key_pem)
            } else {
                (leaf.pem(), leaf_key.serialize_pem())
            };
            let config = RustlsConfig::from_pem(certificate.into_bytes(), key.into_bytes())
                .await
                .unwrap();
            let server = axum_server::from_tcp_rustls(listener, config)
                .unwrap()
                .handle(handle.clone());
            tokio::spawn(async move { server.serve(app.into_make_service()).await });
        }

        let ca_dir = tempfile::tempdir().unwrap();
        let ca_pem = ca.pem();
        std::fs::write(ca_dir.path().join("ca.pem"), &ca_pem).unwrap();
        Self {
            addr,
            scheme: if tls == Tls::None { "http" } else { "https" },
            ca_pem,
            ca_dir,
            shared,
            handle,
        }
    }

    /// `https://127.0.0.1:<port><path>` (`http://` for [`Tls::None`]).
    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.addr.port())
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
        answered_after: response.delay,
    });
    tokio::time::sleep(response.delay).await;
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut answer = if response.endless_body {
        (status, axum::body::Body::new(Endless::default())).into_response()
    } else if response.body.is_empty() {
        status.into_response()
    } else {
        (
            status,
            [(axum::http::header::CONTENT_TYPE, response.content_type)],
            response.body,
        )
            .into_response()
    };
    for (name, value) in &response.headers {
        answer.headers_mut().append(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            axum::http::HeaderValue::from_str(value).unwrap(),
        );
    }
    answer
}

/// A response body that never ends.
#[derive(Debug, Default)]
struct Endless {
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for Endless {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(1))));
        std::task::ready!(sleep.as_mut().poll(cx));
        sleep
            .as_mut()
            .reset(tokio::time::Instant::now() + Duration::from_millis(1));
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(
            axum::body::Bytes::from_static(&[b' '; 1024]),
        ))))
    }
}

#[cfg(test)]
mod tests;
