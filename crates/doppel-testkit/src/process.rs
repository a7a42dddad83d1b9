//! Processes seen through `/proc` (Linux): whether one is alive, which mention a path.

use std::io;
use std::path::Path;

/// Whether process `pid` exists and is not a zombie (an exited process whose parent has not
/// reaped it yet: an orphaned postmaster may stay one under a non-reaping init). A process
/// that cannot be signalled for lack of permission exists; when its `/proc` entry cannot be
/// read for another reason than its absence, it counts as alive (the stale-cluster sweep
/// must not take a live owner for dead).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(raw, 0) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | Some("x"))
        }
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

/// Pids of live (non-zombie) processes whose command line mentions `path` (e.g. a cluster's
/// data directory: its postmaster and backends).
pub fn processes_mentioning(path: &Path) -> Vec<u32> {
    let needle = path.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmd| cmd.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .filter(|&pid| pid_alive(pid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
    }

    #[test]
    fn a_child_is_found_by_its_command_line_until_it_is_reaped() {
        let dir = tempfile::tempdir().unwrap();
        // `read` is a shell builtin: the shell itself waits on its stdin, with `dir` as $0.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read line"])
            .arg(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        assert!(pid_alive(child.id()));
        // Until the child has exec'd, its command line is still the test's own.
        let found = crate::poll::wait_until(std::time::Duration::from_secs(10), || {
            processes_mentioning(dir.path()) == vec![child.id()]
        });
        assert!(found, "{:?}", processes_mentioning(dir.path()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(processes_mentioning(dir.path()).is_empty());
    }
}
