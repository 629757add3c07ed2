//! TLS to PostgreSQL (the shared store, a PostgreSQL shop): encrypted and verified, or not at
//! all.
//!
//! The URL's `sslmode` decides, as with libpq, with one difference that is on purpose:
//! `sslmode=require` makes reconciled verify the server's certificate (the chain up to a
//! trusted root, and the host name in the URL), where libpq's `require` only encrypts. A
//! connection that can be intercepted carries the store's password and payment data, so
//! reconciled never encrypts without knowing whom to. The roots are the public web's (Mozilla's,
//! as for every other outbound TLS of reconciled) plus the PEM certificates of `tls_ca_file`
//! (a private CA, a cloud provider's database CA). `disable`, `prefer` and no `sslmode` connect
//! without TLS: reconciled does not try TLS opportunistically, since a server offering TLS with
//! a certificate nobody can verify (Debian's default "snakeoil" one, say) would then refuse
//! connections that work today.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Readies `pg` for connecting and returns the connector to connect with: TLS with the
/// server's certificate verified against the public roots and `extra_roots` (PEM) when the URL
/// says `sslmode=require`, none otherwise (`prefer` is turned into `disable`). Extra roots
/// without `sslmode=require` are refused: they would silently go unused. An error is about the
/// extra roots (the `tls_ca_file` key).
pub fn connector(
    pg: &mut tokio_postgres::Config,
    extra_roots: Option<&[u8]>,
) -> Result<MakeRustlsConnect, String> {
    let require = pg.get_ssl_mode() == SslMode::Require;
    if !require {
        if extra_roots.is_some() {
            return Err("the URL does not ask for TLS: add sslmode=require to it".into());
        }
        pg.ssl_mode(SslMode::Disable);
    }
    let mut roots = rustls::RootCertStore::empty();
    if require {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = extra_roots {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("is not readable PEM: {e}"))?;
                roots.add(cert).map_err(|e| format!("holds an unusable certificate: {e}"))?;
                added += 1;
            }
            if added == 0 {
                return Err("holds no PEM certificate".into());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The PEM text of a `tls_ca_file`, checked against the URL it goes with; shared, and shown by
/// `Debug` only as its length.
#[derive(Clone)]
pub struct CaPem(Arc<[u8]>);

impl CaPem {
    /// `pem` for the PostgreSQL URL `url`: it must hold a usable certificate, and the URL must
    /// say `sslmode=require`.
    pub fn checked(url: &str, pem: Vec<u8>) -> Result<CaPem, String> {
        let mut pg: tokio_postgres::Config = url.parse().map_err(|_| "the URL is not valid")?;
        connector(&mut pg, Some(&pem))?;
        Ok(CaPem(pem.into()))
    }
}

impl std::ops::Deref for CaPem {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for CaPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaPem({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> tokio_postgres::Config {
        url.parse().unwrap()
    }

    fn test_ca() -> Vec<u8> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/paypal/test-only-ca.pem");
        std::fs::read(path).unwrap()
    }

    #[test]
    fn require_keeps_tls_and_anything_else_connects_without_it() {
        for (url, want) in [
            ("postgres://u@h/db?sslmode=require", SslMode::Require),
            ("postgres://u@h/db?sslmode=prefer", SslMode::Disable),
            ("postgres://u@h/db?sslmode=disable", SslMode::Disable),
            ("postgres://u@h/db", SslMode::Disable),
        ] {
            let mut pg = config(url);
            connector(&mut pg, None).unwrap();
            assert_eq!(pg.get_ssl_mode(), want, "{url}");
        }
    }

    #[test]
    fn extra_roots_need_sslmode_require_and_a_certificate() {
        let ca = test_ca();
        let checked = CaPem::checked("postgres://u@h/db?sslmode=require", ca.clone()).unwrap();
        assert_eq!(format!("{checked:?}"), format!("CaPem({} bytes)", ca.len()));
        let mut pg = config("postgres://u@h/db?sslmode=require");
        assert!(connector(&mut pg, Some(&ca)).is_ok());
        let mut pg = config("postgres://u@h/db");
        let e = connector(&mut pg, Some(&ca)).err().unwrap();
        assert!(e.contains("sslmode=require"), "{e}");
        let mut pg = config("postgres://u@h/db?sslmode=require");
        let e = connector(&mut pg, Some(b"not a certificate\n")).err().unwrap();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = CaPem::checked("postgres://u@h/db?sslmode=require", b"not a cert\n".to_vec())
            .err()
            .unwrap();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
