//! A throwaway PgBouncer (Debian package `pgbouncer`) in front of a [`LocalCluster`], for
//! tests of what goes through a connection pooler. It runs as the cluster's OS user (PgBouncer
//! refuses to run as root) from a directory in the cluster's scratch directory, listens on a
//! free port of 127.0.0.1, trusts every user, and is stopped when dropped.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cluster::LocalCluster;

/// A running PgBouncer.
#[derive(Debug)]
pub struct PgBouncer {
    port: u16,
    pid: i32,
    log: PathBuf,
}

impl PgBouncer {
    /// Starts PgBouncer in `pool_mode` (`session`, `transaction`, `statement`) for every
    /// database of `cluster`, and waits until it accepts TCP connections.
    ///
    /// # Errors
    /// If `pgbouncer` is not installed, does not start, or does not listen within 10 s.
    pub async fn start(cluster: &LocalCluster, pool_mode: &str) -> Result<PgBouncer> {
        let dir = cluster.scratch_dir().join("pgbouncer");
        fs::create_dir_all(&dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let ini = dir.join("pgbouncer.ini");
        let log = dir.join("pgbouncer.log");
        let pidfile = dir.join("pgbouncer.pid");
        // auth_type trust still wants the user listed.
        fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n")?;
        fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {}\npool_mode = {pool_mode}\nlogfile = {}\npidfile = {}\nadmin_users = postgres\nignore_startup_parameters = extra_float_digits\nmax_client_conn = 200\ndefault_pool_size = 20\n",
                cluster.port(),
                dir.join("userlist.txt").display(),
                log.display(),
                pidfile.display()
            ),
        )?;
        let owner = fs::metadata(cluster.scratch_dir())?;
        for path in [&dir, &ini, &dir.join("userlist.txt")] {
            std::os::unix::fs::chown(
                path,
                Some(std::os::unix::fs::MetadataExt::uid(&owner)),
                Some(std::os::unix::fs::MetadataExt::gid(&owner)),
            )?;
        }
        let program = which_pgbouncer()?;
        // SAFETY: geteuid has no preconditions.
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd
            .arg("-d")
            .arg(&ini)
            .output()
            .context("running pgbouncer")?;
        if !out.status.success() {
            bail!(
                "pgbouncer did not start: {}{}",
                String::from_utf8_lossy(&out.stderr),
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pid = fs::read_to_string(&pidfile)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            let listening = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok();
            if let (Some(pid), true) = (pid, listening) {
                return Ok(PgBouncer { port, pid, log });
            }
            if Instant::now() > deadline {
                bail!(
                    "pgbouncer is not listening on {port} after 10 s: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The port PgBouncer listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// PgBouncer's log file.
    pub fn log_file(&self) -> &std::path::Path {
        &self.log
    }
}

/// `pgbouncer` on the PATH or in Debian's place.
fn which_pgbouncer() -> Result<PathBuf> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin"])
    {
        let candidate = PathBuf::from(dir).join("pgbouncer");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("pgbouncer is not installed (apt-get install pgbouncer)")
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // SAFETY: signalling the daemon this value started (its pid from its pidfile).
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
    }
}
