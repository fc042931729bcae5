//! `--web-config FILE`: TLS and basic authentication for the endpoint, in
//! the format of the Prometheus exporter-toolkit (node_exporter's
//! `--web.config.file`), so that one file can serve both:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: probe.crt      # relative to this file's directory
//!   key_file: probe.key
//! basic_auth_users:
//!   prometheus: $2y$10$...    # bcrypt (htpasswd -nBC 10 "" | tr -d ':\n')
//! ```
//!
//! What probe cannot honour (client certificates, cipher suites, extra
//! headers) is refused by name rather than ignored.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    str::FromStr,
    sync::{Arc, Mutex, OnceLock},
};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use ring::{
    digest,
    rand::{SecureRandom, SystemRandom},
};
use serde::Deserialize;
use serde_yaml_ng::Value;
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
        ServerConfig, SupportedProtocolVersion,
    },
    TlsAcceptor,
};

/// The file, as exporter-toolkit reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
struct File {
    tls_server_config: Option<TlsSection>,
    http_server_config: Option<HttpSection>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
struct TlsSection {
    cert: Option<String>,
    cert_file: Option<String>,
    key: Option<String>,
    key_file: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    client_auth_type: Option<String>,
    /// Go's TLS had a choice here; rustls always picks well.
    #[allow(dead_code)]
    prefer_server_cipher_suites: Option<bool>,
    // exporter-toolkit's, which probe does not do.
    client_ca: Option<Value>,
    client_ca_file: Option<Value>,
    client_allowed_sans: Option<Value>,
    cipher_suites: Option<Value>,
    curve_preferences: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
struct HttpSection {
    /// Served or not, probe speaks HTTP/1.1 (clients that offer HTTP/2 over
    /// TLS are told so by ALPN).
    #[allow(dead_code)]
    http2: Option<bool>,
    headers: Option<Value>,
}

/// What the endpoint asks of a connection and of a request.
#[derive(Default)]
pub struct WebConfig {
    pub tls: Option<TlsAcceptor>,
    pub auth: Option<Arc<BasicAuth>>,
}

impl WebConfig {
    /// Reads the file; any problem is an error that names it.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the web config {}", path.display()))?;
        let directory = path.parent().unwrap_or(Path::new(""));
        Self::parse(&text, directory).with_context(|| format!("web config {}", path.display()))
    }

    /// Parses the text of a file; relative paths in it are taken from
    /// `directory`, the file's own, as exporter-toolkit does.
    fn parse(text: &str, directory: &Path) -> Result<Self> {
        // An empty file asks for nothing, as with exporter-toolkit.
        let file: File = serde_yaml_ng::from_str::<Option<File>>(text)
            .map_err(|err| match err.location() {
                Some(at) if !err.to_string().contains(" at line ") => {
                    anyhow!("{err} at line {} column {}", at.line(), at.column())
                }
                _ => anyhow!("{err}"),
            })?
            .unwrap_or_default();
        if let Some(http) = &file.http_server_config {
            if http.headers.is_some() {
                bail!("http_server_config.headers is not supported by probe");
            }
        }
        let tls = file.tls_server_config.map(|tls| acceptor(tls, directory)).transpose()?;
        let auth = file.basic_auth_users.map(BasicAuth::new).transpose()?.map(Arc::new);
        Ok(Self { tls, auth })
    }
}

/// The TLS side of the endpoint, from the `tls_server_config` section.
fn acceptor(tls: TlsSection, directory: &Path) -> Result<TlsAcceptor> {
    let unsupported = [
        ("client_ca", tls.client_ca.is_some()),
        ("client_ca_file", tls.client_ca_file.is_some()),
        ("client_allowed_sans", tls.client_allowed_sans.is_some()),
        ("cipher_suites", tls.cipher_suites.is_some()),
        ("curve_preferences", tls.curve_preferences.is_some()),
        ("client_auth_type", tls.client_auth_type.as_deref().is_some_and(|kind| kind != "NoClientCert")),
    ];
    if let Some((name, _)) = unsupported.iter().find(|(_, given)| *given) {
        bail!("tls_server_config.{name} is not supported by probe (client certificates and cipher choices are not)");
    }
    let (cert_name, cert_pem) = pem("cert", tls.cert, tls.cert_file, directory)?;
    let (key_name, key_pem) = pem("key", tls.key, tls.key_file, directory)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| anyhow!("{cert_name} holds no readable PEM certificate ({err})"))?;
    if certs.is_empty() {
        bail!("{cert_name} holds no PEM certificate");
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|err| anyhow!("{key_name} holds no readable PEM private key ({err})"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions = versions(tls.min_version.as_deref(), tls.max_version.as_deref())?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .context("cannot set up TLS")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|err| anyhow!("cannot use the certificate with the key: {err}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The PEM text of `cert` or `key`, given inline or as `<name>_file`: what
/// it is called in messages, and its bytes.
fn pem(
    name: &str,
    inline: Option<String>,
    file: Option<String>,
    directory: &Path,
) -> Result<(String, Vec<u8>)> {
    match (inline, file) {
        (Some(text), None) => Ok((format!("tls_server_config.{name}"), text.into_bytes())),
        (None, Some(file)) => {
            let path = directory.join(file);
            let what = format!("tls_server_config.{name}_file {}", path.display());
            let bytes = std::fs::read(&path).with_context(|| format!("cannot read {what}"))?;
            Ok((what, bytes))
        }
        (Some(_), Some(_)) => bail!("tls_server_config: {name} and {name}_file are both given"),
        (None, None) => bail!("tls_server_config needs {name}_file"),
    }
}

/// The TLS versions from `min_version` and `max_version` (exporter-toolkit
/// names them TLS10 to TLS13, and defaults to TLS 1.2 and up, as rustls).
fn versions(min: Option<&str>, max: Option<&str>) -> Result<Vec<&'static SupportedProtocolVersion>> {
    let rank = |name: &str| match name {
        "TLS12" => Ok(2),
        "TLS13" => Ok(3),
        "TLS10" | "TLS11" => bail!("{name} is not supported by probe: TLS12 and TLS13 are"),
        _ => bail!("{name} is not a TLS version: TLS12 or TLS13"),
    };
    let min = min.map(rank).transpose().context("tls_server_config.min_version")?.unwrap_or(2);
    let max = max.map(rank).transpose().context("tls_server_config.max_version")?.unwrap_or(3);
    let versions: Vec<_> = [(2, &rustls::version::TLS12), (3, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(rank, _)| (min..=max).contains(rank))
        .map(|(_, version)| version)
        .collect();
    if versions.is_empty() {
        bail!("tls_server_config: min_version is above max_version");
    }
    Ok(versions)
}

/// The users and their bcrypt hashes, from `basic_auth_users`.
pub struct BasicAuth {
    users: HashMap<String, String>,
    /// The cost of the dearest hash: checking a name that is no user's costs
    /// as much, so that it does not tell that it is none.
    cost: u32,
    /// The hash a password given for no user is checked against.
    nobody: OnceLock<String>,
    /// The passwords that passed, by user, as salted digests: a scraper's
    /// next scrapes skip bcrypt (as exporter-toolkit's cache does); a wrong
    /// password never does.
    passed: Mutex<HashMap<String, [u8; 32]>>,
    salt: [u8; 32],
}

impl BasicAuth {
    fn new(users: BTreeMap<String, String>) -> Result<Self> {
        let mut cost = 4;
        for (user, hash) in &users {
            let parts = bcrypt::HashParts::from_str(hash)
                .map_err(|err| anyhow!("basic_auth_users.{user} is not a bcrypt hash ({err})"))?;
            cost = cost.max(parts.get_cost());
        }
        let mut salt = [0; 32];
        SystemRandom::new().fill(&mut salt).map_err(|_| anyhow!("no random numbers for basic_auth_users"))?;
        Ok(Self {
            users: users.into_iter().collect(),
            cost,
            nobody: OnceLock::new(),
            passed: Mutex::new(HashMap::new()),
            salt,
        })
    }

    /// Whether `password` is `user`'s. Slow on purpose (bcrypt): run it off
    /// the server's own thread.
    pub fn check(&self, user: &str, password: &str) -> bool {
        let digest = self.digest(user, password);
        let Some(hash) = self.users.get(user) else {
            let nobody = self
                .nobody
                .get_or_init(|| bcrypt::hash("probe: the hash for no user", self.cost).unwrap_or_default());
            let _ = bcrypt::verify(password, nobody);
            return false;
        };
        let mut passed = self.passed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if passed.get(user).is_some_and(|known| same(known, &digest)) {
            return true;
        }
        drop(passed);
        let right = bcrypt::verify(password, hash).unwrap_or(false);
        if right {
            passed = self.passed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            passed.insert(user.to_owned(), digest);
        }
        right
    }

    fn digest(&self, user: &str, password: &str) -> [u8; 32] {
        let mut context = digest::Context::new(&digest::SHA256);
        context.update(&self.salt);
        context.update(&(user.len() as u64).to_le_bytes());
        context.update(user.as_bytes());
        context.update(password.as_bytes());
        let mut out = [0; 32];
        out.copy_from_slice(context.finish().as_ref());
        out
    }
}

/// Compares two digests in time that does not depend on where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0, |differ, (x, y)| differ | (x ^ y)) == 0
}

/// The user and password of an `Authorization: Basic` header value.
pub fn credentials(header: &[u8]) -> Option<(String, String)> {
    let header = std::str::from_utf8(header).ok()?.trim();
    let (scheme, encoded) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebConfig> {
        WebConfig::parse(text, Path::new("/nonexistent"))
    }

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).err().expect("an error"))
    }

    #[test]
    fn an_empty_file_asks_for_nothing() {
        for text in ["", "\n", "# nothing\n", "{}"] {
            let config = parse(text).unwrap();
            assert!(config.tls.is_none() && config.auth.is_none(), "{text:?}");
        }
    }

    #[test]
    fn mistakes_are_named() {
        assert!(error("tls_server_config:\n  cert_fil: a\n").contains("unknown field `cert_fil`"));
        assert!(error("basic_auth: {}\n").contains("unknown field `basic_auth`"));
        assert!(error("basic_auth_users:\n  alice: secret\n")
            .contains("basic_auth_users.alice is not a bcrypt hash"));
        assert!(error("tls_server_config:\n  key_file: k\n").contains("needs cert_file"));
        assert!(error("tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n")
            .contains("cannot read tls_server_config.cert_file /nonexistent/c.pem"));
        assert!(error("tls_server_config:\n  cert_file: c\n  client_ca_file: ca\n")
            .contains("client_ca_file is not supported"));
        assert!(error(
            "tls_server_config:\n  cert_file: c\n  client_auth_type: RequireAndVerifyClientCert\n"
        )
        .contains("client_auth_type is not supported"));
        assert!(error("http_server_config:\n  headers:\n    X-Frame-Options: deny\n").contains("headers"));
        assert!(error(": : :").contains("line 1"));
        assert!(error("tls_server_config: 3\n").contains("expected a mapping at line 1"));
        assert!(versions(Some("TLS10"), None).is_err());
        assert!(versions(Some("TLS13"), Some("TLS12")).is_err());
        assert_eq!(versions(Some("TLS13"), None).unwrap().len(), 1);
        assert_eq!(versions(None, None).unwrap().len(), 2);
    }

    #[test]
    fn passwords_are_checked_and_the_right_ones_remembered() {
        let hash = bcrypt::hash("right", 4).unwrap();
        let config = parse(&format!("basic_auth_users:\n  alice: {hash}\n  bob: '{hash}'\n")).unwrap();
        let auth = config.auth.unwrap();
        assert!(!auth.check("alice", "wrong"));
        assert!(auth.passed.lock().unwrap().is_empty());
        assert!(auth.check("alice", "right"));
        assert!(auth.passed.lock().unwrap().contains_key("alice"));
        assert!(auth.check("alice", "right"));
        assert!(!auth.check("alice", "wrong"));
        assert!(!auth.check("carol", "right"));
        assert!(auth.check("bob", "right"));
    }

    #[test]
    fn basic_credentials_are_read() {
        let header = |text: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(text));
        assert_eq!(credentials(header("a:b:c").as_bytes()), Some(("a".into(), "b:c".into())));
        assert_eq!(credentials(header(":").as_bytes()), Some((String::new(), String::new())));
        assert_eq!(credentials(header("nocolon").as_bytes()), None);
        assert_eq!(credentials(b"Bearer abc"), None);
        assert_eq!(credentials(b"basic !!!"), None);
        assert_eq!(
            credentials(format!("bAsIc  {}", &header("u:p")[6..]).as_bytes()),
            Some(("u".into(), "p".into()))
        );
    }
}
