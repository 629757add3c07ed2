//! `reconciled sign`: produce correctly signed test requests, so a shop developer can test
//! their setup without the provider.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::provider::stripe;
use crate::secret::Secret;

/// Providers `sign` knows.
#[derive(Debug, Subcommand)]
pub enum SignCommand {
    /// Print a `Stripe-Signature` header for the body on stdin (or `--body FILE`).
    Stripe(StripeArgs),
    /// Print a Worldpay `Event-Signature` header (`{keyId}/SHA256/{hex}`).
    Worldpay(WorldpayArgs),
    /// Print an Adflex HMAC-SHA256 signature header (the assumed scheme; see docs/providers.md).
    Adflex(AdflexArgs),
    /// Print PayPal's five webhook transmission headers, signed with an RSA private key.
    Paypal(PaypalArgs),
}

/// Where the body comes from and how to print the result.
#[derive(Debug, Args)]
pub struct Output {
    /// Read the body from this file instead of stdin.
    #[arg(long, value_name = "FILE")]
    body: Option<PathBuf>,
    /// Print a complete curl command posting the signed body to this URL.
    #[arg(long, value_name = "URL")]
    curl: Option<String>,
}

/// Arguments of `sign stripe`.
#[derive(Debug, Args)]
pub struct StripeArgs {
    /// The endpoint's signing secret (`whsec_…`).
    #[arg(long, env = "RECONCILED_SIGN_SECRET", hide_env_values = true, value_parser = parse_secret)]
    secret: Secret,
    /// Unix seconds to sign with (default: now).
    #[arg(long)]
    timestamp: Option<i64>,
    #[command(flatten)]
    out: Output,
}

/// Arguments of `sign worldpay`.
#[derive(Debug, Args)]
pub struct WorldpayArgs {
    /// The key id the secret is configured under.
    #[arg(long, default_value = "1")]
    key_id: String,
    /// The key's secret.
    #[arg(long, env = "RECONCILED_SIGN_SECRET", hide_env_values = true, value_parser = parse_secret)]
    secret: Secret,
    #[command(flatten)]
    out: Output,
}

/// Arguments of `sign adflex`.
#[derive(Debug, Args)]
pub struct AdflexArgs {
    /// The endpoint's secret.
    #[arg(long, env = "RECONCILED_SIGN_SECRET", hide_env_values = true, value_parser = parse_secret)]
    secret: Secret,
    /// The header the endpoint's `signature_header` names.
    #[arg(long, default_value = "X-Adflex-Signature")]
    header: String,
    #[command(flatten)]
    out: Output,
}

/// Arguments of `sign paypal`.
#[derive(Debug, Args)]
pub struct PaypalArgs {
    /// The RSA private key (unencrypted PKCS#8 PEM) whose certificate the endpoint trusts
    /// (pinned in `certs`, or served at `--cert-url`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The `PAYPAL-CERT-URL` to send; it must be on one of the endpoint's `cert_hosts`.
    #[arg(long, value_name = "URL")]
    cert_url: String,
    /// The endpoint's `webhook_id`.
    #[arg(long)]
    webhook_id: String,
    /// `PAYPAL-TRANSMISSION-ID` (default: a new one).
    #[arg(long)]
    transmission_id: Option<String>,
    /// `PAYPAL-TRANSMISSION-TIME`, RFC 3339 (default: now).
    #[arg(long)]
    time: Option<String>,
    #[command(flatten)]
    out: Output,
}

pub(super) fn run(cmd: SignCommand) -> anyhow::Result<()> {
    match cmd {
        SignCommand::Stripe(args) => {
            let body = read_body(&args.out)?;
            let timestamp =
                args.timestamp.unwrap_or_else(|| crate::time::now_ms().div_euclid(1000));
            let header = stripe::sign(args.secret.expose(), timestamp, &body);
            print_request(&args.out, body, &[("Stripe-Signature", header)], "application/json")
        }
        SignCommand::Worldpay(args) => {
            let body = read_body(&args.out)?;
            let header = crate::provider::worldpay::sign(&args.key_id, args.secret.expose(), &body);
            print_request(
                &args.out,
                body,
                &[("Event-Signature", header)],
                "application/vnd.worldpay.events-v1.hal+json",
            )
        }
        SignCommand::Adflex(args) => {
            let body = read_body(&args.out)?;
            let header = crate::provider::adflex::sign(args.secret.expose(), &body);
            print_request(&args.out, body, &[(&args.header, header)], "application/json")
        }
        SignCommand::Paypal(args) => {
            use crate::provider::paypal;
            let body = read_body(&args.out)?;
            let key = std::fs::read(&args.key)
                .with_context(|| format!("cannot read {}", args.key.display()))?;
            let now = crate::time::now_ms();
            let id = args.transmission_id.unwrap_or_else(|| format!("reconciled-test-{now}"));
            let time = args.time.unwrap_or_else(|| crate::time::format_utc(now));
            let message = paypal::signed_message(&id, &time, &args.webhook_id, &body);
            let signature = paypal::sign(&key, message.as_bytes())
                .map_err(|e| anyhow::anyhow!("{}: {e}", args.key.display()))?;
            let headers = [
                ("PAYPAL-TRANSMISSION-ID", id),
                ("PAYPAL-TRANSMISSION-TIME", time),
                ("PAYPAL-TRANSMISSION-SIG", signature),
                ("PAYPAL-CERT-URL", args.cert_url),
                ("PAYPAL-AUTH-ALGO", paypal::ALGORITHM.to_owned()),
            ];
            print_request(&args.out, body, &headers, "application/json")
        }
    }
}

fn read_body(out: &Output) -> anyhow::Result<Vec<u8>> {
    match &out.body {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        }
        None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).context("cannot read the body from stdin")?;
            Ok(buf)
        }
    }
}

/// Prints `Name: value` lines, or with `--curl` a complete curl command posting the body.
fn print_request(
    out: &Output,
    body: Vec<u8>,
    headers: &[(&str, String)],
    content_type: &str,
) -> anyhow::Result<()> {
    let Some(url) = &out.curl else {
        for (name, value) in headers {
            println!("{name}: {value}");
        }
        return Ok(());
    };
    let mut curl = format!(
        "curl -sS -i -X POST {} -H {}",
        shell_quote(url),
        shell_quote(&format!("Content-Type: {content_type}")),
    );
    for (name, value) in headers {
        curl.push_str(" -H ");
        curl.push_str(&shell_quote(&format!("{name}: {value}")));
    }
    curl.push_str(" --data-binary");
    match &out.body {
        Some(path) => println!("{curl} {}", shell_quote(&format!("@{}", path.display()))),
        None => {
            // Piped through printf (a shell builtin, so no argument-length limit) and read by
            // curl from stdin, so the body reaches it byte for byte.
            let text = String::from_utf8(body)
                .context("--curl needs a UTF-8 body on stdin (or use --body FILE)")?;
            println!("printf '%s' {} | {curl} @-", shell_quote(&text));
        }
    }
    Ok(())
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    if s.is_empty() {
        return Err("the secret is empty".into());
    }
    Ok(Secret::new(s))
}

/// Quotes a string for a POSIX shell: single quotes, with embedded ones closed and escaped.
pub(super) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn shell_quote_survives_single_quotes() {
        assert_eq!(super::shell_quote("it's"), r"'it'\''s'");
    }
}
