//! `reconciled sign`: produce correctly signed test requests, so a shop developer can test
//! their setup without the provider.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::config::Secret;
use crate::provider::stripe;

/// Providers `sign` knows.
#[derive(Debug, Subcommand)]
pub enum SignCommand {
    /// Print a `Stripe-Signature` header for the body on stdin (or `--body FILE`).
    Stripe(StripeArgs),
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
    /// Read the body from this file instead of stdin.
    #[arg(long, value_name = "FILE")]
    body: Option<PathBuf>,
    /// Print a complete curl command posting the signed body to this URL.
    #[arg(long, value_name = "URL")]
    curl: Option<String>,
}

pub(super) fn run(cmd: SignCommand) -> anyhow::Result<()> {
    match cmd {
        SignCommand::Stripe(args) => sign_stripe(&args),
    }
}

fn sign_stripe(args: &StripeArgs) -> anyhow::Result<()> {
    let body = match &args.body {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).context("cannot read the body from stdin")?;
            buf
        }
    };
    let timestamp = args.timestamp.unwrap_or_else(|| crate::now_ms().div_euclid(1000));
    let header = stripe::sign(args.secret.expose(), timestamp, &body);
    match &args.curl {
        None => println!("Stripe-Signature: {header}"),
        Some(url) => {
            let curl = format!(
                "curl -sS -i -X POST {} -H 'Content-Type: application/json' -H {} --data-binary",
                shell_quote(url),
                shell_quote(&format!("Stripe-Signature: {header}")),
            );
            match &args.body {
                Some(path) => println!("{curl} {}", shell_quote(&format!("@{}", path.display()))),
                None => {
                    // Piped through printf (a shell builtin, so no argument-length limit) and
                    // read by curl from stdin, so the body reaches it byte for byte.
                    let text = String::from_utf8(body)
                        .context("--curl needs a UTF-8 body on stdin (or use --body FILE)")?;
                    println!("printf '%s' {} | {curl} @-", shell_quote(&text));
                }
            }
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
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn shell_quote_survives_single_quotes() {
        assert_eq!(super::shell_quote("it's"), r"'it'\''s'");
    }
}
