//! `reconciled simulate`: build the notification an endpoint's provider would send for one of
//! the shop's own orders, sign it with the endpoint's configuration as the provider would, and
//! print it, or post it to the running daemon and show the actions that followed.

mod bodies;
mod request;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};

use self::bodies::Sim;
use self::request::Request;
use super::UsageError as Usage;
use crate::config::Config;
use crate::domain::InboxStatus;
use crate::endpoint::Endpoint;
use crate::money::{Currency, Money, MoneyError};
use crate::provider::{Provider, ProviderKind};

/// How `simulate` tells a test configuration from a live one (shown in `--help`).
const LIVE_RULE: &str = "\
Live configurations: simulate refuses (exit 2), unless --i-know is given, an endpoint whose
configuration looks live. A provider's live and test secrets look alike (a Stripe whsec_ secret
does not say which mode it is from), so a secret counts as a test secret only if it contains
the word \"test\" in any case (whsec_test_..., the demo's public test secret). The endpoint
looks live when a secret the request is signed or sent with lacks that mark: Stripe's first
secret, Worldpay's first key, Adflex's first secret, any endpoint's basic_auth password. An
endpoint trusted by allow_from alone has nothing to mark and always looks live. A PayPal IPN
endpoint looks live when its verify_url is PayPal's live postback. A PayPal endpoint is a test
endpoint when it pins the test certificate (nothing else can accept a simulated webhook).
The demo (--demo) is a test configuration.";

/// Which provider event to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Event {
    /// The payment was captured (money received).
    Succeeded,
    /// The payment is on its way (processing, an eCheck, sent for authorisation).
    Pending,
    /// The payment was declined.
    Failed,
    /// The payment was refunded by the provider (names the order's earlier payment).
    Refunded,
}

/// Arguments of `simulate`.
#[derive(Debug, Args)]
#[command(after_long_help = LIVE_RULE)]
pub struct SimulateArgs {
    /// The daemon's configuration file.
    #[arg(long, short, value_name = "FILE", conflicts_with = "demo")]
    config: Option<PathBuf>,
    /// Use the demo's built-in configuration (`serve --demo`).
    #[arg(long)]
    demo: bool,
    /// The endpoint (the `name` of an `[[endpoint]]`) whose provider sends the notification.
    #[arg(long, value_name = "NAME")]
    endpoint: String,
    /// The shop's order id, as the checkout passes it to the provider.
    #[arg(long, value_name = "ID")]
    order: String,
    /// The amount paid (or refunded), in whole units with at most the currency's decimals.
    #[arg(long, value_name = "AMOUNT", allow_hyphen_values = true)]
    amount: String,
    /// The ISO 4217 currency code.
    #[arg(long, value_name = "CODE")]
    currency: String,
    /// The event the provider reports.
    #[arg(long, value_enum, default_value_t = Event::Succeeded)]
    event: Event,
    /// The provider's payment id to name (default: a new one; for `refunded`, the payment our
    /// records say paid the order, if there is one).
    #[arg(long, value_name = "ID")]
    payment_id: Option<String>,
    /// Post it to the daemon at `[server] listen` and show the actions that followed.
    #[arg(long)]
    post: bool,
    /// Print a curl command that posts it, instead of the request.
    #[arg(long, conflicts_with = "post")]
    curl: bool,
    /// The daemon's address, when it was started with `serve --listen` (default: `[server]
    /// listen`).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// With --post: how long to wait for the worker's decision.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    wait: u64,
    /// For PayPal webhooks: the test private key to sign with; the endpoint must pin its
    /// certificate.
    #[arg(long, value_name = "FILE", default_value = "fixtures/paypal/test-only-signing.key.pem")]
    paypal_key: PathBuf,
    /// Run even though the configuration looks live (see below).
    #[arg(long = "i-know")]
    i_know: bool,
}

pub(super) fn run(args: SimulateArgs) -> anyhow::Result<()> {
    check_order(&args.order)?;
    let amount = parse_amount(&args.amount, &args.currency)?;
    let (config, source) = match (&args.config, args.demo) {
        (Some(path), _) => (Config::load(path)?, path.display().to_string()),
        (None, true) => (super::demo::config()?, "the demo configuration".to_owned()),
        (None, false) => {
            return Err(Usage("say which configuration: --config FILE or --demo".into()).into())
        }
    };
    let Some(endpoint) = config.endpoints.iter().find(|e| e.name == args.endpoint) else {
        let names: Vec<String> =
            config.endpoints.iter().map(|e| format!("{} ({})", e.name, e.kind())).collect();
        return Err(Usage(format!(
            "{source} has no endpoint \"{}\"; its endpoints are: {}",
            args.endpoint,
            names.join(", ")
        ))
        .into());
    };
    let kind = endpoint.kind();
    let mut notes = Vec::new();
    let payment_id = match (&args.payment_id, args.event) {
        (Some(id), _) => Some(id.clone()),
        // Worldpay's payment is the order itself.
        (None, Event::Refunded)
            if !matches!(kind, ProviderKind::Worldpay | ProviderKind::WorldpayXml) =>
        {
            let found = earlier_payment(&config, kind, &args.order);
            notes.push(match &found {
                Some(id) => {
                    format!("the refund names payment {id}, which paid order {}", args.order)
                }
                None => format!(
                    "no {kind} payment of order {} is in the store; the refund names a new \
                     payment (--payment-id names one)",
                    args.order
                ),
            });
            found
        }
        _ => None,
    };
    let now_ms = crate::time::now_ms();
    let sim = Sim {
        order: &args.order,
        amount,
        event: args.event,
        payment_id: payment_id.as_deref(),
        now_ms,
    };
    let request = request::build(endpoint, &sim, &args.paypal_key)?;
    if let Some(why) = &request.looks_live {
        if !(args.demo || args.i_know) {
            return Err(Usage(format!(
                "endpoint \"{}\" in {source} looks live: {why}. A simulated payment on a live \
                 configuration makes real actions (a fulfil ships goods). Use a test \
                 configuration, or give --i-know if this one is a test (see --help)",
                endpoint.name
            ))
            .into());
        }
        if !args.demo {
            eprintln!(
                "warning: endpoint \"{}\" looks live ({why}); going ahead (--i-know)",
                endpoint.name
            );
        }
    }
    let dedup_key = super::block_on(self_check(endpoint, &request, now_ms))?;
    eprintln!(
        "simulated: {kind} {} for order {}, {amount}, payment {}",
        request.body.event_type, args.order, request.body.payment_id
    );
    for note in notes.iter().chain(&request.notes) {
        eprintln!("note: {note}");
    }
    let listen = args.listen.unwrap_or(config.server.listen);
    let addr = daemon_address(listen);
    let path = format!("/webhooks/{}", endpoint.name);
    if !args.post {
        print_request(&request, &addr, &path, args.curl);
        return Ok(());
    }
    if listen.port() == 0 {
        return Err(Usage(format!(
            "{source} listens on port 0 (any free port): give the daemon's address with --listen"
        ))
        .into());
    }
    super::block_on(async {
        let (status, answer) = post(&format!("http://{addr}{path}"), &request).await?;
        let text = answer.trim();
        println!(
            "answer: HTTP {status}{}",
            if text.is_empty() { String::new() } else { format!(" {text}") }
        );
        if !status.is_success() {
            anyhow::bail!("the daemon refused the notification (HTTP {status})");
        }
        if config.shop.is_none() {
            println!("{source} has no [shop]: notifications are stored, not reconciled");
            return Ok(());
        }
        show_outcome(&config, kind, &dedup_key, &args.order, Duration::from_secs(args.wait)).await
    })
}

fn check_order(order: &str) -> Result<(), Usage> {
    if order.is_empty() || order.len() > 255 || order.chars().any(char::is_control) {
        return Err(Usage(
            "--order must be a non-empty order id of at most 255 bytes without control characters"
                .into(),
        ));
    }
    Ok(())
}

/// The amount, exact in the currency's minor units (ISO 4217).
fn parse_amount(text: &str, code: &str) -> Result<Money, Usage> {
    let currency = Currency::parse(code).map_err(|_| {
        Usage(format!(
            "--currency {code:?} is not an ISO 4217 currency with a minor unit (such as EUR, USD, JPY)"
        ))
    })?;
    if text.starts_with('-') {
        return Err(Usage(format!(
            "--amount {text} is negative; give the amount paid or refunded"
        )));
    }
    let amount = Money::parse_exact(text, currency).map_err(|e| match e {
        MoneyError::Inexact { exponent, .. } => Usage(format!(
            "--amount {text} has more decimal places than {currency} has ({exponent})"
        )),
        e => Usage(format!("--amount {text:?} is not an amount such as 25.99: {e}")),
    })?;
    if amount.minor == 0 {
        return Err(Usage("--amount must be more than zero".into()));
    }
    Ok(amount)
}

/// The payment that our records say paid the order, read from the store (read-only).
fn earlier_payment(config: &Config, kind: ProviderKind, order: &str) -> Option<String> {
    super::block_on(async {
        let store = crate::store::Store::open_configured_reader(&config.store).await?;
        Ok(store.paying_payment(kind, order).await?)
    })
    .ok()
    .flatten()
}

/// Runs the endpoint's own verification on the request, as the daemon will, and returns the
/// inbox key it stores the notification under.
async fn self_check(endpoint: &Endpoint, request: &Request, now_ms: i64) -> anyhow::Result<String> {
    // Accepting needs no API client: PayPal's API checks a stored row, later, in the worker.
    let provider = Provider::new(&endpoint.settings, Default::default())?;
    let mut headers = hyper::HeaderMap::new();
    for (name, value) in &request.headers {
        headers.insert(
            hyper::header::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())?,
            hyper::header::HeaderValue::from_str(value)?,
        );
    }
    let accepted = provider
        .accept(&headers, &request.body.bytes, now_ms.div_euclid(1000))
        .await
        .map_err(|why| {
            anyhow::anyhow!(
                "endpoint \"{}\" would refuse the simulated notification: {why}",
                endpoint.name
            )
        })?;
    Ok(accepted.dedup_key)
}

/// Where to reach the daemon: its listen address, with a wildcard address read as loopback.
fn daemon_address(listen: std::net::SocketAddr) -> std::net::SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, listen.port())
}

/// Prints the request (or a curl command) to stdout; basic auth is never printed.
fn print_request(request: &Request, addr: &std::net::SocketAddr, path: &str, curl: bool) {
    let body = String::from_utf8_lossy(&request.body.bytes);
    if curl {
        let quote = super::sign::shell_quote;
        let mut cmd = format!("curl -sS -i -X POST {}", quote(&format!("http://{addr}{path}")));
        for (name, value) in &request.headers {
            cmd.push_str(&format!(" -H {}", quote(&format!("{name}: {value}"))));
        }
        if let Some((user, _)) = &request.basic_auth {
            // curl asks for the password: it never appears in the command.
            cmd.push_str(&format!(" -u {}", quote(user)));
        }
        println!("printf '%s' {} | {cmd} --data-binary @-", quote(&body));
        if request.basic_auth.is_some() {
            eprintln!("note: curl asks for the endpoint's basic_auth password");
        }
        return;
    }
    println!("POST {path} HTTP/1.1");
    println!("Host: {addr}");
    for (name, value) in &request.headers {
        println!("{name}: {value}");
    }
    if let Some((user, _)) = &request.basic_auth {
        println!("Authorization: Basic <user \"{user}\" and the endpoint's basic_auth password, not shown>");
    }
    println!("Content-Length: {}", request.body.bytes.len());
    println!();
    print!("{body}");
}

/// Posts the request; returns the daemon's status and answer.
async fn post(url: &str, request: &Request) -> anyhow::Result<(hyper::StatusCode, String)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;
    let mut builder = client.post(url).body(request.body.bytes.clone());
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    if let Some((user, password)) = &request.basic_auth {
        builder = builder.header("Authorization", request::basic_header(user, password));
    }
    let response = builder
        .send()
        .await
        .with_context(|| format!("cannot post to the daemon at {url}: is it running?"))?;
    let status = hyper::StatusCode::from_u16(response.status().as_u16())?;
    let text = response.text().await.unwrap_or_default();
    Ok((status, text))
}

/// Waits (read-only, bounded) for the worker to decide the stored notification, then prints
/// its status and the actions it caused.
async fn show_outcome(
    config: &Config,
    kind: ProviderKind,
    dedup_key: &str,
    order: &str,
    wait: Duration,
) -> anyhow::Result<()> {
    let store = crate::store::Store::open_configured_reader(&config.store).await?;
    let deadline = Instant::now() + wait;
    let row = loop {
        let row = store.find(kind, dedup_key).await?;
        let decided = row
            .as_ref()
            .is_some_and(|r| !matches!(r.status, InboxStatus::Pending | InboxStatus::Processing));
        if decided || Instant::now() >= deadline {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let Some(row) = row else {
        println!("the notification is not in the store yet");
        return Ok(());
    };
    let status = row.status;
    println!(
        "inbox row {}: {}{}",
        row.id,
        status.as_str(),
        row.outcome.as_ref().map(|o| format!(" ({o})")).unwrap_or_default()
    );
    match status {
        InboxStatus::Pending | InboxStatus::Processing => {
            let headers = store.show(row.id).await.ok().flatten().map(|r| r.headers);
            let waiting = match kind.confirmed_by(headers.as_deref().unwrap_or_default()) {
                Some(by) if row.verified_at.is_none() => format!(", waiting for {by}"),
                _ => String::new(),
            };
            println!(
                "not decided within {} s{waiting}; follow it with `reconciled inbox show {}`",
                wait.as_secs(),
                row.id
            );
        }
        InboxStatus::Parked
            if row.outcome.as_deref().is_some_and(crate::reconcile::decide::is_held) =>
        {
            println!(
                "the payment failed: the notice to the customer is held for \
                 policy.failure_notice_delay, and goes out then unless order {order} is paid \
                 meanwhile (set failure_notice_delay = \"0s\" under [policy] to see it at once)"
            )
        }
        InboxStatus::Parked => println!(
            "order {order} was not found in the shop (yet): the row is retried for \
             policy.unmatched_retry_for, then sent to review"
        ),
        _ => {}
    }
    if let Some(error) = &row.last_error {
        println!("last error: {error}");
    }
    let actions = store.actions_of(row.id).await?;
    if actions.is_empty() {
        println!("actions: none");
    } else {
        println!("actions:");
    }
    for a in &actions {
        let amount = match (&a.amount, &a.currency) {
            (Some(amount), Some(currency)) => format!("{amount} {currency}"),
            _ => "-".to_owned(),
        };
        let template = a.template.as_deref().map(|t| format!("{t}: ")).unwrap_or_default();
        let kind = if a.shadow { format!("{} (shadow)", a.kind) } else { a.kind.to_string() };
        println!(
            "  {:<16} {:<7} {:>14}  {template}{}",
            kind,
            a.order_id.as_deref().unwrap_or("-"),
            amount,
            a.reason
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_exact_positive_and_in_a_known_currency() {
        assert_eq!(parse_amount("25.99", "EUR").unwrap().minor, 2599);
        assert_eq!(parse_amount("5000", "jpy").unwrap().minor, 5000);
        assert_eq!(parse_amount("1.234", "KWD").unwrap().minor, 1234);
        for (text, code, says) in [
            ("25.999", "EUR", "more decimal places than EUR has (2)"),
            ("1.5", "JPY", "more decimal places than JPY has (0)"),
            ("-5", "EUR", "negative"),
            ("abc", "EUR", "not an amount"),
            ("1,50", "EUR", "not an amount"),
            ("0.00", "EUR", "more than zero"),
            ("10", "EURO", "not an ISO 4217 currency"),
            ("10", "XAU", "not an ISO 4217 currency"),
        ] {
            let why = parse_amount(text, code).unwrap_err().0;
            assert!(why.contains(says), "{text} {code}: {why}");
        }
    }

    #[test]
    fn a_wildcard_listen_address_is_reached_on_loopback() {
        assert_eq!(
            daemon_address("0.0.0.0:8080".parse().unwrap()),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(daemon_address("[::]:8080".parse().unwrap()), "[::1]:8080".parse().unwrap());
        assert_eq!(daemon_address("10.0.0.2:81".parse().unwrap()), "10.0.0.2:81".parse().unwrap());
    }
}
