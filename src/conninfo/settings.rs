//! [`ConnInfo`]: the resolved connection settings, built from libpq's keywords ([`resolve`])
//! or from a `tokio_postgres::Config` (what the tests and the library's callers pass).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::{ChannelBinding, Host};

use super::env::{self, Environment, ProcessEnv};
use super::passfile::{self, Lookup};
use super::tls::{self, RootCert, SslMode, Tls, TlsSettings};
use super::{EXACT_OUTPUT_OPTIONS, dsn, with_option};
use crate::failure::{FailureKind, fail};

/// libpq's `target_session_attrs`: which server of a host list a connection accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAttrs {
    /// Any server (the default).
    Any,
    /// `transaction_read_only` is off (a primary, not set read-only).
    ReadWrite,
    /// `transaction_read_only` is on.
    ReadOnly,
    /// Not in recovery.
    Primary,
    /// In recovery (a standby).
    Standby,
    /// A standby if any host is one, else any server.
    PreferStandby,
}

impl SessionAttrs {
    /// Parses libpq's spelling.
    ///
    /// Errors: another value.
    pub fn parse(value: &str) -> Result<SessionAttrs, String> {
        Ok(match value {
            "any" => SessionAttrs::Any,
            "read-write" => SessionAttrs::ReadWrite,
            "read-only" => SessionAttrs::ReadOnly,
            "primary" => SessionAttrs::Primary,
            "standby" => SessionAttrs::Standby,
            "prefer-standby" => SessionAttrs::PreferStandby,
            other => {
                return Err(format!(
                    "invalid target_session_attrs value: \"{other}\" (any, read-write, read-only, primary, standby, prefer-standby)"
                ));
            }
        })
    }
}

/// One host of the list: where to connect and the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// A host name or address (TCP), or a Unix socket directory.
    pub host: Host,
    /// `hostaddr`: the address to connect to instead of resolving `host`.
    pub hostaddr: Option<IpAddr>,
    /// The port.
    pub port: u16,
}

impl HostEntry {
    /// `host:port` (or the socket directory and port), for messages.
    pub fn label(&self) -> String {
        match &self.host {
            Host::Tcp(h) => format!("{h}:{}", self.port),
            Host::Unix(p) => format!("{}:{}", p.display(), self.port),
        }
    }

    /// Whether this is a Unix-domain socket (never encrypted, as in libpq).
    pub fn is_unix(&self) -> bool {
        matches!(self.host, Host::Unix(_))
    }
}

/// Resolved connection settings: the hosts, what every session sends (user, database,
/// options, application name, timeouts, keepalives, channel binding), TLS, the password file
/// and `target_session_attrs`. `Debug` and [`ConnInfo::describe`] never show the password.
#[derive(Clone)]
pub struct ConnInfo {
    /// Every setting but the hosts and the TLS mode, which are set per attempt.
    pub(super) base: tokio_postgres::Config,
    pub(super) hosts: Vec<HostEntry>,
    pub(super) tls_settings: TlsSettings,
    pub(super) tls: Tls,
    pub(super) passfile: Option<PathBuf>,
    pub(super) target: SessionAttrs,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Something the library's entry points accept as connection settings: a [`ConnInfo`], or a
/// `tokio_postgres::Config` (as [`ConnInfo::from_config`] converts it).
pub trait ToConnInfo {
    /// The settings as a [`ConnInfo`].
    fn to_conn_info(&self) -> Cow<'_, ConnInfo>;
}

impl ToConnInfo for ConnInfo {
    fn to_conn_info(&self) -> Cow<'_, ConnInfo> {
        Cow::Borrowed(self)
    }
}

impl ToConnInfo for tokio_postgres::Config {
    fn to_conn_info(&self) -> Cow<'_, ConnInfo> {
        Cow::Owned(ConnInfo::from_config(self))
    }
}

impl FromStr for ConnInfo {
    type Err = anyhow::Error;

    /// Parses a connection string alone (no service file, environment or password file),
    /// like `tokio_postgres::Config::from_str` but with libpq's keywords and `sslmode`s.
    fn from_str(text: &str) -> anyhow::Result<ConnInfo> {
        let mut settings = BTreeMap::new();
        for (k, v) in dsn::parse(text).map_err(|e| fail(FailureKind::Usage, e.to_string()))? {
            settings.insert(k, v);
        }
        ConnInfo::from_settings(&settings, false)
    }
}

/// Builds the connection settings from `dsn` (URI `postgres://user@host/db` or key/value
/// `host=.. dbname=..`), completing what it leaves out from the service file, the `PG*`
/// environment variables and libpq's defaults (Unix socket in `/var/run/postgresql` or `/tmp`
/// when there is one, else `localhost`; port 5432; the OS user; a database named like the
/// user; `application_name` `doppel`; `sslmode=prefer`; the password file
/// `~/.pgpass`).
///
/// Errors (exit 2, [`FailureKind::Usage`]): an unparsable DSN, an unknown parameter (named),
/// a value libpq would reject, a parameter doppel does not support, a service that is not
/// defined, or TLS files that cannot be used (a missing root certificate under `verify-ca` /
/// `verify-full`, a private key readable by others).
pub fn resolve(dsn: Option<&str>) -> anyhow::Result<ConnInfo> {
    resolve_with(dsn, &ProcessEnv)
}

/// [`resolve`] with the environment `env` (tests pass a map).
///
/// Errors: those of [`resolve`].
pub fn resolve_with(dsn: Option<&str>, env: &dyn Environment) -> anyhow::Result<ConnInfo> {
    let usage = |m: String| fail(FailureKind::Usage, m);
    let mut settings = BTreeMap::new();
    if let Some(text) = dsn {
        for (k, v) in dsn::parse(text).map_err(|e| usage(format!("--dsn: {e}")))? {
            settings.insert(k, v);
        }
    }
    env::fill(&mut settings, env).map_err(usage)?;
    let mut info = ConnInfo::from_settings(&settings, true)?;
    if info.passfile.is_none() {
        info.passfile = env::home_dir(env).map(|h| h.join(".pgpass"));
    }
    Ok(info)
}

/// Parameters libpq knows that doppel accepts only with these values (libpq's defaults or
/// equivalents), and those it refuses whatever their value.
const ACCEPTED_VALUES: &[(&str, &[&str])] = &[
    ("client_encoding", &["UTF8", "utf8", "auto"]),
    ("gssencmode", &["disable", "prefer", "allow"]),
    ("sslnegotiation", &["postgres"]),
    ("sslcompression", &["0", "1"]),
    ("sslsni", &["1"]),
    ("load_balance_hosts", &["disable"]),
    ("sslcertmode", &["allow"]),
    ("gssdelegation", &["0"]),
];

/// Keywords with a meaning in [`ConnInfo::from_settings`].
const SUPPORTED: &[&str] = &[
    "service",
    "user",
    "password",
    "passfile",
    "channel_binding",
    "connect_timeout",
    "dbname",
    "host",
    "hostaddr",
    "port",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslmode",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslrootcert",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "target_session_attrs",
    "krbsrvname",
    "gsslib",
];

fn check_supported(settings: &BTreeMap<String, String>) -> Result<(), String> {
    for (key, value) in settings {
        if SUPPORTED.contains(&key.as_str()) {
            continue;
        }
        match ACCEPTED_VALUES.iter().find(|(k, _)| k == key) {
            Some((_, values)) if values.contains(&value.as_str()) => {}
            Some((_, values)) => {
                return Err(format!(
                    "connection parameter {key}={value:?} is not supported by doppel (supported: {})",
                    values.join(", ")
                ));
            }
            None => {
                return Err(format!(
                    "connection parameter \"{key}\" is not supported by doppel (see the README's connection section)"
                ));
            }
        }
    }
    Ok(())
}

/// A number of seconds (libpq's integer parameters), or the error naming `key`.
fn seconds(key: &str, value: &str) -> Result<Duration, String> {
    value
        .trim()
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("invalid integer value \"{value}\" for connection option \"{key}\""))
}

impl ConnInfo {
    /// The settings from libpq keywords (`settings`, already completed from the service file
    /// and the environment when `libpq_defaults`). With `libpq_defaults`, the TLS files in
    /// `~/.postgresql/` are used when present, as libpq does.
    ///
    /// Errors: see [`resolve`].
    fn from_settings(
        settings: &BTreeMap<String, String>,
        libpq_defaults: bool,
    ) -> anyhow::Result<ConnInfo> {
        let usage = |m: String| fail(FailureKind::Usage, m);
        check_supported(settings).map_err(usage)?;
        let get = |k: &str| settings.get(k).map(String::as_str);
        let mut base = tokio_postgres::Config::new();
        let user = match get("user") {
            Some(u) => u.to_string(),
            None => env::os_user(&ProcessEnv).unwrap_or_else(|| "postgres".into()),
        };
        base.user(&user);
        base.dbname(get("dbname").unwrap_or(&user));
        if let Some(p) = get("password") {
            base.password(p);
        }
        if let Some(o) = get("options") {
            base.options(o);
        }
        base.application_name(
            get("application_name")
                .or(get("fallback_application_name"))
                .unwrap_or("doppel"),
        );
        apply_timeouts(&mut base, &get).map_err(usage)?;
        base.channel_binding(match get("channel_binding").unwrap_or("prefer") {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            other => {
                return Err(usage(format!(
                    "invalid channel_binding value: \"{other}\" (disable, prefer, require)"
                )));
            }
        });
        let hosts = host_entries(&get).map_err(usage)?;
        let target =
            SessionAttrs::parse(get("target_session_attrs").unwrap_or("any")).map_err(usage)?;
        let tls_settings = tls_settings(&get, libpq_defaults).map_err(usage)?;
        let tls = Tls::new(&tls_settings).map_err(usage)?;
        Ok(ConnInfo {
            base,
            hosts,
            tls_settings,
            tls,
            passfile: get("passfile").map(PathBuf::from),
            target,
        })
    }

    /// The settings of a `tokio_postgres::Config`: its hosts, ports and `hostaddr`s, its
    /// session settings, its `sslmode` (disable, prefer or require, without certificate
    /// verification, as tokio-postgres itself does without a verifying connector) and
    /// `target_session_attrs`. No password file is read.
    pub fn from_config(config: &tokio_postgres::Config) -> ConnInfo {
        let mut base = tokio_postgres::Config::new();
        if let Some(u) = config.get_user() {
            base.user(u);
        }
        if let Some(p) = config.get_password() {
            base.password(p);
        }
        if let Some(d) = config.get_dbname() {
            base.dbname(d);
        }
        if let Some(o) = config.get_options() {
            base.options(o);
        }
        base.application_name(config.get_application_name().unwrap_or("doppel"));
        if let Some(t) = config.get_connect_timeout() {
            base.connect_timeout(*t);
        }
        if let Some(t) = config.get_tcp_user_timeout() {
            base.tcp_user_timeout(*t);
        }
        base.keepalives(config.get_keepalives())
            .keepalives_idle(config.get_keepalives_idle());
        if let Some(i) = config.get_keepalives_interval() {
            base.keepalives_interval(i);
        }
        if let Some(r) = config.get_keepalives_retries() {
            base.keepalives_retries(r);
        }
        base.channel_binding(config.get_channel_binding());
        let ports = config.get_ports();
        let count = config.get_hosts().len().max(config.get_hostaddrs().len());
        let hosts = (0..count)
            .map(|i| HostEntry {
                host: config
                    .get_hosts()
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| Host::Tcp(config.get_hostaddrs()[i].to_string())),
                hostaddr: config.get_hostaddrs().get(i).copied(),
                port: ports.get(i).or(ports.first()).copied().unwrap_or(5432),
            })
            .collect();
        let mode = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        let tls_settings = TlsSettings {
            mode,
            ..TlsSettings::default()
        };
        let tls = Tls::new(&tls_settings).expect("a TLS context without files always builds");
        let target = match config.get_target_session_attrs() {
            tokio_postgres::config::TargetSessionAttrs::ReadWrite => SessionAttrs::ReadWrite,
            _ => SessionAttrs::Any,
        };
        ConnInfo {
            base,
            hosts,
            tls_settings,
            tls,
            passfile: None,
            target,
        }
    }

    /// These settings with `setting` (`-c name=value ...`) added to the startup options.
    pub fn with_option(&self, setting: &str) -> ConnInfo {
        let mut info = self.clone();
        info.base = with_option(&info.base, setting);
        info
    }

    /// These settings with [`EXACT_OUTPUT_OPTIONS`] added.
    pub fn with_exact_output(&self) -> ConnInfo {
        self.with_option(EXACT_OUTPUT_OPTIONS)
    }

    /// The TLS settings.
    pub fn tls_settings(&self) -> &TlsSettings {
        &self.tls_settings
    }

    /// The hosts, in the order they are tried.
    pub fn hosts(&self) -> &[HostEntry] {
        &self.hosts
    }

    /// The user name.
    pub fn user(&self) -> &str {
        self.base.get_user().unwrap_or("")
    }

    /// The database name.
    pub fn dbname(&self) -> &str {
        self.base.get_dbname().unwrap_or("")
    }

    /// `target_session_attrs`.
    pub fn target_session_attrs(&self) -> SessionAttrs {
        self.target
    }

    /// Where these settings connect, safe for logs and plans:
    /// `user@host:port[,host:port...]/dbname sslmode=...`, never the password.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self.hosts.iter().map(HostEntry::label).collect();
        format!(
            "{}@{}/{} (sslmode={})",
            self.user(),
            hosts.join(","),
            self.dbname(),
            self.tls_settings.mode.as_str()
        )
    }

    /// The tokio-postgres settings for one attempt on `host`: the base settings, that host,
    /// and the password (the configured one, else the password file's line for this host,
    /// port, database and user).
    pub(super) fn for_host(&self, host: &HostEntry) -> tokio_postgres::Config {
        let mut config = self.base.clone();
        match &host.host {
            Host::Tcp(h) => config.host(h),
            Host::Unix(p) => config.host_path(p),
        };
        if let Some(addr) = host.hostaddr {
            config.hostaddr(addr);
        }
        config.port(host.port);
        if config.get_password().is_none_or(<[u8]>::is_empty)
            && let Some(path) = &self.passfile
        {
            let name = match &host.host {
                Host::Tcp(h) => h.clone(),
                Host::Unix(p) => p.display().to_string(),
            };
            let port = host.port.to_string();
            let lookup = Lookup {
                host: &name,
                port: &port,
                dbname: self.dbname(),
                user: self.user(),
            };
            if let Some(password) = passfile::password_for(path, lookup) {
                config.password(password);
            }
        }
        config
    }
}

/// `connect_timeout` (seconds; below 2 counts as 2, 0 or negative waits forever, as libpq),
/// the keepalives and `tcp_user_timeout` (ms).
fn apply_timeouts<'a>(
    base: &mut tokio_postgres::Config,
    get: &dyn Fn(&str) -> Option<&'a str>,
) -> Result<(), String> {
    if let Some(v) = get("connect_timeout") {
        let secs: i64 = v.trim().parse().map_err(|_| {
            format!("invalid integer value \"{v}\" for connection option \"connect_timeout\"")
        })?;
        if secs > 0 {
            base.connect_timeout(Duration::from_secs(secs.max(2) as u64));
        }
    }
    if let Some(v) = get("keepalives") {
        base.keepalives(v.trim() != "0");
    }
    if let Some(v) = get("keepalives_idle") {
        base.keepalives_idle(seconds("keepalives_idle", v)?);
    }
    if let Some(v) = get("keepalives_interval") {
        base.keepalives_interval(seconds("keepalives_interval", v)?);
    }
    if let Some(v) = get("keepalives_count") {
        let n = v.trim().parse().map_err(|_| {
            format!("invalid integer value \"{v}\" for connection option \"keepalives_count\"")
        })?;
        base.keepalives_retries(n);
    }
    if let Some(v) = get("tcp_user_timeout") {
        let ms: u64 = v.trim().parse().map_err(|_| {
            format!("invalid integer value \"{v}\" for connection option \"tcp_user_timeout\"")
        })?;
        base.tcp_user_timeout(Duration::from_millis(ms));
    }
    Ok(())
}

/// The host list from `host`, `hostaddr` and `port` (comma-separated, as libpq): a `host`
/// starting with `/` is a socket directory; without `host` and `hostaddr`, the default
/// socket directory if a server socket is there, else `localhost`.
fn host_entries<'a>(get: &dyn Fn(&str) -> Option<&'a str>) -> Result<Vec<HostEntry>, String> {
    let split = |v: Option<&str>| -> Vec<String> {
        v.map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default()
    };
    let names = split(get("host"));
    let addrs = split(get("hostaddr"));
    let ports = split(get("port"));
    let count = names.len().max(addrs.len()).max(1);
    if (!names.is_empty() && names.len() != count) || (!addrs.is_empty() && addrs.len() != count) {
        return Err(format!(
            "could not match {} host names to {} hostaddr values",
            names.len(),
            addrs.len()
        ));
    }
    if ports.len() > 1 && ports.len() != count {
        return Err(format!(
            "could not match {} port numbers to {count} hosts",
            ports.len()
        ));
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let hostaddr = match addrs.get(i).filter(|a| !a.is_empty()) {
            Some(a) => Some(
                a.parse::<IpAddr>()
                    .map_err(|_| format!("could not parse network address \"{a}\""))?,
            ),
            None => None,
        };
        let host = match names.get(i).filter(|n| !n.is_empty()) {
            Some(n) if n.starts_with('/') => Host::Unix(PathBuf::from(n)),
            Some(n) => Host::Tcp(n.clone()),
            None => match hostaddr {
                Some(a) => Host::Tcp(a.to_string()),
                None => default_host(),
            },
        };
        let port_text = ports
            .get(i)
            .or(ports.first().filter(|_| ports.len() == 1))
            .filter(|p| !p.is_empty());
        let port = match port_text {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("invalid port number: \"{p}\""))?,
            None => 5432,
        };
        out.push(HostEntry {
            host,
            hostaddr,
            port,
        });
    }
    Ok(out)
}

/// libpq's default host: the socket directory (Debian's, else `/tmp`) when a server socket
/// is there, else `localhost`.
fn default_host() -> Host {
    let has_socket = |dir: &str| {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(".s.PGSQL."))
            })
            .unwrap_or(false)
    };
    match [passfile::DEFAULT_SOCKET_DIR, "/tmp"]
        .into_iter()
        .find(|d| has_socket(d))
    {
        Some(dir) => Host::Unix(PathBuf::from(dir)),
        None => Host::Tcp("localhost".into()),
    }
}

/// The TLS settings from the `ssl*` keywords. With `libpq_defaults`, the files in
/// `~/.postgresql/` stand in for an unset `sslrootcert`, `sslcert` or `sslkey` when they
/// exist. `sslrootcert=system` makes an unset `sslmode` `verify-full` and refuses a weaker
/// one (libpq 16).
fn tls_settings<'a>(
    get: &dyn Fn(&str) -> Option<&'a str>,
    libpq_defaults: bool,
) -> Result<TlsSettings, String> {
    let mode_set = get("sslmode").is_some();
    let mut mode = SslMode::parse(get("sslmode").unwrap_or("prefer"))?;
    let default_if_exists = |name: &str| {
        let path = tls::default_file(name);
        (libpq_defaults && path.exists()).then_some(path)
    };
    let root_cert = match get("sslrootcert") {
        Some("system") => {
            if !mode_set {
                mode = SslMode::VerifyFull;
            } else if mode != SslMode::VerifyFull {
                return Err(format!(
                    "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
                    mode.as_str()
                ));
            }
            Some(RootCert::System)
        }
        Some(path) if Path::new(path).exists() => Some(RootCert::File(PathBuf::from(path))),
        Some(path) if mode >= SslMode::VerifyCa => {
            return Err(format!(
                "root certificate file \"{path}\" does not exist\nEither provide the file, use the system's trusted roots with sslrootcert=system, or change sslmode to disable server certificate verification."
            ));
        }
        Some(_) => None,
        None => default_if_exists("root.crt").map(RootCert::File),
    };
    let cert = get("sslcert")
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .or_else(|| default_if_exists("postgresql.crt"));
    let client_cert = cert.map(|cert| {
        let key = get("sslkey")
            .map(PathBuf::from)
            .unwrap_or_else(|| tls::default_file("postgresql.key"));
        (cert, key)
    });
    Ok(TlsSettings {
        mode,
        root_cert,
        client_cert,
        key_password: get("sslpassword").map(str::to_string),
        min_version: tls::parse_version(get("ssl_min_protocol_version").unwrap_or("TLSv1.2"))?,
        max_version: tls::parse_version(get("ssl_max_protocol_version").unwrap_or(""))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_env(dsn: &str, env: &[(&str, &str)]) -> anyhow::Result<ConnInfo> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        resolve_with(Some(dsn), &env)
    }

    #[test]
    fn uri_and_key_value_both_parse_and_hide_the_password() {
        let c = resolve_env("postgres://alice:secret@db.example:6543/shop", &[]).unwrap();
        assert_eq!(c.describe(), "alice@db.example:6543/shop (sslmode=prefer)");
        assert!(!format!("{c:?}").contains("secret"));
        let c = resolve_env(
            "host=h1,h2 port=7000,7001 user=bob dbname=x password=pw",
            &[],
        )
        .unwrap();
        assert_eq!(c.describe(), "bob@h1:7000,h2:7001/x (sslmode=prefer)");
        assert_eq!(c.base.get_application_name(), Some("doppel"));
    }

    #[test]
    fn environment_fills_what_the_dsn_leaves_out() {
        let c = resolve_env(
            "host=h",
            &[
                ("PGSSLMODE", "require"),
                ("PGAPPNAME", "mine"),
                ("PGCONNECT_TIMEOUT", "1"),
                ("PGTARGETSESSIONATTRS", "read-write"),
                ("PGUSER", "u"),
                ("PGDATABASE", "d"),
                ("PGPORT", "6000"),
            ],
        )
        .unwrap();
        assert_eq!(c.tls_settings.mode, SslMode::Require);
        assert_eq!(c.base.get_application_name(), Some("mine"));
        assert_eq!(c.base.get_connect_timeout(), Some(&Duration::from_secs(2)));
        assert_eq!(c.target, SessionAttrs::ReadWrite);
        assert_eq!(c.describe(), "u@h:6000/d (sslmode=require)");
        let c = resolve_env("host=h sslmode=disable", &[("PGSSLMODE", "require")]).unwrap();
        assert_eq!(c.tls_settings.mode, SslMode::Disable, "the DSN wins");
    }

    #[test]
    fn invalid_input_is_a_usage_error_naming_the_parameter() {
        for (dsn, needle) in [
            ("host=h colour=red", "\"colour\""),
            ("postgresql://h/db?sslmod=require", "\"sslmod\""),
            ("host=h sslmode=maybe", "sslmode"),
            ("host=h port=x", "port"),
            ("host=h connect_timeout=soon", "connect_timeout"),
            ("host=h target_session_attrs=rw", "target_session_attrs"),
            ("host=h replication=database", "\"replication\""),
            (
                "host=h sslmode=verify-full sslrootcert=/nonexistent/ca.pem",
                "does not exist",
            ),
            ("host=h sslrootcert=system sslmode=require", "weak sslmode"),
            ("host=h password='unterminated", "unterminated"),
        ] {
            let err = resolve_env(dsn, &[]).unwrap_err();
            assert_eq!(crate::failure::exit_code(&err), 2, "{dsn}");
            assert!(err.to_string().contains(needle), "{dsn}: {err}");
        }
        let err = resolve_env("host=h", &[("PGSSLMODE", "on")]).unwrap_err();
        assert!(err.to_string().contains("sslmode"), "{err}");
    }

    #[test]
    fn sslrootcert_system_implies_verify_full() {
        let c = resolve_env("host=h sslrootcert=system", &[]).unwrap();
        assert_eq!(c.tls_settings.mode, SslMode::VerifyFull);
    }

    #[test]
    fn password_file_is_read_per_host() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "h2:5432:d:u:second\n*:*:*:u:any\n").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let c = resolve_env(
            &format!("host=h1,h2 user=u dbname=d passfile={}", path.display()),
            &[],
        )
        .unwrap();
        assert_eq!(c.for_host(&c.hosts[0]).get_password(), Some(&b"any"[..]));
        assert_eq!(c.for_host(&c.hosts[1]).get_password(), Some(&b"second"[..]));
        let c = resolve_env(
            &format!(
                "host=h1 user=u dbname=d password=given passfile={}",
                path.display()
            ),
            &[],
        )
        .unwrap();
        assert_eq!(c.for_host(&c.hosts[0]).get_password(), Some(&b"given"[..]));
    }
}
