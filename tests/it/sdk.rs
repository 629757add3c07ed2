//! Cross-check with a signer and verifier nobody here wrote: the official `stripe` Python
//! package (pinned in `scripts/requirements-sdk.txt`), driven through `scripts/stripe_sdk.py`.
//!
//! The tests need `RECONCILED_STRIPE_SDK_PYTHON`: a Python with that package. `scripts/test.sh`
//! (and so CI) always sets it; without it these tests say so and skip.

use std::io::Write;
use std::process::{Command, Stdio};

use hyper::StatusCode;

use crate::harness::{self, Daemon, SECRET};
use crate::process::ChildGuard;

pub(crate) fn sdk_python() -> Option<String> {
    let python = std::env::var("RECONCILED_STRIPE_SDK_PYTHON").ok();
    if python.is_none() {
        // CI must never skip the cross-check.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but RECONCILED_STRIPE_SDK_PYTHON is not"
        );
        eprintln!("skipped: RECONCILED_STRIPE_SDK_PYTHON is not set (scripts/test.sh sets it)");
    }
    python
}

fn sdk(python: &str, args: &[&str], body: &[u8]) -> (i32, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stripe_sdk.py");
    let mut child = ChildGuard::spawn(
        Command::new(python)
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .expect("run the SDK script");
    child.stdin().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    if code != 0 {
        eprintln!("stripe_sdk.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    (code, String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn snapshot_fixtures() -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/stripe"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".json") && n != "thin_event.json")
            .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let body = harness::fixture(&n);
            (n, body)
        })
        .collect()
}

#[tokio::test]
async fn headers_signed_by_the_official_sdk_are_accepted() {
    let Some(python) = sdk_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), "", "").await;
    let mut fixtures = snapshot_fixtures();
    fixtures.push(("thin_event.json".into(), harness::fixture("thin_event.json")));
    for (name, body) in &fixtures {
        let (code, header) = sdk(&python, &["sign", "--secret", SECRET], body);
        assert_eq!(code, 0, "{name}: {header}");
        let (status, text) =
            d.post("/webhooks/stripe", &[("stripe-signature", &header)], body.clone()).await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "stored\n"), "{name}");
    }
    // And the SDK's header for another secret is refused.
    let (_, header) = sdk(&python, &["sign", "--secret", "whsec_not_ours"], &fixtures[0].1);
    let (status, _) =
        d.post("/webhooks/stripe", &[("stripe-signature", &header)], fixtures[0].1.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(d.rows().len(), fixtures.len());
    d.stop().await;
}

#[test]
fn reconciled_sign_passes_the_sdks_construct_event() {
    let Some(python) = sdk_python() else { return };
    for (name, body) in snapshot_fixtures() {
        let out = Command::new(env!("CARGO_BIN_EXE_reconciled"))
            .args(["sign", "stripe", "--secret", SECRET, "--body"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/stripe/").to_owned() + &name)
            .output()
            .unwrap();
        assert!(out.status.success());
        let line = String::from_utf8(out.stdout).unwrap();
        let header = line.trim().strip_prefix("Stripe-Signature: ").unwrap().to_owned();
        let (code, text) =
            sdk(&python, &["verify", "--secret", SECRET, "--header", &header], &body);
        assert_eq!(code, 0, "{name}: {text}");
        let id = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(text.starts_with(&format!("OK {id} ")), "{name}: {text}");
        // The SDK refuses it with a different secret, so the check can fail.
        let (code, text) =
            sdk(&python, &["verify", "--secret", "whsec_other", "--header", &header], &body);
        assert_eq!(code, 1, "{name}: {text}");
    }
}
