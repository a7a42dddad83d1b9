//! Connection strings as libpq reads them (libpq's "Connection Strings" documentation,
//! `conninfo_parse` and `conninfo_uri_parse` in `fe-connect.c`): the `key=value` form and the
//! `postgresql://` URI form, both turned into an ordered list of (keyword, value) pairs whose
//! keywords are checked against [`KEYWORDS`].
//!
//! Only the syntax lives here: which keywords doppel supports, and what they mean, is the
//! business of the parent module.

use std::fmt;

/// Every connection keyword libpq 18 knows (`PQconninfoOptions`), in its order. A keyword
/// outside this list is "invalid connection option", as libpq says.
pub const KEYWORDS: &[&str] = &[
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
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslmode",
    "sslnegotiation",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslcertmode",
    "sslpassword",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslkeylogfile",
    "requirepeer",
    "require_auth",
    "min_protocol_version",
    "max_protocol_version",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "gssencmode",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "replication",
    "target_session_attrs",
    "load_balance_hosts",
    "scram_client_key",
    "scram_server_key",
    "oauth_issuer",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_scope",
];

/// A connection string libpq would reject, with libpq's reason. Never contains a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DsnError {
    /// A keyword libpq does not know (key/value form, or a URI query parameter).
    UnknownKeyword(String),
    /// The text cannot be parsed; the message says where.
    Syntax(String),
}

impl fmt::Display for DsnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DsnError::UnknownKeyword(k) => write!(f, "invalid connection option \"{k}\""),
            DsnError::Syntax(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for DsnError {}

/// Parses a connection string: a URI when it starts with `postgresql://` or `postgres://`,
/// key/value pairs otherwise. Returns the pairs in the order given (a repeated keyword: the
/// last one wins, as in libpq).
///
/// Errors: [`DsnError::UnknownKeyword`] for a keyword libpq does not know, and
/// [`DsnError::Syntax`] for a missing `=`, an unterminated quoted value or a malformed URI.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, DsnError> {
    let pairs = if text.starts_with("postgresql://") || text.starts_with("postgres://") {
        parse_uri(text)?
    } else {
        parse_key_value(text)?
    };
    for (key, _) in &pairs {
        if !KEYWORDS.contains(&key.as_str()) {
            return Err(DsnError::UnknownKeyword(key.clone()));
        }
    }
    Ok(pairs)
}

/// The `keyword = value` form: whitespace around `=` is allowed; a value is either single
/// quoted (`\'` and `\\` escape a quote and a backslash) or runs to the next whitespace
/// (a backslash escapes the next character there too).
fn parse_key_value(text: &str) -> Result<Vec<(String, String)>, DsnError> {
    let mut chars = text.chars().peekable();
    let mut out = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(DsnError::Syntax(format!(
                "missing \"=\" after \"{key}\" in connection info string"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(DsnError::Syntax(
                            "unterminated quoted string in connection info string".into(),
                        ));
                    }
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => {
                            return Err(DsnError::Syntax(
                                "unterminated quoted string in connection info string".into(),
                            ));
                        }
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        value.push(next);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

/// Decodes `%XX` escapes (libpq's `conninfo_uri_decode`): a `%` not followed by two hex
/// digits, or an escape decoding to a NUL byte, is an error.
fn percent_decode(text: &str) -> Result<String, DsnError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(0) => {
                    return Err(DsnError::Syntax(format!(
                        "forbidden value %00 in percent-encoded value: \"{text}\""
                    )));
                }
                Some(b) => out.push(b),
                None => {
                    return Err(DsnError::Syntax(format!(
                        "invalid percent-encoded token: \"{text}\""
                    )));
                }
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| DsnError::Syntax(format!("percent-encoded value is not UTF-8: \"{text}\"")))
}

/// The URI form: `postgresql://[user[:password]@][host][:port][,host[:port]...][/dbname]
/// [?keyword=value&...]`, IPv6 addresses in brackets, every part percent-decoded. Several
/// hosts give comma-separated `host` and `port` values, as libpq builds them. The query
/// parameter `ssl=true` means `sslmode=require` (libpq's JDBC compatibility).
fn parse_uri(text: &str) -> Result<Vec<(String, String)>, DsnError> {
    let rest = text
        .strip_prefix("postgresql://")
        .or_else(|| text.strip_prefix("postgres://"))
        .expect("caller checked the prefix");
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let mut out = Vec::new();
    let netloc = match authority.rfind('@') {
        Some(i) => {
            let userinfo = &authority[..i];
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                out.push(("user".to_string(), percent_decode(user)?));
            }
            if let Some(p) = password {
                out.push(("password".to_string(), percent_decode(p)?));
            }
            &authority[i + 1..]
        }
        None => authority,
    };
    if !netloc.is_empty() {
        let (hosts, ports) = uri_hosts(netloc, text)?;
        if hosts.iter().any(|h| !h.is_empty()) {
            out.push(("host".to_string(), hosts.join(",")));
        }
        if ports.iter().any(|p| !p.is_empty()) {
            out.push(("port".to_string(), ports.join(",")));
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        out.push(("dbname".to_string(), percent_decode(db)?));
    }
    if let Some(query) = query {
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let Some((key, value)) = param.split_once('=') else {
                return Err(DsnError::Syntax(format!(
                    "missing key/value separator \"=\" in URI query parameter: \"{param}\""
                )));
            };
            let key = percent_decode(key)?;
            let value = percent_decode(value)?;
            if key == "ssl" && value == "true" {
                out.push(("sslmode".to_string(), "require".to_string()));
            } else if !KEYWORDS.contains(&key.as_str()) {
                return Err(DsnError::UnknownKeyword(key));
            } else {
                out.push((key, value));
            }
        }
    }
    Ok(out)
}

/// The comma-separated `host[:port]` list of a URI, each host percent-decoded (a host
/// starting with `/` after decoding is a Unix socket directory).
fn uri_hosts(netloc: &str, uri: &str) -> Result<(Vec<String>, Vec<String>), DsnError> {
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for item in netloc.split(',') {
        let (host, port) = if let Some(v6) = item.strip_prefix('[') {
            let Some(end) = v6.find(']') else {
                return Err(DsnError::Syntax(format!(
                    "end of string reached when looking for matching \"]\" in IPv6 host address in URI: \"{uri}\""
                )));
            };
            let after = &v6[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => p,
                None if after.is_empty() => "",
                None => {
                    return Err(DsnError::Syntax(format!(
                        "unexpected character \"{}\" after IPv6 host address in URI: \"{uri}\"",
                        after.chars().next().unwrap_or(' ')
                    )));
                }
            };
            (v6[..end].to_string(), port)
        } else {
            match item.rsplit_once(':') {
                Some((h, p)) => (percent_decode(h)?, p),
                None => (percent_decode(item)?, ""),
            }
        };
        if !port.chars().all(|c| c.is_ascii_digit()) {
            return Err(DsnError::Syntax(format!(
                "invalid port number \"{port}\" in URI: \"{}\"",
                redact_uri(uri)
            )));
        }
        hosts.push(host);
        ports.push(port.to_string());
    }
    Ok((hosts, ports))
}

/// `uri` with the password of its user info replaced by `********`, for error messages.
pub fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_string();
    };
    let after = &uri[scheme_end + 3..];
    let authority_end = after.find(['/', '?']).unwrap_or(after.len());
    let authority = &after[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:********{}",
            &uri[..scheme_end + 3],
            &authority[..colon],
            &after[at..]
        ),
        _ => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn key_value_quoting_follows_libpq() {
        let p = parse(r"host = db1 user='o\'brien' password='a b\\c' dbname=sh\ op").unwrap();
        assert_eq!(get(&p, "host"), Some("db1"));
        assert_eq!(get(&p, "user"), Some("o'brien"));
        assert_eq!(get(&p, "password"), Some(r"a b\c"));
        assert_eq!(get(&p, "dbname"), Some("sh op"));
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(get(&parse("port=1 port=2").unwrap(), "port"), Some("2"));
    }

    #[test]
    fn key_value_errors_name_the_problem() {
        assert_eq!(
            parse("host=x colour=blue").unwrap_err(),
            DsnError::UnknownKeyword("colour".into())
        );
        assert!(
            parse("host")
                .unwrap_err()
                .to_string()
                .contains("missing \"=\"")
        );
        assert!(
            parse("password='abc")
                .unwrap_err()
                .to_string()
                .contains("unterminated")
        );
    }

    #[test]
    fn uri_with_several_hosts_ipv6_and_parameters() {
        let p = parse(
            "postgresql://al%40ice:s%3Acret@h1:5433,[::1]:5434,h3/my%20db?sslmode=verify-full&target_session_attrs=read-write",
        )
        .unwrap();
        assert_eq!(get(&p, "user"), Some("al@ice"));
        assert_eq!(get(&p, "password"), Some("s:cret"));
        assert_eq!(get(&p, "host"), Some("h1,::1,h3"));
        assert_eq!(get(&p, "port"), Some("5433,5434,"));
        assert_eq!(get(&p, "dbname"), Some("my db"));
        assert_eq!(get(&p, "sslmode"), Some("verify-full"));
        assert_eq!(get(&p, "target_session_attrs"), Some("read-write"));
    }

    #[test]
    fn uri_socket_directory_and_ssl_true() {
        let p = parse("postgres://%2Fvar%2Frun%2Fpostgresql/db?ssl=true").unwrap();
        assert_eq!(get(&p, "host"), Some("/var/run/postgresql"));
        assert_eq!(get(&p, "sslmode"), Some("require"));
        let p = parse("postgresql:///db?host=/tmp&port=5999").unwrap();
        assert_eq!(get(&p, "host"), Some("/tmp"));
        assert_eq!(get(&p, "dbname"), Some("db"));
        let p = parse("postgresql://").unwrap();
        assert!(p.is_empty());
    }

    #[test]
    fn uri_errors_name_the_parameter_and_hide_the_password() {
        assert_eq!(
            parse("postgresql://h/db?sslmod=require").unwrap_err(),
            DsnError::UnknownKeyword("sslmod".into())
        );
        let err = parse("postgresql://u:sekrit@h:port/db")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid port"), "{err}");
        assert!(!err.contains("sekrit"), "{err}");
        assert!(parse("postgresql://h/db?x").is_err());
        assert!(parse("postgresql://h/d%zzb").is_err());
        assert!(parse("postgresql://[::1/db").is_err());
    }
}
