//! The technician's console: the page (embedded in the binary) and the JSON API behind it
//! (`/api/v1/...`, documented in `docs/api/openapi.json`). It reads what the agent already
//! knows (the store, the devices' and northbounds' counters, the committed tag values) and
//! offers the commissioning tools of the CLI (the Modbus probe, OPC UA browse). Nothing here
//! writes to a PLC: the probe reads, browse browses, and the config is changed only through
//! the agent's own reload, which never touches buffered data.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use edge_config::{AdminSettings, Config, ConfigError, Device, ModbusLink, Protocol, Role};
use edge_modbus::learn::LimitStore;
use edge_model::{Batch, Quality};
use edge_store::{CommitObserver, RecordId};
use mes_bridge::MesBridge;
use serde_json::{json, Value as Json};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::auth::{
    check_change, cross_site, host_is_loopback, Auth, Denied, Principal, SESSION_COOKIE,
    SESSION_IDLE,
};
use super::http::{Request, Response};
use super::live::{TagBoard, TagDef, TagQuery};
use super::overview::Sampler;
use super::AdminState;
use crate::cli::probe;

const INDEX: &[u8] = include_bytes!("console/index.html");
const SCRIPT: &[u8] = include_bytes!("console/console.js");
const STYLE: &[u8] = include_bytes!("console/console.css");
const ICON: &[u8] = include_bytes!("console/favicon.svg");

/// How long a probe or browse may take before the answer says the device did not answer.
const TOOL_LIMIT: Duration = Duration::from_secs(15);
/// The deepest OPC UA browse the page may ask for, and the most nodes.
const MAX_BROWSE_DEPTH: usize = 8;
const MAX_BROWSE_NODES: usize = 5000;

/// The tags and machines as the committed batches show them, fed by the store writer.
#[derive(Debug)]
pub struct LiveFeed {
    pub tags: Mutex<TagBoard>,
    /// The MES rules run over the committed batches, for the machines' state and counts.
    machines: Mutex<MesBridge>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LiveFeed {
    pub fn new(cfg: &Config, history_bytes: u64) -> Arc<LiveFeed> {
        Arc::new(LiveFeed {
            tags: Mutex::new(TagBoard::new(history_bytes, tag_defs(cfg))),
            machines: Mutex::new(MesBridge::new(
                "",
                crate::northbound::commands::machine_specs(cfg),
            )),
        })
    }

    /// What the store writer calls after each durable group.
    pub fn observer(self: &Arc<Self>) -> CommitObserver {
        let feed = self.clone();
        Arc::new(move |records: &[(RecordId, Batch)]| {
            let mut tags = lock(&feed.tags);
            let mut machines = lock(&feed.machines);
            let mut events = Vec::new();
            for (_, batch) in records {
                tags.observe(batch);
                machines.observe(batch, &mut events);
                events.clear();
            }
        })
    }

    /// The tags of a reloaded config (machines cannot change in a reload).
    pub fn reloaded(&self, cfg: &Config) {
        lock(&self.tags).set_catalog(tag_defs(cfg));
    }

    pub fn machines(&self) -> Vec<mes_bridge::MachineStatus> {
        lock(&self.machines).status()
    }
}

fn tag_defs(cfg: &Config) -> Vec<TagDef> {
    cfg.devices
        .iter()
        .flat_map(|d| {
            d.tags.iter().map(|t| TagDef {
                device: d.name.clone(),
                tag: t.name.clone(),
                unit: t.unit.clone(),
                writable: t.writable,
            })
        })
        .collect()
}

/// A config change asked for in the page, carried out by the service loop (which owns the
/// running agent) and answered on `reply`.
#[derive(Debug)]
pub enum ConfigAction {
    Apply {
        text: String,
        reply: oneshot::Sender<Result<String, ApplyError>>,
    },
    Rollback {
        reply: oneshot::Sender<Result<String, ApplyError>>,
    },
}

/// Why a change was not applied; the running config and the file stay as they were.
#[derive(Debug)]
pub enum ApplyError {
    /// The text is not a valid board config.
    Invalid(Vec<ConfigError>),
    /// Valid, but not applied (a reload cannot change it, the file cannot be written, a
    /// device cannot start, no previous file).
    Refused(String),
}

/// The console's part of the admin state.
#[derive(Debug)]
pub struct Console {
    pub settings: AdminSettings,
    pub auth: Auth,
    pub feed: Arc<LiveFeed>,
    pub config_path: PathBuf,
    /// The config being run, as last applied.
    pub running: RwLock<Config>,
    actions: mpsc::Sender<ConfigAction>,
    pub sampler: Mutex<Sampler>,
    /// The block sizes learned from the Modbus devices.
    learned: Option<Arc<LimitStore>>,
}

impl Console {
    pub fn new(
        cfg: &Config,
        settings: AdminSettings,
        feed: Arc<LiveFeed>,
        config_path: PathBuf,
        actions: mpsc::Sender<ConfigAction>,
        learned: Option<Arc<LimitStore>>,
    ) -> Console {
        Console {
            auth: Auth::new(&settings),
            settings,
            feed,
            config_path,
            running: RwLock::new(cfg.clone()),
            actions,
            sampler: Mutex::new(Sampler::default()),
            learned,
        }
    }

    pub fn learned(&self) -> Option<&LimitStore> {
        self.learned.as_deref()
    }

    pub fn tls(&self) -> bool {
        self.settings.tls.is_some()
    }

    fn running(&self) -> Config {
        self.running
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_running(&self, cfg: &Config) {
        *self.running.write().unwrap_or_else(|e| e.into_inner()) = cfg.clone();
        self.feed.reloaded(cfg);
    }

    /// The previous config file, kept by apply for rollback.
    pub fn previous_path(&self) -> PathBuf {
        previous_path(&self.config_path)
    }
}

/// Where apply keeps the file it replaced.
pub fn previous_path(path: &std::path::Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".previous");
    path.with_file_name(name)
}

fn denied(d: Denied) -> Response {
    match d {
        Denied::Unauthenticated(why) => Response::error(401, why),
        Denied::Forbidden(why) => Response::error(403, why),
        Denied::Throttled => Response::error(429, "too many failed sign-ins; wait a minute"),
    }
}

/// Whether the request may go on, and as whom: the probes `/live`, `/ready`, `/metrics`
/// open when configured so, everything else behind the console's authentication.
pub fn gate(console: &Console, req: &Request) -> Result<Principal, Response> {
    let probe = matches!(req.path.as_str(), "/live" | "/ready" | "/metrics");
    if probe && (console.settings.open_probes || !console.auth.required()) {
        return Ok(Principal {
            user: None,
            role: Role::Viewer,
            csrf: String::new(),
            basic: false,
        });
    }
    if !probe && !console.settings.console {
        return Err(Response::error(
            404,
            "the console is off ([admin] console = false)",
        ));
    }
    if !console.auth.required() {
        // Nobody signs in here: a page of another site must not reach it through a DNS name
        // that points at 127.0.0.1.
        let host = req.header("host").unwrap_or("");
        if !host_is_loopback(host) {
            return Err(Response::error(
                403,
                "this console answers to a loopback Host only",
            ));
        }
    }
    let public = matches!(
        req.path.as_str(),
        "/" | "/index.html" | "/console.js" | "/console.css" | "/favicon.svg" | "/api/v1/login"
    );
    match console.auth.principal(req) {
        Ok(p) => Ok(p),
        Err(_) if public => Ok(Principal {
            user: None,
            role: Role::Viewer,
            csrf: String::new(),
            basic: false,
        }),
        Err(d) => {
            let r = denied(d);
            Err(if req.path.starts_with("/api/") {
                r
            } else {
                r.with_header("WWW-Authenticate", "Basic realm=\"edge-agent\"".to_owned())
            })
        }
    }
}

/// The answer to one console request (every path but the probes and the event stream).
pub async fn handle(
    state: &AdminState,
    console: &Console,
    req: &Request,
    who: &Principal,
) -> Response {
    let method = req.method.as_str();
    let path = req.path.as_str();
    let get = method == "GET" || method == "HEAD";
    match (get, method, path) {
        (true, _, "/" | "/index.html") => Response::asset("text/html; charset=utf-8", INDEX),
        (true, _, "/console.js") => Response::asset("text/javascript; charset=utf-8", SCRIPT),
        (true, _, "/console.css") => Response::asset("text/css; charset=utf-8", STYLE),
        (true, _, "/favicon.svg") => Response::asset("image/svg+xml", ICON),
        (true, _, "/api/v1/session") => session(console, who),
        (_, "POST", "/api/v1/login") => login(console, req),
        (_, "POST", "/api/v1/logout") => {
            if let Err(d) = cross_site(req, console.tls()) {
                return denied(d);
            }
            console.auth.sign_out(req);
            Response::text(204, "").with_header(
                "Set-Cookie",
                format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
            )
        }
        (true, _, "/api/v1/overview") => Response::json(200, &overview(state, console)),
        (true, _, "/api/v1/tags") => tags(console, req),
        (true, _, "/api/v1/history") => history(console, req),
        (true, _, "/api/v1/commands") => {
            Response::json(200, &json!({ "commands": state.commands.recent() }))
        }
        (true, _, "/api/v1/config") => config_document(console),
        (_, "POST", p) if p.starts_with("/api/v1/") => post(console, req, who, p).await,
        (false, _, p) if known(p) => {
            Response::error(405, format!("{method} is not allowed on {p}"))
        }
        _ => Response::error(404, format!("no such page: {path}")),
    }
}

/// Every path the console answers; `docs/api/openapi.json` documents each (a test checks).
pub const ROUTES: &[&str] = &[
    "/",
    "/console.js",
    "/console.css",
    "/favicon.svg",
    "/api/v1/session",
    "/api/v1/login",
    "/api/v1/logout",
    "/api/v1/overview",
    "/api/v1/events",
    "/api/v1/tags",
    "/api/v1/history",
    "/api/v1/commands",
    "/api/v1/config",
    "/api/v1/config/check",
    "/api/v1/config/apply",
    "/api/v1/config/rollback",
    "/api/v1/probe",
    "/api/v1/browse",
    "/api/v1/browse/toml",
];

/// A path the console answers (for 405 against 404).
fn known(path: &str) -> bool {
    ROUTES.contains(&path) || path == "/index.html"
}

fn session(console: &Console, who: &Principal) -> Response {
    if console.auth.required() && who.user.is_none() {
        return Response::error(401, "sign in first");
    }
    Response::json(
        200,
        &json!({
            "user": who.user,
            "role": who.role.as_str(),
            "auth_required": console.auth.required(),
            "csrf": who.csrf,
            "edit_enabled": console.settings.edit,
        }),
    )
}

fn body_json(req: &Request) -> Result<Json, Response> {
    serde_json::from_slice(&req.body)
        .map_err(|e| Response::error(400, format!("the body is not JSON: {e}")))
}

fn login(console: &Console, req: &Request) -> Response {
    if let Err(d) = cross_site(req, console.tls()) {
        return denied(d);
    }
    if !console.auth.required() {
        return Response::error(
            409,
            "nobody signs in here: this console listens on loopback without users",
        );
    }
    let body = match body_json(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let user = body.get("user").and_then(Json::as_str).unwrap_or("");
    let password = body.get("password").and_then(Json::as_str).unwrap_or("");
    match console.auth.check_password(user, password) {
        Ok(u) => {
            let u = u.clone();
            let (id, p) = console.auth.sign_in(&u);
            info!(user = %u.name, role = u.role.as_str(), "console sign-in");
            let secure = if console.tls() { "; Secure" } else { "" };
            session(console, &p).with_header(
                "Set-Cookie",
                format!(
                    "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
                    SESSION_IDLE.as_secs()
                ),
            )
        }
        Err(d) => {
            warn!(user, "console sign-in refused");
            denied(d)
        }
    }
}

fn tags(console: &Console, req: &Request) -> Response {
    let quality = match req.query("quality").filter(|q| !q.is_empty()) {
        None => None,
        Some("good") => Some(Quality::Good),
        Some("uncertain") => Some(Quality::Uncertain),
        Some("bad") => Some(Quality::Bad),
        Some(other) => {
            return Response::error(
                400,
                format!("quality `{other}` is none of good, uncertain, bad"),
            )
        }
    };
    let number = |key: &str, default: usize| {
        req.query(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let q = TagQuery {
        text: req.query("q").filter(|s| !s.is_empty()).map(str::to_owned),
        device: req
            .query("device")
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        quality,
        offset: number("offset", 0),
        limit: number("limit", 100),
    };
    let page = lock(&console.feed.tags).page(&q, edge_model::now_ms());
    Response::json(200, &page)
}

fn history(console: &Console, req: &Request) -> Response {
    let (Some(device), Some(tag)) = (req.query("device"), req.query("tag")) else {
        return Response::error(400, "give device and tag");
    };
    match lock(&console.feed.tags).history(device, tag) {
        Some(h) => Response::json(200, &h),
        None => Response::error(404, format!("no tag `{tag}` on device `{device}`")),
    }
}

fn config_document(console: &Console) -> Response {
    let text = match std::fs::read_to_string(&console.config_path) {
        Ok(t) => t,
        Err(e) => {
            return Response::error(
                500,
                format!("cannot read {}: {e}", console.config_path.display()),
            )
        }
    };
    Response::json(
        200,
        &json!({
            "path": console.config_path.display().to_string(),
            "text": text,
            "edit_enabled": console.settings.edit,
            "has_previous": console.previous_path().exists(),
        }),
    )
}

/// The errors of a config as the page lists them.
pub fn errors_json(errors: &[ConfigError]) -> Json {
    Json::Array(
        errors
            .iter()
            .map(|e| {
                let message = match &e.hint {
                    Some(h) => format!("{} (hint: {h})", e.message),
                    None => e.message.clone(),
                };
                json!({ "line": e.line, "column": e.column, "message": message })
            })
            .collect(),
    )
}

async fn post(console: &Console, req: &Request, who: &Principal, path: &str) -> Response {
    if let Err(d) = check_change(req, who, console.tls()) {
        return denied(d);
    }
    if who.role != Role::Admin {
        return Response::error(403, "a viewer looks only; this needs an admin");
    }
    let body = if path == "/api/v1/config/rollback" {
        Json::Null
    } else {
        match body_json(req) {
            Ok(b) => b,
            Err(r) => return r,
        }
    };
    let text = || body.get("text").and_then(Json::as_str).map(str::to_owned);
    match path {
        "/api/v1/config/check" => {
            let Some(text) = text() else {
                return Response::error(400, "give the config as {\"text\": ...}");
            };
            let errors = check_text(console, &text);
            Response::json(
                200,
                &json!({ "ok": errors.is_empty(), "errors": errors_json(&errors) }),
            )
        }
        "/api/v1/config/apply" | "/api/v1/config/rollback" => {
            if !console.settings.edit {
                return Response::error(
                    409,
                    "editing is off: set [admin] edit = true to change the config from the console",
                );
            }
            let (reply, answer) = oneshot::channel();
            let action = match text() {
                Some(text) if path.ends_with("apply") => ConfigAction::Apply { text, reply },
                None if path.ends_with("apply") => {
                    return Response::error(400, "give the config as {\"text\": ...}")
                }
                _ => ConfigAction::Rollback { reply },
            };
            info!(
                user = who.user.as_deref().unwrap_or("(loopback)"),
                action = path,
                "console config change"
            );
            if console.actions.send(action).await.is_err() {
                return Response::error(503, "the agent is stopping");
            }
            match tokio::time::timeout(Duration::from_secs(60), answer).await {
                Ok(Ok(Ok(summary))) => {
                    Response::json(200, &json!({ "ok": true, "summary": summary }))
                }
                Ok(Ok(Err(ApplyError::Invalid(errors)))) => {
                    Response::json(422, &json!({ "ok": false, "errors": errors_json(&errors) }))
                }
                Ok(Ok(Err(ApplyError::Refused(why)))) => Response::json(
                    if why.starts_with("there is no previous") {
                        409
                    } else {
                        422
                    },
                    &json!({ "ok": false, "errors": [], "error": why }),
                ),
                Ok(Err(_)) | Err(_) => Response::error(503, "the agent did not answer the change"),
            }
        }
        "/api/v1/probe" => probe_device(console, &body).await,
        "/api/v1/browse" | "/api/v1/browse/toml" => {
            browse_device(console, &body, path.ends_with("toml")).await
        }
        _ => Response::error(404, format!("no such action: {path}")),
    }
}

/// The same validation as `edge-agent check`, of a text that would replace the config file.
pub fn check_text(console: &Console, text: &str) -> Vec<ConfigError> {
    match edge_config::parse(text, &console.config_path, &edge_config::SystemSecrets) {
        Ok(_) => Vec::new(),
        Err(e) => e.0,
    }
}

fn find_device(console: &Console, body: &Json) -> Result<(Config, Device), Response> {
    let name = body.get("device").and_then(Json::as_str).unwrap_or("");
    let cfg = console.running();
    let dev = cfg
        .devices
        .iter()
        .find(|d| d.name == name)
        .cloned()
        .ok_or_else(|| Response::error(404, format!("no device `{name}` in the running config")))?;
    Ok((cfg, dev))
}

/// The probe of `edge-agent modbus read --all-orders`, on a configured Modbus device.
async fn probe_device(console: &Console, body: &Json) -> Response {
    let (_, dev) = match find_device(console, body) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let Protocol::Modbus(m) = &dev.protocol else {
        return Response::error(400, format!("device `{}` is not a Modbus device", dev.name));
    };
    let (tcp, rtu_tcp) = match &m.link {
        ModbusLink::Tcp { host, port } => (Some(format!("{host}:{port}")), None),
        ModbusLink::RtuOverTcp { host, port } => (None, Some(format!("{host}:{port}"))),
        ModbusLink::Rtu { serial } => {
            return Response::error(409, format!("device `{}` is on serial port `{serial}`, which its poller holds; stop the agent and use `edge-agent modbus read --serial`", dev.name))
        }
    };
    let Some(address) = body.get("address").and_then(Json::as_str) else {
        return Response::error(
            400,
            "give the address, as in the config: hr:100, ir:7, coil:3, di:0",
        );
    };
    let args = probe::ReadArgs {
        target: probe::Target {
            tcp,
            rtu_tcp,
            serial: None,
            baud: 9600,
            parity: "none".to_owned(),
            data_bits: 8,
            stop_bits: 1,
            unit: m.unit_id,
            timeout_ms: 1000,
        },
        address: address.to_owned(),
        count: body
            .get("count")
            .and_then(Json::as_u64)
            .and_then(|c| u16::try_from(c).ok()),
        data_type: body
            .get("type")
            .and_then(Json::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_owned),
        byte_order: "ABCD".to_owned(),
        all_orders: true,
    };
    match tokio::time::timeout(TOOL_LIMIT, probe::read(&args)).await {
        Ok(Ok(output)) => Response::json(200, &json!({ "output": output })),
        Ok(Err(e)) => Response::error(502, format!("{e:#}")),
        Err(_) => Response::error(502, "the device did not answer in time"),
    }
}

/// `edge-agent opcua browse` on a configured OPC UA device, with its security and the
/// gateway's certificate; with `toml`, the `[[device.tag]]` blocks of the chosen variables.
async fn browse_device(console: &Console, body: &Json, toml: bool) -> Response {
    let (cfg, dev) = match find_device(console, body) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let Some(mut spec) = crate::daemon::devices::opcua_device_spec(&cfg, &dev) else {
        return Response::error(
            400,
            format!("device `{}` is not an OPC UA server", dev.name),
        );
    };
    spec.tags.clear();
    let start = match body
        .get("node")
        .and_then(Json::as_str)
        .filter(|n| !n.trim().is_empty())
    {
        None => None,
        Some(n) => match n.trim().parse::<edge_opcua::NodeAddress>() {
            Ok(a) => Some(a),
            Err(e) => return Response::error(400, format!("{e}")),
        },
    };
    let depth = body
        .get("depth")
        .and_then(Json::as_u64)
        .map_or(3, |d| (d as usize).min(MAX_BROWSE_DEPTH));
    let opts = edge_opcua::browse::BrowseOptions {
        start,
        depth,
        max_nodes: MAX_BROWSE_NODES,
    };
    let tree =
        match tokio::time::timeout(TOOL_LIMIT, edge_opcua::browse::browse(&spec, &opts)).await {
            Ok(Ok(tree)) => tree,
            Ok(Err(e)) => return Response::error(502, e.to_string()),
            Err(_) => return Response::error(502, "the server did not answer the browse in time"),
        };
    if !toml {
        return Response::json(200, &json!({ "tree": node_json(&tree) }));
    }
    let chosen: Vec<&str> = body
        .get("nodes")
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    let kept = prune(&tree, &chosen);
    let text = kept
        .map(|t| edge_opcua::browse::render_tags(&t))
        .unwrap_or_default();
    Response::json(200, &json!({ "toml": text }))
}

fn node_json(n: &edge_opcua::browse::BrowseNode) -> Json {
    json!({
        "node_id": n.node_id,
        "browse_name": n.browse_name,
        "node_class": n.node_class,
        "data_type": n.data_type,
        "access": n.access,
        "children": n.children.iter().map(node_json).collect::<Vec<_>>(),
        "truncated": n.truncated,
    })
}

/// The tree with only the chosen variables (and the folders above them).
fn prune(
    n: &edge_opcua::browse::BrowseNode,
    chosen: &[&str],
) -> Option<edge_opcua::browse::BrowseNode> {
    let children: Vec<_> = n.children.iter().filter_map(|c| prune(c, chosen)).collect();
    let picked = chosen.contains(&n.node_id.as_str());
    if !picked && children.is_empty() {
        return None;
    }
    let mut kept = n.clone();
    kept.children = children;
    if !picked {
        // A folder kept for its children: not itself a tag.
        kept.data_type = None;
        kept.access = None;
    }
    Some(kept)
}

/// The overview the page shows and the event stream sends: the sampler's rates with the
/// counters of this moment.
pub fn overview(state: &AdminState, console: &Console) -> Json {
    let cfg = console.running();
    let mut sampler = lock(&console.sampler);
    sampler.overview(state, console, &cfg)
}

/// `edge_agent_outage_runway_seconds` for `/metrics` (nothing until the sampler has a rate).
pub fn runway_metric(console: &Console) -> String {
    let runway = lock(&console.sampler).runway_s();
    match runway {
        Some(s) => format!(
            "# HELP edge_agent_outage_runway_seconds How long the store's disk quota would hold a broker outage at the current rate of incoming data, before the oldest records are evicted.\n# TYPE edge_agent_outage_runway_seconds gauge\nedge_agent_outage_runway_seconds {s:.0}\n"
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(
        id: &str,
        class: &str,
        children: Vec<edge_opcua::browse::BrowseNode>,
    ) -> edge_opcua::browse::BrowseNode {
        edge_opcua::browse::BrowseNode {
            node_id: id.to_owned(),
            browse_name: id.to_owned(),
            node_class: class.to_owned(),
            data_type: (class == "Variable").then(|| "Double".to_owned()),
            access: (class == "Variable").then(|| "read".to_owned()),
            children,
            truncated: false,
        }
    }

    #[test]
    fn pruning_keeps_the_chosen_variables_and_the_folders_above_them_only() {
        let tree = node(
            "root",
            "Object",
            vec![
                node(
                    "a",
                    "Object",
                    vec![
                        node("a.x", "Variable", vec![]),
                        node("a.y", "Variable", vec![]),
                    ],
                ),
                node("b", "Object", vec![node("b.z", "Variable", vec![])]),
            ],
        );
        let kept = prune(&tree, &["a.y"]).expect("something chosen");
        assert_eq!(kept.children.len(), 1);
        assert_eq!(kept.children[0].node_id, "a");
        assert_eq!(kept.children[0].children.len(), 1);
        assert_eq!(kept.children[0].children[0].node_id, "a.y");
        assert!(prune(&tree, &[]).is_none());
    }

    #[test]
    fn the_previous_file_sits_next_to_the_config() {
        assert_eq!(
            previous_path(std::path::Path::new("/etc/edge-agent/edge-agent.toml")),
            PathBuf::from("/etc/edge-agent/edge-agent.toml.previous")
        );
    }
}
