//! Certificates made at test time with the `openssl` command (Debian package `openssl`), and
//! TLS turned on in a running [`LocalCluster`]: a CA, a server certificate for `localhost`
//! and `127.0.0.1` (or another name), client certificates, and a second, unrelated CA.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cluster::LocalCluster;

/// A certificate authority: its certificate and key files.
#[derive(Debug, Clone)]
pub struct Ca {
    /// The CA certificate (PEM): what a client passes as `sslrootcert`.
    pub cert: PathBuf,
    /// The CA's private key (PEM).
    pub key: PathBuf,
}

/// A certificate signed by a [`Ca`], with its key (mode 0600).
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The private key (PEM, mode 0600).
    pub key: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("could not run openssl (install the Debian package openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Ca {
    /// A new self-signed CA named `name` in `dir` (`<name>.crt`, `<name>.key`).
    ///
    /// # Errors
    /// If `openssl` fails or is missing.
    pub fn new(dir: &Path, name: &str) -> Result<Ca> {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
            ],
            dir,
        )?;
        Ok(Ca { cert, key })
    }

    /// A certificate for common name `cn` with subject alternative names `sans` (e.g.
    /// `DNS:localhost,IP:127.0.0.1`; empty for none), signed by this CA, as `<file>.crt` /
    /// `<file>.key` in `dir`.
    ///
    /// # Errors
    /// If `openssl` fails.
    pub fn issue(&self, dir: &Path, file: &str, cn: &str, sans: &str) -> Result<Issued> {
        let cert = dir.join(format!("{file}.crt"));
        let key = dir.join(format!("{file}.key"));
        let csr = dir.join(format!("{file}.csr"));
        let ext = dir.join(format!("{file}.ext"));
        let mut extensions = String::from("basicConstraints=CA:FALSE\n");
        if !sans.is_empty() {
            extensions.push_str(&format!("subjectAltName={sans}\n"));
        }
        fs::write(&ext, extensions)?;
        openssl(
            &[
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                csr.to_str().unwrap(),
            ],
            dir,
        )?;
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                csr.to_str().unwrap(),
                "-CA",
                self.cert.to_str().unwrap(),
                "-CAkey",
                self.key.to_str().unwrap(),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext.to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
            ],
            dir,
        )?;
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
        Ok(Issued { cert, key })
    }
}

/// Turns TLS on in `cluster` with `server`'s certificate and key, trusting `client_ca` for
/// client certificates (`ssl_ca_file`), and waits until new connections see `ssl = on`. The
/// files are copied into the data directory, owned by the server's OS user, key mode 0600.
///
/// # Errors
/// If the files cannot be installed, the reload fails, or `ssl` is not on within 10 s.
pub async fn enable_ssl(cluster: &LocalCluster, server: &Issued, client_ca: &Ca) -> Result<()> {
    let data = cluster.data_dir();
    let owner = fs::metadata(data)?;
    for (from, name) in [
        (&server.cert, "server.crt"),
        (&server.key, "server.key"),
        (&client_ca.cert, "client_ca.crt"),
    ] {
        let to = data.join(name);
        fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o600))?;
        std::os::unix::fs::chown(
            &to,
            Some(std::os::unix::fs::MetadataExt::uid(&owner)),
            Some(std::os::unix::fs::MetadataExt::gid(&owner)),
        )?;
    }
    let client = cluster.connect("postgres").await?;
    for statement in [
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "ALTER SYSTEM SET ssl_ca_file = 'client_ca.crt'",
        "ALTER SYSTEM SET ssl = on",
        "SELECT pg_reload_conf()",
    ] {
        client.batch_execute(statement).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = cluster.connect("postgres").await?;
        let on: String = fresh.query_one("SHOW ssl", &[]).await?.get(0);
        if on == "on" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "ssl is still {on} 10 s after the reload (see {})",
                cluster.log_file().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
