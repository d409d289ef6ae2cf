//! `edge-agent opcua browse` and `edge-agent opcua trust`: what a technician runs at the line to
//! find node ids on a server and to decide which server certificates the gateway trusts. Both
//! print plain text and exit 64 on a usage mistake, 1 when the server or the disk fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use edge_config::Config;
use edge_model::DeviceId;
use edge_opcua::browse::{browse, render_tags, render_tree, BrowseError, BrowseOptions};
use edge_opcua::pki::{Pki, TrustState};
use edge_opcua::session::ConnectError;
use edge_opcua::{
    security_is_consistent, DeviceSpec, Identity, NodeAddress, Password, PkiSettings, SecurityMode,
    SecurityPolicy,
};

use crate::daemon::devices::{application_uri, pki_dir, pki_settings};
use crate::EXIT_CONFIG;

#[derive(Args, Debug, Clone)]
pub struct BrowseArgs {
    /// The server's endpoint, as in opc.tcp://10.0.0.5:4840
    pub endpoint: String,
    /// Where to start: a node id such as `ns=2;s=Line1` (default: the Objects folder).
    pub node: Option<String>,
    /// Security policy: None, Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss.
    #[arg(long, default_value = "None")]
    pub security_policy: String,
    /// Security mode: None, Sign or SignAndEncrypt (default: SignAndEncrypt with a policy).
    #[arg(long)]
    pub security_mode: Option<String>,
    /// Log in as this user (with --password-env or --password-file).
    #[arg(long)]
    pub username: Option<String>,
    /// The environment variable holding the user's password.
    #[arg(long)]
    pub password_env: Option<String>,
    /// A file holding the user's password (a trailing newline is ignored).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Log in with this user certificate (with --user-key).
    #[arg(long)]
    pub user_cert: Option<PathBuf>,
    /// The user certificate's private key (PEM).
    #[arg(long)]
    pub user_key: Option<PathBuf>,
    /// Use the gateway's certificate and trust list from this board config's data directory
    /// (needed for security other than None, unless --pki-dir is given).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// A PKI directory of its own (own/, private/, trusted/, rejected/) instead of the gateway's.
    #[arg(long)]
    pub pki_dir: Option<PathBuf>,
    /// Trust the server's certificate if it is unknown (it is added to trusted/).
    #[arg(long)]
    pub trust_on_first_use: bool,
    /// How many levels below the start node to show.
    #[arg(long, default_value_t = 6)]
    pub depth: usize,
    /// Stop after this many nodes.
    #[arg(long, default_value_t = 5000)]
    pub max_nodes: usize,
    /// How long each request may take, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Print the readable variables as [[device.tag]] blocks instead of a tree.
    #[arg(long)]
    pub toml: bool,
}

#[derive(Args, Debug, Clone)]
pub struct TrustArgs {
    /// The board config: the certificates live in its data directory (`{data_dir}/pki`).
    #[arg(short, long)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub action: TrustAction,
}

#[derive(Subcommand, Debug, Clone)]
pub enum TrustAction {
    /// The gateway's own certificate and every trusted and rejected server certificate.
    List,
    /// Trust a rejected server certificate (by thumbprint, its first 8+ hex digits, file name
    /// or common name). The agent connects at its next attempt; no restart needed.
    Accept { certificate: String },
    /// Stop trusting a server certificate; the server is refused from its next connection on.
    Reject { certificate: String },
}

fn load(path: &Path) -> Result<Config, i32> {
    edge_config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        EXIT_CONFIG
    })
}

/// `edge-agent opcua trust`. Returns the exit code.
pub fn trust(args: &TrustArgs) -> i32 {
    let cfg = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let pki = Pki::new(pki_dir(&cfg));
    match &args.action {
        TrustAction::List => {
            let own = pki.own_cert_path();
            if own.exists() {
                match edge_opcua::opcua::crypto::CertificateStore::read_cert(&own) {
                    Ok(cert) => println!(
                        "gateway certificate  {}  thumbprint {}  application URI {}",
                        own.display(),
                        cert.thumbprint().as_hex_string(),
                        application_uri(&cfg)
                    ),
                    Err(e) => println!("gateway certificate  {}  unreadable: {e}", own.display()),
                }
            } else {
                println!(
                    "gateway certificate  not made yet (it is made at the first start with an OPC UA device, in {})",
                    own.display()
                );
            }
            match pki.list() {
                Ok(entries) if entries.is_empty() => {
                    println!("no server certificates yet in {}", pki.dir().display());
                    0
                }
                Ok(entries) => {
                    for e in entries {
                        println!(
                            "{:<8}  {}  thumbprint {}  expires {}",
                            e.state.to_string(),
                            e.file_name,
                            e.thumbprint,
                            e.not_after.as_deref().unwrap_or("?")
                        );
                    }
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    1
                }
            }
        }
        TrustAction::Accept { certificate } => match pki.accept(certificate) {
            Ok(path) => {
                println!(
                    "trusted {}; the agent connects at its next attempt",
                    path.display()
                );
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                already_there(&pki, certificate, TrustState::Trusted);
                1
            }
        },
        TrustAction::Reject { certificate } => match pki.reject(certificate) {
            Ok(path) => {
                println!(
                    "rejected {}; the server is refused from its next connection on (a session already open stays until it ends)",
                    path.display()
                );
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                already_there(&pki, certificate, TrustState::Rejected);
                1
            }
        },
    }
}

/// Tells the user when the certificate is already where they wanted it.
fn already_there(pki: &Pki, selector: &str, state: TrustState) {
    if let Ok(entries) = pki.list() {
        if let Some(e) = entries
            .iter()
            .find(|e| e.state == state && edge_opcua::pki::matches_selector(e, selector))
        {
            eprintln!("note: {} is already {state}", e.file_name);
        }
    }
}

/// `edge-agent opcua browse`. Returns the exit code.
pub fn browse_command(args: &BrowseArgs) -> i32 {
    let spec = match browse_spec(args) {
        Ok(s) => s,
        Err(message) => {
            eprintln!("error: {message}");
            return EXIT_CONFIG;
        }
    };
    let start = match args.node.as_deref().map(str::parse::<NodeAddress>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return EXIT_CONFIG;
        }
    };
    let opts = BrowseOptions {
        start,
        depth: args.depth,
        max_nodes: args.max_nodes,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let temporary = args.config.is_none() && args.pki_dir.is_none();
    let result = rt.block_on(async {
        if spec.security_policy != SecurityPolicy::None {
            let pki = Pki::new(&spec.pki.dir);
            let (uri, name) = (
                spec.pki.application_uri.clone(),
                spec.pki.application_name.clone(),
            );
            match tokio::task::spawn_blocking(move || pki.ensure_own_certificate(&uri, &name)).await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("{e}")),
                Err(e) => return Err(format!("the certificate task failed: {e}")),
            }
        }
        browse(&spec, &opts).await.map_err(|e| explain(&e, args))
    });
    if temporary {
        let _ = std::fs::remove_dir_all(&spec.pki.dir);
    }
    match result {
        Ok(tree) => {
            if args.toml {
                print!("{}", render_tags(&tree));
            } else {
                print!("{}", render_tree(&tree));
            }
            0
        }
        Err(message) => {
            eprintln!("error: {message}");
            1
        }
    }
}

fn explain(e: &BrowseError, args: &BrowseArgs) -> String {
    match e {
        BrowseError::Connect(ConnectError::Untrusted { path, thumbprint }) => {
            let how = match &args.config {
                Some(c) => format!("edge-agent opcua trust -c {} accept {thumbprint}", c.display()),
                None => format!(
                    "move {} into the trusted/ folder next to it, or browse again with --trust-on-first-use",
                    path.display()
                ),
            };
            format!("{e}\nIf this is the right server, trust it with: {how}")
        }
        other => other.to_string(),
    }
}

/// A device spec for browsing: no tags, the security and identity of the flags, and the
/// gateway's PKI when a config is given.
fn browse_spec(args: &BrowseArgs) -> Result<DeviceSpec, String> {
    if !args.endpoint.starts_with("opc.tcp://") {
        return Err(format!(
            "`{}` is not an OPC UA endpoint; write it as in opc.tcp://10.0.0.5:4840",
            args.endpoint
        ));
    }
    let policy: SecurityPolicy = args
        .security_policy
        .parse()
        .map_err(|e: edge_opcua::SecurityNameError| e.to_string())?;
    let mode = match &args.security_mode {
        Some(m) => m
            .parse::<SecurityMode>()
            .map_err(|e: edge_opcua::SecurityNameError| e.to_string())?,
        None if policy == SecurityPolicy::None => SecurityMode::None,
        None => SecurityMode::SignAndEncrypt,
    };
    if !security_is_consistent(policy, mode) {
        return Err(format!(
            "security policy {policy} and mode {mode} do not go together (None with None, a policy with Sign or SignAndEncrypt)"
        ));
    }
    let identity = match (&args.username, &args.user_cert, &args.user_key) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err("give either --username or --user-cert, not both".to_owned())
        }
        (Some(user), None, None) => {
            let password = match (&args.password_env, &args.password_file) {
                (Some(var), None) => std::env::var(var)
                    .map_err(|_| format!("environment variable `{var}` is not set"))?,
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
                _ => {
                    return Err(
                        "--username needs --password-env or --password-file (one of them)"
                            .to_owned(),
                    )
                }
            };
            Identity::UserName {
                user: user.clone(),
                password: Password::new(password),
            }
        }
        (None, Some(cert), Some(key)) => Identity::X509 {
            cert: cert.clone(),
            key: key.clone(),
        },
        (None, Some(_), None) | (None, None, Some(_)) => {
            return Err("--user-cert and --user-key go together".to_owned())
        }
        (None, None, None) => Identity::Anonymous,
    };
    let pki = match (&args.config, &args.pki_dir) {
        (Some(_), Some(_)) => return Err("give either --config or --pki-dir, not both".to_owned()),
        (Some(path), None) => {
            let cfg = edge_config::load(path).map_err(|e| format!("{e}"))?;
            let mut s = pki_settings(&cfg, args.trust_on_first_use);
            s.application_name = format!("{} browse", s.application_name);
            s
        }
        (None, Some(dir)) => PkiSettings {
            dir: dir.clone(),
            application_uri: "urn:edge-agent:browse".to_owned(),
            application_name: "edge-agent browse".to_owned(),
            trust_on_first_use: args.trust_on_first_use,
            config_path: None,
        },
        (None, None) => {
            if policy != SecurityPolicy::None {
                return Err("a secure connection needs the gateway's certificate: give -c BOARD_CONFIG (or --pki-dir DIR)".to_owned());
            }
            PkiSettings {
                dir: std::env::temp_dir().join(format!("edge-agent-browse-{}", std::process::id())),
                application_uri: "urn:edge-agent:browse".to_owned(),
                application_name: "edge-agent browse".to_owned(),
                trust_on_first_use: false,
                config_path: None,
            }
        }
    };
    let timeout = Duration::from_millis(args.timeout_ms.max(100));
    Ok(DeviceSpec {
        name: DeviceId("browse".to_owned()),
        endpoint: args.endpoint.clone(),
        security_policy: policy,
        security_mode: mode,
        identity,
        session_timeout: Duration::from_secs(60),
        request_timeout: timeout,
        keep_alive: Duration::from_secs(10),
        backoff_min: Duration::from_millis(500),
        backoff_max: Duration::from_secs(5),
        max_nodes_per_read: 0,
        pki,
        tags: Vec::new(),
    })
}
