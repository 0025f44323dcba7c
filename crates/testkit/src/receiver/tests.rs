//! The receiver against real clients: recording, behaviour changed mid-test, each refused
//! certificate refused, headers and content types, and no trust without its CA.

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
async fn a_refused_certificate_of_each_kind_is_refused_by_a_client_trusting_the_ca() {
    for tls in [
        Tls::Expired,
        Tls::OtherName("partner.example.com".to_owned()),
        Tls::SelfSigned,
        Tls::CaAsServer,
    ] {
        let receiver = Receiver::start_with(tls.clone()).await;
        let error = receiver
            .client()
            .get(receiver.url("/"))
            .send()
            .await
            .expect_err(&format!("{tls:?} must be refused"));
        let mut chain = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(e) = source {
            chain.push_str(&format!(": {e}"));
            source = e.source();
        }
        let expected = match tls {
            Tls::Expired => "certificate expired",
            Tls::OtherName(_) => "not valid for name",
            Tls::CaAsServer => "causedasendentity",
            _ => "unknownissuer",
        };
        assert!(
            chain.to_ascii_lowercase().contains(expected),
            "{tls:?}: {chain}"
        );
        assert!(receiver.requests().is_empty());
    }
    // The same client code accepts a valid one, and plain HTTP serves as http://.
    let valid = Receiver::start_with(Tls::Valid).await;
    assert_eq!(
        valid
            .client()
            .get(valid.url("/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let plain = Receiver::start_with(Tls::None).await;
    assert!(plain.url("/x").starts_with("http://127.0.0.1:"));
    assert_eq!(reqwest::get(plain.url("/x")).await.unwrap().status(), 200);
    assert_eq!(plain.requests().len(), 1);
}

#[tokio::test]
async fn answers_with_headers_and_other_content_types() {
    let receiver = Receiver::start().await;
    receiver.script([Response::status(307).header("Location", "https://elsewhere.example/x")]);
    receiver.respond_with(Response::status(200).body("text/plain", "hello"));
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(receiver.ca_pem().as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = client.post(receiver.url("/")).send().await.unwrap();
    assert_eq!(redirect.status(), 307);
    assert_eq!(
        redirect.headers()["location"].to_str().unwrap(),
        "https://elsewhere.example/x"
    );
    let text = client.get(receiver.url("/")).send().await.unwrap();
    assert_eq!(
        text.headers()["content-type"].to_str().unwrap(),
        "text/plain"
    );
    assert_eq!(text.text().await.unwrap(), "hello");
}

#[tokio::test]
async fn is_not_trusted_without_its_ca() {
    let receiver = Receiver::start().await;
    let stranger = reqwest::Client::builder().build().unwrap();
    let error = stranger.get(receiver.url("/")).send().await.unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    assert!(receiver.requests().is_empty());
}
