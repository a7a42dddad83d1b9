//! A streaming standby of a [`LocalCluster`] made with `pg_basebackup` (for tests that need a
//! server in recovery next to the primary). Skipped (`None`) when this machine has no
//! `pg_basebackup` of the server's major version.

use std::path::PathBuf;
use std::process::Command;

use crate::cluster::LocalCluster;

/// A running standby; stopped (immediate mode) when dropped. Its data directory lives in the
/// primary's scratch directory and goes with it.
#[derive(Debug)]
pub struct Standby {
    dir: PathBuf,
    port: u16,
    pg_ctl: PathBuf,
}

impl Standby {
    /// Takes a base backup of `primary` (`-R -X stream`) and starts it as a hot standby on
    /// a free port of 127.0.0.1.
    ///
    /// `None` when `pg_basebackup` here is of another major than the server (Debian's 15
    /// refuses newer servers).
    ///
    /// # Panics
    /// If `pg_basebackup` or `pg_ctl start` fails.
    pub fn start(primary: &LocalCluster) -> Option<Standby> {
        let version = primary
            .command("pg_basebackup")
            .arg("--version")
            .output()
            .ok()?;
        let tool_major: u32 = String::from_utf8_lossy(&version.stdout)
            .split_whitespace()
            .last()
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if tool_major != primary.server_version_num() / 10000 {
            eprintln!("skipped: no pg_basebackup of the server's major here");
            return None;
        }
        let dir = primary.scratch_dir().join("standby");
        let out = primary
            .command("pg_basebackup")
            .arg("-D")
            .arg(&dir)
            .args(["-R", "-X", "stream", "-c", "fast", "-h", primary.host()])
            .args(["-p", &primary.port().to_string(), "-U", "postgres"])
            .output()
            .expect("run pg_basebackup");
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let auto = dir.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
        text.push_str(&format!(
            "\nport = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            primary.scratch_dir().display()
        ));
        std::fs::write(&auto, text).expect("write the standby's configuration");
        let out = primary
            .command("pg_ctl")
            .arg("-D")
            .arg(&dir)
            .arg("-l")
            .arg(primary.scratch_dir().join("standby.log"))
            .args(["-w", "start"])
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "standby start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Standby {
            dir,
            port,
            pg_ctl: primary.bin("pg_ctl"),
        })
    }

    /// The standby's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&self.pg_ctl)
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
