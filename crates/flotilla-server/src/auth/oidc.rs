//! OIDC ID tokens (JWTs): signature against the provider's JWKS, issuer, audience, expiry,
//! and the user's name and groups from configurable claims.
//!
//! The key set comes from a file or a URL and is refreshed in the background; a token signed
//! with a key id the set does not hold triggers one early refresh (rate-limited), so a
//! provider's key rotation is picked up within seconds. Only asymmetric algorithms are
//! accepted: a shared secret would let every verifier mint tokens.

use std::sync::{Mutex, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::time::Instant;

use super::file::{JwksSource, OidcSettings};

/// Largest JWKS document read, in bytes.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Most groups taken from a token; longer lists are cut (and logged).
const MAX_GROUPS: usize = 256;
const MAX_CLAIM_BYTES: usize = 256;
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 60;
/// At most one refresh for an unknown key id per this long.
const MIN_REFRESH_GAP: Duration = Duration::from_secs(30);

/// Who a valid ID token says the caller is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcIdentity {
    pub name: String,
    pub groups: Vec<String>,
}

pub struct Oidc {
    settings: OidcSettings,
    keys: RwLock<JwkSet>,
    last_refresh: Mutex<Option<Instant>>,
}

impl Oidc {
    /// Loads the key set once; a provider that cannot be reached at start is an error only
    /// for a file (a URL is retried in the background, and tokens fail until it answers).
    pub async fn new(settings: OidcSettings) -> Result<Oidc, String> {
        let oidc = Oidc { settings, keys: RwLock::new(JwkSet { keys: Vec::new() }), last_refresh: Mutex::new(None) };
        match (&oidc.settings.jwks, oidc.refresh().await) {
            (_, Ok(())) => {}
            (JwksSource::File(_), Err(e)) => return Err(e),
            (JwksSource::Url(url), Err(e)) => {
                tracing::warn!(url, error = %e, "cannot load the OIDC key set yet; retrying in the background")
            }
        }
        Ok(oidc)
    }

    #[cfg(test)]
    pub(crate) fn last_refresh_for_tests(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.last_refresh.lock().unwrap()
    }

    pub fn refresh_interval(&self) -> Duration {
        self.settings.refresh
    }

    /// Reloads the key set; on failure the old set stays.
    pub async fn refresh(&self) -> Result<(), String> {
        *self.last_refresh.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let bytes = match &self.settings.jwks {
            JwksSource::File(path) => {
                let bytes = tokio::fs::read(path).await.map_err(|e| format!("oidc.jwks_file {}: {e}", path.display()))?;
                if bytes.len() > MAX_JWKS_BYTES {
                    return Err(format!("oidc.jwks_file {}: larger than {MAX_JWKS_BYTES} bytes", path.display()));
                }
                bytes
            }
            JwksSource::Url(url) => fetch(url).await.map_err(|e| format!("oidc.jwks_url {url}: {e}"))?,
        };
        let set: JwkSet = serde_json::from_slice(&bytes).map_err(|e| format!("the OIDC key set is not a JWKS document: {e}"))?;
        let usable = set.keys.iter().filter(|k| !matches!(k.algorithm, AlgorithmParameters::OctetKey(_))).count();
        if usable == 0 {
            return Err("the OIDC key set holds no public keys".into());
        }
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = set;
        Ok(())
    }

    fn key_for(&self, kid: Option<&str>) -> Option<DecodingKey> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let jwk = match kid {
            Some(kid) => keys.find(kid)?,
            None if keys.keys.len() == 1 => &keys.keys[0],
            None => return None,
        };
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            return None;
        }
        DecodingKey::from_jwk(jwk).ok()
    }

    /// Checks a token; the error says why, for the server log (never for the caller).
    pub async fn verify(&self, token: &str) -> Result<OidcIdentity, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        ) {
            return Err(format!("algorithm {:?} is not accepted (only public-key signatures)", header.alg));
        }
        let kid = header.kid.as_deref();
        let key = match self.key_for(kid) {
            Some(k) => k,
            None => {
                let recent = self.last_refresh.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|t| t.elapsed() < MIN_REFRESH_GAP);
                if !recent {
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(error = %e, "refreshing the OIDC key set failed");
                    }
                }
                self.key_for(kid).ok_or_else(|| format!("no key {kid:?} in the OIDC key set"))?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation).map_err(|e| e.to_string())?;
        let claims = data.claims;
        let name = claims
            .get(&self.settings.username_claim)
            .and_then(|v| v.as_str())
            .filter(|n| !n.is_empty() && n.len() <= MAX_CLAIM_BYTES)
            .ok_or_else(|| format!("claim {:?} is missing, not a string or too long", self.settings.username_claim))?
            .to_string();
        let mut groups: Vec<String> = match claims.get(&self.settings.groups_claim) {
            Some(serde_json::Value::Array(a)) => {
                a.iter().filter_map(|g| g.as_str()).filter(|g| !g.is_empty() && g.len() <= MAX_CLAIM_BYTES).map(str::to_string).collect()
            }
            Some(serde_json::Value::String(g)) if g.len() <= MAX_CLAIM_BYTES => vec![g.clone()],
            _ => Vec::new(),
        };
        if groups.len() > MAX_GROUPS {
            tracing::warn!(user = %name, groups = groups.len(), "token lists more groups than are read; the rest are ignored");
            groups.truncate(MAX_GROUPS);
        }
        Ok(OidcIdentity { name, groups })
    }
}

/// GETs a small document over HTTPS (the system's roots) or HTTP.
async fn fetch(url: &str) -> Result<Vec<u8>, String> {
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    // The system roots every https:// client of Flotilla trusts, loaded once; ALPN cleared,
    // as this is a plain HTTP/1.1 GET (the shared config offers only h2, for gRPC).
    let system = flotilla_api::tls::ClientTls::system().map_err(|e| e.0)?;
    let mut tls = (*system.config()).clone();
    tls.alpn_protocols.clear();
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let body = tokio::time::timeout(Duration::from_secs(10), Limited::new(response.into_body(), MAX_JWKS_BYTES).collect())
        .await
        .map_err(|_| "the body did not arrive within 10 s".to_string())?
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok(body.to_bytes().to_vec())
}
