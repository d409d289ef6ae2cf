//! The board config (SPEC §4): one TOML file per gateway in, typed settings out. Reading never
//! stops at the first mistake: every syntax error, wrong type, unknown key and inconsistency
//! comes back at once, each with file:line:column and a hint, for `edge-agent check`.
//!
//! The doc comments on the fields of the types below are the user documentation of the keys.

mod admin;
mod board;
mod broker_url;
mod device;
mod error;
mod gateway;
mod machine;
mod names;
mod northbound;
mod opcua;
mod reader;
mod secret;

use std::path::{Path, PathBuf};

use toml::de::DeTable;

pub use admin::{hex, parse_users, AdminSettings, ConsoleUser, PasswordHash, Role, ServerTls};
pub use board::{Board, DigitalInput, GpioLine, SerialParity, SerialPort};
pub use broker_url::{BrokerUrl, BrokerUrlError};
pub use device::{Device, Modbus, ModbusLink, ModbusTag, Protocol, Tag, TagAddress};
pub use error::{ConfigError, ConfigErrors};
pub use gateway::{Gateway, StoreSettings, UnsPath};
pub use machine::{Dispatch, DispatchParameter, Machine, StateEntry, TagRef};
pub use mes_bridge::MachineState;
pub use northbound::{
    Batching, Credentials, Format, MqttVersion, Northbound, SparkplugSettings, TlsFiles,
};
pub use opcua::{OpcUa, OpcUaTag};
pub use secret::{Secret, SecretSource, SystemSecrets, UnresolvedSecrets};

use error::Diagnostics;
use reader::TableReader;

/// A whole, valid board config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file the config was read from.
    pub source: PathBuf,
    /// `[gateway]`
    pub gateway: Gateway,
    /// `[store]`
    pub store: StoreSettings,
    /// `[[northbound]]`, at least one, in file order.
    pub northbounds: Vec<Northbound>,
    /// `[[device]]`, at least one, in file order.
    pub devices: Vec<Device>,
    /// `[[machine]]`, any number, in file order.
    pub machines: Vec<Machine>,
    /// `[admin]`: the health and metrics endpoint, `None` when it is off.
    pub admin: Option<AdminSettings>,
    /// `[board]`: serial ports, status LED, digital inputs.
    pub board: Board,
}

/// Reads a board config from `src`. `file` names it in errors, and relative paths in it are
/// resolved against `file`'s directory. Secrets come from `secrets`; nothing else outside
/// `src` is consulted.
pub fn parse(src: &str, file: &Path, secrets: &dyn SecretSource) -> Result<Config, ConfigErrors> {
    let mut cx = Diagnostics::new(src, file);
    let (doc, syntax_errors) = DeTable::parse_recoverable(src);
    for e in &syntax_errors {
        cx.syntax(e.span(), e.message());
    }
    let base_dir = file.parent().unwrap_or(Path::new(""));

    let mut root = TableReader::new(doc.get_ref(), 0..0, "the board config");
    let gateway = gateway::read_gateway(&mut cx, &mut root, base_dir);
    let store = gateway::read_store(&mut cx, &mut root);
    let northbounds =
        northbound::read_northbounds(&mut cx, &mut root, gateway.as_ref(), base_dir, secrets);
    let board = board::read_board(&mut cx, &mut root);
    let serial_names: Option<Vec<String>> = board
        .as_ref()
        .map(|b| b.serial.iter().map(|s| s.name.clone()).collect());
    let devices = device::read_devices(
        &mut cx,
        &mut root,
        serial_names.as_deref(),
        base_dir,
        secrets,
    );
    let machines = machine::read_machines(&mut cx, &mut root, devices.as_deref());
    let admin = admin::read_admin(&mut cx, &mut root, base_dir, secrets);
    let root_span = root.span();
    root.finish(&mut cx);

    if let (Some(b), Some(devs)) = (&board, &devices) {
        if !b.inputs.is_empty() && devs.iter().any(|d| d.name == b.input_device) {
            cx.error(
                &root_span,
                format!(
                    "[board] input_device `{}` is also a [[device]] name",
                    b.input_device
                ),
                Some("set [board] input_device to a name no device uses".to_owned()),
            );
        }
    }
    match (gateway, store, northbounds, devices, machines, admin, board) {
        (
            Some(gateway),
            Some(store),
            Some(northbounds),
            Some(devices),
            Some(machines),
            Some(admin),
            Some(board),
        ) if !cx.has_errors() => Ok(Config {
            source: file.to_path_buf(),
            gateway,
            store,
            northbounds,
            devices,
            machines,
            admin,
            board,
        }),
        _ => {
            let errors = cx.finish();
            if errors.is_empty() {
                // Every path that rejects a value reports it; this only guards that promise.
                Err(ConfigErrors(vec![ConfigError::whole_file(
                    file,
                    "the config is incomplete",
                    None,
                )]))
            } else {
                Err(ConfigErrors(errors))
            }
        }
    }
}

/// Reads the board config at `path`, with secrets from the environment and the file system.
/// A file that cannot be read is one error at 1:1.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with(path, &SystemSecrets)
}

/// Reads the board config at `path` for the tools that only open the store (`buffer stats`,
/// `export`, `purge`): every check of [`load`] except that secrets are not looked up (each
/// reads as [`UnresolvedSecrets::PLACEHOLDER`]), so a missing `password_env` variable or an
/// unreadable `password_file` is no error. Never connect with the config this returns.
pub fn load_for_store(path: &Path) -> Result<Config, ConfigErrors> {
    load_with(path, &UnresolvedSecrets)
}

fn load_with(path: &Path, secrets: &dyn SecretSource) -> Result<Config, ConfigErrors> {
    // An absolute source path keeps relative paths in the config meaningful whatever the
    // working directory is later.
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let bytes = std::fs::read(&path).map_err(|e| {
        ConfigErrors(vec![ConfigError::whole_file(
            &path,
            format!("cannot read the config file: {e}"),
            Some(
                "check the path given with -c and that the agent's user may read the file"
                    .to_owned(),
            ),
        )])
    })?;
    match String::from_utf8(bytes) {
        Ok(src) => parse(&src, &path, secrets),
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let bytes = e.as_bytes();
            let prefix = String::from_utf8_lossy(bytes.get(..valid).unwrap_or_default());
            let mut cx = Diagnostics::new(&prefix, &path);
            cx.error(
                &(valid..valid),
                "the config file is not valid UTF-8",
                Some("save the file as UTF-8".to_owned()),
            );
            Err(ConfigErrors(cx.finish()))
        }
    }
}
