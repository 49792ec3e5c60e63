//! TLS for Flotilla's ports and channels, with rustls and its `ring` provider.
//!
//! - [`CertFiles`] names a PEM certificate chain and its private key; [`ReloadingCert`]
//!   serves the pair and reads it again when either file changes on disk (checked at most
//!   every [`RELOAD_CHECK_INTERVAL`]), so certificates rotated by cert-manager or a Secret
//!   update are picked up without a restart. A pair that does not load keeps the old one in
//!   use and logs a warning.
//! - [`ClientTls`] is what a client trusts (the system's roots, or a CA file) and what it
//!   presents (optionally a certificate, for the replicas' mutual TLS). [`Dial`](crate::dial::Dial)
//!   uses it for `https://` URLs.
//! - [`server_config`] builds what a server port presents, and for the peer port which
//!   client certificates it requires.
//!
//! Errors name the flag and the file: `--tls-cert /x.pem: no certificate found`.
//!
//! ```no_run
//! use flotilla_api::tls::{CaFile, ClientTls};
//! let tls = ClientTls::new(Some(&CaFile::new("--ca-cert", "ca.pem")), None)?;
//! let dial = flotilla_api::dial::Dial::tcp().with_tls(tls);
//! # Ok::<(), flotilla_api::tls::TlsError>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How often, at most, a [`ReloadingCert`] looks at its files' modification times.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// ALPN of a gRPC port: HTTP/2 only.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN of the HTTP port: HTTP/2 or HTTP/1.1.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A TLS setting that cannot be used; the message names the flag and the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// The crypto provider of every Flotilla TLS configuration: `ring`, the one kube's rustls
/// already uses (no aws-lc in the build).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("{flag} {}: {e}", path.display())))
}

/// The certificates of a PEM file, in order (a chain: the leaf first).
pub fn load_certs(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{flag} {}: not a PEM certificate file: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{flag} {}: no certificate found", path.display())));
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(flag: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(flag, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError(format!("{flag} {}: no private key found", path.display())),
        e => TlsError(format!("{flag} {}: not a PEM private key: {e}", path.display())),
    })
}

/// A CA certificate file and the flag it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaFile {
    pub flag: String,
    pub path: PathBuf,
}

impl CaFile {
    pub fn new(flag: impl Into<String>, path: impl Into<PathBuf>) -> CaFile {
        CaFile { flag: flag.into(), path: path.into() }
    }

    /// Every certificate of the file as a trust anchor.
    pub fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in load_certs(&self.flag, &self.path)? {
            roots.add(cert).map_err(|e| TlsError(format!("{} {}: not a usable CA certificate: {e}", self.flag, self.path.display())))?;
        }
        Ok(roots)
    }
}

/// A PEM certificate chain and its key, and the flags they came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert_flag: String,
    pub cert: PathBuf,
    pub key_flag: String,
    pub key: PathBuf,
}

impl CertFiles {
    pub fn new(cert_flag: impl Into<String>, cert: impl Into<PathBuf>, key_flag: impl Into<String>, key: impl Into<PathBuf>) -> CertFiles {
        CertFiles { cert_flag: cert_flag.into(), cert: cert.into(), key_flag: key_flag.into(), key: key.into() }
    }

    /// Reads and checks the pair: both parse and the key belongs to the certificate.
    pub fn load(&self) -> Result<CertifiedKey, TlsError> {
        let certs = load_certs(&self.cert_flag, &self.cert)?;
        let key = load_key(&self.key_flag, &self.key)?;
        CertifiedKey::from_der(certs, key, &provider()).map_err(|e| {
            TlsError(format!(
                "{} {} and {} {}: not a usable certificate and key pair: {e}",
                self.cert_flag,
                self.cert.display(),
                self.key_flag,
                self.key.display()
            ))
        })
    }

    /// What identifies the files' current contents without reading them.
    fn stamp(&self) -> Stamp {
        let meta = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.modified().ok(), m.len()));
        (meta(&self.cert), meta(&self.key))
    }
}

type Stamp = (Option<(Option<SystemTime>, u64)>, Option<(Option<SystemTime>, u64)>);

/// A certificate and key served from PEM files and read again when they change on disk.
///
/// The files' modification times and sizes are looked at, during a handshake, at most
/// every [`RELOAD_CHECK_INTERVAL`]; when they changed, the pair is read again. A pair that
/// does not load (half written, mismatched) leaves the previous one in use and logs a
/// warning; it is tried again when the files change once more.
pub struct ReloadingCert {
    files: CertFiles,
    current: Mutex<Current>,
}

struct Current {
    key: Arc<CertifiedKey>,
    stamp: Stamp,
    checked: Instant,
}

impl ReloadingCert {
    /// Loads the pair; fails when it does not load now.
    pub fn load(files: CertFiles) -> Result<Arc<ReloadingCert>, TlsError> {
        let stamp = files.stamp();
        let key = Arc::new(files.load()?);
        Ok(Arc::new(ReloadingCert { files, current: Mutex::new(Current { key, stamp, checked: Instant::now() }) }))
    }

    /// The pair to present now, read again first if the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.checked.elapsed() >= RELOAD_CHECK_INTERVAL {
            current.checked = Instant::now();
            let stamp = self.files.stamp();
            if stamp != current.stamp {
                current.stamp = stamp;
                match self.files.load() {
                    Ok(key) => {
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                        current.key = Arc::new(key);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate changed on disk but does not load; still serving the previous one")
                    }
                }
            }
        }
        current.key.clone()
    }
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert").field("files", &self.files).finish()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for ReloadingCert {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// What a server port presents and, with `client_ca`, the client certificates it requires
/// (signed by that CA: the peer port's mutual TLS).
pub fn server_config(cert: Arc<ReloadingCert>, client_ca: Option<&CaFile>, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS settings: {e}")))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()?), provider())
                .build()
                .map_err(|e| TlsError(format!("{} {}: {e}", ca.flag, ca.path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// What a client trusts and presents on `https://` connections.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    description: String,
}

impl ClientTls {
    /// Trusts the CA of `ca`, or the system's root certificates without it; presents
    /// `identity` when the server asks for a client certificate.
    pub fn new(ca: Option<&CaFile>, identity: Option<Arc<ReloadingCert>>) -> Result<ClientTls, TlsError> {
        let (roots, trusts) = match ca {
            Some(ca) => (ca.roots()?, format!("{} {}", ca.flag, ca.path.display())),
            None => (system_roots()?, "the system's root certificates".to_string()),
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS settings: {e}")))?
            .with_root_certificates(roots);
        let presents = identity.is_some();
        let mut config = match identity {
            Some(cert) => builder.with_client_cert_resolver(cert),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = ALPN_GRPC.iter().map(|p| p.to_vec()).collect();
        let description = format!("trusting {trusts}{}", if presents { ", with a client certificate" } else { "" });
        Ok(ClientTls { config: Arc::new(config), description })
    }

    /// Trusts the system's root certificates (loaded once per process).
    pub fn system() -> Result<ClientTls, TlsError> {
        static SYSTEM: OnceLock<Result<ClientTls, TlsError>> = OnceLock::new();
        SYSTEM.get_or_init(|| ClientTls::new(None, None)).clone()
    }

    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }

    /// Says what this configuration trusts, for error messages.
    pub fn describe(&self) -> &str {
        &self.description
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientTls({})", self.description)
    }
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        return Err(TlsError(format!(
            "no system root certificates found{}; pass --ca-cert with the CA that signed the server's certificate",
            if errors.is_empty() { String::new() } else { format!(" ({})", errors.join("; ")) }
        )));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tls").join(name)
    }

    #[test]
    fn unusable_files_are_refused_naming_the_flag_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = load_certs("--tls-cert", &empty).unwrap_err();
        assert_eq!(e.0, format!("--tls-cert {}: no certificate found", empty.display()));
        let e = load_key("--tls-key", &empty).unwrap_err();
        assert_eq!(e.0, format!("--tls-key {}: no private key found", empty.display()));
        let missing = dir.path().join("missing.pem");
        assert!(load_certs("--ca-cert", &missing).unwrap_err().0.starts_with(&format!("--ca-cert {}: ", missing.display())));
        // A key that is not the certificate's.
        let files = CertFiles::new("--tls-cert", fixture("server.pem"), "--tls-key", fixture("peer.key"));
        let e = files.load().unwrap_err();
        assert!(e.0.contains("--tls-cert") && e.0.contains("--tls-key") && e.0.contains("not a usable certificate and key pair"), "{e}");
    }

    #[test]
    fn a_changed_pair_on_disk_is_served_after_the_check_interval_and_a_broken_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.pem"), dir.path().join("tls.key"));
        std::fs::copy(fixture("server.pem"), &cert).unwrap();
        std::fs::copy(fixture("server.key"), &key).unwrap();
        let reloading = ReloadingCert::load(CertFiles::new("--tls-cert", &cert, "--tls-key", &key)).unwrap();
        let first = reloading.current().cert[0].clone();
        assert_eq!(first, load_certs("x", &fixture("server.pem")).unwrap()[0]);

        std::fs::write(&cert, "garbage").unwrap();
        reloading.current.lock().unwrap().checked -= RELOAD_CHECK_INTERVAL;
        assert_eq!(reloading.current().cert[0], first, "a broken pair keeps the old one");

        std::fs::copy(fixture("other.pem"), &cert).unwrap();
        std::fs::copy(fixture("other.key"), &key).unwrap();
        assert_eq!(reloading.current().cert[0], first, "not looked at again before the interval");
        reloading.current.lock().unwrap().checked -= RELOAD_CHECK_INTERVAL;
        assert_eq!(reloading.current().cert[0], load_certs("x", &fixture("other.pem")).unwrap()[0]);
    }
}
