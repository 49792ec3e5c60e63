//! The auth file: who holds which token, roles, static queue grants and the OIDC provider.
//!
//! ```toml
//! [[users]]
//! name = "alice"
//! token_hash = "sha256:…"          # `flotilla auth hash-token`
//! groups = ["research"]
//!
//! [[executors]]
//! cluster = "onprem-lab"
//! token_hash = "sha256:…"
//!
//! [roles]
//! admin = ["user:admin"]
//! viewer = ["group:sre"]
//!
//! [[grants]]
//! queue = "research"
//! permit = "user:alice=submit,cancel,watch"
//!
//! [oidc]
//! issuer = "https://issuer.example.com"
//! audience = "flotilla"
//! jwks_url = "https://issuer.example.com/jwks.json"   # or jwks_file
//! ```
//!
//! Tokens are stored as SHA-256 digests, never in the clear. The digest is not salted: tokens
//! must be long random strings (`flotilla auth hash-token --generate` makes one), which no
//! dictionary holds. The example file's short tokens are for trying Flotilla out only.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_model::{Permit, Subject};
use serde::Deserialize;

/// Largest auth file read, in bytes.
pub const MAX_AUTH_FILE_BYTES: u64 = 4 * 1024 * 1024;
const HASH_PREFIX: &str = "sha256:";

/// The parsed auth file, ready to answer "who holds this token".
#[derive(Debug, Default)]
pub struct AuthFile {
    /// Token digest → identity.
    pub(super) tokens: HashMap<[u8; 32], TokenHolder>,
    pub(super) admins: Vec<Subject>,
    pub(super) viewers: Vec<Subject>,
    /// Queue name → permits granted by the file (besides those stored on the queue).
    pub(super) grants: BTreeMap<String, Vec<Permit>>,
    pub(super) oidc: Option<OidcSettings>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum TokenHolder {
    User { name: String, groups: Vec<String> },
    Executor { cluster: String },
}

/// Where an OIDC provider's tokens are checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcSettings {
    pub issuer: String,
    pub audience: String,
    pub jwks: JwksSource,
    /// The claim naming the user (`sub` by default; `email` is common).
    pub username_claim: String,
    /// The claim listing the user's groups (an array of strings).
    pub groups_claim: String,
    pub refresh: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    executors: Vec<RawExecutor>,
    #[serde(default)]
    roles: RawRoles,
    #[serde(default)]
    grants: Vec<RawGrant>,
    oidc: Option<RawOidc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    token_hash: String,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExecutor {
    cluster: String,
    token_hash: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRoles {
    #[serde(default)]
    admin: Vec<String>,
    #[serde(default)]
    viewer: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    queue: String,
    permit: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    issuer: String,
    audience: String,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    #[serde(default = "default_username_claim")]
    username_claim: String,
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
    #[serde(default, with = "humantime_serde_opt")]
    refresh: Option<Duration>,
}

fn default_username_claim() -> String {
    "sub".into()
}

fn default_groups_claim() -> String {
    "groups".into()
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration ({e})")))).transpose()
    }
}

/// `sha256:<hex>` of a token, as the auth file stores it.
pub fn hash_token(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = String::with_capacity(HASH_PREFIX.len() + 64);
    out.push_str(HASH_PREFIX);
    for b in digest.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A new random token: 32 bytes from the system's random source, as 64 hex digits.
pub fn generate_token() -> Result<String, String> {
    random_hex(32)
}

/// `n` bytes from the system's secure random source, as lowercase hex.
pub fn random_hex(n: usize) -> Result<String, String> {
    let mut bytes = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "the system random source failed".to_string())?;
    Ok(bytes.iter().fold(String::with_capacity(2 * n), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

pub(super) fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn parse_hash(path: &str, s: &str) -> Result<[u8; 32], String> {
    let hex = s
        .strip_prefix(HASH_PREFIX)
        .ok_or_else(|| format!("{path}: must start with {HASH_PREFIX} (make one with `flotilla auth hash-token`)"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{path}: {HASH_PREFIX} must be followed by 64 hex digits"));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| format!("{path}: not hex"))?;
    }
    Ok(out)
}

impl AuthFile {
    /// Reads and checks an auth file; errors name the file and the entry.
    pub fn load(path: &Path) -> Result<AuthFile, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("--auth-file {}: {e}", path.display()))?;
        if meta.len() > MAX_AUTH_FILE_BYTES {
            return Err(format!("--auth-file {}: {} bytes, more than the limit of {MAX_AUTH_FILE_BYTES}", path.display(), meta.len()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("--auth-file {}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        AuthFile::parse(&text, base).map_err(|e| format!("--auth-file {}: {e}", path.display()))
    }

    /// Parses the TOML text of an auth file; relative paths in it are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<AuthFile, String> {
        let raw: Raw = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut file = AuthFile::default();
        let mut names = std::collections::HashSet::new();
        for (i, u) in raw.users.iter().enumerate() {
            let path = format!("users[{i}]");
            Subject::parse(&format!("user:{}", u.name)).map_err(|e| format!("{path}.name: {e}"))?;
            if !names.insert(u.name.clone()) {
                return Err(format!("{path}.name: user {} is listed twice", flotilla_model::quote(&u.name)));
            }
            for (j, g) in u.groups.iter().enumerate() {
                Subject::parse(&format!("group:{g}")).map_err(|e| format!("{path}.groups[{j}]: {e}"))?;
            }
            let hash = parse_hash(&format!("{path}.token_hash"), &u.token_hash)?;
            let holder = TokenHolder::User { name: u.name.clone(), groups: u.groups.clone() };
            if file.tokens.insert(hash, holder).is_some() {
                return Err(format!("{path}.token_hash: the same token is given to two identities"));
            }
        }
        let mut clusters = std::collections::HashSet::new();
        for (i, e) in raw.executors.iter().enumerate() {
            let path = format!("executors[{i}]");
            let mut errors = Vec::new();
            flotilla_model::check_name(&format!("{path}.cluster"), &e.cluster, &mut errors);
            if let Some(err) = errors.first() {
                return Err(err.to_string());
            }
            if !clusters.insert(e.cluster.clone()) {
                return Err(format!("{path}.cluster: {} has two credentials; give each cluster one", flotilla_model::quote(&e.cluster)));
            }
            let hash = parse_hash(&format!("{path}.token_hash"), &e.token_hash)?;
            if file.tokens.insert(hash, TokenHolder::Executor { cluster: e.cluster.clone() }).is_some() {
                return Err(format!("{path}.token_hash: the same token is given to two identities"));
            }
        }
        for (role, list, out) in [("admin", &raw.roles.admin, &mut file.admins), ("viewer", &raw.roles.viewer, &mut file.viewers)] {
            for (i, s) in list.iter().enumerate() {
                out.push(Subject::parse(s).map_err(|e| format!("roles.{role}[{i}]: {e}"))?);
            }
        }
        for (i, g) in raw.grants.iter().enumerate() {
            let mut errors = Vec::new();
            flotilla_model::check_name(&format!("grants[{i}].queue"), &g.queue, &mut errors);
            if let Some(err) = errors.first() {
                return Err(err.to_string());
            }
            let permit = Permit::parse(&g.permit).map_err(|e| format!("grants[{i}].permit: {e}"))?;
            file.grants.entry(g.queue.clone()).or_default().push(permit);
        }
        if let Some(o) = raw.oidc {
            let jwks = match (o.jwks_file, o.jwks_url) {
                (Some(f), None) => JwksSource::File(if f.is_absolute() { f } else { base.join(f) }),
                (None, Some(u)) if u.starts_with("https://") || u.starts_with("http://") => JwksSource::Url(u),
                (None, Some(u)) => return Err(format!("oidc.jwks_url: {} must start with https://", flotilla_model::quote(&u))),
                _ => return Err("oidc: give exactly one of jwks_file and jwks_url".into()),
            };
            if o.issuer.is_empty() || o.audience.is_empty() {
                return Err("oidc: issuer and audience are required".into());
            }
            let refresh = o.refresh.unwrap_or(Duration::from_secs(300)).max(Duration::from_secs(10));
            file.oidc = Some(OidcSettings {
                issuer: o.issuer,
                audience: o.audience,
                jwks,
                username_claim: o.username_claim,
                groups_claim: o.groups_claim,
                refresh,
            });
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(t: &str) -> String {
        hash_token(t)
    }

    #[test]
    fn hashes_are_sha256_hex_and_parse_back() {
        // printf %s abc | sha256sum
        assert_eq!(hash_token("abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(parse_hash("x", &hash_token("abc")).unwrap(), digest("abc"));
        assert!(parse_hash("x", "abc").unwrap_err().contains("must start with sha256:"));
        assert!(parse_hash("x", "sha256:zz").unwrap_err().contains("64 hex digits"));
    }

    #[test]
    fn a_file_maps_tokens_to_users_and_executors() {
        let text = format!(
            r#"
            [[users]]
            name = "alice"
            token_hash = "{}"
            groups = ["research"]
            [[executors]]
            cluster = "onprem-lab"
            token_hash = "{}"
            [roles]
            admin = ["user:root"]
            [[grants]]
            queue = "research"
            permit = "group:research=submit"
            "#,
            h("a"),
            h("e")
        );
        let f = AuthFile::parse(&text, Path::new(".")).unwrap();
        assert_eq!(f.tokens[&digest("a")], TokenHolder::User { name: "alice".into(), groups: vec!["research".into()] });
        assert_eq!(f.tokens[&digest("e")], TokenHolder::Executor { cluster: "onprem-lab".into() });
        assert_eq!(f.admins, vec![Subject::User("root".into())]);
        assert_eq!(f.grants["research"].len(), 1);
        assert!(!f.tokens.contains_key(&digest("b")));
    }

    #[test]
    fn bad_files_name_the_entry() {
        let dup = format!("[[users]]\nname = \"a\"\ntoken_hash = \"{0}\"\n[[users]]\nname = \"b\"\ntoken_hash = \"{0}\"\n", h("t"));
        assert!(AuthFile::parse(&dup, Path::new(".")).unwrap_err().contains("users[1].token_hash: the same token"));
        let bad_cluster = format!("[[executors]]\ncluster = \"Bad_Name\"\ntoken_hash = \"{}\"\n", h("t"));
        assert!(AuthFile::parse(&bad_cluster, Path::new(".")).unwrap_err().contains("executors[0].cluster"));
        let clear = "[[users]]\nname = \"a\"\ntoken_hash = \"alice-example-token\"\n";
        assert!(AuthFile::parse(clear, Path::new(".")).unwrap_err().contains("users[0].token_hash: must start with sha256:"));
        assert!(AuthFile::parse("[roles]\nadmin = [\"root\"]\n", Path::new(".")).unwrap_err().contains("roles.admin[0]"));
        assert!(AuthFile::parse("unknown = 1\n", Path::new(".")).unwrap_err().contains("unknown"));
        let oidc = "[oidc]\nissuer = \"i\"\naudience = \"a\"\n";
        assert!(AuthFile::parse(oidc, Path::new(".")).unwrap_err().contains("exactly one of jwks_file and jwks_url"));
    }
}
