//! Trust options every endpoint may use: HTTP basic auth and a source-address allow-list.
//!
//! Worldpay's XML notifications and Adflex carry no signature, so these are their only
//! protection; any endpoint may add them. Both are checked from the request head, before the
//! body is read. `X-Forwarded-For` is believed only when the connection comes from a
//! configured trusted proxy; the client is then the right-most address in it that is not
//! itself a trusted proxy.

use std::net::IpAddr;

use base64::Engine;
use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::HeaderMap;
use subtle::ConstantTimeEq;

use crate::endpoint::Trust;

/// Why a request was refused before its body was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Basic auth missing or wrong: 401.
    Unauthorized,
    /// The client address is not allowed: 403.
    Forbidden,
}

impl Refusal {
    /// The code recorded with the failure.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::Forbidden => "forbidden",
        }
    }

    /// The short reason sent back.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "authentication required\n",
            Refusal::Forbidden => "source address not allowed\n",
        }
    }
}

/// The precomputed `Authorization` value an endpoint expects, if it uses basic auth.
#[derive(Clone)]
pub struct ExpectedAuth(Vec<u8>);

impl std::fmt::Debug for ExpectedAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExpectedAuth(<redacted>)")
    }
}

impl ExpectedAuth {
    /// From an endpoint's trust options.
    pub fn for_trust(trust: &Trust) -> Option<ExpectedAuth> {
        let b = trust.basic_auth.as_ref()?;
        Some(ExpectedAuth::basic(&b.user, b.password.expose()))
    }

    /// For `user` with `password`.
    pub fn basic(user: &str, password: &[u8]) -> ExpectedAuth {
        let mut credentials = user.as_bytes().to_vec();
        credentials.push(b':');
        credentials.extend_from_slice(password);
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        ExpectedAuth(encoded.into_bytes())
    }

    /// Whether `header` (`Authorization`) carries these credentials, compared in constant time.
    pub fn matches(&self, header: Option<&HeaderValue>) -> bool {
        let Some(value) = header.map(HeaderValue::as_bytes) else { return false };
        let Some(split) = value.iter().position(|b| *b == b' ') else { return false };
        let (scheme, token) = (&value[..split], value[split..].trim_ascii());
        // Digests, so the comparison takes the same time whatever the token's length.
        let digest = |b: &[u8]| -> [u8; 32] { <sha2::Sha256 as sha2::Digest>::digest(b).into() };
        scheme.eq_ignore_ascii_case(b"basic") && bool::from(digest(token).ct_eq(&digest(&self.0)))
    }
}

/// Checks an endpoint's trust options for a request from `peer`.
pub fn check(
    endpoint: &Trust,
    auth: Option<&ExpectedAuth>,
    peer: IpAddr,
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    if !endpoint.allow_from.is_empty() {
        // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d.
        let client =
            client_address(endpoint, peer.to_canonical(), headers).ok_or(Refusal::Forbidden)?;
        if !endpoint.allow_from.iter().any(|net| net.contains(&client)) {
            return Err(Refusal::Forbidden);
        }
    }
    if let Some(expected) = auth {
        if !expected.matches(headers.get(AUTHORIZATION)) {
            return Err(Refusal::Unauthorized);
        }
    }
    Ok(())
}

/// The client's address: the peer, or through trusted proxies the right-most
/// `X-Forwarded-For` entry that is not a trusted proxy. `None` if a header is unreadable.
fn client_address(endpoint: &Trust, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
    let trusted = |ip: &IpAddr| endpoint.trusted_proxies.iter().any(|net| net.contains(ip));
    if !trusted(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    // Several X-Forwarded-For headers count as one list, in order.
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        for part in value.to_str().ok()?.split(',') {
            hops.push(part.trim().parse::<IpAddr>().ok()?.to_canonical());
        }
    }
    for hop in hops.into_iter().rev() {
        client = hop;
        if !trusted(&hop) {
            return Some(client);
        }
    }
    // Every hop is a trusted proxy: there is no client address to believe.
    let _ = client;
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn endpoint(extra: &str) -> Trust {
        let text = format!("[[endpoint]]\nname = \"w\"\nprovider = \"worldpay-xml\"\n{extra}\n");
        Config::from_toml(&text, std::path::Path::new("t.toml")).unwrap().endpoints.remove(0).trust
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn basic_auth_must_match_exactly() {
        let e = endpoint("basic_auth = { user = \"wp\", password = \"s3cret\" }");
        let auth = ExpectedAuth::for_trust(&e);
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let good =
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("wp:s3cret"));
        let lower = good.replacen("Basic", "basic", 1);
        assert_eq!(check(&e, auth.as_ref(), peer, &headers(&[("authorization", &good)])), Ok(()));
        assert_eq!(check(&e, auth.as_ref(), peer, &headers(&[("authorization", &lower)])), Ok(()));
        let wrong =
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("wp:guess"));
        for h in [
            headers(&[]),
            headers(&[("authorization", &wrong)]),
            headers(&[("authorization", "Bearer x")]),
        ] {
            assert_eq!(check(&e, auth.as_ref(), peer, &h), Err(Refusal::Unauthorized));
        }
        assert_eq!(format!("{auth:?}"), "Some(ExpectedAuth(<redacted>))");
    }

    #[test]
    fn allow_list_believes_forwarded_for_only_from_trusted_proxies() {
        let e = endpoint("allow_from = [\"195.35.90.0/23\", \"2001:db8::/32\"]\ntrusted_proxies = [\"127.0.0.1\"]");
        let ok = |peer: &str, xff: &[(&str, &str)]| {
            check(&e, None, peer.parse().unwrap(), &headers(xff))
        };
        assert_eq!(ok("195.35.91.7", &[]), Ok(()));
        assert_eq!(ok("2001:db8::1", &[]), Ok(()));
        assert_eq!(ok("198.51.100.1", &[]), Err(Refusal::Forbidden));
        // Through the local proxy: the forwarded client counts.
        assert_eq!(ok("127.0.0.1", &[("x-forwarded-for", "195.35.90.1")]), Ok(()));
        assert_eq!(
            ok("127.0.0.1", &[("x-forwarded-for", "198.51.100.1")]),
            Err(Refusal::Forbidden)
        );
        // A client cannot prepend a fake allowed address: the right-most untrusted hop counts.
        assert_eq!(
            ok("127.0.0.1", &[("x-forwarded-for", "195.35.90.1, 198.51.100.1")]),
            Err(Refusal::Forbidden)
        );
        // From an untrusted peer the header is ignored.
        assert_eq!(
            ok("198.51.100.1", &[("x-forwarded-for", "195.35.90.1")]),
            Err(Refusal::Forbidden)
        );
        // The proxy itself with no header is not allowed.
        assert_eq!(ok("127.0.0.1", &[]), Err(Refusal::Forbidden));
        assert_eq!(ok("127.0.0.1", &[("x-forwarded-for", "garbage")]), Err(Refusal::Forbidden));
        // IPv4 clients of a dual-stack listener, and mapped addresses in the header.
        assert_eq!(ok("::ffff:195.35.90.1", &[]), Ok(()));
        assert_eq!(ok("::ffff:127.0.0.1", &[("x-forwarded-for", "::ffff:195.35.90.1")]), Ok(()));
        // A chain of nothing but trusted proxies names no client.
        assert_eq!(ok("127.0.0.1", &[("x-forwarded-for", "127.0.0.1")]), Err(Refusal::Forbidden));
    }
}
