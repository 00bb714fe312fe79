//! `DATABASE_BACKEND=turso`: Turso Cloud, one database per user, made and
//! removed through the Turso Platform API (see README, Running on Turso).

use std::net::SocketAddr;
use std::time::Duration;

use super::{invalid, ConfigError, Secret};

/// Where the Platform API answers unless `TURSO_API_URL` says otherwise.
pub const DEFAULT_API_URL: &str = "https://api.turso.tech";

/// The longest database name Turso takes (its create route's rule).
pub const MAX_DATABASE_NAME: usize = 32;

#[derive(Debug, Clone)]
pub struct TursoConfig {
    /// The Platform API (`TURSO_API_URL`, default [`DEFAULT_API_URL`]).
    pub api_url: String,
    /// The organization (or personal account) slug: `TURSO_ORG`.
    pub org: String,
    /// A Platform API token (`turso auth api-tokens mint`): `TURSO_AUTH_TOKEN`.
    pub auth_token: Secret,
    /// The group every database is created in (it must exist): `TURSO_GROUP`.
    pub group: String,
    /// The control database's name (`TURSO_CONTROL_DATABASE`, default `echolia-control`).
    pub control_database: String,
    /// How long a minted database token lives (`TURSO_TOKEN_EXPIRATION`,
    /// Turso's form: `7d`, `2w1d30m`; default `7d`).
    pub token_expiration: TokenExpiration,
    /// The longest any one call may take (`TURSO_TIMEOUT_SECS`, default 10).
    pub timeout: Duration,
    /// Retries of a Platform API call answered 429 or 5xx, or not at all (`TURSO_RETRIES`, default 3).
    pub retries: u32,
    /// `TURSO_CONNECT_TO=host:port`: every database host is reached at this
    /// address over plain HTTP, its name kept in the `Host` header (tests, a local proxy).
    pub connect_to: Option<SocketAddr>,
}

/// A database token's lifetime, as the Platform API's `expiration` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenExpiration {
    /// As given (sent as is).
    pub text: String,
    pub duration: Duration,
}

impl TokenExpiration {
    /// Turso's duration form: numbers with units `w`, `d`, `h`, `m`, `s`.
    pub fn parse(text: &str) -> Option<Self> {
        let (mut total, mut number, mut any) = (0u64, None::<u64>, false);
        for c in text.chars() {
            if let Some(digit) = c.to_digit(10) {
                number = Some(number.unwrap_or(0).checked_mul(10)?.checked_add(u64::from(digit))?);
                continue;
            }
            let unit = match c {
                'w' => 7 * 86_400,
                'd' => 86_400,
                'h' => 3_600,
                'm' => 60,
                's' => 1,
                _ => return None,
            };
            total = total.checked_add(number.take()?.checked_mul(unit)?)?;
            any = true;
        }
        (any && number.is_none() && total > 0)
            .then(|| Self { text: text.to_owned(), duration: Duration::from_secs(total) })
    }
}

/// Whether `name` is one Turso takes for a database or a group: lowercase
/// letters, digits and dashes, starting with a letter.
pub fn valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `TURSO_*`: every one of the three required that is missing is named at once.
pub fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<TursoConfig, ConfigError> {
    if !cfg!(feature = "remote-storage") {
        return Err(invalid(
            "DATABASE_BACKEND",
            "this build has no remote storage (built without the `remote-storage` cargo feature); use `local`",
        ));
    }
    // The organization is named by its slug, the API by TURSO_API_URL: a URL of both is not read.
    if get("TURSO_ORG_URL").is_some() {
        return Err(invalid(
            "TURSO_ORG_URL",
            "is not read: set TURSO_ORG to the organization's slug (and TURSO_API_URL if not https://api.turso.tech)",
        ));
    }
    let (org, token, group) = (get("TURSO_ORG"), get("TURSO_AUTH_TOKEN"), get("TURSO_GROUP"));
    let (Some(org), Some(token), Some(group)) = (org.clone(), token.clone(), group.clone()) else {
        let missing: Vec<&str> =
            [(org.is_none(), "TURSO_ORG"), (token.is_none(), "TURSO_AUTH_TOKEN"), (group.is_none(), "TURSO_GROUP")]
                .into_iter()
                .filter_map(|(missing, name)| missing.then_some(name))
                .collect();
        return Err(invalid(
            "DATABASE_BACKEND",
            format!("`turso` needs {} (see README, Running on Turso)", missing.join(", ")),
        ));
    };
    // They go into the Platform API's paths and bodies as they are.
    for (variable, value) in [("TURSO_ORG", &org), ("TURSO_GROUP", &group)] {
        if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(invalid(variable, format!("`{value}` is not a Turso slug (letters, digits, dashes)")));
        }
    }
    let api_url = get("TURSO_API_URL").unwrap_or_else(|| DEFAULT_API_URL.into());
    if !api_url.starts_with("https://") && !api_url.starts_with("http://") {
        return Err(invalid("TURSO_API_URL", format!("`{api_url}` is not an http(s) URL")));
    }
    let control_database = get("TURSO_CONTROL_DATABASE").unwrap_or_else(|| "echolia-control".into());
    if !valid_name(&control_database) || control_database.len() > MAX_DATABASE_NAME {
        return Err(invalid(
            "TURSO_CONTROL_DATABASE",
            format!("`{control_database}` is not a Turso database name (lowercase letters, digits, dashes; at most {MAX_DATABASE_NAME})"),
        ));
    }
    let expiration = get("TURSO_TOKEN_EXPIRATION").unwrap_or_else(|| "7d".into());
    let token_expiration = TokenExpiration::parse(&expiration).ok_or_else(|| {
        invalid("TURSO_TOKEN_EXPIRATION", format!("`{expiration}` is not a duration like 7d or 2w1d30m"))
    })?;
    let retries: u32 = super::parse_or("TURSO_RETRIES", get("TURSO_RETRIES"), "3")?;
    if retries > 10 {
        return Err(invalid("TURSO_RETRIES", format!("`{retries}` is more than 10")));
    }
    let connect_to = get("TURSO_CONNECT_TO")
        .map(|addr| {
            addr.parse::<SocketAddr>()
                .map_err(|_| invalid("TURSO_CONNECT_TO", format!("`{addr}` is not an address like 127.0.0.1:8080")))
        })
        .transpose()?;
    Ok(TursoConfig {
        api_url: api_url.trim_end_matches('/').to_owned(),
        org,
        auth_token: Secret::from(token.into_bytes()),
        group,
        control_database,
        token_expiration,
        timeout: super::seconds("TURSO_TIMEOUT_SECS", get("TURSO_TIMEOUT_SECS"), "10")?,
        retries,
        connect_to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_expirations_take_tursos_form() {
        let parsed = |text: &str| TokenExpiration::parse(text).map(|e| e.duration.as_secs());
        assert_eq!(parsed("7d"), Some(7 * 86_400));
        assert_eq!(parsed("2w1d30m"), Some(15 * 86_400 + 1_800));
        assert_eq!(parsed("45s"), Some(45));
        for bad in ["", "7", "d", "7x", "0s", "never", "-1d", "99999999999999999999w"] {
            assert_eq!(parsed(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_follow_tursos_rules() {
        assert!(valid_name("echolia-control") && valid_name("u-abc234"));
        for bad in ["", "Upper", "1st", "a_b", "a.b", "dé"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
