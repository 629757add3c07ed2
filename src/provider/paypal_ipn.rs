//! PayPal IPN (Instant Payment Notification), the legacy form-encoded notifications.
//!
//! IPN carries no signature. The request is stored as it came (after checking that it is for
//! our account: `receiver_email` / `receiver_id`) and answered with an empty 200; the worker
//! then posts the exact original bytes back to PayPal, prefixed with `cmd=_notify-validate&`,
//! and acts only on the answer `VERIFIED`. `INVALID` ends the row as `rejected` with no action;
//! a network error, a timeout or any other answer is retried with backoff.
//!
//! Form values are percent-encoded bytes in the character set the message names in its
//! `charset` field (often `windows-1252`), decoded with it. Names are case-sensitive.
//! `txn_id` comes again when its status moves (Pending → Completed), so the dedup key is
//! (`txn_id`, `payment_status`). Refunds and reversals carry a negative `mc_gross` and name
//! the payment in `parent_txn_id`.

use std::time::Duration;

use hyper::HeaderMap;

use super::{keep_headers, Accepted, Kind, Notification, Rejection};
use crate::money::{Currency, Money};
use crate::settings::{ConfigError, Resolver};

/// PayPal's live IPN verification URL, the default `verify_url`.
pub const VERIFY_URL: &str = "https://ipnpb.paypal.com/cgi-bin/webscr";

/// `provider = "paypal-ipn"` settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Our PayPal account's email; the message's `receiver_email` must equal it.
    pub receiver_email: Option<String>,
    /// Our PayPal account's merchant id; the message's `receiver_id` must equal it.
    pub receiver_id: Option<String>,
    /// Where messages are posted back for verification (https).
    pub verify_url: String,
    /// Extra trusted roots (PEM) for the postback.
    pub tls_ca: Option<Vec<u8>>,
    /// Which field holds the shop's order reference.
    pub reference: Reference,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            receiver_email: None,
            receiver_id: None,
            verify_url: VERIFY_URL.into(),
            tls_ca: None,
            reference: Reference::Invoice,
        }
    }
}

/// Where an IPN message carries the shop's reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reference {
    /// `invoice`, then `custom`.
    #[default]
    Invoice,
    /// `custom`, then `invoice`.
    Custom,
}

/// The endpoint keys PayPal IPN reads.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Raw {
    receiver_email: Option<String>,
    receiver_id: Option<String>,
    verify_url: Option<String>,
    tls_ca_file: Option<std::path::PathBuf>,
    #[serde(default)]
    reference: Reference,
}

impl Settings {
    pub(crate) fn resolve(raw: Raw, r: &Resolver<'_>) -> Result<Settings, ConfigError> {
        let tls_ca = super::read_tls_ca(r, raw.tls_ca_file.as_deref())?;
        let nonempty = |v: Option<String>| {
            v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned)
        };
        let (receiver_email, receiver_id) =
            (nonempty(raw.receiver_email), nonempty(raw.receiver_id));
        if receiver_email.is_none() && receiver_id.is_none() {
            return Err(r.invalid(
                "receiver_email",
                "set receiver_email and/or receiver_id (your PayPal account's): messages for other accounts are refused",
            ));
        }
        let verify_url = raw.verify_url.unwrap_or_else(|| VERIFY_URL.into());
        match url::Url::parse(&verify_url) {
            Ok(u) if u.scheme() == "https" && u.host_str().is_some() => {}
            _ => {
                return Err(r.invalid(
                    "verify_url",
                    format!("\"{verify_url}\" is not an https URL (PayPal's is {VERIFY_URL})"),
                ))
            }
        }
        Ok(Settings { receiver_email, receiver_id, verify_url, tls_ca, reference: raw.reference })
    }

    pub(crate) fn describe(&self) -> Vec<String> {
        let receiver = [self.receiver_email.as_deref(), self.receiver_id.as_deref()];
        vec![format!(
            "receiver {}, verified by postback to {}",
            receiver.iter().flatten().copied().collect::<Vec<_>>().join(" / "),
            self.verify_url
        )]
    }
}

/// An IPN endpoint at run time: its settings and the HTTPS client of its postback.
#[derive(Debug)]
pub struct Ipn {
    /// The endpoint's settings.
    pub settings: Settings,
    /// Posts messages back to `verify_url`.
    client: reqwest::Client,
}

impl Ipn {
    /// Builds the postback client (https only, no redirects, `tls_ca` trusted).
    pub fn new(settings: &Settings) -> Result<Ipn, super::SetupError> {
        let client = super::https_client(settings.tls_ca.as_deref(), POSTBACK_TIMEOUT)
            .map_err(|why| super::SetupError(format!("IPN postback client: {why}")))?;
        Ok(Ipn { settings: settings.clone(), client })
    }

    /// Posts a stored message back to PayPal: `VERIFIED` confirms it, `INVALID` refuses it.
    pub async fn confirm(&self, body: &[u8]) -> super::Confirmation {
        use super::Confirmation;
        match postback(&self.client, &self.settings.verify_url, body).await {
            Ok(Verdict::Verified) => Confirmation::Confirmed,
            Ok(Verdict::Invalid) => Confirmation::Refused(
                "PayPal answered INVALID to the IPN postback: not sent by PayPal, or altered"
                    .into(),
            ),
            Err(e) => Confirmation::Failed { message: e.message, transient: e.transient },
        }
    }
}

/// More fields than this is not a PayPal message.
const MAX_FIELDS: usize = 1000;
/// Headers kept with the row.
const KEPT_HEADERS: &[&str] = &["content-type", "user-agent"];
/// The prefix PayPal wants before the original bytes in the postback.
pub const POSTBACK_PREFIX: &[u8] = b"cmd=_notify-validate&";
/// How long a postback may take.
pub const POSTBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest postback answer read (it is one word).
const MAX_ANSWER_BYTES: usize = 1024;

/// The fields the adapter reads: they must decode cleanly in the message's charset. Others
/// (item names, addresses, memos) are decoded lossily and never refuse a message.
pub const KEY_FIELDS: &[&str] = &[
    "txn_id",
    "parent_txn_id",
    "auth_id",
    "txn_type",
    "payment_status",
    "pending_reason",
    "mc_gross",
    "mc_currency",
    "invoice",
    "custom",
    "receiver_email",
    "receiver_id",
    "business",
    "case_id",
    "case_type",
    "ipn_track_id",
];

/// A decoded IPN message: its fields in order, names and values decoded with its charset, and
/// whether each value had bytes that are invalid in it (then replaced by U+FFFD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form(Vec<(String, String, bool)>);

impl Form {
    /// The first value of field `name`, if present and non-empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// The first key field ([`KEY_FIELDS`]) whose value is not valid in the charset.
    pub fn undecodable_key_field(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _, bad)| *bad && KEY_FIELDS.contains(&n.as_str()))
            .map(|(n, _, _)| n.as_str())
    }
}

fn percent_decoded(part: &[u8]) -> Vec<u8> {
    let plus_as_space: Vec<u8> = part.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
    percent_encoding::percent_decode(&plus_as_space).collect()
}

/// Decodes an `application/x-www-form-urlencoded` body with the character set named by its
/// `charset` field (UTF-8 when absent). An unknown charset is refused rather than guessed at;
/// bytes that are not valid in it are replaced and flagged ([`Form::undecodable_key_field`]).
pub fn decode(body: &[u8]) -> Result<Form, String> {
    let mut raw = Vec::new();
    for (n, part) in body.split(|&b| b == b'&').enumerate() {
        if n == MAX_FIELDS {
            return Err(format!("more than {MAX_FIELDS} fields"));
        }
        if part.is_empty() {
            continue;
        }
        let (name, value) = match part.iter().position(|&b| b == b'=') {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, &[][..]),
        };
        raw.push((percent_decoded(name), percent_decoded(value)));
    }
    let label = raw.iter().find(|(n, _)| n == b"charset").map(|(_, v)| v.as_slice());
    let unknown = |l: &[u8]| {
        format!("unknown charset \"{}\"", String::from_utf8_lossy(&l[..l.len().min(40)]))
    };
    let encoding = match label {
        None | Some(b"") => encoding_rs::UTF_8,
        Some(l) => encoding_rs::Encoding::for_label(l).ok_or_else(|| unknown(l))?,
    };
    // Labels of encodings WHATWG refuses to decode (ISO-2022-KR, …) map to one that turns
    // everything into U+FFFD: as good as unknown.
    if encoding == encoding_rs::REPLACEMENT {
        return Err(unknown(label.unwrap_or_default()));
    }
    let mut fields = Vec::with_capacity(raw.len());
    for (name, value) in &raw {
        let (name, bad_name) = encoding.decode_without_bom_handling(name);
        let (value, bad_value) = encoding.decode_without_bom_handling(value);
        fields.push((name.into_owned(), value.into_owned(), bad_name || bad_value));
    }
    Ok(Form(fields))
}

/// The logical key: (`txn_id`, `payment_status`), a dispute case's (`case_id`, `case_type`),
/// else the message's `ipn_track_id`. The notification's event id; the inbox key adds a digest
/// of the bytes ([`inbox_key`]).
pub fn dedup_key(form: &Form) -> Option<String> {
    if form.get("txn_type") == Some("new_case") {
        if let Some(case) = form.get("case_id") {
            return Some(format!("case:{case}:{}", form.get("case_type").unwrap_or("")));
        }
    }
    if let Some(txn) = form.get("txn_id") {
        let status = form.get("payment_status").or(form.get("txn_type")).unwrap_or("");
        return Some(format!("{txn}:{status}"));
    }
    form.get("ipn_track_id").map(|t| format!("track:{t}"))
}

/// Whether the message is for our account: every configured receiver field must be present
/// and equal (the email case-insensitively).
pub fn check_receiver(settings: &Settings, form: &Form) -> Result<(), Rejection> {
    let wrong = |field: &'static str| Rejection::WrongReceiver(field);
    if let Some(email) = &settings.receiver_email {
        let theirs = form.get("receiver_email").or(form.get("business"));
        if !theirs.is_some_and(|t| t.trim().eq_ignore_ascii_case(email)) {
            return Err(wrong("receiver_email"));
        }
    }
    if let Some(id) = &settings.receiver_id {
        if form.get("receiver_id").map(str::trim) != Some(id.as_str()) {
            return Err(wrong("receiver_id"));
        }
    }
    Ok(())
}

/// Checks and identifies an IPN request for storing. It is not verified yet: the worker posts
/// it back to PayPal before acting on it.
pub fn accept(
    settings: &Settings,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Accepted, Rejection> {
    let form =
        decode(body).map_err(|e| Rejection::MalformedBody(format!("not an IPN form: {e}")))?;
    if let Some(field) = form.undecodable_key_field() {
        return Err(Rejection::MalformedBody(format!(
            "{field} is not valid in the message's charset"
        )));
    }
    check_receiver(settings, &form)?;
    let key = dedup_key(&form).ok_or_else(|| {
        Rejection::MalformedBody("no txn_id, case_id or ipn_track_id to identify it".into())
    })?;
    if !super::is_plain_id(&key) {
        return Err(Rejection::MalformedBody(
            "txn_id is too long or has control characters".into(),
        ));
    }
    let event_type = form.get("payment_status").or(form.get("txn_type")).map(str::to_owned);
    Ok(Accepted {
        dedup_key: inbox_key(&key, body),
        event_type,
        headers_json: keep_headers(headers, KEPT_HEADERS),
    })
}

/// The inbox key of an IPN message: its logical key and a digest of its bytes. The message is
/// not verified when it is stored, so it must not claim the logical key alone: a forgery sent
/// first with a real `txn_id` would make PayPal's genuine message look like a duplicate and be
/// dropped. PayPal's byte-identical resends still collapse into one row; two verified messages
/// with one logical key are decided as one (the decisions are keyed by it).
pub fn inbox_key(logical: &str, body: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(body);
    format!("{logical}#{}", hex::encode(&digest[..16]))
}

/// What PayPal said of a posted-back message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `VERIFIED`: it came from PayPal.
    Verified,
    /// `INVALID`: PayPal did not send it (or it was altered).
    Invalid,
}

/// Why a postback gave no verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostbackError {
    /// What happened, for the row's last error.
    pub message: String,
    /// A network error, a timeout or a server error (5xx): PayPal is down, which is nobody's
    /// fault, so retries do not use up the row's attempts. Otherwise (a 4xx, an answer that is
    /// neither word, a removed endpoint) the setup is wrong, and attempts count.
    pub transient: bool,
}

/// Posts the original bytes back to `url` prefixed with `cmd=_notify-validate&`. An answer other
/// than `VERIFIED` or `INVALID`, an HTTP error status or a network error is an `Err` (retry).
pub async fn postback(
    client: &reqwest::Client,
    url: &str,
    body: &[u8],
) -> Result<Verdict, PostbackError> {
    let transient = |message: String| PostbackError { message, transient: true };
    let permanent = |message: String| PostbackError { message, transient: false };
    let mut payload = Vec::with_capacity(POSTBACK_PREFIX.len() + body.len());
    payload.extend_from_slice(POSTBACK_PREFIX);
    payload.extend_from_slice(body);
    let mut resp = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(payload)
        .send()
        .await
        .map_err(|e| {
            transient(format!("IPN postback failed: {}", crate::error::error_chain(&e)))
        })?;
    let status = resp.status();
    if status.is_server_error() {
        return Err(transient(format!("IPN postback answered HTTP {status}")));
    }
    if !status.is_success() {
        return Err(permanent(format!("IPN postback answered HTTP {status} (check verify_url)")));
    }
    let mut answer = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| transient(format!("IPN postback failed: {}", crate::error::error_chain(&e))))?
    {
        if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(permanent("IPN postback answer is too long (check verify_url)".into()));
        }
        answer.extend_from_slice(&chunk);
    }
    match answer.trim_ascii() {
        b"VERIFIED" => Ok(Verdict::Verified),
        b"INVALID" => Ok(Verdict::Invalid),
        other => Err(permanent(format!(
            "IPN postback answered neither VERIFIED nor INVALID: \"{}\" (check verify_url)",
            String::from_utf8_lossy(&other[..other.len().min(40)])
        ))),
    }
}

/// `mc_gross` in `mc_currency`, as a magnitude (refunds and reversals are negative).
fn amount(form: &Form) -> Result<Option<Money>, String> {
    match (form.get("mc_gross"), form.get("mc_currency")) {
        (Some(value), Some(code)) => {
            let currency = Currency::parse(code).map_err(|e| e.to_string())?;
            let m = Money::parse_exact(value.trim(), currency)
                .map_err(|e| format!("mc_gross \"{value}\": {e}"))?;
            Ok(Some(Money::new(m.minor.checked_abs().ok_or("mc_gross overflows")?, currency)))
        }
        _ => Ok(None),
    }
}

/// Reads a stored IPN message (verified by the postback) into a canonical notification.
pub fn parse(settings: Option<&Settings>, body: &[u8]) -> Result<Notification, String> {
    let form = decode(body)?;
    let event_id = dedup_key(&form).ok_or("no txn_id, case_id or ipn_track_id")?;
    let status = form.get("payment_status");
    let txn_type = form.get("txn_type");
    let prefer = settings.map_or(Reference::Invoice, |s| s.reference);
    let reference = match prefer {
        Reference::Invoice => form.get("invoice").or(form.get("custom")),
        Reference::Custom => form.get("custom").or(form.get("invoice")),
    };
    let txn = form.get("txn_id").map(str::to_owned);
    let parent = form.get("parent_txn_id").map(str::to_owned);
    let mut n = Notification {
        provider: super::ProviderKind::PaypalIpn,
        event_id,
        kind: Kind::Ignored,
        raw_type: status.or(txn_type).unwrap_or("unknown").to_owned(),
        payment_id: txn.clone(),
        merchant_reference: reference.map(str::to_owned),
        amount: amount(&form)?,
        occurred_at: 0,
        customer_email: form.get("payer_email").map(str::to_owned),
        object_id: None,
        request_key: None,
        related_payment_id: None,
        detail: None,
    };
    if txn_type == Some("new_case") {
        // A dispute, claim or chargeback case about payment `txn_id`.
        n.kind = Kind::Disputed;
        n.object_id = form.get("case_id").map(str::to_owned);
        n.detail = Some(format!(
            "{} case{}",
            form.get("case_type").unwrap_or("dispute"),
            form.get("reason_code").map(|r| format!(": {r}")).unwrap_or_default()
        ));
        return Ok(n);
    }
    let about_parent = |n: &mut Notification| {
        n.object_id = txn.clone();
        n.payment_id = parent.clone().or(txn.clone());
    };
    match status {
        Some("Completed") => {
            n.kind = Kind::Succeeded;
            // The capture of an authorization: the same payment of the order.
            n.related_payment_id = form.get("auth_id").or(parent.as_deref()).map(str::to_owned);
        }
        Some("Pending") if form.get("pending_reason") == Some("authorization") => {
            n.kind = Kind::Authorized;
        }
        Some("Pending") | Some("Processed") => {
            n.kind = Kind::Pending;
            n.detail = form.get("pending_reason").map(str::to_owned);
        }
        Some("Denied") | Some("Failed") => n.kind = Kind::Failed,
        Some("Expired") | Some("Voided") => n.kind = Kind::Canceled,
        Some("Refunded") => {
            n.kind = Kind::Refunded;
            about_parent(&mut n);
        }
        Some("Reversed") => {
            // A chargeback or other reversal: the money has left the account.
            n.kind = Kind::Disputed;
            about_parent(&mut n);
            n.detail = Some(format!(
                "reversed{}",
                form.get("reason_code").map(|r| format!(": {r}")).unwrap_or_default()
            ));
        }
        Some("Canceled_Reversal") => {
            n.kind = Kind::DisputeClosed;
            about_parent(&mut n);
            n.detail = Some("reversal canceled: the money came back".into());
        }
        _ => n.detail = Some("no payment_status to reconcile".into()),
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_decoded_with_the_messages_charset() {
        // "Müller" and "€" in windows-1252: 0xFC and 0x80.
        let form = decode(b"charset=windows-1252&first_name=M%FCller&memo=5+%80&txn_id=1").unwrap();
        assert_eq!(form.get("first_name"), Some("Müller"));
        assert_eq!(form.get("memo"), Some("5 €"));
        let utf8 = decode(b"first_name=M%C3%BCller").unwrap();
        assert_eq!(utf8.get("first_name"), Some("Müller"));
        // The same byte is not UTF-8: replaced and flagged, which refuses the message only in a
        // field the adapter reads.
        let latin = decode(b"first_name=M%FCller&txn_id=1").unwrap();
        assert_eq!(latin.get("first_name"), Some("M\u{FFFD}ller"));
        assert_eq!(latin.undecodable_key_field(), None);
        let bad_key = decode(b"invoice=10%FC1&txn_id=1").unwrap();
        assert_eq!(bad_key.undecodable_key_field(), Some("invoice"));
        assert!(decode(b"charset=iso-2022-kr&x=1").unwrap_err().contains("unknown charset"));
        assert!(decode(b"charset=klingon&x=1").unwrap_err().contains("unknown charset"));
    }

    #[test]
    fn dedup_key_moves_with_the_status() {
        let pending = decode(b"txn_id=61E67681CH3238416&payment_status=Pending").unwrap();
        let done = decode(b"txn_id=61E67681CH3238416&payment_status=Completed").unwrap();
        assert_ne!(dedup_key(&pending), dedup_key(&done));
        let case =
            decode(b"txn_type=new_case&txn_id=1&case_id=PP-D-1&case_type=chargeback").unwrap();
        assert_eq!(dedup_key(&case).as_deref(), Some("case:PP-D-1:chargeback"));
        assert_eq!(dedup_key(&decode(b"ipn_track_id=abc").unwrap()).as_deref(), Some("track:abc"));
        assert_eq!(dedup_key(&decode(b"foo=bar").unwrap()), None);
    }

    #[test]
    fn too_many_fields_are_refused() {
        let body = "a=1&".repeat(MAX_FIELDS + 1);
        assert!(decode(body.as_bytes()).is_err());
    }

    #[test]
    fn refunds_are_about_the_parent_payment_with_a_positive_amount() {
        let body = b"txn_id=R1&parent_txn_id=P1&payment_status=Refunded&mc_gross=-10.50&mc_currency=EUR&invoice=1001";
        let n = parse(None, body).unwrap();
        assert_eq!(n.kind, Kind::Refunded);
        assert_eq!(n.payment_id.as_deref(), Some("P1"));
        assert_eq!(n.object_id.as_deref(), Some("R1"));
        assert_eq!(n.amount.unwrap().minor, 1050);
        assert_eq!(n.merchant_reference.as_deref(), Some("1001"));
    }

    #[test]
    fn receiver_must_be_ours() {
        let settings = Settings {
            receiver_email: Some("Shop@Example.com".into()),
            receiver_id: Some("RCV1".into()),
            ..Settings::default()
        };
        let ok = decode(b"receiver_email=shop%40example.com&receiver_id=RCV1").unwrap();
        assert!(check_receiver(&settings, &ok).is_ok());
        let other = decode(b"receiver_email=evil%40example.com&receiver_id=RCV1").unwrap();
        assert_eq!(
            check_receiver(&settings, &other),
            Err(Rejection::WrongReceiver("receiver_email"))
        );
        let no_id = decode(b"receiver_email=shop%40example.com").unwrap();
        assert_eq!(check_receiver(&settings, &no_id), Err(Rejection::WrongReceiver("receiver_id")));
    }
}
