//! The gateway's OPC UA certificates in `{data_dir}/pki`: its application instance certificate
//! (made on first start, with the gateway's application URI), and the server certificates it
//! trusts (`trusted/`) or has rejected (`rejected/`). An unknown server certificate lands in
//! `rejected/`; `edge-agent opcua trust accept` moves it to `trusted/`.

use std::fmt;
use std::path::{Path, PathBuf};

use opcua::crypto::{CertificateStore, X509Data, X509};

/// Sub-directories of the PKI directory, as async-opcua's certificate store lays them out.
const OWN_CERT: &str = "own/cert.der";
const OWN_KEY: &str = "private/private.pem";
const TRUSTED: &str = "trusted";
const REJECTED: &str = "rejected";

/// How long a new application instance certificate is valid: five years, as OPC UA tooling
/// commonly does; a gateway runs unattended for years.
const CERT_DAYS: u32 = 5 * 365 + 1;
/// RSA key size of the application instance certificate (what every policy offered accepts).
const KEY_BITS: u32 = 2048;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot create or read the PKI directory {path}: {error}")]
    Io {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("cannot create the application instance certificate in {dir}: {error}")]
    Create { dir: PathBuf, error: String },
    #[error("the application instance certificate {path} cannot be read: {error}")]
    Unreadable { path: PathBuf, error: String },
    #[error("the application instance certificate {path} was made for another application URI than `{expected}`; move {path} and {key} away to make a new one (servers that trusted the old certificate must then trust the new one)")]
    WrongApplicationUri {
        path: PathBuf,
        key: PathBuf,
        expected: String,
    },
    #[error("no certificate in {dir} matches `{selector}`; `edge-agent opcua trust list` shows the names")]
    NotFound { dir: PathBuf, selector: String },
    #[error(
        "`{selector}` matches {count} certificates ({names}); give more of the name or thumbprint"
    )]
    Ambiguous {
        selector: String,
        count: usize,
        names: String,
    },
}

/// Whether a certificate is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustState {
    Trusted,
    Rejected,
}

impl fmt::Display for TrustState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrustState::Trusted => "trusted",
            TrustState::Rejected => "rejected",
        })
    }
}

/// One certificate of the trust list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertEntry {
    pub state: TrustState,
    /// The file name in `trusted/` or `rejected/`: `CN=name [thumbprint].der`.
    pub file_name: String,
    /// SHA-1 thumbprint, hex, as OPC UA tools show it.
    pub thumbprint: String,
    pub subject: String,
    /// Expiry, RFC 3339, when readable.
    pub not_after: Option<String>,
}

/// The gateway's own certificate, as made or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnCertificate {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub thumbprint: String,
    /// True when this call made it.
    pub created: bool,
}

/// The PKI directory.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn new(dir: impl Into<PathBuf>) -> Pki {
        Pki { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn own_cert_path(&self) -> PathBuf {
        self.dir.join(OWN_CERT)
    }

    pub fn own_key_path(&self) -> PathBuf {
        self.dir.join(OWN_KEY)
    }

    pub fn trusted_dir(&self) -> PathBuf {
        self.dir.join(TRUSTED)
    }

    pub fn rejected_dir(&self) -> PathBuf {
        self.dir.join(REJECTED)
    }

    fn ensure_dirs(&self) -> Result<(), PkiError> {
        for d in [
            self.trusted_dir(),
            self.rejected_dir(),
            self.dir.join("own"),
            self.dir.join("private"),
        ] {
            std::fs::create_dir_all(&d).map_err(|error| PkiError::Io { path: d, error })?;
        }
        Ok(())
    }

    /// Makes the gateway's application instance certificate and key unless they exist; an
    /// existing certificate must carry `application_uri`, or servers would refuse the session.
    pub fn ensure_own_certificate(
        &self,
        application_uri: &str,
        application_name: &str,
    ) -> Result<OwnCertificate, PkiError> {
        self.ensure_dirs()?;
        let cert_path = self.own_cert_path();
        let key_path = self.own_key_path();
        if cert_path.exists() && key_path.exists() {
            let cert =
                CertificateStore::read_cert(&cert_path).map_err(|error| PkiError::Unreadable {
                    path: cert_path.clone(),
                    error,
                })?;
            CertificateStore::read_pkey(&key_path).map_err(|error| PkiError::Unreadable {
                path: key_path.clone(),
                error,
            })?;
            if cert.is_application_uri_valid(application_uri).is_err() {
                return Err(PkiError::WrongApplicationUri {
                    path: cert_path,
                    key: key_path,
                    expected: application_uri.to_owned(),
                });
            }
            return Ok(OwnCertificate {
                thumbprint: cert.thumbprint().as_hex_string(),
                cert_path,
                key_path,
                created: false,
            });
        }
        let data = X509Data {
            key_size: KEY_BITS,
            common_name: application_name.to_owned(),
            organization: application_name.to_owned(),
            organizational_unit: application_name.to_owned(),
            country: String::new(),
            state: String::new(),
            alt_host_names: X509Data::alt_host_names(application_uri, None, true, true, true),
            certificate_duration_days: CERT_DAYS,
        };
        let (cert, _key) =
            CertificateStore::create_certificate_and_key(&data, true, &cert_path, &key_path)
                .map_err(|error| PkiError::Create {
                    dir: self.dir.clone(),
                    error,
                })?;
        restrict_key_permissions(&key_path);
        Ok(OwnCertificate {
            thumbprint: cert.thumbprint().as_hex_string(),
            cert_path,
            key_path,
            created: true,
        })
    }

    /// Every certificate in `trusted/` and `rejected/`, trusted first, by file name.
    pub fn list(&self) -> Result<Vec<CertEntry>, PkiError> {
        let mut out = self.entries(TrustState::Trusted)?;
        out.extend(self.entries(TrustState::Rejected)?);
        Ok(out)
    }

    fn entries(&self, state: TrustState) -> Result<Vec<CertEntry>, PkiError> {
        let dir = match state {
            TrustState::Trusted => self.trusted_dir(),
            TrustState::Rejected => self.rejected_dir(),
        };
        let read = match std::fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(PkiError::Io { path: dir, error }),
        };
        let mut out = Vec::new();
        for entry in read {
            let entry = entry.map_err(|error| PkiError::Io {
                path: dir.clone(),
                error,
            })?;
            let path = entry.path();
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !(file_name.ends_with(".der") || file_name.ends_with(".pem")) {
                continue;
            }
            let (thumbprint, subject, not_after) = match CertificateStore::read_cert(&path) {
                Ok(cert) => (
                    cert.thumbprint().as_hex_string(),
                    cert.subject_name(),
                    cert.not_after().ok().map(|t| t.to_rfc3339()),
                ),
                Err(e) => (String::new(), format!("unreadable: {e}"), None),
            };
            out.push(CertEntry {
                state,
                file_name: file_name.to_owned(),
                thumbprint,
                subject,
                not_after,
            });
        }
        out.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        Ok(out)
    }

    /// Moves the rejected certificate `selector` names to `trusted/`. Returns its new path.
    pub fn accept(&self, selector: &str) -> Result<PathBuf, PkiError> {
        self.ensure_dirs()?;
        self.move_cert(selector, TrustState::Rejected, &self.trusted_dir())
    }

    /// Moves the trusted certificate `selector` names to `rejected/`: the server is refused
    /// from its next connection on.
    pub fn reject(&self, selector: &str) -> Result<PathBuf, PkiError> {
        self.ensure_dirs()?;
        self.move_cert(selector, TrustState::Trusted, &self.rejected_dir())
    }

    fn move_cert(&self, selector: &str, from: TrustState, to: &Path) -> Result<PathBuf, PkiError> {
        let from_dir = match from {
            TrustState::Trusted => self.trusted_dir(),
            TrustState::Rejected => self.rejected_dir(),
        };
        let entries = self.entries(from)?;
        let names: Vec<&str> = entries
            .iter()
            .filter(|e| matches_selector(e, selector))
            .map(|e| e.file_name.as_str())
            .collect();
        let name = match names.as_slice() {
            [one] => *one,
            [] => {
                return Err(PkiError::NotFound {
                    dir: from_dir,
                    selector: selector.to_owned(),
                })
            }
            many => {
                return Err(PkiError::Ambiguous {
                    selector: selector.to_owned(),
                    count: many.len(),
                    names: many.join(", "),
                })
            }
        };
        let src = from_dir.join(name);
        let dst = to.join(name);
        std::fs::rename(&src, &dst).map_err(|error| PkiError::Io {
            path: src.clone(),
            error,
        })?;
        Ok(dst)
    }
}

/// A certificate is named by its whole file name, by its thumbprint (or at least 8 leading hex
/// digits of it), or by its subject's common name; case does not matter.
pub fn matches_selector(entry: &CertEntry, selector: &str) -> bool {
    let s = selector.trim();
    if s.is_empty() {
        return false;
    }
    if entry.file_name.eq_ignore_ascii_case(s) {
        return true;
    }
    let hex = s.len() >= 8 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if hex
        && entry
            .thumbprint
            .to_ascii_lowercase()
            .starts_with(&s.to_ascii_lowercase())
    {
        return true;
    }
    // `CN=name [thumbprint].der`: the part before the bracket is the common name.
    entry.file_name.contains(" [")
        && entry.file_name.split(" [").next().is_some_and(|cn| {
            let cn = cn.strip_prefix("CN=").unwrap_or(cn);
            cn.eq_ignore_ascii_case(s)
        })
}

/// The file name async-opcua gives a server certificate in `trusted/` and `rejected/`.
pub fn cert_file_name(cert: &X509) -> String {
    CertificateStore::cert_file_name(cert)
}

/// The private key is readable by the agent's user only: it proves the gateway's identity.
#[cfg(unix)]
fn restrict_key_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot restrict the permissions of the private key");
    }
}

#[cfg(not(unix))]
fn restrict_key_permissions(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(file_name: &str, thumbprint: &str) -> CertEntry {
        CertEntry {
            state: TrustState::Rejected,
            file_name: file_name.into(),
            thumbprint: thumbprint.into(),
            subject: String::new(),
            not_after: None,
        }
    }

    #[test]
    fn a_certificate_is_named_by_file_thumbprint_or_common_name() {
        let e = entry(
            "CN=Plant Server [5e3c7a0011223344556677889900aabbccddeeff].der",
            "5E3C7A0011223344556677889900AABBCCDDEEFF",
        );
        assert!(matches_selector(
            &e,
            "CN=Plant Server [5e3c7a0011223344556677889900aabbccddeeff].der"
        ));
        assert!(matches_selector(&e, "5e3c7a00"));
        assert!(matches_selector(
            &e,
            "5E3C7A0011223344556677889900AABBCCDDEEFF"
        ));
        assert!(matches_selector(&e, "plant server"));
        assert!(
            !matches_selector(&e, "5e3c"),
            "too short to be a thumbprint"
        );
        assert!(!matches_selector(&e, "Plant"));
        assert!(!matches_selector(&e, ""));
    }

    #[test]
    fn the_own_certificate_is_made_once_with_the_application_uri() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(dir.path().join("pki"));
        let first = pki
            .ensure_own_certificate("urn:edge-agent:gw-1", "edge-agent gw-1")
            .expect("created");
        assert!(first.created);
        assert!(first.cert_path.exists() && first.key_path.exists());
        let again = pki
            .ensure_own_certificate("urn:edge-agent:gw-1", "edge-agent gw-1")
            .expect("found");
        assert!(!again.created);
        assert_eq!(again.thumbprint, first.thumbprint);
        assert!(matches!(
            pki.ensure_own_certificate("urn:edge-agent:other", "edge-agent other"),
            Err(PkiError::WrongApplicationUri { .. })
        ));
        assert!(pki.trusted_dir().is_dir() && pki.rejected_dir().is_dir());
    }

    #[test]
    fn accepting_moves_a_rejected_certificate_to_trusted_and_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = Pki::new(dir.path().join("server"));
        server
            .ensure_own_certificate("urn:sim", "Sim Server")
            .expect("server cert");
        let cert = CertificateStore::read_cert(&server.own_cert_path()).expect("cert");
        let name = cert_file_name(&cert);

        let pki = Pki::new(dir.path().join("pki"));
        pki.ensure_dirs().expect("dirs");
        std::fs::copy(server.own_cert_path(), pki.rejected_dir().join(&name)).expect("copy");
        let listed = pki.list().expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, TrustState::Rejected);
        assert_eq!(listed[0].thumbprint, cert.thumbprint().as_hex_string());

        let moved = pki.accept(&listed[0].thumbprint[..12]).expect("accept");
        assert_eq!(moved, pki.trusted_dir().join(&name));
        assert_eq!(pki.list().expect("list")[0].state, TrustState::Trusted);
        assert!(matches!(
            pki.accept(&listed[0].thumbprint),
            Err(PkiError::NotFound { .. })
        ));
        pki.reject("Sim Server").expect("reject");
        assert_eq!(pki.list().expect("list")[0].state, TrustState::Rejected);
    }
}
