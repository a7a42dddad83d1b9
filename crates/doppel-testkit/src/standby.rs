//! A streaming standby of a [`LocalCluster`] (for tests that need a server in recovery next to
//! the primary, or a standby to fail over to). Made with `pg_basebackup` when this machine has
//! one of the server's major; otherwise with the low-level backup API
//! (`pg_backup_start`/`pg_backup_stop`, PostgreSQL 15+; `pg_start_backup`/`pg_stop_backup`
//! on 14) through `psql` (any major's `psql` talks to a newer server) and a file copy, the
//! way PostgreSQL's documentation describes a base backup without `pg_basebackup`. Either
//! way the standby streams from a physical slot of the primary created first, so the WAL
//! since the backup began is kept for it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cluster::LocalCluster;

/// The physical slot on the primary the standby streams from.
pub const STANDBY_SLOT: &str = "doppel_standby";

/// How a standby is set up.
#[derive(Debug, Clone, Copy, Default)]
pub struct StandbyOptions {
    /// Ready for logical failover slots (PostgreSQL 17+): `hot_standby_feedback = on`,
    /// `sync_replication_slots = on` and a `primary_conninfo` naming a database, so the
    /// standby's slot sync worker keeps copies of the primary's failover slots. (The worker,
    /// not `pg_sync_replication_slots()`: on a busy primary a one-off call drops the
    /// temporary slot it reserved before the primary's slot has caught up with it.)
    pub failover_slots: bool,
}

/// A running standby; stopped (immediate mode) when dropped. Its data directory lives in the
/// primary's scratch directory and goes with it.
#[derive(Debug)]
pub struct Standby {
    dir: PathBuf,
    port: u16,
    pg_ctl: PathBuf,
}

impl Standby {
    /// A hot standby of `primary` on a free port of 127.0.0.1 (default [`StandbyOptions`]).
    ///
    /// `None` (with the reason printed) when neither `pg_basebackup` of the server's major nor
    /// any `psql` is available here.
    ///
    /// # Panics
    /// If the backup, the copy or `pg_ctl start` fails.
    pub fn start(primary: &LocalCluster) -> Option<Standby> {
        Standby::start_with(primary, StandbyOptions::default())
    }

    /// [`Standby::start`] with `options`.
    ///
    /// # Panics
    /// As [`Standby::start`].
    pub fn start_with(primary: &LocalCluster, options: StandbyOptions) -> Option<Standby> {
        let dir = primary.scratch_dir().join("standby");
        let major = primary.server_version_num() / 10000;
        psql(
            primary,
            &format!("SELECT pg_create_physical_replication_slot('{STANDBY_SLOT}', true)"),
        )?;
        if tool_major(primary, "pg_basebackup") == Some(major) {
            let out = primary
                .command("pg_basebackup")
                .arg("-D")
                .arg(&dir)
                .args(["-X", "none", "-c", "fast", "-h", primary.host()])
                .args(["-p", &primary.port().to_string(), "-U", "postgres"])
                .output()
                .expect("run pg_basebackup");
            assert!(
                out.status.success(),
                "pg_basebackup: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            copy_with_backup_api(primary, &dir)?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        configure(primary, &dir, port, options);
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
            "standby start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(primary.scratch_dir().join("standby.log")).unwrap_or_default()
        );
        Some(Standby {
            dir,
            port,
            pg_ctl: primary.bin("pg_ctl"),
        })
    }

    /// Promotes the standby to a primary (`pg_ctl promote -w`: returns once it accepts
    /// writes).
    ///
    /// # Panics
    /// If `pg_ctl promote` fails.
    pub fn promote(&self) {
        let out = as_postgres(&self.pg_ctl)
            .arg("-D")
            .arg(&self.dir)
            .args(["-w", "promote"])
            .output()
            .expect("run pg_ctl promote");
        assert!(
            out.status.success(),
            "promote: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The standby's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = as_postgres(&self.pg_ctl)
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// `program` run as the `postgres` OS user when we are root (the server's files are its).
fn as_postgres(program: &Path) -> Command {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// The major version `tool --version` reports, if the tool runs.
fn tool_major(primary: &LocalCluster, tool: &str) -> Option<u32> {
    let out = primary.command(tool).arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
}

/// Runs `sql` with `psql` on the primary; `None` (reason printed) when there is no `psql`.
///
/// # Panics
/// If the statement fails.
fn psql(primary: &LocalCluster, sql: &str) -> Option<()> {
    let Ok(out) = primary
        .command("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
    else {
        eprintln!("skipped: no psql here to set up a standby");
        return None;
    };
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(())
}

/// A base backup of `primary` into `dir` without `pg_basebackup`: in one `psql` session, the
/// backup starts, the data directory is copied (as the `postgres` user, without `pg_wal`'s
/// files, the slots and the pid file), and the backup stops; its label file goes into the
/// copy as `backup_label`.
fn copy_with_backup_api(primary: &LocalCluster, dir: &Path) -> Option<()> {
    let data = primary.data_dir().display().to_string();
    let to = dir.display().to_string();
    let (start, stop) = if primary.server_version_num() >= 150_000 {
        (
            "SELECT pg_backup_start('doppel standby', true);",
            "SELECT labelfile FROM pg_backup_stop(true);",
        )
    } else {
        (
            "SELECT pg_start_backup('doppel standby', true, false);",
            "SELECT labelfile FROM pg_stop_backup(false, true);",
        )
    };
    let script = format!(
        "{start}\n\\! mkdir -p {to} && cp -a {data}/. {to}/ && rm -rf {to}/pg_wal/* {to}/pg_replslot/* {to}/postmaster.pid {to}/postmaster.opts && mkdir -p {to}/pg_wal/archive_status && chmod 700 {to}\n\\t on\n\\a\n\\o {to}/backup_label\n{stop}\n\\o\n"
    );
    let script_path = primary.scratch_dir().join("standby-backup.sql");
    std::fs::write(&script_path, script).expect("write the backup script");
    let Ok(out) = primary
        .command("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&script_path)
        .output()
    else {
        eprintln!("skipped: no psql here to take a base backup");
        return None;
    };
    assert!(
        out.status.success(),
        "base backup with the backup API: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(())
}

/// The standby's settings, appended to its `postgresql.auto.conf` (later lines win), and its
/// `standby.signal`.
fn configure(primary: &LocalCluster, dir: &Path, port: u16, options: StandbyOptions) {
    let auto = dir.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text.push_str(&format!(
        "\nport = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n\
         primary_conninfo = 'host={} port={} user=postgres dbname=postgres application_name=doppel_standby'\n\
         primary_slot_name = '{STANDBY_SLOT}'\n",
        primary.scratch_dir().display(),
        primary.host(),
        primary.port()
    ));
    if options.failover_slots {
        text.push_str("hot_standby_feedback = on\nsync_replication_slots = on\n");
    }
    std::fs::write(&auto, text).expect("write the standby's configuration");
    std::fs::write(dir.join("standby.signal"), "").expect("write standby.signal");
}
