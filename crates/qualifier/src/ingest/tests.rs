//! The ingest API in process: the real router and connection handling on a loopback port,
//! with a recording fake instead of Kafka, and raw HTTP/1.1 so a test can send exactly the
//! bytes (and the pauses) a bad client would.

use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

/// Records what would have been produced.
#[derive(Debug, Default)]
struct RecordingSink {
    written: Mutex<Vec<TraitEvent>>,
}

impl RecordingSink {
    fn written(&self) -> usize {
        self.written.lock().unwrap().len()
    }
}

impl EventSink for RecordingSink {
    async fn write(&self, events: &[TraitEvent]) -> Result<(), KafkaError> {
        self.written.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
}

struct Server {
    addr: SocketAddr,
    sink: Arc<RecordingSink>,
    metrics: Metrics,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(max_body_bytes: usize, read_timeout: Duration) -> Server {
    start_with(max_body_bytes, read_timeout, auth::IngestAuth::open()).await
}

async fn start_with(
    max_body_bytes: usize,
    read_timeout: Duration,
    auth: auth::IngestAuth,
) -> Server {
    let sink = Arc::new(RecordingSink::default());
    let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
    let limits = IngestLimits {
        max_body_bytes,
        read_timeout,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve_on(
        listener,
        router(sink.clone(), metrics.clone(), limits, auth),
        None,
        read_timeout,
        stop.clone(),
    ));
    Server {
        addr,
        sink,
        metrics,
        stop,
    }
}

const EVENT: &str = r#"{"type":"trait","user":"u1","trait":101,"time":"2026-11-28T10:00:00Z"}"#;

/// `POST /v1/events` with these extra header lines and body; `Connection: close`.
fn post(headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /v1/events HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Reads a whole response (the server closes the connection): status and JSON body.
async fn response(stream: &mut TcpStream) -> (u16, serde_json::Value) {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

async fn send(server: &Server, request: &[u8]) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    response(&mut stream).await
}

fn count(server: &Server, code: &str) -> u64 {
    server
        .metrics
        .ingest_requests
        .with_label_values(&[code])
        .get()
}

#[tokio::test]
async fn json_and_ndjson_content_types_are_accepted_and_others_get_415_with_the_fix() {
    let server = start(1 << 20, Duration::from_secs(5)).await;
    for content_type in [
        None,
        Some("Content-Type: application/json"),
        Some("Content-Type: application/json; charset=utf-8"),
        Some("Content-Type: application/x-ndjson"),
        Some("content-type: Application/JSONL"),
    ] {
        let headers: Vec<&str> = content_type.into_iter().collect();
        let (status, body) = send(&server, &post(&headers, EVENT.as_bytes())).await;
        assert_eq!(
            (status, &body),
            (202, &json!({"accepted": 1})),
            "{content_type:?}"
        );
    }
    assert_eq!(server.sink.written(), 5);

    for (header, expected) in [
        (
            "Content-Type: application/x-www-form-urlencoded",
            "Content-Type `application/x-www-form-urlencoded` is not accepted: send events as `application/json`",
        ),
        (
            "Content-Type: text/csv",
            "Content-Type `text/csv` is not accepted",
        ),
        (
            "Content-Encoding: gzip",
            "Content-Encoding `gzip` is not supported: send the body uncompressed",
        ),
    ] {
        let (status, body) = send(&server, &post(&[header], EVENT.as_bytes())).await;
        assert_eq!(status, 415, "{header}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(expected),
            "{header}: {body}"
        );
    }
    assert_eq!(server.sink.written(), 5, "nothing produced for a 415");
    assert_eq!(count(&server, "415"), 3);
    assert_eq!(count(&server, "202"), 5);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_whether_declared_or_streamed() {
    let server = start(1_000, Duration::from_secs(5)).await;
    // Declared: refused before a byte of the body is read (none is sent here).
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/events HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 100000000000\r\n\r\n",
        )
        .await
        .unwrap();
    let (status, body) = response(&mut stream).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("body larger than 1000 bytes: split it into several requests"),
        "{body}"
    );

    // Chunked, no declared size: refused once the limit is passed.
    let chunk = "x".repeat(600);
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nHost: test\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    );
    let (status, _) = send(&server, request.as_bytes()).await;
    assert_eq!(status, 413);

    // Just under the limit is fine.
    let events = vec![EVENT; 1_000 / (EVENT.len() + 1)].join("\n");
    let (status, _) = send(&server, &post(&[], events.as_bytes())).await;
    assert_eq!(status, 202);
    assert_eq!(server.sink.written(), 1_000 / (EVENT.len() + 1));
    assert_eq!(count(&server, "413"), 2);
}

#[tokio::test]
async fn deeply_nested_json_is_a_400_naming_the_line_not_a_crash() {
    let server = start(10 << 20, Duration::from_secs(5)).await;
    let depth = 1_000_000;
    let array = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let (status, body) = send(&server, &post(&[], array.as_bytes())).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("recursion limit exceeded"),
        "{body}"
    );
    let nested = format!(
        "{EVENT}\n{{\"type\":\"trait\",\"user\":{}1{},\"trait\":1,\"time\":\"2026-11-28T10:00:00Z\"}}\n",
        "{\"a\":".repeat(depth),
        "}".repeat(depth)
    );
    let (status, body) = send(&server, &post(&[], nested.as_bytes())).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["line"], 2, "{body}");
    assert!(
        body["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("recursion limit exceeded"),
        "{body}"
    );
    assert_eq!(server.sink.written(), 0);
}

#[tokio::test]
async fn a_flood_of_bad_lines_reports_the_first_hundred_and_counts_the_rest() {
    let server = start(10 << 20, Duration::from_secs(5)).await;
    let body = "x\n".repeat(1_000_000);
    let (status, answer) = send(&server, &post(&[], body.as_bytes())).await;
    assert_eq!(status, 400);
    let errors = answer["errors"].as_array().unwrap();
    assert_eq!(errors.len(), crate::events::MAX_REPORTED_ERRORS);
    assert_eq!(errors[99]["line"], 100);
    assert_eq!(answer["more_errors"], 1_000_000 - 100);
    // A few bad lines: no `more_errors`.
    let (status, answer) = send(&server, &post(&[], b"x\n")).await;
    assert_eq!(status, 400);
    assert_eq!(answer.get("more_errors"), None, "{answer}");
    assert_eq!(server.sink.written(), 0);
}

/// Sends headers promising `declared` bytes, then only `sent` of them, and stalls.
async fn stalled_body(server: &Server, declared: usize, sent: usize) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&EVENT.as_bytes()[..sent]).await.unwrap();
    stream
}

#[tokio::test]
async fn slow_clients_time_out_and_the_server_answers_others_meanwhile() {
    let timeout = Duration::from_millis(800);
    let server = start(1 << 20, timeout).await;
    let started = tokio::time::Instant::now();
    // Twenty clients stalling their bodies, twenty stalling their headers.
    let mut stalled_bodies = Vec::new();
    let mut stalled_heads = Vec::new();
    for _ in 0..20 {
        stalled_bodies.push(stalled_body(&server, EVENT.len(), 10).await);
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"POST /v1/events HTTP/1.1\r\nHost: te")
            .await
            .unwrap();
        stalled_heads.push(stream);
    }
    // A normal client is served at once.
    for _ in 0..5 {
        let (status, _) = send(&server, &post(&[], EVENT.as_bytes())).await;
        assert_eq!(status, 202);
    }
    assert!(
        started.elapsed() < timeout,
        "normal requests waited for the slow ones: {:?}",
        started.elapsed()
    );
    // The stalled bodies get a 408 that says what to do; the stalled heads are disconnected.
    for mut stream in stalled_bodies {
        let (status, body) = response(&mut stream).await;
        assert_eq!(status, 408, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("the body did not arrive within 800 ms"),
            "{body}"
        );
    }
    for mut stream in stalled_heads {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(timeout * 5, stream.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok(),
            "a client stalling its headers was not disconnected"
        );
    }
    assert!(started.elapsed() >= timeout);
    assert_eq!(server.sink.written(), 5, "nothing of the slow requests");
    assert_eq!(count(&server, "408"), 20);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_read_timeout() {
    let timeout = Duration::from_millis(500);
    let server = start(1 << 20, timeout).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{EVENT}",
        EVENT.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // The answer comes on the open connection; then the connection idles.
    let mut answer = vec![0; 1024];
    let n = stream.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 202"));
    let started = tokio::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(timeout * 10, stream.read_to_end(&mut rest))
        .await
        .expect("an idle connection is closed")
        .unwrap();
    assert!(started.elapsed() >= timeout / 2, "{:?}", started.elapsed());
}

#[tokio::test]
async fn with_tokens_a_request_without_a_valid_one_is_401_and_nothing_is_produced() {
    let tokens = auth::IngestTokens::parse(
        "# two at once, for rotation\nfirst-token-0123456789\nsecond-token-0123456789\n",
    )
    .unwrap();
    let server = start_with(
        1 << 20,
        Duration::from_secs(5),
        auth::IngestAuth::tokens(tokens),
    )
    .await;
    for (headers, challenge) in [
        (vec![], "www-authenticate: Bearer\r\n"),
        (
            vec!["Authorization: Basic Zmlyc3Q6dG9rZW4="],
            "www-authenticate: Bearer\r\n",
        ),
        (
            vec!["Authorization: Bearer wrong-token-0123456789"],
            "www-authenticate: Bearer error=\"invalid_token\"\r\n",
        ),
        (
            vec!["Authorization: Bearer first-token-012345678"],
            "www-authenticate: Bearer error=\"invalid_token\"\r\n",
        ),
    ] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(&post(&headers, EVENT.as_bytes()))
            .await
            .unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 401 "), "{headers:?}: {text}");
        assert!(
            text.contains(&challenge.to_ascii_lowercase()),
            "{headers:?}: {text}"
        );
        assert!(text.contains("bearer token"), "{headers:?}: {text}");
    }
    for token in ["first-token-0123456789", "second-token-0123456789"] {
        let header = format!("Authorization: Bearer {token}");
        let (status, body) = send(&server, &post(&[&header], EVENT.as_bytes())).await;
        assert_eq!((status, &body), (202, &json!({"accepted": 1})), "{token}");
    }
    assert_eq!(server.sink.written(), 2, "nothing produced for a 401");
    assert_eq!(count(&server, "401"), 4);
    assert_eq!(count(&server, "202"), 2);
}
