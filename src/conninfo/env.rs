//! Where a connection setting comes from when the connection string leaves it out, in
//! libpq's order (`conninfo_add_defaults` in `fe-connect.c`): the service named by `service`
//! or `PGSERVICE`, then the keyword's environment variable, then libpq's default.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::service;

/// Each keyword's environment variable, as libpq reads them (libpq's "Environment Variables"
/// documentation).
pub const ENV_VARS: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("dbname", "PGDATABASE"),
    ("user", "PGUSER"),
    ("password", "PGPASSWORD"),
    ("passfile", "PGPASSFILE"),
    ("service", "PGSERVICE"),
    ("options", "PGOPTIONS"),
    ("application_name", "PGAPPNAME"),
    ("sslmode", "PGSSLMODE"),
    ("sslnegotiation", "PGSSLNEGOTIATION"),
    ("sslcompression", "PGSSLCOMPRESSION"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("sslcertmode", "PGSSLCERTMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcrl", "PGSSLCRL"),
    ("sslcrldir", "PGSSLCRLDIR"),
    ("sslsni", "PGSSLSNI"),
    ("requirepeer", "PGREQUIREPEER"),
    ("ssl_min_protocol_version", "PGSSLMINPROTOCOLVERSION"),
    ("ssl_max_protocol_version", "PGSSLMAXPROTOCOLVERSION"),
    ("min_protocol_version", "PGMINPROTOCOLVERSION"),
    ("max_protocol_version", "PGMAXPROTOCOLVERSION"),
    ("gssencmode", "PGGSSENCMODE"),
    ("krbsrvname", "PGKRBSRVNAME"),
    ("gsslib", "PGGSSLIB"),
    ("gssdelegation", "PGGSSDELEGATION"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("client_encoding", "PGCLIENTENCODING"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
    ("load_balance_hosts", "PGLOADBALANCEHOSTS"),
    ("channel_binding", "PGCHANNELBINDING"),
    ("require_auth", "PGREQUIREAUTH"),
];

/// A source of environment variables (the process's, or a fixed map in tests).
pub trait Environment {
    /// The variable's value; `None` when unset or empty (libpq ignores empty ones).
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Environment for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

/// The user's home directory: `HOME`, else the password database's entry for this user.
pub fn home_dir(env: &dyn Environment) -> Option<PathBuf> {
    env.var("HOME").map(PathBuf::from).or_else(|| {
        // SAFETY: getpwuid returns a pointer into static storage or NULL; we copy the
        // directory out before any other call that could overwrite it.
        unsafe {
            let pw = libc::getpwuid(libc::geteuid());
            if pw.is_null() || (*pw).pw_dir.is_null() {
                return None;
            }
            let dir = std::ffi::CStr::from_ptr((*pw).pw_dir);
            Some(PathBuf::from(dir.to_string_lossy().into_owned()))
        }
    })
}

/// The OS user name libpq defaults `user` to (the effective user's password entry, else
/// `USER`).
pub fn os_user(env: &dyn Environment) -> Option<String> {
    // SAFETY: as in home_dir.
    let from_passwd = unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            None
        } else {
            Some(
                std::ffi::CStr::from_ptr((*pw).pw_name)
                    .to_string_lossy()
                    .into_owned(),
            )
        }
    };
    from_passwd.or_else(|| env.var("USER"))
}

/// Fills `settings` (what the connection string set) with the service's settings, then the
/// environment, for every keyword still unset: libpq's precedence.
///
/// Errors: the service file's (see [`service::lookup`]).
pub fn fill(settings: &mut BTreeMap<String, String>, env: &dyn Environment) -> Result<(), String> {
    let service = settings
        .get("service")
        .cloned()
        .or_else(|| env.var("PGSERVICE"));
    if let Some(name) = service {
        let files = service::Files {
            user: env
                .var("PGSERVICEFILE")
                .map(PathBuf::from)
                .or_else(|| home_dir(env).map(|h| h.join(".pg_service.conf"))),
            system: PathBuf::from(
                env.var("PGSYSCONFDIR")
                    .unwrap_or_else(|| service::DEFAULT_SYSCONFDIR.to_string()),
            )
            .join("pg_service.conf"),
        };
        for (key, value) in service::lookup(&name, &files)? {
            settings.entry(key).or_insert(value);
        }
    }
    for (key, var) in ENV_VARS {
        if !settings.contains_key(*key)
            && let Some(value) = env.var(var)
        {
            settings.insert((*key).to_string(), value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn dsn_beats_service_beats_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("services");
        std::fs::write(&file, "[s]\nhost=from-service\nport=7000\n").unwrap();
        let e = env(&[
            ("PGSERVICE", "s"),
            ("PGSERVICEFILE", file.to_str().unwrap()),
            ("PGHOST", "from-env"),
            ("PGPORT", "8000"),
            ("PGSSLMODE", "verify-full"),
            ("PGAPPNAME", ""),
        ]);
        let mut settings = BTreeMap::from([("port".to_string(), "9000".to_string())]);
        fill(&mut settings, &e).unwrap();
        assert_eq!(settings["host"], "from-service");
        assert_eq!(settings["port"], "9000");
        assert_eq!(settings["sslmode"], "verify-full");
        assert!(!settings.contains_key("application_name"), "empty is unset");
    }

    #[test]
    fn unknown_service_is_an_error() {
        let e = env(&[
            ("PGSERVICEFILE", "/nonexistent/file"),
            ("PGSYSCONFDIR", "/nonexistent"),
        ]);
        let mut settings = BTreeMap::from([("service".to_string(), "x".to_string())]);
        assert!(
            fill(&mut settings, &e)
                .unwrap_err()
                .contains("\"x\" not found")
        );
    }
}
