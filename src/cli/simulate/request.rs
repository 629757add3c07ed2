//! Signing a simulated notification as its provider would, with the endpoint's own
//! configuration, and the rule that tells a test configuration from a live one.

use std::path::Path;

use base64::Engine;

use super::bodies::{self, Body, Ids, Sim};
use super::Usage;
use crate::endpoint::Endpoint;
use crate::provider::{self, paypal, ProviderKind, Settings};
use crate::secret::Secret;

/// A request ready to post.
#[derive(Debug)]
pub(super) struct Request {
    /// The body and what it is.
    pub body: Body,
    /// Headers besides `Host` and `Content-Length`, as the provider sends them.
    pub headers: Vec<(String, String)>,
    /// The basic auth the endpoint requires, if any: sent, never printed.
    pub basic_auth: Option<(String, Secret)>,
    /// What the user should know about how this provider's notification is trusted.
    pub notes: Vec<String>,
    /// Why the endpoint's configuration looks live, if it does.
    pub looks_live: Option<String>,
}

/// The hosts of PayPal's live IPN postback: a configuration that posts back there is live.
const LIVE_IPN_HOSTS: &[&str] = &["ipnpb.paypal.com", "www.paypal.com", "notify.paypal.com"];

/// Builds and signs the notification for `endpoint`.
pub(super) fn build(
    endpoint: &Endpoint,
    sim: &Sim<'_>,
    paypal_key: &Path,
) -> Result<Request, Usage> {
    let ids = Ids::new();
    let mut headers = Vec::new();
    let mut notes = Vec::new();
    // The secrets the request is signed or sent with; each must carry the test mark.
    let mut credentials: Vec<(String, &Secret)> = Vec::new();
    // Set where the provider's own rule decides instead of the credentials'.
    let mut rule: Option<Option<String>> = None;
    let body = match &endpoint.settings {
        Settings::Stripe(s) => {
            let body = bodies::stripe(sim, &ids).map_err(Usage)?;
            // Stripe signs with the endpoint's current secret: the first one configured.
            let secret = &s.secrets[0];
            let header =
                provider::stripe::sign(secret.expose(), sim.now_ms.div_euclid(1000), &body.bytes);
            headers.push(("Stripe-Signature".to_owned(), header));
            credentials.push(("secrets[0]".to_owned(), secret));
            body
        }
        Settings::Paypal(s) => {
            let body = bodies::paypal(sim, &ids);
            headers.extend(sign_paypal(&endpoint.name, s, &body.bytes, sim.now_ms, paypal_key)?);
            notes.push(format!(
                "PayPal signs its webhooks with its own RSA key, which only PayPal has. This one is \
                 signed with the test key {}; the daemon accepts it only because endpoint \"{}\" \
                 pins that key's certificate in certs. Never pin a test certificate in production.",
                paypal_key.display(),
                endpoint.name
            ));
            // Pinning the test key's certificate is what makes an endpoint a test endpoint.
            rule = Some(None);
            body
        }
        Settings::PaypalIpn(s) => {
            let body = bodies::paypal_ipn(sim, s, &ids);
            notes.push(format!(
                "PayPal IPN messages carry no signature. The daemon stores this one, and its worker \
                 posts it back to verify_url ({}) and acts on it only if that answers VERIFIED. \
                 PayPal itself, live or sandbox, answers INVALID to a simulated message, so the row \
                 ends rejected unless verify_url is a test server that answers VERIFIED.",
                s.verify_url
            ));
            let host = url::Url::parse(&s.verify_url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
                .unwrap_or_default();
            rule =
                Some(LIVE_IPN_HOSTS.contains(&host.as_str()).then(|| {
                    format!("its verify_url is PayPal's live postback ({})", s.verify_url)
                }));
            body
        }
        Settings::Worldpay(s) => {
            let body = bodies::worldpay(sim, &ids);
            // Worldpay signs with one key id's secret: the first configured here.
            let (key_id, secret) = &s.keys[0];
            let header = provider::worldpay::sign(key_id, secret.expose(), &body.bytes);
            headers.push(("Event-Signature".to_owned(), header));
            credentials.push((format!("keys.\"{key_id}\""), secret));
            body
        }
        Settings::WorldpayXml(s) => {
            let body = bodies::worldpay_xml(sim, s, &ids);
            notes.push(
                "Worldpay XML notifications carry no signature or event id: the endpoint trusts \
                 its basic_auth and/or allow_from, and the same event for the same order on the \
                 same day is taken as a repeat delivery (answered [OK], not decided again)."
                    .to_owned(),
            );
            body
        }
        Settings::Adflex(s) => {
            let body = bodies::adflex(sim, &s.fields, &ids);
            if let (Some(header), Some(secret)) = (&s.signature_header, s.secrets.first()) {
                headers
                    .push((header.clone(), provider::adflex::sign(secret.expose(), &body.bytes)));
                credentials.push(("secrets[0]".to_owned(), secret));
            }
            body
        }
    };
    let basic_auth = endpoint.trust.basic_auth.as_ref().map(|b| {
        credentials.push(("basic_auth.password".to_owned(), &b.password));
        (b.user.clone(), b.password.clone())
    });
    if !endpoint.trust.allow_from.is_empty() {
        notes.push(format!(
            "Endpoint \"{}\" takes requests only from allow_from; the daemon answers 403 unless \
             this machine's address is in it.",
            endpoint.name
        ));
    }
    let looks_live = match rule {
        Some(rule) => rule,
        None => live_credentials(endpoint.kind(), &credentials),
    };
    headers.insert(0, ("Content-Type".to_owned(), body.content_type.to_owned()));
    headers.insert(
        1,
        (
            "User-Agent".to_owned(),
            concat!("reconciled-simulate/", env!("CARGO_PKG_VERSION")).into(),
        ),
    );
    Ok(Request { body, headers, basic_auth, notes, looks_live })
}

/// Why the credentials look live: one without the test mark, or none at all.
fn live_credentials(kind: ProviderKind, credentials: &[(String, &Secret)]) -> Option<String> {
    if credentials.is_empty() {
        return Some(format!(
            "this {kind} endpoint is trusted by allow_from alone, so nothing in it is marked as a test"
        ));
    }
    credentials
        .iter()
        .find(|(_, s)| !s.is_marked_test())
        .map(|(key, s)| format!("its {key} ({}) does not contain the word \"test\"", s.hint()))
}

/// PayPal's five transmission headers, signed with the test key, after checking that the
/// endpoint pins that key's certificate (else the daemon would refuse the request).
fn sign_paypal(
    name: &str,
    s: &paypal::Settings,
    body: &[u8],
    now_ms: i64,
    key_path: &Path,
) -> Result<Vec<(String, String)>, Usage> {
    let key = std::fs::read(key_path).map_err(|e| {
        Usage(format!(
            "PayPal signs its webhooks with its own private key, which only PayPal has, so a \
             simulated PayPal webhook is signed with a test key, and {} cannot be read ({e}). Give \
             --paypal-key FILE: the private key of a certificate endpoint \"{name}\" pins in certs \
             (in the source tree, fixtures/paypal/test-only-signing.key.pem, whose certificate is \
             fixtures/paypal/test-only-signing.pem)",
            key_path.display()
        ))
    })?;
    let id = format!("{:x}-simulated", now_ms);
    let time = crate::time::format_utc(now_ms);
    let message = paypal::signed_message(&id, &time, &s.webhook_id, body);
    let signature = paypal::sign(&key, message.as_bytes())
        .map_err(|e| Usage(format!("--paypal-key {}: {e}", key_path.display())))?;
    let raw = base64::engine::general_purpose::STANDARD.decode(&signature).unwrap_or_default();
    if let Err(why) =
        paypal::verify_with(&s.certs, &s.cert_subjects, message.as_bytes(), &raw, now_ms / 1000)
    {
        return Err(Usage(format!(
            "endpoint \"{name}\" would refuse a simulated PayPal webhook ({why}): PayPal signs with \
             its own private key, which only PayPal has, so the daemon accepts a simulated one \
             only if the endpoint pins the certificate of the key it is signed with ({}). For a \
             test configuration, add fixtures/paypal/test-only-signing.pem to the endpoint's \
             certs; never in production",
            key_path.display()
        )));
    }
    let host = s.cert_hosts.first().map_or("api.paypal.com", String::as_str);
    let cert_url = format!("https://{host}{}CERT-simulated-test-only", paypal::CERT_PATH_PREFIX);
    Ok(vec![
        ("PAYPAL-TRANSMISSION-ID".to_owned(), id),
        ("PAYPAL-TRANSMISSION-TIME".to_owned(), time),
        ("PAYPAL-TRANSMISSION-SIG".to_owned(), signature),
        ("PAYPAL-CERT-URL".to_owned(), cert_url),
        ("PAYPAL-AUTH-ALGO".to_owned(), paypal::ALGORITHM.to_owned()),
    ])
}

/// The `Authorization` header of basic auth.
pub(super) fn basic_header(user: &str, password: &Secret) -> String {
    let mut plain = format!("{user}:").into_bytes();
    plain.extend_from_slice(password.expose());
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(plain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_wants_every_credential_marked() {
        let test = Secret::new("whsec_test_abc");
        let live = Secret::new("whsec_Zq81xLkP0");
        let kind = ProviderKind::Stripe;
        assert_eq!(live_credentials(kind, &[("secrets[0]".into(), &test)]), None);
        let why = live_credentials(kind, &[("a".into(), &test), ("b".into(), &live)]).unwrap();
        assert!(why.contains("its b (whsec_… (15 chars))"), "{why}");
        assert!(!why.contains("Zq81"));
        assert!(live_credentials(ProviderKind::WorldpayXml, &[]).unwrap().contains("allow_from"));
        assert!(Secret::new("whsec_demo_PUBLIC_TEST_SECRET_not_for_production").is_marked_test());
    }
}
