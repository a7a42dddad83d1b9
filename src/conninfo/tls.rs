//! TLS with libpq's semantics (libpq's "SSL Support" documentation, `fe-secure-openssl.c`),
//! through OpenSSL, the library libpq itself uses: the same certificate checks (the host name
//! against the subject alternative names, else the common name), the same trust (only
//! `sslrootcert`, or the system's store with `sslrootcert=system`).
//!
//! `sslmode` decides what is tried and what is verified:
//!
//! | sslmode | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow` | only if plain text fails | verified against the root certificate file if one exists |
//! | `prefer` (default) | first, plain text if that fails | same |
//! | `require` | always | same (so `require` with a root certificate file acts as `verify-ca`) |
//! | `verify-ca` | always | chain verified against `sslrootcert` (a missing file is an error) |
//! | `verify-full` | always | chain verified, and the host name must match |

use std::fmt;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;

use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{SslConnector, SslMethod, SslRef, SslVerifyMode, SslVersion};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use pglogrepl::client::{HandshakeFuture, Stream, TlsConnector, TlsSession};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// Plain text first; TLS if the server refuses the plain connection.
    Allow,
    /// TLS first; plain text if the server does not accept TLS (libpq's default).
    Prefer,
    /// TLS only.
    Require,
    /// TLS only, the server certificate's chain verified.
    VerifyCa,
    /// TLS only, the chain verified and the host name checked against the certificate.
    VerifyFull,
}

impl SslMode {
    /// Parses libpq's spelling.
    ///
    /// Errors: any other value, with the list of valid ones.
    pub fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "invalid sslmode value: \"{other}\" (disable, allow, prefer, require, verify-ca, verify-full)"
                ));
            }
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// What the client checks of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Nothing: the session is encrypted but the server is not authenticated.
    None,
    /// The certificate chain, against the trusted root certificates.
    Chain,
    /// The chain and the host name.
    Full,
}

/// Where the trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of certificates (`sslrootcert=<file>`, or `~/.postgresql/root.crt`).
    File(PathBuf),
    /// The operating system's store (`sslrootcert=system`, as libpq 16).
    System,
}

/// The TLS settings of a connection (libpq's `ssl*` parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `sslmode`.
    pub mode: SslMode,
    /// The trusted roots: `sslrootcert`, or `~/.postgresql/root.crt` when it exists.
    pub root_cert: Option<RootCert>,
    /// The client certificate (`sslcert`, default `~/.postgresql/postgresql.crt`) and its key
    /// (`sslkey`, default `~/.postgresql/postgresql.key`), when the certificate file exists.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `sslpassword`: the passphrase of an encrypted `sslkey`. Never displayed.
    pub key_password: Option<String>,
    /// `ssl_min_protocol_version` (default `TLSv1.2`, as libpq).
    pub min_version: Option<SslVersion>,
    /// `ssl_max_protocol_version` (default: the newest).
    pub max_version: Option<SslVersion>,
}

impl Default for TlsSettings {
    fn default() -> TlsSettings {
        TlsSettings {
            mode: SslMode::Prefer,
            root_cert: None,
            client_cert: None,
            key_password: None,
            min_version: Some(SslVersion::TLS1_2),
            max_version: None,
        }
    }
}

/// libpq's spelling of a protocol version (`TLSv1`, `TLSv1.1`, `TLSv1.2`, `TLSv1.3`; empty
/// for no bound).
///
/// Errors: another value.
pub fn parse_version(value: &str) -> Result<Option<SslVersion>, String> {
    Ok(match value {
        "" => None,
        "TLSv1" => Some(SslVersion::TLS1),
        "TLSv1.1" => Some(SslVersion::TLS1_1),
        "TLSv1.2" => Some(SslVersion::TLS1_2),
        "TLSv1.3" => Some(SslVersion::TLS1_3),
        other => {
            return Err(format!(
                "invalid SSL protocol version \"{other}\" (TLSv1, TLSv1.1, TLSv1.2, TLSv1.3)"
            ));
        }
    })
}

impl TlsSettings {
    /// What the handshake verifies: `verify-full` the chain and the name, `verify-ca` the
    /// chain, and the weaker modes the chain when a root certificate file exists (libpq).
    pub fn verification(&self) -> Verification {
        match self.mode {
            SslMode::VerifyFull => Verification::Full,
            SslMode::VerifyCa => Verification::Chain,
            _ if self.root_cert.is_some() => Verification::Chain,
            _ => Verification::None,
        }
    }

    /// Builds the OpenSSL connector these settings describe (once per connection settings;
    /// each connection configures its own session from it).
    ///
    /// Errors: `verify-ca`/`verify-full` without a root certificate (libpq's message), a
    /// certificate or key file that cannot be read or parsed, a private key with group or
    /// world permissions (libpq's rule), a key that does not match the certificate.
    pub fn connector(&self) -> Result<SslConnector, String> {
        let mut builder =
            SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
        builder
            .set_min_proto_version(self.min_version)
            .and_then(|()| builder.set_max_proto_version(self.max_version))
            .map_err(|e| format!("TLS protocol versions: {e}"))?;
        match (&self.root_cert, self.verification()) {
            (_, Verification::None) => builder.set_verify(SslVerifyMode::NONE),
            (Some(RootCert::System), _) => builder.set_verify(SslVerifyMode::PEER),
            (Some(RootCert::File(path)), _) => {
                // Only this file is trusted, not the system's store the builder loaded.
                builder.set_cert_store(root_store(path)?);
                builder.set_verify(SslVerifyMode::PEER);
            }
            (None, _) => {
                return Err(format!(
                    "root certificate file \"{}\" does not exist\nEither provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification.",
                    default_file("root.crt").display()
                ));
            }
        }
        if let Some((cert, key)) = &self.client_cert {
            builder.set_certificate_chain_file(cert).map_err(|e| {
                format!(
                    "could not load client certificate file \"{}\": {e}",
                    cert.display()
                )
            })?;
            let key = load_key(key, self.key_password.as_deref())?;
            builder
                .set_private_key(&key)
                .and_then(|()| builder.check_private_key())
                .map_err(|e| format!("client certificate and private key do not match: {e}"))?;
        }
        Ok(builder.build())
    }
}

/// `~/.postgresql/<name>`, libpq's default place for the TLS files.
pub fn default_file(name: &str) -> PathBuf {
    super::env::home_dir(&super::env::ProcessEnv)
        .unwrap_or_default()
        .join(".postgresql")
        .join(name)
}

/// A certificate store holding every certificate of the PEM file at `path`.
fn root_store(path: &Path) -> Result<openssl::x509::store::X509Store, String> {
    let pem = fs::read(path).map_err(|e| {
        format!(
            "could not read root certificate file \"{}\": {e}",
            path.display()
        )
    })?;
    let certs = X509::stack_from_pem(&pem).map_err(|e| {
        format!(
            "could not parse root certificate file \"{}\": {e}",
            path.display()
        )
    })?;
    if certs.is_empty() {
        return Err(format!(
            "root certificate file \"{}\" holds no certificate",
            path.display()
        ));
    }
    let mut store = X509StoreBuilder::new().map_err(|e| e.to_string())?;
    for cert in certs {
        store.add_cert(cert).map_err(|e| e.to_string())?;
    }
    Ok(store.build())
}

/// The private key at `path`, after libpq's permission check: at most 0600 when owned by
/// the current user, 0640 when owned by root.
fn load_key(path: &Path, password: Option<&str>) -> Result<PKey<openssl::pkey::Private>, String> {
    let meta = fs::metadata(path).map_err(|_| {
        format!(
            "certificate present, but not private key file \"{}\"",
            path.display()
        )
    })?;
    let mode = meta.permissions().mode();
    let too_open = if meta.uid() == 0 {
        mode & 0o137 != 0
    } else {
        mode & 0o077 != 0
    };
    if too_open {
        return Err(format!(
            "private key file \"{}\" has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root",
            path.display()
        ));
    }
    let pem = fs::read(path).map_err(|e| {
        format!(
            "could not read private key file \"{}\": {e}",
            path.display()
        )
    })?;
    let key = match password {
        Some(p) => PKey::private_key_from_pem_passphrase(&pem, p.as_bytes()),
        None => PKey::private_key_from_pem(&pem),
    };
    key.map_err(|e| {
        format!(
            "could not load private key file \"{}\": {e}",
            path.display()
        )
    })
}

/// The `tls-server-end-point` channel binding data of a session (RFC 5929): the hash of the
/// server's certificate with its signature's digest, SHA-256 in place of MD5 and SHA-1.
fn tls_server_end_point(ssl: &SslRef) -> Option<Vec<u8>> {
    let cert = ssl.peer_certificate()?;
    let algorithms = cert
        .signature_algorithm()
        .object()
        .nid()
        .signature_algorithms()?;
    let digest = match algorithms.digest {
        Nid::MD5 | Nid::SHA1 => MessageDigest::sha256(),
        nid => MessageDigest::from_nid(nid)?,
    };
    cert.digest(digest).ok().map(|d| d.to_vec())
}

/// One connector for both clients: tokio-postgres's (through `postgres-openssl`) and the
/// replication client's ([`TlsConnector`]), sharing the OpenSSL context.
#[derive(Clone)]
pub struct Tls {
    connector: SslConnector,
    verify_hostname: bool,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("verify_hostname", &self.verify_hostname)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// The connector for `settings`.
    ///
    /// Errors: those of [`TlsSettings::connector`].
    pub fn new(settings: &TlsSettings) -> Result<Tls, String> {
        Ok(Tls {
            connector: settings.connector()?,
            verify_hostname: settings.verification() == Verification::Full,
        })
    }

    /// The connector for tokio-postgres sessions.
    pub fn for_sessions(&self) -> postgres_openssl::MakeTlsConnector {
        let mut make = postgres_openssl::MakeTlsConnector::new(self.connector.clone());
        let verify_hostname = self.verify_hostname;
        make.set_callback(move |config, _host| {
            config.set_verify_hostname(verify_hostname);
            Ok(())
        });
        make
    }
}

impl TlsConnector for Tls {
    fn handshake<'a>(&'a self, host: &'a str, stream: Box<dyn Stream>) -> HandshakeFuture<'a> {
        Box::pin(async move {
            let other = |e: &dyn fmt::Display| std::io::Error::other(e.to_string());
            let mut config = self.connector.configure().map_err(|e| other(&e))?;
            config.set_verify_hostname(self.verify_hostname);
            let ssl = config.into_ssl(host).map_err(|e| other(&e))?;
            let mut tls = tokio_openssl::SslStream::new(ssl, stream).map_err(|e| other(&e))?;
            if let Err(e) = Pin::new(&mut tls).connect().await {
                let verify = tls.ssl().verify_result();
                return Err(if verify == openssl::x509::X509VerifyResult::OK {
                    other(&e)
                } else {
                    other(&format_args!("{e}: {verify}"))
                });
            }
            let tls_server_end_point = tls_server_end_point(tls.ssl());
            Ok(TlsSession {
                stream: Box::new(tls),
                tls_server_end_point,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_follows_libpq() {
        let mut s = TlsSettings::default();
        assert_eq!(s.verification(), Verification::None);
        s.root_cert = Some(RootCert::File("/x".into()));
        assert_eq!(
            s.verification(),
            Verification::Chain,
            "prefer with a root file"
        );
        s.mode = SslMode::Require;
        assert_eq!(
            s.verification(),
            Verification::Chain,
            "require acts as verify-ca"
        );
        s.mode = SslMode::VerifyFull;
        assert_eq!(s.verification(), Verification::Full);
        s.root_cert = None;
        assert!(
            s.connector()
                .unwrap_err()
                .contains("Either provide the file, use the system's trusted roots")
        );
    }

    #[test]
    fn modes_and_versions_parse_as_libpq_spells_them() {
        for mode in [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ] {
            assert_eq!(SslMode::parse(mode).unwrap().as_str(), mode);
        }
        assert!(SslMode::parse("required").is_err());
        assert_eq!(parse_version("TLSv1.3").unwrap(), Some(SslVersion::TLS1_3));
        assert!(parse_version("1.3").is_err());
    }

    #[test]
    fn a_group_readable_private_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        fs::write(&key, "not a key").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_key(&key, None).unwrap_err();
        assert!(err.contains("has group or world access"), "{err}");
    }
}
