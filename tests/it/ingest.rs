//! `POST /webhooks/{endpoint}`: verification, exactly-once storage, answers.

use hyper::StatusCode;
use reconciled::provider::stripe;

use crate::harness::{self, event, fixture, now, reading, Daemon, ROLLED, SECRET};

#[tokio::test]
async fn valid_event_is_stored_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "", "").await;
    let body = fixture("payment_intent.succeeded.json");
    let sig = harness::signed(SECRET, &body);
    let (status, text) = d
        .post(
            "/webhooks/stripe",
            &[
                ("stripe-signature", &sig),
                ("content-type", "application/json; charset=utf-8"),
                ("user-agent", "Stripe/1.0 (+https://stripe.com/docs/webhooks)"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "stored\n"));

    let rows = reading(&d.db, |s| async move { s.list(Default::default()).await }).unwrap();
    assert_eq!(rows.len(), 1);
    let id = rows[0].id;
    let row = reading(&d.db, move |s| async move { s.show(id).await }).unwrap().unwrap();
    let conn = d.read();
    assert_eq!(row.body, body, "raw body kept byte for byte");
    // On disk it is an LZ4 block, well under the raw size, with the raw length beside it.
    let (stored, encoding, len): (Vec<u8>, Option<String>, i64) = conn
        .query_row("SELECT body, body_encoding, body_len FROM inbox", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((encoding.as_deref(), len), (Some("lz4"), body.len() as i64));
    assert!(stored.len() * 10 < body.len() * 7, "stored {} of {} bytes", stored.len(), body.len());
    assert_eq!(rows[0].body_len, body.len() as i64, "listings show the raw length");
    let s = &row.summary;
    assert_eq!((s.endpoint.as_str(), s.provider.as_str()), ("stripe", "stripe"));
    assert_eq!(s.dedup_key, harness::FIXTURE_EVENT);
    assert_eq!(s.event_type.as_deref(), Some("payment_intent.succeeded"));
    assert_eq!((s.status.as_str(), s.delivery_count), ("pending", 1));
    assert!(s.remote_addr.starts_with("127.0.0.1:"), "{}", s.remote_addr);
    assert!((reconciled::time::now_ms() - s.received_at).abs() < 60_000);
    let headers: serde_json::Value = serde_json::from_str(&row.headers).unwrap();
    assert_eq!(headers["stripe-signature"], sig.as_str(), "kept to verify again");
    assert_eq!(headers["content-type"], "application/json; charset=utf-8");
    // The stored row verifies again from what was kept.
    let kept_sig = headers["stripe-signature"].as_str().unwrap();
    stripe::verify(&[reconciled::secret::Secret::new(SECRET)], 300, kept_sig, &row.body, now())
        .unwrap();
    d.stop().await;
}

#[tokio::test]
async fn sequential_duplicate_adds_no_row_and_counts_the_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "", "").await;
    let body = event("evt_dup_sequential");
    assert_eq!(d.post_stripe(SECRET, &body).await, (StatusCode::OK, "stored\n".into()));
    // A retry is signed again by the provider, and may use the other live secret.
    assert_eq!(d.post_stripe(ROLLED, &body).await, (StatusCode::OK, "duplicate\n".into()));
    assert_eq!(d.post_stripe(SECRET, &body).await, (StatusCode::OK, "duplicate\n".into()));
    assert_eq!(d.rows(), vec![("evt_dup_sequential".to_owned(), 3)]);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_copies_make_one_row_with_fifty_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "", "").await;
    let body = event("evt_dup_concurrent");
    let sig = harness::signed(SECRET, &body);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (addr, body, sig) = (d.addr, body.clone(), sig.clone());
        tasks.push(tokio::spawn(async move {
            harness::request(
                addr,
                "POST",
                "/webhooks/stripe",
                &[("stripe-signature", &sig)],
                body.into(),
            )
            .await
        }));
    }
    let mut stored = 0;
    for t in tasks {
        let (status, text) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        stored += usize::from(text == "stored\n");
    }
    assert_eq!(stored, 1, "exactly one delivery created the row");
    assert_eq!(d.rows(), vec![("evt_dup_concurrent".to_owned(), 50)]);
    d.stop().await;
}

#[tokio::test]
async fn either_of_two_secrets_and_any_of_several_v1_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "", "").await;
    assert_eq!(d.post_stripe(SECRET, &event("evt_primary")).await.0, StatusCode::OK);
    assert_eq!(d.post_stripe(ROLLED, &event("evt_rolled")).await.0, StatusCode::OK);

    // Stripe signs with every live secret during a roll: one v1 per secret, plus v0.
    let body = event("evt_many_v1");
    let t = now();
    let header = format!(
        "t={t},v1={},v1={},v0={}",
        stripe::signature(b"whsec_someone_elses", t, &body),
        stripe::signature(ROLLED.as_bytes(), t, &body),
        "ab".repeat(32)
    );
    let (status, _) = d.post("/webhooks/stripe", &[("stripe-signature", &header)], body).await;
    assert_eq!(status, StatusCode::OK);
    let keys: Vec<String> = d.rows().into_iter().map(|r| r.0).collect();
    assert_eq!(keys, ["evt_primary", "evt_rolled", "evt_many_v1"]);
    d.stop().await;
}

#[tokio::test]
async fn thin_events_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "", "").await;
    let body = fixture("thin_event.json");
    let id = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(d.post_stripe(SECRET, &body).await, (StatusCode::OK, "stored\n".into()));
    assert_eq!(d.rows(), vec![(id, 1)]);
    d.stop().await;
}

#[tokio::test]
async fn every_fixture_is_accepted_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "", "").await;
    let mut names: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/stripe"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".json"))
            .collect();
    names.sort();
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        let (status, text) = d.post_stripe(SECRET, &fixture(name)).await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "stored\n"), "{name}");
    }
    assert_eq!(d.rows().len(), names.len());
    d.stop().await;
}

/// Each refused request: its status, a reason in the body, nothing stored, a failure recorded,
/// and no secret anywhere in the answer.
#[tokio::test]
async fn refused_requests_get_400_with_a_reason_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "", "").await;
    let body = event("evt_refused");
    let t = now();
    let good = stripe::sign(SECRET.as_bytes(), t, &body);
    let mut tampered = body.clone();
    let pos = tampered.windows(5).position(|w| w == b"10000").expect("amount in fixture");
    tampered[pos] = b'9';
    let not_json = b"amount=10000&order=1001".to_vec();
    let charge_object = br#"{"id":"ch_1","object":"charge","type":"x"}"#.to_vec();

    let cases: Vec<(&str, Option<String>, Vec<u8>, &str)> = vec![
        ("tampered body", Some(good.clone()), tampered, "no signature matches"),
        (
            "wrong secret",
            Some(stripe::sign(b"whsec_wrong", t, &body)),
            body.clone(),
            "no signature matches",
        ),
        (
            "stale",
            Some(stripe::sign(SECRET.as_bytes(), t - 400, &body)),
            body.clone(),
            "older than the tolerance",
        ),
        (
            "future",
            Some(stripe::sign(SECRET.as_bytes(), t + 400, &body)),
            body.clone(),
            "in the future",
        ),
        ("missing header", None, body.clone(), "missing Stripe-Signature"),
        ("garbled header", Some("garbage".into()), body.clone(), "malformed Stripe-Signature"),
        ("no v1", Some(format!("t={t},v0=abc")), body.clone(), "no v1= signature"),
        ("no t", Some(format!("v1={}", "0".repeat(64))), body.clone(), "no t= timestamp"),
        (
            "signed non-JSON",
            Some(stripe::sign(SECRET.as_bytes(), t, &not_json)),
            not_json,
            "malformed body",
        ),
        (
            "signed non-event",
            Some(stripe::sign(SECRET.as_bytes(), t, &charge_object)),
            charge_object,
            "expected \"event\"",
        ),
    ];
    let n = cases.len();
    for (what, header, body, reason) in cases {
        let headers: Vec<(&str, &str)> =
            header.iter().map(|h| ("stripe-signature", h.as_str())).collect();
        let (status, text) = d.post("/webhooks/stripe", &headers, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {text}");
        assert!(text.contains(reason), "{what}: {text:?} should mention {reason:?}");
        assert!(!text.contains(SECRET) && !text.contains(ROLLED), "{what}: secret in answer");
    }
    // A good request after them commits after them: their records are in by now.
    assert_eq!(d.post_stripe(SECRET, &event("evt_after")).await.0, StatusCode::OK);
    assert_eq!(d.rows(), vec![("evt_after".to_owned(), 1)], "nothing refused was stored");
    let failures = reading(&d.db, |s| async move { s.failures(100).await }).unwrap();
    assert_eq!(failures.len(), n);
    let reasons: std::collections::BTreeSet<&str> =
        failures.iter().map(|f| f.reason.as_str()).collect();
    for code in [
        "bad_signature",
        "stale_timestamp",
        "future_timestamp",
        "missing_header",
        "malformed_header",
        "malformed_body",
    ] {
        assert!(reasons.contains(code), "{code} recorded: {reasons:?}");
    }
    d.stop().await;
}

#[tokio::test]
async fn the_failure_log_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "", "failures_kept = 5").await;
    for i in 0..12 {
        let body = event(&format!("evt_bad_{i}"));
        assert_eq!(d.post_stripe("whsec_wrong", &body).await.0, StatusCode::BAD_REQUEST);
    }
    assert_eq!(d.post_stripe(SECRET, &event("evt_flush")).await.0, StatusCode::OK);
    let failures = reading(&d.db, |s| async move { s.failures(100).await }).unwrap();
    assert_eq!(failures.len(), 5, "only the newest 5 are kept");
    assert!(failures.iter().all(|f| f.reason == "bad_signature" && f.body_len > 1000));
    d.stop().await;
}

#[tokio::test]
async fn routing_unknown_endpoint_wrong_method_health() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "", "").await;
    let body = event("evt_route");
    let sig = harness::signed(SECRET, &body);
    let (status, _) = d.post("/webhooks/paypal", &[("stripe-signature", &sig)], body.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(d.post("/webhooks/stripe/extra", &[], body.clone()).await.0, StatusCode::NOT_FOUND);
    assert_eq!(d.post("/elsewhere", &[], body.clone()).await.0, StatusCode::NOT_FOUND);
    for method in ["GET", "PUT", "DELETE"] {
        let (status, _) =
            harness::request(d.addr, method, "/webhooks/stripe", &[], body.clone().into()).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
    }
    assert_eq!(d.get("/healthz").await, (StatusCode::OK, "ok\n".into()));
    assert_eq!(d.get("/readyz").await, (StatusCode::OK, "ready\n".into()));
    assert_eq!(d.post("/healthz", &[], "").await.0, StatusCode::METHOD_NOT_ALLOWED);
    assert!(d.rows().is_empty());
    d.stop().await;
}

/// Another process holds the write lock: the daemon cannot commit, so it must not acknowledge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_that_cannot_commit_answers_503_and_acknowledges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "", "busy_timeout_ms = 200").await;
    assert_eq!(d.get("/readyz").await.0, StatusCode::OK);

    let blocker = rusqlite::Connection::open(&d.db).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let (status, text) = d.post_stripe(SECRET, &event("evt_while_locked")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(d.get("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);

    assert!(d.rows().is_empty(), "a 503 stored nothing");
    assert_eq!(d.get("/readyz").await.0, StatusCode::OK, "ready again once the lock is gone");
    // The provider retries and this time it is stored.
    assert_eq!(
        d.post_stripe(SECRET, &event("evt_while_locked")).await,
        (StatusCode::OK, "stored\n".into())
    );
    assert_eq!(d.rows(), vec![("evt_while_locked".to_owned(), 1)]);
    d.stop().await;
}

#[tokio::test]
async fn restart_keeps_every_row_and_still_deduplicates() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "", "").await;
    for i in 0..20 {
        assert_eq!(d.post_stripe(SECRET, &event(&format!("evt_keep_{i}"))).await.0, StatusCode::OK);
    }
    d.stop().await;

    let d = Daemon::start_in(dir.path(), "", "").await;
    assert_eq!(d.rows().len(), 20);
    assert_eq!(
        d.post_stripe(SECRET, &event("evt_keep_7")).await,
        (StatusCode::OK, "duplicate\n".into())
    );
    assert_eq!(d.post_stripe(SECRET, &event("evt_new_after_restart")).await.1, "stored\n");
    let rows = d.rows();
    assert_eq!(rows.len(), 21);
    assert_eq!(rows[7], ("evt_keep_7".to_owned(), 2));
    d.stop().await;
}

/// Trust options: basic auth (401) and a source allow-list (403), checked before the body.
#[tokio::test]
async fn basic_auth_and_source_allow_list() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[endpoint]]\nname = \"guarded\"\nprovider = \"stripe\"\nsecrets = [\"{SECRET}\"]\n\
         basic_auth = {{ user = \"shop\", password = \"pa55word\" }}\n\
         [[endpoint]]\nname = \"elsewhere\"\nprovider = \"stripe\"\nsecrets = [\"{SECRET}\"]\n\
         allow_from = [\"192.0.2.0/24\"]\n\
         [[endpoint]]\nname = \"proxied\"\nprovider = \"stripe\"\nsecrets = [\"{SECRET}\"]\n\
         allow_from = [\"192.0.2.0/24\"]\ntrusted_proxies = [\"127.0.0.1\"]\n"
    );
    let d = Daemon::start_with(dir.path(), "", "", &extra).await;
    let body = event("evt_guarded");
    let sig = harness::signed(SECRET, &body);
    let good =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("shop:pa55word"));
    let bad = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("shop:guess"));

    let (status, text) =
        d.post("/webhooks/guarded", &[("stripe-signature", &sig)], body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!text.contains("pa55word"));
    let (status, _) = d
        .post(
            "/webhooks/guarded",
            &[("stripe-signature", &sig), ("authorization", &bad)],
            body.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = d
        .post(
            "/webhooks/guarded",
            &[("stripe-signature", &sig), ("authorization", &good)],
            body.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // 127.0.0.1 is not in the allow-list, and a forged X-Forwarded-For from it is not believed.
    let body2 = event("evt_elsewhere");
    let sig2 = harness::signed(SECRET, &body2);
    let (status, _) =
        d.post("/webhooks/elsewhere", &[("stripe-signature", &sig2)], body2.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = d
        .post(
            "/webhooks/elsewhere",
            &[("stripe-signature", &sig2), ("x-forwarded-for", "192.0.2.7")],
            body2.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Through a trusted proxy the forwarded client counts.
    let (status, _) = d
        .post(
            "/webhooks/proxied",
            &[("stripe-signature", &sig2), ("x-forwarded-for", "192.0.2.7")],
            body2.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = d
        .post(
            "/webhooks/proxied",
            &[("stripe-signature", &sig2), ("x-forwarded-for", "198.51.100.1")],
            body2,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let keys: Vec<String> = d.rows().into_iter().map(|r| r.0).collect();
    assert_eq!(keys, ["evt_guarded", "evt_elsewhere"]);
    // The credentials are never stored with the row.
    let headers: String =
        d.read().query_row("SELECT headers FROM inbox WHERE id = 1", [], |r| r.get(0)).unwrap();
    assert!(
        headers.contains("stripe-signature") && !headers.to_lowercase().contains("authorization"),
        "{headers}"
    );
    let reasons: Vec<String> = reading(&d.db, |s| async move { s.failures(10).await })
        .unwrap()
        .into_iter()
        .map(|f| f.reason)
        .collect();
    assert!(
        reasons.contains(&"unauthorized".to_owned()) && reasons.contains(&"forbidden".to_owned()),
        "{reasons:?}"
    );
    d.stop().await;
}

/// Every plain-text answer, whatever its status, is one line ending in a newline, so `curl`
/// leaves the shell prompt on a line of its own. (Worldpay's XML service takes exactly `[OK]`
/// and PayPal IPN an empty body: those are the providers' formats, tested with them.)
#[tokio::test]
async fn every_plain_text_answer_ends_with_a_newline() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[endpoint]]\nname = \"guarded\"\nprovider = \"stripe\"\nsecrets = [\"{SECRET}\"]\n\
         basic_auth = {{ user = \"shop\", password = \"pa55word\" }}\n\
         [[endpoint]]\nname = \"elsewhere\"\nprovider = \"stripe\"\nsecrets = [\"{SECRET}\"]\n\
         allow_from = [\"192.0.2.0/24\"]\n"
    );
    let d = Daemon::start_with(dir.path(), "max_body_bytes = 4096", "", &extra).await;
    let body = event("evt_newline");
    let sig = harness::signed(SECRET, &body);
    let signed = [("stripe-signature", sig.as_str())];
    let big = vec![b'x'; 8192];
    let answers = vec![
        d.post("/webhooks/stripe", &signed, body.clone()).await,
        d.post("/webhooks/stripe", &signed, body.clone()).await,
        d.post("/webhooks/stripe", &[("stripe-signature", "t=1,v1=deadbeef")], body.clone()).await,
        d.post("/webhooks/stripe", &[], body.clone()).await,
        d.post("/webhooks/stripe", &signed, big).await,
        d.post("/webhooks/guarded", &signed, body.clone()).await,
        d.post("/webhooks/elsewhere", &signed, body.clone()).await,
        d.post("/webhooks/nowhere", &signed, body.clone()).await,
        d.get("/webhooks/stripe").await,
        d.get("/healthz").await,
        d.get("/readyz").await,
        d.get("/").await,
        d.post("/healthz", &[], "").await,
    ];
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| s.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 400, 400, 413, 401, 403, 404, 405, 200, 200, 404, 405]);
    assert_eq!((answers[0].1.as_str(), answers[1].1.as_str()), ("stored\n", "duplicate\n"));
    for (status, text) in &answers {
        assert!(text.ends_with('\n') && text.trim_end().lines().count() == 1, "{status}: {text:?}");
    }
    assert!(answers[2].1.contains("not 64 hex digits"), "{}", answers[2].1);
    d.stop().await;
}
