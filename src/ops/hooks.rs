//! Hooks, in gh-ost's manner: `--hooks-dir DIR` holds executables named after the moments of
//! a run ([`HOOK_NAMES`]); doppel runs the one for each moment, if present, with the run's
//! figures in `DOPPEL_*` environment variables (see [`HookEnv::vars`]) on top of its own
//! environment.
//!
//! A hook gets no input, its stdout and stderr are logged line by line, and it is killed
//! (with every process it started in its process group) if it runs longer than the timeout
//! (60 s by default). What a failure means is the caller's choice: a failing `before-cutover`
//! postpones the cutover; other hooks only log.

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// The hooks doppel knows, in the order a run reaches them (`on-throttled` and `on-status` may
/// run many times; `on-failure` replaces the rest when the run fails).
pub const HOOK_NAMES: &[&str] = &[
    "on-startup",
    "on-preflight-ok",
    "before-copy",
    "copy-complete",
    "on-throttled",
    "before-cutover",
    "after-cutover",
    "on-success",
    "on-failure",
    "on-status",
];

/// How long a hook may run before it is killed, unless [`Hooks::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// After a hook exits, how long its output is still read: a process it left running in the
/// background may hold the pipes open.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// Lines of stderr kept for [`HookOutcome::Failed`].
const TAIL_LINES: usize = 20;
/// Longer output lines are split.
const MAX_LINE: u64 = 4096;

/// The hooks directory of a run (or none).
#[derive(Debug, Clone)]
pub struct Hooks {
    dir: Option<PathBuf>,
    timeout: Duration,
}

/// What a hook is told about the run, as `DOPPEL_*` environment variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookEnv {
    /// `DOPPEL_TABLE`: the table, schema-qualified as SQL writes it.
    pub table: String,
    /// `DOPPEL_SHADOW_TABLE`: the shadow table, schema-qualified.
    pub shadow_table: String,
    /// `DOPPEL_OLD_TABLE`: the name the original takes at the cutover, schema-qualified.
    pub old_table: String,
    /// `DOPPEL_ALTER`: the ALTER clauses, joined by `; `.
    pub alter: String,
    /// `DOPPEL_PHASE`: the run's phase (`copying`, `catching up`, `cutover`, ...).
    pub phase: String,
    /// `DOPPEL_ROWS_COPIED`: rows copied by the backfill so far.
    pub rows_copied: u64,
    /// `DOPPEL_ROWS_ESTIMATE`: estimated rows of the table.
    pub rows_estimate: u64,
    /// `DOPPEL_LAG_MS`: replica lag in ms (empty when unknown).
    pub lag_ms: Option<u64>,
    /// `DOPPEL_ELAPSED_S`: seconds since the run started.
    pub elapsed_s: u64,
    /// `DOPPEL_ETA_S`: estimated seconds until the backfill completes (empty when unknown).
    pub eta_s: Option<u64>,
    /// `DOPPEL_DATABASE`: the database the run migrates in.
    pub database: String,
    /// `DOPPEL_ROLLBACK_SCRIPT`: the rollback script's absolute path, once written (set only
    /// then).
    pub rollback_script: Option<PathBuf>,
    /// `DOPPEL_EXIT_CODE`: the run's exit code (`on-failure` only; see `doppel run --help`).
    pub exit_code: Option<u8>,
    /// `DOPPEL_ERROR`: the error that ended the run (`on-failure` only).
    pub error: Option<String>,
}

impl HookEnv {
    /// The variables a hook receives (besides `DOPPEL_HOOK`, its own name, and the inherited
    /// environment). Unknown values are empty strings; `DOPPEL_ROLLBACK_SCRIPT`,
    /// `DOPPEL_EXIT_CODE` and `DOPPEL_ERROR` are set only when known.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        let mut vars = vec![
            ("DOPPEL_TABLE", self.table.clone()),
            ("DOPPEL_SHADOW_TABLE", self.shadow_table.clone()),
            ("DOPPEL_OLD_TABLE", self.old_table.clone()),
            ("DOPPEL_ALTER", self.alter.clone()),
            ("DOPPEL_PHASE", self.phase.clone()),
            ("DOPPEL_ROWS_COPIED", self.rows_copied.to_string()),
            ("DOPPEL_ROWS_ESTIMATE", self.rows_estimate.to_string()),
            ("DOPPEL_LAG_MS", opt(self.lag_ms)),
            ("DOPPEL_ELAPSED_S", self.elapsed_s.to_string()),
            ("DOPPEL_ETA_S", opt(self.eta_s)),
            ("DOPPEL_DATABASE", self.database.clone()),
        ];
        if let Some(path) = &self.rollback_script {
            vars.push(("DOPPEL_ROLLBACK_SCRIPT", path.display().to_string()));
        }
        if let Some(code) = self.exit_code {
            vars.push(("DOPPEL_EXIT_CODE", code.to_string()));
        }
        if let Some(error) = &self.error {
            vars.push(("DOPPEL_ERROR", error.clone()));
        }
        vars
    }
}

/// How a hook ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    /// No hooks directory, or no file of that name in it.
    Missing,
    /// It exited with status 0.
    Succeeded,
    /// It exited with another status (`Some`), or was killed — by a signal or at the timeout
    /// (`None`; `stderr_tail` ends with what happened).
    Failed {
        /// Its exit status, if it exited.
        status: Option<i32>,
        /// The last lines of its stderr.
        stderr_tail: String,
    },
}

impl HookOutcome {
    /// Whether the hook ran and failed.
    pub fn failed(&self) -> bool {
        matches!(self, HookOutcome::Failed { .. })
    }
}

impl std::fmt::Display for HookOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HookOutcome::Missing => write!(f, "no hook"),
            HookOutcome::Succeeded => write!(f, "succeeded"),
            HookOutcome::Failed {
                status,
                stderr_tail,
            } => {
                match status {
                    Some(s) => write!(f, "failed with exit status {s}")?,
                    None => write!(f, "failed")?,
                }
                if !stderr_tail.is_empty() {
                    write!(f, ": {}", stderr_tail.replace('\n', " | "))?;
                }
                Ok(())
            }
        }
    }
}

/// Kills a hook's process group unless disarmed (e.g. when the run is cancelled mid-hook).
struct GroupKiller(Option<i32>);

impl GroupKiller {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: kill(2) with a negative pid signals the process group the hook leads
            // (it was spawned with process_group(0) and is not reaped yet, so the id is ours).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Hooks {
    /// Hooks from `dir` (`None`: no hooks). Fails if `dir` is not a directory, or if a file in
    /// it named like a hook is not an executable file — better at start than at the cutover.
    /// Other files are logged as ignored.
    pub fn new(dir: Option<PathBuf>) -> Result<Hooks> {
        if let Some(dir) = &dir {
            let meta = std::fs::metadata(dir)
                .with_context(|| format!("hooks directory {}", dir.display()))?;
            if !meta.is_dir() {
                bail!("hooks directory {} is not a directory", dir.display());
            }
            let entries = std::fs::read_dir(dir)
                .with_context(|| format!("reading the hooks directory {}", dir.display()))?;
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if HOOK_NAMES.contains(&name.as_ref()) {
                    check_executable(&entry.path())?;
                } else if !name.starts_with('.') {
                    tracing::warn!(
                        "hooks directory {}: ignoring {name}: not a hook name (hooks: {})",
                        dir.display(),
                        HOOK_NAMES.join(", ")
                    );
                }
            }
        }
        Ok(Hooks {
            dir,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The same hooks with another timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Hooks {
        self.timeout = timeout;
        self
    }

    /// The hooks directory, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The timeout after which a hook is killed.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether a hook of that name is present.
    pub fn has(&self, name: &str) -> bool {
        self.dir.as_ref().is_some_and(|d| d.join(name).exists())
    }

    /// Runs hook `name` with `env`; waits for it to exit (or kills it at the timeout). Errors
    /// are for hooks that cannot be run at all: an unknown name, a hook that is not an
    /// executable file, a failed spawn. If the returned future is dropped, the hook's process
    /// group is killed.
    pub async fn run(&self, name: &str, env: &HookEnv) -> Result<HookOutcome> {
        if !HOOK_NAMES.contains(&name) {
            bail!("unknown hook {name:?} (hooks: {})", HOOK_NAMES.join(", "));
        }
        let Some(dir) = &self.dir else {
            return Ok(HookOutcome::Missing);
        };
        let path = dir.join(name);
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HookOutcome::Missing),
            _ => check_executable(&path)?,
        }
        let mut command = tokio::process::Command::new(&path);
        command
            .envs(env.vars())
            .env("DOPPEL_HOOK", name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = spawn(&mut command, &path).await?;
        let mut group = GroupKiller(child.id().map(|id| id as i32));
        tracing::info!(hook = name, "running hook {}", path.display());

        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(drain(out, name.to_string(), None)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(drain(
                err,
                name.to_string(),
                Some(stderr_tail.clone()),
            )));
        }

        let (status, timed_out) = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(status) => {
                // It exited: what it left running in the background is its business.
                group.0 = None;
                (
                    Some(status.with_context(|| format!("waiting for hook {name}"))?),
                    false,
                )
            }
            Err(_) => {
                group.kill();
                (child.wait().await.ok(), true)
            }
        };
        let mut notes = Vec::new();
        let grace = tokio::time::Instant::now() + OUTPUT_GRACE;
        for reader in &mut readers {
            if tokio::time::timeout_at(grace, reader).await.is_err() {
                notes.push(
                    "(processes the hook started still hold its output open; not waiting for them)"
                        .to_string(),
                );
                break;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let code = status.and_then(|s| s.code());
        if timed_out {
            notes.push(format!(
                "(killed after the hook timeout of {} s)",
                self.timeout.as_secs_f64()
            ));
        } else if let Some(signal) = status.and_then(|s| s.signal()) {
            notes.push(format!("(killed by signal {signal})"));
        }
        let outcome = if !timed_out && code == Some(0) {
            HookOutcome::Succeeded
        } else {
            let mut lines: Vec<String> = stderr_tail
                .lock()
                .map(|t| t.iter().cloned().collect())
                .unwrap_or_default();
            lines.extend(notes.iter().cloned());
            HookOutcome::Failed {
                status: code,
                stderr_tail: lines.join("\n"),
            }
        };
        if outcome.failed() {
            tracing::warn!(hook = name, secs, "hook {name} {outcome}");
        } else {
            for note in &notes {
                tracing::warn!(hook = name, "hook {name}: {note}");
            }
            tracing::info!(hook = name, secs, "hook {name} succeeded");
        }
        Ok(outcome)
    }
}

fn check_executable(path: &Path) -> Result<()> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("checking hook {}", path.display()))?;
    if !meta.is_file() {
        bail!("hook {} is not a regular file", path.display());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        bail!(
            "hook {} is not executable: chmod +x it, or remove it",
            path.display()
        );
    }
    Ok(())
}

/// Spawns the hook; retries briefly on ETXTBSY (the file was just written, and a process
/// forked meanwhile still holds it open for writing until it execs).
async fn spawn(
    command: &mut tokio::process::Command,
    path: &Path,
) -> Result<tokio::process::Child> {
    let mut attempt = 0u64;
    loop {
        match command.spawn() {
            Ok(child) => return Ok(child),
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 10 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {
                return Err(e).with_context(|| {
                    format!(
                        "starting hook {}: not a binary the system can run (does a script start with #!?)",
                        path.display()
                    )
                });
            }
            Err(e) => {
                return Err(e).with_context(|| format!("starting hook {}", path.display()));
            }
        }
    }
}

/// Logs a hook's output line by line (stdout at info, stderr at warn); keeps the last lines of
/// stderr in `tail`.
async fn drain(
    pipe: impl AsyncRead + Unpin,
    hook: String,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf);
        let line = text.trim_end_matches(['\n', '\r']);
        match &tail {
            None => tracing::info!(hook = %hook, "hook {hook}: {line}"),
            Some(tail) => {
                tracing::warn!(hook = %hook, "hook {hook} (stderr): {line}");
                if let Ok(mut t) = tail.lock() {
                    if t.len() == TAIL_LINES {
                        t.pop_front();
                    }
                    t.push_back(line.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_has_every_documented_variable() {
        let env = HookEnv {
            table: "public.orders".into(),
            rows_copied: 5,
            lag_ms: None,
            eta_s: Some(7),
            ..HookEnv::default()
        };
        let vars = env.vars();
        let names: Vec<&str> = vars.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "DOPPEL_TABLE",
                "DOPPEL_SHADOW_TABLE",
                "DOPPEL_OLD_TABLE",
                "DOPPEL_ALTER",
                "DOPPEL_PHASE",
                "DOPPEL_ROWS_COPIED",
                "DOPPEL_ROWS_ESTIMATE",
                "DOPPEL_LAG_MS",
                "DOPPEL_ELAPSED_S",
                "DOPPEL_ETA_S",
                "DOPPEL_DATABASE"
            ]
        );
        let get = |k: &str| vars.iter().find(|(n, _)| *n == k).unwrap().1.clone();
        assert_eq!(get("DOPPEL_TABLE"), "public.orders");
        assert_eq!(get("DOPPEL_ROWS_COPIED"), "5");
        assert_eq!(get("DOPPEL_LAG_MS"), "");
        assert_eq!(get("DOPPEL_ETA_S"), "7");
        let failed = HookEnv {
            rollback_script: Some(PathBuf::from("/var/doppel/doppel-rollback-1-t-2.sql")),
            exit_code: Some(5),
            error: Some("cutover failed".into()),
            ..env
        };
        let vars = failed.vars();
        let get = |k: &str| vars.iter().find(|(n, _)| *n == k).unwrap().1.clone();
        assert_eq!(
            get("DOPPEL_ROLLBACK_SCRIPT"),
            "/var/doppel/doppel-rollback-1-t-2.sql"
        );
        assert_eq!(get("DOPPEL_EXIT_CODE"), "5");
        assert_eq!(get("DOPPEL_ERROR"), "cutover failed");
    }

    #[test]
    fn outcome_display() {
        let failed = HookOutcome::Failed {
            status: Some(3),
            stderr_tail: "a\nb".into(),
        };
        assert!(failed.failed());
        assert_eq!(failed.to_string(), "failed with exit status 3: a | b");
        assert!(!HookOutcome::Missing.failed());
    }

    #[tokio::test]
    async fn no_dir_means_missing_and_unknown_names_are_errors() {
        let hooks = Hooks::new(None).unwrap();
        assert_eq!(
            hooks.run("before-copy", &HookEnv::default()).await.unwrap(),
            HookOutcome::Missing
        );
        assert!(
            hooks
                .run("before-cut-over", &HookEnv::default())
                .await
                .is_err()
        );
        assert!(!hooks.has("on-startup"));
        assert!(Hooks::new(Some(PathBuf::from("/nonexistent/doppel-hooks"))).is_err());
    }
}
