//! Replays the committed fuzz corpus on stable Rust, in plain `cargo test`.
//!
//! Every file of `fuzz/corpus/<target>/` goes through `reconciled::fuzz::<target>`, and so do
//! [`MUTATIONS`] deterministic mutations of each (bit flips, interesting bytes, truncations,
//! cut and repeated ranges, splices with another file of the target). A panic in an adapter,
//! or in one of the fuzz module's checks, fails the target's test and names the input, which
//! is saved under the test's temporary directory. Each target's corpus must exist, must be
//! non-empty, must have its `cargo fuzz` binary, and must reach past verification (some file
//! read into a notification) as well as be refused (some file), so that neither a renamed
//! folder nor a harness that refuses everything can make this test pass by doing nothing.
//!
//! The seed files are made by [`seed_corpus_matches_the_fixtures`] from `fixtures/`, signed
//! with the fuzz module's test keys, plus hand-made hostile inputs; that test checks them, and
//! `RECONCILED_WRITE_SEEDS=1 cargo test --test fuzz_corpus seed_corpus` rewrites them. Inputs that made a target
//! crash are kept beside them under `crash-…` names, which that test never touches.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use reconciled::fuzz::{self, Reached};
use reconciled::provider::{paypal, stripe, worldpay};

/// Mutated variants replayed per corpus file.
const MUTATIONS: u64 = 24;

type Target = fn(&[u8]) -> Reached;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The corpus files of a target, sorted by name; the folder must exist and hold some.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = root().join("fuzz/corpus").join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus folder {} is missing: {e}", dir.display()));
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().expect("a file name").to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("readable corpus file"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus folder {} is empty", dir.display());
    files
}

/// SplitMix64: a small, fixed, seedable generator, so every run replays the same mutations.
struct Rng(u64);

impl Rng {
    fn seeded(name: &str) -> Rng {
        // FNV-1a of the file's name: its mutations do not depend on the other files.
        Rng(name
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (which is not 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Bytes that parsers branch on.
const INTERESTING: &[u8] = b"\0\x7f\x80\xff\"\\&;<>=%+,./:[]{}0-9eE\n\r\t #";

/// One mutation of `input`; `other` is another file of the same target, for splices.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    if out.is_empty() {
        out.push(INTERESTING[rng.below(INTERESTING.len())]);
        return out;
    }
    let at = rng.below(out.len());
    match rng.below(7) {
        0 => out[at] ^= 1 << rng.below(8),
        1 => out[at] = INTERESTING[rng.below(INTERESTING.len())],
        2 => out.truncate(at),
        3 => {
            let end = (at + 1 + rng.below(64)).min(out.len());
            out.drain(at..end);
        }
        4 => {
            let end = (at + 1 + rng.below(64)).min(out.len());
            let copy = out[at..end].to_vec();
            let times = 1 + rng.below(16);
            for _ in 0..times {
                out.splice(at..at, copy.iter().copied());
            }
        }
        5 => out.insert(at, rng.next_u64() as u8),
        _ => {
            let from = rng.below(other.len().max(1));
            out.truncate(at);
            out.extend_from_slice(other.get(from..).unwrap_or_default());
        }
    }
    out
}

/// Runs one input, turning a panic into a failure that names the input and keeps it.
fn replay(target: &str, run: Target, label: &str, input: &[u8]) -> Reached {
    match catch_unwind(AssertUnwindSafe(|| run(input))) {
        Ok(reached) => reached,
        Err(_) => {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-corpus-failures");
            std::fs::create_dir_all(&dir).expect("failure folder");
            let path = dir.join(format!("{target}-{}", label.replace('/', "_")));
            std::fs::write(&path, input).expect("failure file");
            panic!("fuzz target {target} panicked on {label}; input saved as {}", path.display());
        }
    }
}

/// Replays a target's corpus and its mutations, and checks that the corpus reaches both a
/// refusal and, past verification, what it must.
fn replay_target(target: &str, run: Target, deepest: Reached) {
    let fuzz_bin = root().join("fuzz/fuzz_targets").join(format!("{target}.rs"));
    let source = std::fs::read_to_string(&fuzz_bin)
        .unwrap_or_else(|e| panic!("{} is missing: {e}", fuzz_bin.display()));
    assert!(
        source.contains(&format!("reconciled::fuzz::{target}(")),
        "{} does not call reconciled::fuzz::{target}",
        fuzz_bin.display()
    );
    let manifest =
        std::fs::read_to_string(root().join("fuzz/Cargo.toml")).expect("fuzz/Cargo.toml");
    assert!(manifest.contains(&format!("name = \"{target}\"")), "no [[bin]] {target} in fuzz/");

    let files = corpus(target);
    let mut reached = HashSet::new();
    for (name, input) in &files {
        reached.insert(replay(target, run, name, input));
    }
    assert!(reached.contains(&deepest), "no {target} seed reaches {deepest:?}: {reached:?}");
    assert!(
        reached.iter().any(|r| matches!(r, Reached::Refused(_))),
        "no {target} seed is refused: {reached:?}"
    );
    for (n, (name, input)) in files.iter().enumerate() {
        let other = &files[(n + 1) % files.len()].1;
        let mut rng = Rng::seeded(name);
        for m in 0..MUTATIONS {
            let mutated = mutate(&mut rng, input, other);
            replay(target, run, &format!("{name} mutation {m}"), &mutated);
        }
    }
}

#[test]
fn stripe_corpus() {
    replay_target("stripe", fuzz::stripe, Reached::Notified);
}

#[test]
fn paypal_webhook_corpus() {
    replay_target("paypal_webhook", fuzz::paypal_webhook, Reached::Notified);
}

#[test]
fn paypal_cert_url_corpus() {
    replay_target("paypal_cert_url", fuzz::paypal_cert_url, Reached::Accepted);
    // Each hand-made hostile URL is refused, and each of PayPal's own forms accepted.
    for (name, input) in corpus("paypal_cert_url") {
        let reached = fuzz::paypal_cert_url(&input);
        let refused = matches!(reached, Reached::Refused(_));
        assert_eq!(refused, name.starts_with("hostile-"), "{name}: {reached:?}");
    }
}

#[test]
fn paypal_ipn_corpus() {
    replay_target("paypal_ipn", fuzz::paypal_ipn, Reached::Notified);
}

#[test]
fn worldpay_event_corpus() {
    replay_target("worldpay_event", fuzz::worldpay_event, Reached::Notified);
}

#[test]
fn worldpay_xml_corpus() {
    replay_target("worldpay_xml", fuzz::worldpay_xml, Reached::Notified);
}

#[test]
fn adflex_corpus() {
    replay_target("adflex", fuzz::adflex, Reached::Notified);
}

// ----- The seed corpus -----

/// Files of a fixture folder with one of the extensions, by name.
fn fixtures(dir: &str, ext: &str) -> Vec<(String, Vec<u8>)> {
    let dir = root().join("fixtures").join(dir);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("fixture folder")
        .map(|e| e.expect("fixture entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .map(|p| {
            let stem = p.file_stem().expect("a name").to_string_lossy().into_owned();
            (stem, std::fs::read(&p).expect("readable fixture"))
        })
        .collect();
    out.sort();
    out
}

/// Writes one seed, replacing a file of the same name.
/// With `RECONCILED_WRITE_SEEDS=1`, writes a seed file; otherwise checks that the committed
/// one is exactly what the fixtures and the fuzz module's keys make now.
fn seed(target: &str, name: &str, input: &[u8]) {
    let dir = root().join("fuzz/corpus").join(target);
    let path = dir.join(name);
    if std::env::var("RECONCILED_WRITE_SEEDS").as_deref() == Ok("1") {
        std::fs::create_dir_all(&dir).expect("corpus folder");
        std::fs::write(&path, input).expect("seed written");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == input,
        "seed {} is missing or stale: rewrite the seeds with \
         `RECONCILED_WRITE_SEEDS=1 cargo test --test fuzz_corpus seed_corpus`",
        path.display()
    );
}

fn stripe_request(header: &str, body: &[u8]) -> Vec<u8> {
    fuzz::request(
        &[
            ("Stripe-Signature", header),
            ("Content-Type", "application/json; charset=utf-8"),
            ("User-Agent", "Stripe/1.0 (+https://stripe.com/docs/webhooks)"),
        ],
        body,
    )
}

fn stripe_signed(body: &[u8]) -> Vec<u8> {
    stripe_request(&stripe::sign(fuzz::STRIPE_SECRETS[1].as_bytes(), fuzz::NOW, body), body)
}

fn stripe_seeds() {
    let t = "stripe";
    let files = fixtures("stripe", "json");
    for (name, body) in &files {
        seed(t, name, &stripe_signed(body));
    }
    let body = &files.iter().find(|(n, _)| n == "payment_intent.succeeded").expect("fixture").1;
    let now = fuzz::NOW;
    let old = stripe::signature(fuzz::STRIPE_SECRETS[0].as_bytes(), now, body);
    seed(
        t,
        "hostile-rolled-secret",
        &stripe_request(&format!("t={now},v1=zz,v0=abc,v1={old}"), body),
    );
    let zeros = "0".repeat(64);
    let many = format!("t={now}{}", format!(",v1={zeros}").repeat(17));
    seed(t, "hostile-too-many-signatures", &stripe_request(&many, body));
    let huge = format!("t=99999999999999999999,v1={zeros}");
    seed(t, "hostile-timestamp-overflow", &stripe_request(&huge, body));
    let stale = stripe::sign(fuzz::STRIPE_SECRETS[1].as_bytes(), now - 301, body);
    seed(t, "hostile-stale", &stripe_request(&stale, body));
    let future = stripe::sign(fuzz::STRIPE_SECRETS[1].as_bytes(), now + 301, body);
    seed(t, "hostile-future", &stripe_request(&future, body));
    seed(t, "hostile-no-header", &fuzz::request(&[], body));
    let mut twice = stripe_signed(body);
    twice.splice(0..0, format!("Stripe-Signature: t={now},v1={zeros}\n").bytes());
    seed(t, "hostile-header-twice", &twice);
    seed(t, "hostile-signed-not-json", &stripe_signed(b"not json"));
    let deep = format!(
        r#"{{"id":"evt_deep","object":"event","type":"charge.succeeded","data":{{"object":{}{}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    seed(t, "hostile-signed-deep-nesting", &stripe_signed(deep.as_bytes()));
    let overflow = br#"{"id":"evt_big","object":"event","type":"payment_intent.succeeded","created":-9223372036854775808,"data":{"object":{"id":"pi_big","amount_received":9223372036854775807,"amount":-1,"currency":"isk","metadata":{"order_id":"1"}}}}"#;
    seed(t, "hostile-signed-amount-overflow", &stripe_signed(overflow));
    let thin = br#"{"id":"evt_dup","id":"evt_dup2","object":"event","type":"charge.succeeded"}"#;
    seed(t, "hostile-signed-duplicate-id", &stripe_signed(thin));
}

const PAYPAL_CERT_URL: &str =
    "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-a5cafa77";
const PAYPAL_TIME: &str = "2026-11-18T10:00:00Z";

fn paypal_request(id: &str, cert_url: &str, algo: &str, sig: &str, body: &[u8]) -> Vec<u8> {
    fuzz::request(
        &[
            ("PAYPAL-AUTH-ALGO", algo),
            ("PAYPAL-CERT-URL", cert_url),
            ("PAYPAL-TRANSMISSION-ID", id),
            ("PAYPAL-TRANSMISSION-TIME", PAYPAL_TIME),
            ("PAYPAL-TRANSMISSION-SIG", sig),
            ("Content-Type", "application/json"),
        ],
        body,
    )
}

fn paypal_sig(id: &str, webhook_id: &str, body: &[u8]) -> String {
    let key = std::fs::read(root().join(fuzz::PAYPAL_KEY)).expect("test-only key");
    let message = paypal::signed_message(id, PAYPAL_TIME, webhook_id, body);
    paypal::sign(&key, message.as_bytes()).expect("signed")
}

fn paypal_signed(id: &str, body: &[u8]) -> Vec<u8> {
    let sig = paypal_sig(id, fuzz::PAYPAL_WEBHOOK_ID, body);
    paypal_request(id, PAYPAL_CERT_URL, paypal::ALGORITHM, &sig, body)
}

fn paypal_seeds() {
    let t = "paypal_webhook";
    let files = fixtures("paypal", "json");
    for (n, (name, body)) in files.iter().enumerate() {
        seed(t, name, &paypal_signed(&format!("b2f1c9e0-c9f1-11ef-9e9c-00000000000{n}"), body));
    }
    let body = &files.iter().find(|(n, _)| n == "PAYMENT.CAPTURE.COMPLETED").expect("fixture").1;
    let id = "b2f1c9e0-c9f1-11ef-9e9c-0000000000ff";
    let sig = paypal_sig(id, fuzz::PAYPAL_WEBHOOK_ID, body);
    let foreign = "https://attacker.example/v1/notifications/certs/CERT-1";
    seed(
        t,
        "hostile-foreign-cert-url",
        &paypal_request(id, foreign, paypal::ALGORITHM, &sig, body),
    );
    let http = PAYPAL_CERT_URL.replacen("https", "http", 1);
    seed(t, "hostile-http-cert-url", &paypal_request(id, &http, paypal::ALGORITHM, &sig, body));
    seed(t, "hostile-sha1", &paypal_request(id, PAYPAL_CERT_URL, "SHA1withRSA", &sig, body));
    seed(
        t,
        "hostile-sig-not-base64",
        &paypal_request(id, PAYPAL_CERT_URL, paypal::ALGORITHM, "!!!", body),
    );
    let other = paypal_sig(id, "WH-SOMEONE-ELSES", body);
    seed(
        t,
        "hostile-other-webhook-id",
        &paypal_request(id, PAYPAL_CERT_URL, paypal::ALGORITHM, &other, body),
    );
    seed(t, "hostile-signed-not-an-event", &paypal_signed(id, b"[]"));
    let odd = br#"{"id":"WH-ODD","event_type":"PAYMENT.CAPTURE.COMPLETED","create_time":"2026-11-20T10:14:05.5+05:30","resource":{"id":"CAP-1","amount":{"currency_code":"EUR","value":"99999999999999999999.99"},"custom_id":"1"}}"#;
    seed(t, "hostile-signed-odd-values", &paypal_signed(id, odd));
}

fn cert_url_seeds() {
    let urls = [
        ("paypal", PAYPAL_CERT_URL),
        ("sandbox", "https://api-m.sandbox.paypal.com/v1/notifications/certs/CERT-1"),
        ("port", "https://127.0.0.1:8443/v1/notifications/certs/test"),
        ("upper-case", "https://API.PAYPAL.COM/v1/notifications/certs/CERT"),
        ("hostile-default-port", "https://api.paypal.com:443/v1/notifications/certs/CERT"),
        ("hostile-hex-ip", "https://0x7f.0.0.1:8443/v1/notifications/certs/x"),
        ("hostile-encoded-name", "https://api.paypal.com/v1/notifications/certs/%43ERT"),
        ("hostile-backslash-host", "https://api.paypal.com\\v1/notifications/certs/CERT"),
        ("hostile-http", "http://api.paypal.com/v1/notifications/certs/CERT"),
        ("hostile-user-info", "https://user:pw@api.paypal.com/v1/notifications/certs/CERT"),
        ("hostile-suffix-host", "https://api.paypal.com.attacker.example/v1/notifications/certs/C"),
        ("hostile-trailing-dot", "https://api.paypal.com./v1/notifications/certs/CERT"),
        ("hostile-dot-segments", "https://api.paypal.com/v1/notifications/certs/../../x/y"),
        ("hostile-encoded-slash", "https://api.paypal.com/v1/notifications/certs/a%2F..%2Fb"),
        ("hostile-query", "https://api.paypal.com/v1/notifications/certs/CERT?x=1"),
        ("hostile-fragment", "https://api.paypal.com/v1/notifications/certs/CERT#f"),
        ("hostile-backslashes", "https:\\\\api.paypal.com\\v1\\notifications\\certs\\CERT"),
        ("hostile-ipv6", "https://[::1]:8443/v1/notifications/certs/CERT"),
        ("hostile-idn", "https://xn--pypal-4ve.com/v1/notifications/certs/CERT"),
        ("hostile-decimal-ip", "https://2130706433:8443/v1/notifications/certs/x"),
        ("hostile-not-a-url", "api.paypal.com/v1/notifications/certs/CERT"),
    ];
    for (name, url) in urls {
        seed("paypal_cert_url", name, url.as_bytes());
    }
}

fn ipn_request(body: &[u8]) -> Vec<u8> {
    fuzz::request(
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("User-Agent", "PayPal IPN ( https://www.paypal.com/ipn )"),
        ],
        body,
    )
}

fn ipn_seeds() {
    let t = "paypal_ipn";
    for (name, body) in fixtures("paypal-ipn", "form") {
        seed(t, &name, &ipn_request(&body));
    }
    let ours = "receiver_email=shop%40example.com&receiver_id=S8XGHLYDW9T3S";
    let forms = [
        ("hostile-iso-2022-kr", format!("charset=ISO-2022-KR&{ours}&txn_id=1&payment_status=Completed")),
        ("hostile-unknown-charset", format!("charset=x-no-such&{ours}&txn_id=1")),
        ("hostile-utf-16", format!("charset=utf-16le&{ours}&txn_id=1%00&payment_status=C%00")),
        ("hostile-too-many-fields", format!("{ours}&txn_id=1&{}", "a=1&".repeat(1000))),
        ("hostile-undecodable-txn-id", format!("charset=utf-8&{ours}&txn_id=%FF%FE&payment_status=Completed")),
        ("hostile-other-receiver", "receiver_email=thief%40example.com&receiver_id=X&txn_id=1".into()),
        ("hostile-min-amount", format!("{ours}&txn_id=1&payment_status=Refunded&mc_gross=-9223372036854775808&mc_currency=JPY")),
        ("hostile-new-case", format!("{ours}&txn_type=new_case&case_id=PP-D-1&case_type=chargeback&txn_id=9&reason_code=x")),
        ("hostile-bad-escapes", format!("{ours}&txn_id=%Z%&%=%%&&&=&payment_status=Pending+%")),
    ];
    for (name, body) in forms {
        seed(t, name, &ipn_request(body.as_bytes()));
    }
}

fn worldpay_request(header: &str, body: &[u8]) -> Vec<u8> {
    fuzz::request(
        &[
            ("Event-Signature", header),
            ("Content-Type", "application/vnd.worldpay.events-v1.hal+json"),
        ],
        body,
    )
}

fn worldpay_signed(body: &[u8]) -> Vec<u8> {
    let (id, secret) = fuzz::WORLDPAY_KEYS[0];
    worldpay_request(&worldpay::sign(id, secret.as_bytes(), body), body)
}

fn worldpay_seeds() {
    let t = "worldpay_event";
    let files = fixtures("worldpay", "json");
    for (name, body) in &files {
        seed(t, name, &worldpay_signed(body));
    }
    let body = &files.iter().find(|(n, _)| n == "authorized").expect("fixture").1;
    let (id, secret) = fuzz::WORLDPAY_KEYS[0];
    let mac = worldpay::signature(secret.as_bytes(), body);
    let two = format!("9/SHA256/{mac},{id}/SHA256/{}", mac.to_uppercase());
    seed(t, "hostile-rotation-upper-case", &worldpay_request(&two, body));
    let many = vec![format!("{id}/SHA256/{mac}"); 17].join(",");
    seed(t, "hostile-too-many-entries", &worldpay_request(&many, body));
    seed(t, "hostile-unknown-key", &worldpay_request(&format!("7/SHA256/{mac}"), body));
    seed(t, "hostile-sha512", &worldpay_request(&format!("{id}/SHA512/{mac}"), body));
    seed(t, "hostile-empty-key-id", &worldpay_request(&format!("/SHA256/{mac}"), body));
    seed(t, "hostile-signed-not-json", &worldpay_signed(b"\xff\xfe{"));
    let odd = br#"{"eventId":"e-1","eventTimestamp":"2024-02-30T25:61:61.","eventDetails":{"classification":"payment","type":"sentForSettlement","transactionReference":"1","amount":{"value":9223372036854775807,"currencyCode":"KWD"}}}"#;
    seed(t, "hostile-signed-odd-values", &worldpay_signed(odd));
}

fn xml_request(body: &[u8]) -> Vec<u8> {
    fuzz::request(&[("Content-Type", "text/xml"), ("Authorization", "Basic d3A6cHc=")], body)
}

fn xml_seeds() {
    let t = "worldpay_xml";
    for (name, body) in fixtures("worldpay-xml", "xml") {
        seed(t, &name, &xml_request(&body));
    }
    let order = |payment: &str, journal: &str| {
        format!(
            r#"<?xml version="1.0"?><paymentService version="1.4" merchantCode="SHOPEUR"><notify><orderStatusEvent orderCode="7"><payment>{payment}</payment>{journal}</orderStatusEvent></notify></paymentService>"#
        )
    };
    let refund_tx =
        r#"<accountTx batchId="1"><amount value="5" currencyCode="EUR" exponent="2"/></accountTx>"#;
    let docs = [
        (
            "hostile-doctype-after-root",
            format!("{}<!DOCTYPE x>", order("<lastEvent>CAPTURED</lastEvent>", "")),
        ),
        ("hostile-two-roots", format!("{0}{0}", order("<lastEvent>CAPTURED</lastEvent>", ""))),
        (
            "hostile-entity-in-attribute",
            order(
                r#"<amount value="&x;" currencyCode="EUR" exponent="2"/><lastEvent>CAPTURED</lastEvent>"#,
                "",
            ),
        ),
        (
            "hostile-33-attributes",
            order(
                &format!(
                    "<lastEvent {}>CAPTURED</lastEvent>",
                    (0..33).map(|n| format!("a{n}=\"\"")).collect::<Vec<_>>().join(" ")
                ),
                "",
            ),
        ),
        ("hostile-cdata-last-event", order("<lastEvent><![CDATA[CAPT]]>URED</lastEvent>", "")),
        ("hostile-char-refs", order("<lastEvent>&#0;&#x110000;&#xD800;&#65;</lastEvent>", "")),
        (
            "hostile-dates",
            order(
                "<lastEvent>SETTLED</lastEvent>",
                r#"<journal journalType="SETTLED"><bookingDate><date dayOfMonth="29" month="2" year="0"/></bookingDate></journal>"#,
            ),
        ),
        (
            "hostile-amounts",
            order(
                r#"<amount value="999999999999999999" currencyCode="BHD" exponent="99"/><lastEvent>CAPTURED</lastEvent>"#,
                "",
            ),
        ),
        (
            "hostile-17-refund-parts",
            order(
                "<lastEvent>REFUNDED</lastEvent>",
                &format!("<journal journalType=\"REFUNDED\">{}</journal>", refund_tx.repeat(17)),
            ),
        ),
        (
            "hostile-other-merchant",
            order("<lastEvent>CAPTURED</lastEvent>", "").replace("SHOPEUR", "SOMEONE"),
        ),
        (
            "hostile-unclosed",
            order("<lastEvent>CAPTURED</lastEvent>", "").replace("</paymentService>", ""),
        ),
    ];
    for (name, body) in docs {
        seed(t, name, &xml_request(body.as_bytes()));
    }
}

fn adflex_signed(body: &[u8]) -> Vec<u8> {
    let sig = reconciled::provider::adflex::sign(fuzz::ADFLEX_SECRET.as_bytes(), body);
    fuzz::request(
        &[(fuzz::ADFLEX_HEADER, &format!("sha256={sig}")), ("Content-Type", "application/json")],
        body,
    )
}

fn adflex_seeds() {
    let t = "adflex";
    for (name, body) in fixtures("adflex", "json") {
        seed(t, &name, &adflex_signed(&body));
    }
    let note = |amount: &str, currency: &str, status: &str| {
        format!(
            r#"{{"transactionGUID":"3f1c2a9e","reference":"3001","amount":{{"value":{amount},"currency":{currency}}},"statusCode":{status}}}"#
        )
    };
    let bodies = [
        ("hostile-number-amount", note("49.99", r#""GBP""#, r#""Authorised""#)),
        ("hostile-negative-amount", note(r#""-1""#, r#""GBP""#, r#""Refunded""#)),
        ("hostile-exponent-amount", note(r#""1e3""#, r#""GBP""#, r#""Settled""#)),
        ("hostile-too-precise", note(r#""0.001""#, r#""JPY""#, r#""Authorised""#)),
        ("hostile-numeric-status", note(r#""1.00""#, "826", "5")),
        (
            "hostile-long-id",
            note(r#""1.00""#, r#""GBP""#, r#""Settled""#).replace("3f1c2a9e", &"g".repeat(300)),
        ),
        ("hostile-huge-number", note("1e400", r#""GBP""#, r#""Settled""#)),
    ];
    for (name, body) in bodies {
        seed(t, name, &adflex_signed(body.as_bytes()));
    }
    let body = fixtures("adflex", "json").remove(0).1;
    seed(t, "hostile-unsigned", &fuzz::request(&[("Content-Type", "application/json")], &body));
    let bad = fuzz::request(&[(fuzz::ADFLEX_HEADER, "sha256=not-hex")], &body);
    seed(t, "hostile-signature-not-hex", &bad);
}

/// The committed seed corpus is what the fixtures make (so a changed fixture or key cannot leave
/// the corpus stale). `RECONCILED_WRITE_SEEDS=1` rewrites it instead; files of other names
/// (libFuzzer's `crash-…` regressions) are left alone.
#[test]
fn seed_corpus_matches_the_fixtures() {
    stripe_seeds();
    paypal_seeds();
    cert_url_seeds();
    ipn_seeds();
    worldpay_seeds();
    xml_seeds();
    adflex_seeds();
}
