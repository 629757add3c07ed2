//! PayPal's signing certificates: reading one, checking a signature with it, and the strict
//! check of the URL a request says it can be downloaded from.

use std::sync::Arc;

use base64::Engine;

use crate::provider::Rejection;

/// Where PayPal serves its signing certificates; any other path is refused.
pub const CERT_PATH_PREFIX: &str = "/v1/notifications/certs/";

/// The parts of an X.509 certificate verification needs, parsed once.
#[derive(Clone)]
pub struct Certificate {
    /// The RSA public key (PKCS#1 `RSAPublicKey` DER), as ring wants it.
    public_key: Arc<[u8]>,
    /// Validity, unix seconds.
    not_before: i64,
    not_after: i64,
    /// Subject common names and DNS subject alternative names.
    names: Vec<String>,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("names", &self.names)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Reads the first certificate of a PEM document (PayPal serves the signing certificate
    /// followed by its chain). Only RSA keys are accepted.
    pub fn from_pem(pem: &[u8]) -> Result<Certificate, String> {
        let block = x509_parser::pem::Pem::iter_from_buffer(pem)
            .next()
            .ok_or("no PEM block found")?
            .map_err(|e| format!("not PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            return Err(format!("the first PEM block is a {}, not a CERTIFICATE", block.label));
        }
        let cert = block.parse_x509().map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let spki = cert.public_key();
        if spki.algorithm.algorithm != x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
            return Err("the certificate's key is not RSA".into());
        }
        let mut names: Vec<String> = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
            .collect();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                    names.push((*dns).to_owned());
                }
            }
        }
        let validity = cert.validity();
        Ok(Certificate {
            public_key: Arc::from(&*spki.subject_public_key.data),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            names,
        })
    }

    /// The certificate's subject names (common names and DNS alternative names).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether `signature` is this key's RSA PKCS#1 v1.5 SHA-256 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            &*self.public_key,
        )
        .verify(message, signature)
        .is_ok()
    }

    /// Refuses a certificate outside its validity dates at `now` (unix seconds).
    pub fn check_validity(&self, now: i64) -> Result<(), Rejection> {
        if now < self.not_before {
            return Err(Rejection::Certificate("the signing certificate is not yet valid".into()));
        }
        if now > self.not_after {
            return Err(Rejection::Certificate("the signing certificate has expired".into()));
        }
        Ok(())
    }

    /// Whether a subject name matches one of `patterns` (`*.paypal.com` matches any name
    /// ending in `.paypal.com`; other patterns match exactly; case-insensitive).
    pub fn subject_matches(&self, patterns: &[String]) -> bool {
        self.names.iter().any(|name| {
            let name = name.to_ascii_lowercase();
            patterns.iter().any(|p| {
                let p = p.to_ascii_lowercase();
                match p.strip_prefix('*') {
                    Some(suffix) if suffix.starts_with('.') => {
                        name.len() > suffix.len() && name.ends_with(suffix)
                    }
                    _ => name == p,
                }
            })
        })
    }
}

/// The string PayPal signs: `{transmission_id}|{transmission_time}|{webhook_id}|{crc32}`.
pub fn signed_message(transmission_id: &str, time: &str, webhook_id: &str, body: &[u8]) -> String {
    format!("{transmission_id}|{time}|{webhook_id}|{}", crc32fast::hash(body))
}

/// Signs `message` with an RSA private key (PKCS#8 PEM) as PayPal does, for test requests
/// (`reconciled sign paypal`). Returns the base64 signature.
pub fn sign(private_key_pem: &[u8], message: &[u8]) -> Result<String, String> {
    let block = x509_parser::pem::Pem::iter_from_buffer(private_key_pem)
        .next()
        .ok_or("no PEM block in the private key file")?
        .map_err(|e| format!("private key is not PEM: {e}"))?;
    if block.label != "PRIVATE KEY" {
        return Err(format!(
            "the key is a {} block; give an unencrypted PKCS#8 \"PRIVATE KEY\" (openssl pkcs8 -topk8 -nocrypt)",
            block.label
        ));
    }
    let key = ring::signature::RsaKeyPair::from_pkcs8(&block.contents)
        .map_err(|e| format!("not an RSA PKCS#8 key: {e}"))?;
    let mut signature = vec![0u8; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        message,
        &mut signature,
    )
    .map_err(|_| "signing failed".to_owned())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(signature))
}

/// Checks a certificate URL against the allow-list, strictly: the text itself must be
/// `https://{host}[:{port}]/v1/notifications/certs/{name}`, with `host` or `host:port` listed
/// exactly (letter case aside) and `name` made of letters, digits, `.`, `_` and `-`. Nothing
/// is normalised first, so a form a URL parser would rewrite into an allowed one is refused:
/// backslashes, user info, percent-encoding, dot-segments, a trailing dot, an explicit `:443`,
/// and IPv4 addresses written in decimal, octal or hex. Nothing is fetched.
pub fn check_cert_url(url: &str, hosts: &[String]) -> Result<url::Url, Rejection> {
    let refused = |why: &str| Rejection::Certificate(format!("PAYPAL-CERT-URL refused: {why}"));
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(refused(match url.split_once(':') {
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                "it does not start with https://"
            }
            Some(_) => "not https",
            None => "not a URL",
        }));
    };
    let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
    if authority.contains('@') {
        return Err(refused("it has user info"));
    }
    let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'-';
    let (host, port) = authority.split_once(':').unwrap_or((authority, ""));
    if host.is_empty() || !host.bytes().all(plain) {
        return Err(refused("its host is not a plain host name"));
    }
    if host.split('.').any(str::is_empty) {
        return Err(refused("its host has an empty label"));
    }
    if authority.contains(':')
        && (port.is_empty()
            || port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.starts_with('0')
            || port == "443")
    {
        return Err(refused("its port is not written plainly (and never as :443)"));
    }
    // A URL parser reads a host whose last label is a number as an IPv4 address, whatever
    // its base or number of parts: only the dotted-decimal form is taken as written.
    let last = host.rsplit('.').next().unwrap_or_default();
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || last.len() > 1 && last[..2].eq_ignore_ascii_case("0x");
    if numeric && host.parse::<std::net::Ipv4Addr>().is_err() {
        return Err(refused("its host is a number that is not a dotted-decimal IPv4 address"));
    }
    if !hosts.iter().any(|h| h.eq_ignore_ascii_case(authority)) {
        return Err(refused("its host is not in cert_hosts"));
    }
    // One certificate, one URL: no query or fragment to vary, no other path to probe.
    let name = path.strip_prefix(CERT_PATH_PREFIX).unwrap_or("");
    let name_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if name.is_empty() || name == "." || name == ".." || !name.bytes().all(name_char) {
        return Err(refused("its path is not /v1/notifications/certs/{name}"));
    }
    // What passed is already in the parser's own form; anything else is refused, not fixed.
    match url::Url::parse(url) {
        Ok(parsed) if parsed.as_str().eq_ignore_ascii_case(url) => Ok(parsed),
        _ => Err(refused("it is not in canonical form")),
    }
}

/// Verifies the signature against the certificates, each of which must also be valid now and
/// have an allowed subject. With no certificate that verifies, the answer names the first
/// check that failed on one that did verify (expired, wrong subject), else a bad signature.
pub fn verify_with<'c>(
    certs: impl IntoIterator<Item = &'c Certificate>,
    subjects: &[String],
    message: &[u8],
    signature: &[u8],
    now: i64,
) -> Result<(), Rejection> {
    let mut problem = None;
    for cert in certs {
        if !cert.verifies(message, signature) {
            continue;
        }
        let check = cert.check_validity(now).and_then(|()| {
            if cert.subject_matches(subjects) {
                Ok(())
            } else {
                Err(Rejection::Certificate(
                    "the signing certificate's subject is not in cert_subjects".into(),
                ))
            }
        });
        match check {
            Ok(()) => return Ok(()),
            Err(e) => problem = problem.or(Some(e)),
        }
    }
    Err(problem.unwrap_or(Rejection::BadSignature))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        crate::provider::paypal::CERT_HOSTS.iter().map(|h| (*h).to_owned()).collect()
    }

    #[test]
    fn cert_urls_must_be_https_on_an_allowed_host() {
        let ok = "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-a5cafa77";
        assert!(check_cert_url(ok, &hosts()).is_ok());
        for bad in [
            "https://api.paypal.com/v1/notifications/certs/",
            "https://api.paypal.com/v1/notifications/certs/CERT-1?n=1",
            "https://api.paypal.com/v1/notifications/certs/CERT-1#x",
            "https://api.paypal.com/v1/notifications/certs/a/b",
            "https://api.paypal.com/v1/oauth2/token",
        ] {
            assert!(check_cert_url(bad, &hosts()).is_err(), "{bad}");
        }
        assert!(check_cert_url("https://API.PAYPAL.COM/v1/notifications/certs/C", &hosts()).is_ok());
        // The dot-segments are resolved before the path is checked.
        assert!(check_cert_url(
            "https://api.paypal.com/v1/notifications/certs/../../oauth2/x",
            &hosts()
        )
        .is_err());
        for bad in [
            "http://api.paypal.com/v1/notifications/certs/C",
            "https://api.paypal.com:8443/v1/notifications/certs/C",
            "https://api.paypal.com.evil.example/c",
            "https://evil.example/api.paypal.com",
            "https://user@api.paypal.com/c",
            "https://127.0.0.1/c",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(check_cert_url(bad, &hosts()).is_err(), "{bad}");
        }
        let local = vec!["127.0.0.1:8443".to_owned()];
        assert!(check_cert_url("https://127.0.0.1:8443/v1/notifications/certs/C", &local).is_ok());
        assert!(check_cert_url("https://127.0.0.1/v1/notifications/certs/C", &local).is_err());
    }

    #[test]
    fn subject_patterns() {
        let cert = Certificate {
            public_key: Arc::from(&b""[..]),
            not_before: 0,
            not_after: 10,
            names: vec!["messageverificationcerts.paypal.com".into()],
        };
        assert!(cert.subject_matches(&["*.paypal.com".into()]));
        assert!(cert.subject_matches(&["MessageVerificationCerts.PayPal.com".into()]));
        assert!(!cert.subject_matches(&["*.evil.com".into(), "paypal.com".into()]));
        let evil = Certificate { names: vec!["paypal.com.evil.example".into()], ..cert.clone() };
        assert!(!evil.subject_matches(&["*.paypal.com".into()]));
        assert!(cert.check_validity(5).is_ok());
        assert!(cert.check_validity(11).is_err() && cert.check_validity(-1).is_err());
    }

    #[test]
    fn cert_urls_are_taken_as_written_never_normalised() {
        // Each of these is a form a URL parser rewrites into an allowed URL.
        let mut local = hosts();
        local.push("127.0.0.1:8443".into());
        for (bad, why) in [
            ("https:\\\\api.paypal.com\\v1\\notifications\\certs\\C", "https://"),
            ("https://api.paypal.com\\v1/notifications/certs/C", "plain host"),
            ("https://api.paypal.com/v1\\notifications/certs/C", "path"),
            ("https://api.paypal.com/v1/notifications/certs/a%2F..%2Fb", "path"),
            ("https://api.paypal.com/v1/notifications/certs/%43ERT", "path"),
            ("https://api.paypal.com/v1/notifications/%63erts/C", "path"),
            ("https://api%2Epaypal.com/v1/notifications/certs/C", "plain host"),
            ("https://api.paypal.com/v1/notifications/certs/./C", "path"),
            ("https://api.paypal.com/v1/x/../notifications/certs/C", "path"),
            ("https://api.paypal.com./v1/notifications/certs/C", "empty label"),
            ("https://api.paypal.com:443/v1/notifications/certs/C", "port"),
            ("https://api.paypal.com:08443/v1/notifications/certs/C", "port"),
            ("https://api.paypal.com:/v1/notifications/certs/C", "port"),
            ("https://2130706433:8443/v1/notifications/certs/C", "number"),
            ("https://0x7f.0.0.1:8443/v1/notifications/certs/C", "number"),
            ("https://0177.0.0.1:8443/v1/notifications/certs/C", "number"),
            ("https://127.1:8443/v1/notifications/certs/C", "number"),
            ("https://[::1]:8443/v1/notifications/certs/C", "plain host"),
            ("https://user@api.paypal.com/v1/notifications/certs/C", "user info"),
            ("HTTPS://api.paypal.com/v1/notifications/certs/C", "https://"),
        ] {
            match check_cert_url(bad, &local) {
                Err(Rejection::Certificate(text)) => assert!(text.contains(why), "{bad}: {text}"),
                other => panic!("{bad} was not refused: {other:?}"),
            }
        }
        // The written forms of the same URLs are accepted, and come back exactly as given.
        for good in [
            "https://127.0.0.1:8443/v1/notifications/certs/C",
            "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-a5cafa77",
            "https://api-m.sandbox.paypal.com/v1/notifications/certs/CERT.v2_1",
        ] {
            assert_eq!(check_cert_url(good, &local).unwrap().as_str(), good);
        }
    }
}
