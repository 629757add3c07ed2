//! The admin page in a real browser: headless Chromium (Debian's `chromium`) loads `/admin`
//! and a notification's page, with markup planted in a notification; the test reads the DOM
//! the browser built and saves a screenshot under the test's output directory.
//!
//! The browser is `RECONCILED_CHROMIUM`, or `chromium` on the PATH (`scripts/test.sh` installs
//! it when run as root). Without one the tests say so and pass, except under CI, where they
//! fail.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use hyper::StatusCode;

use crate::harness::{self, pi_event, shop_config, Daemon, Shop, SECRET};
use crate::process::ChildGuard;

const TOKEN: &str = "admin-token-0123456789abcdef";
/// Markup in a notification's id: it must show as text and never run.
const PLANTED: &str = "evt_<script>document.title='pwned'</script><b>bold</b>";

fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("RECONCILED_CHROMIUM").map(PathBuf::from).or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths).map(|p| p.join("chromium")).find(|p| p.is_file())
        })
    });
    if found.is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI is set but no chromium was found");
        eprintln!(
            "skipped: no chromium (install Debian's chromium, or run scripts/test.sh as root)"
        );
    }
    found
}

/// Runs headless Chromium on `url` with `args` (`--dump-dom`, `--screenshot=…`) and returns
/// what it printed.
fn browse(
    browser: &std::path::Path,
    profile: &std::path::Path,
    args: &[&str],
    url: &str,
) -> String {
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--window-size=1280,1400",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let out = ChildGuard::spawn(&mut cmd).unwrap().wait_with_output().unwrap();
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// Reviews, dead notifications, undelivered actions, verification failures and endpoints
/// shown; the planted markup escaped (as text in the DOM, never an element, the title
/// untouched); a strict Content-Security-Policy; sign-in required; no token in the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_shows_what_needs_a_person_and_never_runs_markup() {
    let Some(browser) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::create(dir.path());
    shop.add(1001, "pending", "100.00", "USD");
    shop.add(1002, "pending", "100.00", "USD");
    let admin = harness::free_addr();
    // A sink nobody listens on: its deliveries stay owed.
    let closed = harness::free_addr();
    let extra = format!(
        "[policy]\non_currency_mismatch = \"review\"\n\
         [admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n\
         [[sink]]\nname = \"shop\"\nkind = \"http\"\nurl = \"http://{closed}/hook\"\n\
         secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\nretry_base = \"1h\"\n"
    );
    let d = Daemon::start_with(dir.path(), "", "", &shop_config(&shop, &extra)).await;
    harness::accepting(admin).await;
    // A payment in the wrong currency (a review), whose event id carries markup; a good one.
    let planted = pi_event(PLANTED, "succeeded", "pi_p1", "1001", 10000, "eur");
    assert_eq!(d.post_stripe(SECRET, &planted).await.0, StatusCode::OK);
    let good = pi_event("evt_good", "succeeded", "pi_p2", "1002", 10000, "usd");
    assert_eq!(d.post_stripe(SECRET, &good).await.0, StatusCode::OK);
    assert_eq!(d.post_stripe("whsec_wrong", &good).await.0, StatusCode::BAD_REQUEST);
    d.settle().await;
    // One notification that could not be decided, its error quoting markup.
    let conn = rusqlite::Connection::open(dir.path().join("inbox.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute(
        "UPDATE inbox SET status = 'dead', last_error = '<img src=x>unreadable' WHERE dedup_key = 'evt_good'",
        [],
    )
    .unwrap();
    drop(conn);

    // Sign-in: none, a wrong password, a wrong user: 401 with a Basic challenge.
    for auth in [None, Some(basic("admin", "wrong")), Some(basic("root", TOKEN))] {
        let headers: Vec<(&str, &str)> =
            auth.as_deref().map(|a| vec![("authorization", a)]).unwrap_or_default();
        let (code, body) =
            harness::request(admin, "GET", "/admin", &headers, Default::default()).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
    }
    let auth = basic("admin", TOKEN);
    let (code, html) =
        harness::request(admin, "GET", "/admin", &[("authorization", &auth)], Default::default())
            .await;
    assert_eq!(code, StatusCode::OK);
    assert!(!html.contains("<script"), "markup passed through: {html}");
    assert!(html.contains("evt_&lt;script&gt;"), "{html}");
    assert!(!html.contains(TOKEN));
    let bearer = format!("Bearer {TOKEN}");
    let (code, _) =
        harness::request(admin, "GET", "/admin", &[("authorization", &bearer)], Default::default())
            .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _) =
        harness::request(admin, "POST", "/admin", &[("authorization", &auth)], Default::default())
            .await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED, "read-only");

    // The browser: what it built from the page.
    let profile = tempfile::tempdir().unwrap();
    let base = format!("http://admin:{TOKEN}@{admin}");
    let dom = browse(&browser, profile.path(), &["--dump-dom"], &format!("{base}/admin"));
    assert!(dom.contains("<title>reconciled</title>"), "the title changed: {dom}");
    assert!(!dom.contains("pwned</title>"));
    for heading in [
        "Reviews waiting for a person",
        "Dead notifications",
        "Undelivered actions",
        "Latest verification failures",
        "Endpoints",
    ] {
        assert!(dom.contains(heading), "no {heading}: {dom}");
    }
    // The review: its order, amount and the planted id as text, linked to the notification.
    assert!(dom.contains("<td>1001</td>"), "{dom}");
    assert!(dom.contains("100.00 EUR"), "{dom}");
    assert!(
        dom.contains(
            "evt_&lt;script&gt;document.title='pwned'&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;"
        ),
        "{dom}"
    );
    assert!(!dom.contains("<b>bold</b>"), "planted markup became an element: {dom}");
    // The dead notification with its error as text; the failure; the sink owed.
    assert!(dom.contains("&lt;img src=x&gt;unreadable"), "{dom}");
    assert!(!dom.contains("<img"), "{dom}");
    assert!(dom.contains("bad_signature"), "{dom}");
    assert!(dom.contains("<td>shop</td>"), "{dom}");
    assert!(!dom.contains(TOKEN) || dom.matches(TOKEN).count() == 0, "the token in the page");
    let screenshots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("admin-page");
    std::fs::create_dir_all(&screenshots).unwrap();
    let shot = screenshots.join("admin.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &browser,
        profile.path(),
        &[&format!("--screenshot={}", shot.display())],
        &format!("{base}/admin"),
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot");

    // The notification's own page: the body, escaped, and its review action.
    let id: i64 = harness::sql(&dir.path().join("inbox.db"))
        .query_row("SELECT id FROM inbox WHERE dedup_key = ?1", [PLANTED], |r| r.get(0))
        .unwrap();
    let dom =
        browse(&browser, profile.path(), &["--dump-dom"], &format!("{base}/admin/inbox/{id}"));
    assert!(dom.contains(&format!("<title>Notification {id}</title>")), "{dom}");
    assert!(dom.contains("\"currency\": \"eur\""), "the body: {dom}");
    assert!(dom.contains("review"), "{dom}");
    assert!(!dom.contains("<b>bold</b>"), "{dom}");
    browse(
        &browser,
        profile.path(),
        &[&format!("--screenshot={}", screenshots.join("notification.png").display())],
        &format!("{base}/admin/inbox/{id}"),
    );
    d.stop().await;
}

/// The page's headers: a Content-Security-Policy that allows no script, frame or form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_is_served_with_a_strict_content_security_policy() {
    let dir = tempfile::tempdir().unwrap();
    let admin = harness::free_addr();
    let extra = format!("[admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n");
    let d = Daemon::start_with(dir.path(), "", "", &extra).await;
    harness::accepting(admin).await;
    let stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/admin")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"), "{csp}");
    assert!(csp.contains("form-action 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "no-store");
    d.stop().await;
}
