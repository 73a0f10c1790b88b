//! `lowart install`: a hardened systemd unit (`/etc/systemd/system/lowart.service`), a
//! default configuration (`/etc/lowart/config.toml`, kept if present) and an environment
//! file for secrets (`/etc/lowart/lowart.env`, mode 0600, kept if present); then
//! `systemctl daemon-reload` and `systemctl enable lowart` (`--now`: and start it).
//! `--root DIR` writes under DIR and runs no command; `--dry-run` prints everything and
//! writes nothing.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The service's state directory (`StateDirectory=lowart`): database, master key file,
/// usage spill file and job artifacts.
pub const STATE_DIR: &str = "/var/lib/lowart";
pub const UNIT_PATH: &str = "/etc/systemd/system/lowart.service";
pub const CONFIG_PATH: &str = "/etc/lowart/config.toml";
pub const ENV_PATH: &str = "/etc/lowart/lowart.env";

/// Seconds beyond the shutdown grace period that systemd waits before SIGKILL (usage
/// flush, job hand-back, MCP children).
const STOP_MARGIN_SECS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {message}")]
    Command { command: String, message: String },
}

/// What `lowart install` was asked for.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Write under this directory instead of `/` and run no command.
    pub root: Option<PathBuf>,
    /// Print the files and commands; write and run nothing.
    pub dry_run: bool,
    /// The binary `ExecStart` runs (absolute).
    pub bin: PathBuf,
    /// A dedicated (existing) user instead of `DynamicUser=yes`.
    pub user: Option<String>,
    /// Start the service as well as enable it.
    pub now: bool,
}

/// One file to write.
#[derive(Debug, Clone)]
pub struct PlannedFile {
    /// The path on the target system (`/etc/...`).
    pub path: &'static str,
    pub mode: u32,
    pub contents: String,
    /// Kept as it is when it exists (configuration); else replaced (the unit).
    pub keep_existing: bool,
}

/// What the installation does, in order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub files: Vec<PlannedFile>,
    pub commands: Vec<Vec<String>>,
}

/// Runs `lowart install` and writes its report to `out`.
pub fn run(options: &InstallOptions, out: &mut dyn std::io::Write) -> Result<(), InstallError> {
    let root = options.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    if options.root.is_none() && !options.dry_run && !is_root() {
        return Err(InstallError::Invalid(
            "writing /etc/systemd/system and /etc/lowart needs root: run it with sudo, or use --root DIR (or --dry-run)".into(),
        ));
    }
    let existing_config = on_root(&root, CONFIG_PATH);
    let config_text = if existing_config.exists() {
        Some(
            std::fs::read_to_string(&existing_config).map_err(|source| InstallError::Io {
                path: existing_config.clone(),
                source,
            })?,
        )
    } else {
        None
    };
    let plan = plan(options, config_text.as_deref())?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InstallError::Io { path, source }
    };
    for file in &plan.files {
        let target = on_root(&root, file.path);
        let kept = file.keep_existing && target.exists();
        if options.dry_run {
            let what = if kept {
                "kept as it is (exists)".to_string()
            } else {
                format!("would write, mode {:04o}", file.mode)
            };
            writeln!(out, "# {}: {what}", target.display()).map_err(io(&target))?;
            if !kept {
                writeln!(out, "{}", file.contents.trim_end()).map_err(io(&target))?;
            }
            writeln!(out).map_err(io(&target))?;
            continue;
        }
        if kept {
            writeln!(out, "kept {} (it exists)", target.display()).map_err(io(&target))?;
            continue;
        }
        write_file(&target, file.mode, &file.contents)?;
        writeln!(out, "wrote {} (mode {:04o})", target.display(), file.mode)
            .map_err(io(&target))?;
    }
    let commands = if options.root.is_some() {
        Vec::new()
    } else {
        plan.commands.clone()
    };
    for command in &commands {
        let line = command.join(" ");
        if options.dry_run {
            writeln!(out, "would run: {line}").map_err(io(Path::new("stdout")))?;
            continue;
        }
        run_command(command)?;
        writeln!(out, "ran: {line}").map_err(io(Path::new("stdout")))?;
    }
    if options.root.is_some() && !options.dry_run {
        writeln!(
            out,
            "--root: no systemctl command run; on the target run `systemctl daemon-reload && systemctl enable --now lowart`"
        )
        .map_err(io(Path::new("stdout")))?;
    }
    if !options.dry_run {
        writeln!(
            out,
            "The first start prints a generated admin API key once to the journal (`journalctl -u lowart`), unless LOWART_ADMIN_KEY is set in {ENV_PATH}."
        )
        .map_err(io(Path::new("stdout")))?;
    }
    let _ = out.flush();
    Ok(())
}

/// The files and commands for `options`, given the configuration already installed (its
/// `server.listen` decides whether the unit may bind ports below 1024, its
/// `server.shutdown_grace_ms` the stop timeout).
pub fn plan(options: &InstallOptions, existing_config: Option<&str>) -> Result<Plan, InstallError> {
    if !options.bin.is_absolute() {
        return Err(InstallError::Invalid(format!(
            "--bin {}: the binary path must be absolute",
            options.bin.display()
        )));
    }
    let bin = options
        .bin
        .to_str()
        .filter(|b| is_unit_safe(b))
        .ok_or_else(|| {
            InstallError::Invalid(format!(
                "--bin {}: the path must be UTF-8 without spaces, quotes, `%`, `$` or `\\`",
                options.bin.display()
            ))
        })?;
    if ["/home/", "/root/", "/run/user/"]
        .iter()
        .any(|hidden| bin.starts_with(hidden))
    {
        return Err(InstallError::Invalid(format!(
            "--bin {bin}: the unit's ProtectHome=yes hides home directories from the service; copy the binary to e.g. /usr/local/bin/lowart and pass --bin /usr/local/bin/lowart"
        )));
    }
    if let Some(user) = &options.user
        && !is_user_name(user)
    {
        return Err(InstallError::Invalid(format!(
            "--user {user}: expected a user name such as `lowart` (lower-case letters, digits, `_`, `-`)"
        )));
    }
    let config = service_config();
    let effective = existing_config.unwrap_or(&config);
    let (listen, grace_ms) = listen_and_grace(effective)?;
    let low_port = listen
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.port() != 0 && a.port() < 1024);
    let unit = unit_file(bin, options.user.as_deref(), low_port, grace_ms);
    let mut enable = vec!["systemctl".to_string(), "enable".into()];
    if options.now {
        enable.push("--now".into());
    }
    enable.push("lowart.service".into());
    Ok(Plan {
        files: vec![
            PlannedFile {
                path: UNIT_PATH,
                mode: 0o644,
                contents: unit,
                keep_existing: false,
            },
            PlannedFile {
                path: CONFIG_PATH,
                mode: 0o644,
                contents: config,
                keep_existing: true,
            },
            PlannedFile {
                path: ENV_PATH,
                mode: 0o600,
                contents: ENV_TEMPLATE.into(),
                keep_existing: true,
            },
        ],
        commands: vec![vec!["systemctl".into(), "daemon-reload".into()], enable],
    })
}

/// The unit: a dynamic (or the given) user, the state directory as working directory
/// (relative paths in the configuration land there), and the sandbox.
pub fn unit_file(bin: &str, user: Option<&str>, low_port: bool, grace_ms: u64) -> String {
    let stop_secs = grace_ms.div_ceil(1000) + STOP_MARGIN_SECS;
    let mut unit = String::with_capacity(2048);
    let _ = write!(
        unit,
        "# Written by `lowart install` (Lowart {version}). Local changes: `systemctl edit lowart`.
[Unit]
Description=Lowart AI API gateway
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={bin} serve --config {CONFIG_PATH}
# SIGHUP reloads the TLS certificate and key (server.tls_cert, server.tls_key).
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2
# SIGTERM lets in-flight requests finish for server.shutdown_grace_ms, then usage is flushed.
KillSignal=SIGTERM
TimeoutStopSec={stop_secs}
",
        version = env!("CARGO_PKG_VERSION"),
    );
    match user {
        None => unit.push_str("DynamicUser=yes\n"),
        Some(user) => {
            let _ = writeln!(unit, "User={user}\nGroup={user}");
        }
    }
    let _ = write!(
        unit,
        "# Database, master key file, usage spill file and job artifacts live here.
StateDirectory=lowart
StateDirectoryMode=0700
WorkingDirectory={STATE_DIR}
# For a Unix socket: server.uds = \"/run/lowart/lowart.sock\".
RuntimeDirectory=lowart
ConfigurationDirectory=lowart
# Secrets (LOWART_MASTER_KEY, LOWART_ADMIN_KEY, DATABASE_URL, vendor keys) go here.
EnvironmentFile=-{ENV_PATH}
UMask=0077
LimitNOFILE=65536

NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
"
    );
    if low_port {
        unit.push_str(
            "# server.listen is a port below 1024.\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n",
        );
    } else {
        unit.push_str("CapabilityBoundingSet=\nAmbientCapabilities=\n");
    }
    unit.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    unit
}

/// The shipped `config.toml` with the service's absolute paths (all under the state
/// directory) and JSON logs for the journal.
pub fn service_config() -> String {
    let mut config = String::from(
        "# Written by `lowart install`: the default configuration with the service's paths.\n# Secrets belong in /etc/lowart/lowart.env, not here. After a change:\n# `systemctl restart lowart` (a new TLS certificate only needs `systemctl reload lowart`).\n",
    );
    for line in include_str!("../config.toml").lines() {
        let line = match line {
            "url = \"sqlite://lowart.db?mode=rwc\"" => {
                format!("url = \"sqlite://{STATE_DIR}/lowart.db?mode=rwc\"")
            }
            "usage_spill_file = \"lowart-usage.spill.jsonl\"" => {
                format!("usage_spill_file = \"{STATE_DIR}/lowart-usage.spill.jsonl\"")
            }
            "artifact_dir = \"lowart-artifacts\"" => {
                format!("artifact_dir = \"{STATE_DIR}/lowart-artifacts\"")
            }
            "master_key_file = \"lowart.key\"" => {
                format!("master_key_file = \"{STATE_DIR}/lowart.key\"")
            }
            "log_format = \"pretty\"" => "log_format = \"json\"".to_string(),
            other => other.to_string(),
        };
        config.push_str(&line);
        config.push('\n');
    }
    config
}

const ENV_TEMPLATE: &str =
    "# Environment of the lowart service (read by systemd as root; mode 0600).
# Secrets go here rather than in config.toml, e.g.:
# LOWART_MASTER_KEY=<64 hex characters>     (else a key file in /var/lib/lowart)
# LOWART_ADMIN_KEY=<at least 32 characters> (else one is generated and printed once)
# DATABASE_URL=postgres://lowart@localhost/lowart
# OPENAI_API_KEY=...                        (referenced as ${OPENAI_API_KEY} in config.toml)
";

/// `server.listen` and `server.shutdown_grace_ms` of a configuration file (defaults when
/// absent), read without expanding `${VAR}`s or validating the rest.
fn listen_and_grace(config: &str) -> Result<(String, u64), InstallError> {
    use figment::Figment;
    use figment::providers::{Format, Toml};
    let figment = Figment::from(Toml::string(config));
    let defaults = crate::config::ServerSettings::default();
    let listen = match figment.extract_inner::<String>("server.listen") {
        Ok(listen) => listen,
        Err(e) if e.missing() => defaults.listen,
        Err(e) => {
            return Err(InstallError::Invalid(format!(
                "{CONFIG_PATH}: server.listen: {e}"
            )));
        }
    };
    let grace = match figment.extract_inner::<u64>("server.shutdown_grace_ms") {
        Ok(grace) => grace,
        Err(e) if e.missing() => defaults.shutdown_grace_ms,
        Err(e) => {
            return Err(InstallError::Invalid(format!(
                "{CONFIG_PATH}: server.shutdown_grace_ms: {e}"
            )));
        }
    };
    Ok((listen, grace))
}

/// `path` (absolute, on the target system) under `root`.
fn on_root(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Writes `contents` with `mode` (directories created 0755), through a temporary file
/// renamed into place.
fn write_file(path: &Path, mode: u32, contents: &str) -> Result<(), InstallError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let io = |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|source| InstallError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    let mut temp = path.as_os_str().to_owned();
    temp.push(".lowart-new");
    let temp = PathBuf::from(temp);
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    // The umask may have taken bits off.
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    std::fs::rename(&temp, path).map_err(io)
}

fn run_command(command: &[String]) -> Result<(), InstallError> {
    let line = command.join(" ");
    let Some((program, args)) = command.split_first() else {
        return Ok(());
    };
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| InstallError::Command {
            command: line.clone(),
            message: e.to_string(),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(InstallError::Command {
            command: line,
            message: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}

/// Whether this process runs as root (the owner of `/proc/self` is the effective user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A path that needs no quoting or escaping in a unit's `ExecStart`.
fn is_unit_safe(path: &str) -> bool {
    !path.is_empty()
        && !path.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\' | '%' | '$' | ';')
        })
}

fn is_user_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 32
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EnvSource, Settings};

    struct NoEnv;
    impl EnvSource for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    fn options() -> InstallOptions {
        InstallOptions {
            root: None,
            dry_run: true,
            bin: PathBuf::from("/usr/local/bin/lowart"),
            user: None,
            now: false,
        }
    }

    #[test]
    fn the_service_config_is_the_shipped_one_with_absolute_state_paths() {
        let text = service_config();
        let settings = Settings::from_toml_str(&text, &NoEnv).unwrap();
        assert_eq!(
            settings.database.url.expose(),
            "sqlite:///var/lib/lowart/lowart.db?mode=rwc"
        );
        for path in [
            &settings.database.usage_spill_file,
            &settings.jobs.artifact_dir,
            &settings.security.master_key_file,
        ] {
            assert!(path.starts_with(STATE_DIR), "{}", path.display());
        }
        assert!(matches!(
            settings.telemetry.log_format,
            crate::config::LogFormat::Json
        ));
    }

    #[test]
    fn a_low_port_gets_the_bind_capability_and_nothing_else_does() {
        let plan = plan(&options(), None).unwrap();
        let unit = &plan.files[0].contents;
        assert!(unit.contains("\nCapabilityBoundingSet=\n"), "{unit}");
        assert!(unit.contains("DynamicUser=yes"));
        assert!(unit.contains("TimeoutStopSec=60\n"), "{unit}");
        let low = plan_with("[server]\nlisten = \"0.0.0.0:443\"\nshutdown_grace_ms = 5000\n");
        let unit = &low.files[0].contents;
        assert!(
            unit.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE"),
            "{unit}"
        );
        assert!(unit.contains("TimeoutStopSec=35\n"), "{unit}");
    }

    fn plan_with(config: &str) -> Plan {
        plan(&options(), Some(config)).unwrap()
    }

    #[test]
    fn bad_arguments_are_refused() {
        let mut relative = options();
        relative.bin = PathBuf::from("lowart");
        assert!(plan(&relative, None).is_err());
        let mut spaced = options();
        spaced.bin = PathBuf::from("/opt/my lowart/lowart");
        assert!(plan(&spaced, None).is_err());
        let mut home = options();
        home.bin = PathBuf::from("/root/.cargo/bin/lowart");
        let error = plan(&home, None).unwrap_err().to_string();
        assert!(error.contains("ProtectHome"), "{error}");
        let mut user = options();
        user.user = Some("Root; rm".into());
        assert!(plan(&user, None).is_err());
        user.user = Some("lowart".into());
        let unit = plan(&user, None).unwrap().files[0].contents.clone();
        assert!(unit.contains("User=lowart\nGroup=lowart\n") && !unit.contains("DynamicUser"));
    }
}
