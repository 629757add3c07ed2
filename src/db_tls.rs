//! TLS to databases (the shared PostgreSQL store, a PostgreSQL or MySQL/MariaDB shop):
//! encrypted and verified, or not at all.
//!
//! The URL asks for TLS: `sslmode=require` for PostgreSQL, `require_ssl=true` for MySQL and
//! MariaDB. Either way reconciled then verifies the server's certificate (the chain up to a
//! trusted root, and the host name in the URL); for PostgreSQL that is on purpose stricter than
//! libpq, whose `require` only encrypts, and MySQL's `verify_ca=false` and
//! `verify_identity=false` are refused. A connection that can be intercepted carries the
//! database password and payment data, so reconciled never encrypts without knowing whom to.
//! The roots are the public web's (Mozilla's, as for every other outbound TLS of reconciled)
//! plus the PEM certificates of `tls_ca_file` (a private CA, a cloud provider's database CA).
//! Without the URL asking, there is no TLS (PostgreSQL's `prefer` included): reconciled does not
//! try TLS opportunistically, since a server offering TLS with a certificate nobody can verify
//! (Debian's default "snakeoil" one, say) would then refuse connections that work today.

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
            for cert in certificates(pem)? {
                roots.add(cert).map_err(|e| format!("holds an unusable certificate: {e}"))?;
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

/// The certificates of a `tls_ca_file`'s PEM text: at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not readable PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

/// The TLS options of a MySQL/MariaDB connection: none unless the URL says
/// `require_ssl=true`; then the server's certificate verified against the public roots and
/// `extra_roots` (PEM). Extra roots without `require_ssl=true`, and `verify_ca=false` or
/// `verify_identity=false`, are refused. An error is about the extra roots or the URL's TLS
/// settings.
pub fn mysql_ssl(
    opts: &mysql_async::Opts,
    extra_roots: Option<&[u8]>,
) -> Result<Option<mysql_async::SslOpts>, String> {
    let Some(ssl) = opts.ssl_opts() else {
        return match extra_roots {
            Some(_) => Err("the URL does not ask for TLS: add require_ssl=true to it".into()),
            None => Ok(None),
        };
    };
    if ssl.accept_invalid_certs() || ssl.skip_domain_validation() {
        return Err("verify_ca=false and verify_identity=false are refused: reconciled always \
                    verifies the server; give its CA in tls_ca_file instead"
            .into());
    }
    let mut ssl = ssl.clone();
    if let Some(pem) = extra_roots {
        let certs = certificates(pem)?;
        let roots = certs.into_iter().map(|c| c.as_ref().to_vec().into()).collect();
        ssl = ssl.with_root_certs(roots);
    }
    Ok(Some(ssl))
}

/// The PEM text of a `tls_ca_file`, checked against the URL it goes with; shared, and shown by
/// `Debug` only as its length.
#[derive(Clone)]
pub struct CaPem(Arc<[u8]>);

impl CaPem {
    /// `pem` for the database URL `url` (`postgres://` or `mysql://`): it must hold a usable
    /// certificate, and the URL must ask for TLS.
    pub fn checked(url: &str, pem: Vec<u8>) -> Result<CaPem, String> {
        if url.starts_with("mysql://") {
            let opts = mysql_async::Opts::from_url(url).map_err(|_| "the URL is not valid")?;
            mysql_ssl(&opts, Some(&pem))?;
        } else {
            let mut pg: tokio_postgres::Config = url.parse().map_err(|_| "the URL is not valid")?;
            connector(&mut pg, Some(&pem))?;
        }
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

    #[test]
    fn mysql_tls_is_asked_for_in_the_url_and_always_verified() {
        let opts = |url: &str| mysql_async::Opts::from_url(url).unwrap();
        assert!(mysql_ssl(&opts("mysql://u@h/db"), None).unwrap().is_none());
        let ssl = mysql_ssl(&opts("mysql://u@h/db?require_ssl=true"), Some(&test_ca()))
            .unwrap()
            .expect("TLS");
        assert_eq!(ssl.root_certs().len(), 1);
        assert!(!ssl.accept_invalid_certs() && !ssl.skip_domain_validation());
        for url in [
            "mysql://u@h/db?require_ssl=true&verify_ca=false",
            "mysql://u@h/db?require_ssl=true&verify_identity=false",
        ] {
            let e = mysql_ssl(&opts(url), None).err().unwrap();
            assert!(e.contains("refused"), "{url}: {e}");
        }
    }

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
        let e = connector(&mut pg, Some(b"")).err().unwrap();
        assert!(e.contains("no PEM certificate"), "an empty file: {e}");
        let e = CaPem::checked("mysql://u@h/db", ca.clone()).err().unwrap();
        assert!(e.contains("require_ssl=true"), "{e}");
        assert!(CaPem::checked("mysql://u@h/db?require_ssl=true", ca.clone()).is_ok());
        let e = CaPem::checked("postgres://u@h/db?sslmode=require", b"not a cert\n".to_vec())
            .err()
            .unwrap();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
