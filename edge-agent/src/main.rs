//! The `edge-agent` command line: tracing, parse, dispatch. Each command lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edge_agent::cli::{buffer, check, opcua as opcua_cli, probe};
use edge_agent::daemon::service;
use edge_agent::logging::{self, LogFormat, Style};
use edge_agent::EXIT_CONFIG;
use tracing::error;

#[derive(Parser, Debug)]
#[command(
    name = "edge-agent",
    version,
    about = "Industrial edge gateway: PLCs → durable store → MQTT"
)]
struct Cli {
    /// Log line format on stderr: `text` (default) or `json` (one object per line). Also
    /// `EDGE_AGENT_LOG_FORMAT`. Under systemd each line starts with its syslog priority.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway daemon.
    Run {
        /// The board config (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a board config; print devices, tags and the Modbus read plan.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Inspect the store, export or purge a northbound's backlog (no broker secret needed).
    Buffer {
        #[command(subcommand)]
        command: BufferCommand,
    },
    /// Commissioning probe: read or write one Modbus address (TCP, RTU over TCP, serial).
    Modbus {
        #[command(subcommand)]
        command: ModbusCommand,
    },
    /// OPC UA commissioning: browse a server for node ids, manage trusted server certificates.
    Opcua {
        #[command(subcommand)]
        command: OpcuaCommand,
    },
    /// Print a line for the console's users file ([admin] users_file); the password is read
    /// from standard input (one line).
    ConsoleUser {
        /// The user's name (letters, digits, `.`, `_`, `-`).
        name: String,
        /// `admin` (may change the config when editing is on) or `viewer` (looks only).
        #[arg(long, default_value = "admin")]
        role: String,
        /// PBKDF2 rounds (at least 10000; the default follows OWASP's advice).
        #[arg(long, default_value_t = edge_agent::admin::auth::NEW_HASH_ITERATIONS)]
        iterations: u32,
    },
}

#[derive(Subcommand, Debug)]
enum ModbusCommand {
    /// Read registers or bits and decode them (`--all-orders` shows every byte order).
    Read(probe::ReadArgs),
    /// Write one value.
    Write(probe::WriteArgs),
}

#[derive(Subcommand, Debug)]
enum OpcuaCommand {
    /// Print a server's address space: node ids, browse names, data types, access levels.
    Browse(Box<opcua_cli::BrowseArgs>),
    /// List, trust or reject OPC UA server certificates in the gateway's data directory.
    Trust(opcua_cli::TrustArgs),
}

#[derive(Subcommand, Debug)]
enum BufferCommand {
    /// Depth and age per northbound, disk use, dropped counts.
    Stats {
        #[arg(short, long)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a northbound's backlog as JSON lines, one sample a line (the agent stopped).
    Export(buffer::ExportArgs),
    /// Remove a northbound's backlog, recorded in the loss ledger (the agent stopped).
    Purge(buffer::PurgeArgs),
}

/// `edge-agent console-user`: one users-file line, checked as the config will read it.
fn console_user(name: &str, role: &str, iterations: u32) -> i32 {
    let mut password = String::new();
    if std::io::stdin().read_line(&mut password).is_err() {
        eprintln!("error: cannot read the password from standard input");
        return 1;
    }
    let password = password.trim_end_matches(['\r', '\n']);
    if password.len() < 8 {
        eprintln!("error: the password must have at least 8 characters");
        return edge_agent::EXIT_CONFIG;
    }
    if iterations < edge_config::PasswordHash::MIN_ITERATIONS {
        eprintln!(
            "error: at least {} rounds",
            edge_config::PasswordHash::MIN_ITERATIONS
        );
        return edge_agent::EXIT_CONFIG;
    }
    let hash = edge_agent::admin::auth::hash_password(password, iterations);
    let line = format!("{name}:{role}:{}", hash.encode());
    if let Err(errors) = edge_config::parse_users(&line) {
        for e in errors {
            eprintln!("error: {}", e.trim_start_matches("line 1: "));
        }
        return edge_agent::EXIT_CONFIG;
    }
    println!("{line}");
    0
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let style = logging::setup(cli.log_format, &format!("info,{}", logging::OPCUA_QUIET));
    edge_agent::init_tls();
    match cli.command {
        Command::Check { config } => ExitCode::from(check::run(&config) as u8),
        Command::ConsoleUser {
            name,
            role,
            iterations,
        } => ExitCode::from(console_user(&name, &role, iterations) as u8),
        Command::Buffer {
            command: BufferCommand::Stats { config, json },
        } => ExitCode::from(check::buffer_stats(&config, json) as u8),
        Command::Buffer {
            command: BufferCommand::Export(args),
        } => ExitCode::from(buffer::export(&args) as u8),
        Command::Buffer {
            command: BufferCommand::Purge(args),
        } => ExitCode::from(buffer::purge(&args) as u8),
        Command::Run { config } => run(config, style),
        Command::Modbus { command } => modbus(command),
        Command::Opcua {
            command: OpcuaCommand::Browse(args),
        } => ExitCode::from(opcua_cli::browse_command(&args) as u8),
        Command::Opcua {
            command: OpcuaCommand::Trust(args),
        } => ExitCode::from(opcua_cli::trust(&args) as u8),
    }
}

/// Runs the probe; a failure is printed and exits 1.
fn modbus(command: ModbusCommand) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match &command {
            ModbusCommand::Read(args) => probe::read(args).await,
            ModbusCommand::Write(args) => probe::write(args).await,
        }
    });
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: PathBuf, style: Style) -> ExitCode {
    let cfg = match edge_config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            logging::config_errors(style, &errors);
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    ExitCode::from(rt.block_on(service::run(cfg, &path)))
}
