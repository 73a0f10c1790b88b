//! `lowart install` on the built binary: `--root DIR` writes the unit, the configuration and
//! the environment file with their modes and runs no command; an existing configuration is
//! kept; `--dry-run` writes nothing; `systemd-analyze verify` accepts the unit.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::helpers::lowart_command;

const BIN: &str = env!("CARGO_BIN_EXE_lowart");

fn install(args: &[&str]) -> (bool, String, String) {
    let output = lowart_command().arg("install").args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn paths(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        root.join("etc/systemd/system/lowart.service"),
        root.join("etc/lowart/config.toml"),
        root.join("etc/lowart/lowart.env"),
    )
}

#[test]
fn install_into_a_root_writes_a_hardened_unit_a_config_and_an_env_file() {
    let root = tempfile::tempdir().unwrap();
    let root_arg = root.path().to_str().unwrap();
    let (ok, stdout, stderr) = install(&["--root", root_arg, "--bin", BIN]);
    assert!(ok, "{stdout}{stderr}");
    let (unit_path, config_path, env_path) = paths(root.path());
    assert_eq!(mode(&unit_path), 0o644);
    assert_eq!(mode(&config_path), 0o644);
    assert_eq!(mode(&env_path), 0o600);
    assert!(stdout.contains("no systemctl command run"), "{stdout}");

    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for line in [
        format!("ExecStart={BIN} serve --config /etc/lowart/config.toml"),
        "ExecReload=/bin/kill -HUP $MAINPID".to_string(),
        "DynamicUser=yes".into(),
        "StateDirectory=lowart".into(),
        "WorkingDirectory=/var/lib/lowart".into(),
        "ConfigurationDirectory=lowart".into(),
        "EnvironmentFile=-/etc/lowart/lowart.env".into(),
        "ProtectSystem=strict".into(),
        "ProtectHome=yes".into(),
        "PrivateTmp=yes".into(),
        "PrivateDevices=yes".into(),
        "NoNewPrivileges=yes".into(),
        "CapabilityBoundingSet=".into(),
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX".into(),
        "LockPersonality=yes".into(),
        "MemoryDenyWriteExecute=yes".into(),
        "SystemCallFilter=@system-service".into(),
        "Restart=on-failure".into(),
        // Above the default 30 s shutdown grace.
        "TimeoutStopSec=60".into(),
        "WantedBy=multi-user.target".into(),
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "missing `{line}` in:\n{unit}"
        );
    }
    assert!(!unit.contains("CAP_NET_BIND_SERVICE"), "{unit}");

    // The configuration is valid as written, with the service's paths.
    let output = lowart_command()
        .args(["check-config", "--config", config_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let effective: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        effective["security"]["master_key_file"],
        "/var/lib/lowart/lowart.key"
    );
    assert_eq!(
        effective["database"]["usage_spill_file"],
        "/var/lib/lowart/lowart-usage.spill.jsonl"
    );
    let config = std::fs::read_to_string(&config_path).unwrap();
    assert!(config.contains("url = \"sqlite:///var/lib/lowart/lowart.db?mode=rwc\""));

    // Installing again replaces the unit and keeps the configuration and env file.
    std::fs::write(&env_path, "LOWART_ADMIN_KEY=kept-secret\n").unwrap();
    let (ok, stdout, stderr) = install(&["--root", root_arg, "--bin", BIN, "--user", "lowart"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("kept"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(&env_path).unwrap(),
        "LOWART_ADMIN_KEY=kept-secret\n"
    );
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    assert!(unit.contains("\nUser=lowart\nGroup=lowart\n") && !unit.contains("DynamicUser"));
}

#[test]
fn an_existing_config_is_kept_and_decides_the_capabilities() {
    let root = tempfile::tempdir().unwrap();
    let (unit_path, config_path, _) = paths(root.path());
    std::fs::create_dir_all(config_path.parent().unwrap()).unwrap();
    let mine = "[server]\nlisten = \"0.0.0.0:443\"\nshutdown_grace_ms = 10000\n";
    std::fs::write(&config_path, mine).unwrap();
    let (ok, stdout, stderr) = install(&["--root", root.path().to_str().unwrap(), "--bin", BIN]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("kept {}", config_path.display())),
        "{stdout}"
    );
    assert_eq!(std::fs::read_to_string(&config_path).unwrap(), mine);
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    assert!(
        unit.contains("\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n"),
        "{unit}"
    );
    assert!(
        unit.contains("\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n"),
        "{unit}"
    );
    assert!(unit.contains("\nTimeoutStopSec=40\n"), "{unit}");
}

#[test]
fn dry_run_prints_everything_and_writes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = install(&[
        "--root",
        root.path().to_str().unwrap(),
        "--bin",
        BIN,
        "--dry-run",
    ]);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    assert!(stdout.contains("ProtectSystem=strict"), "{stdout}");
    assert!(stdout.contains("would write, mode 0600"), "{stdout}");

    // Without --root: the commands it would run, and still nothing written.
    let (ok, stdout, stderr) = install(&["--bin", "/opt/lowart/bin/lowart", "--dry-run", "--now"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("would run: systemctl daemon-reload"),
        "{stdout}"
    );
    assert!(
        stdout.contains("would run: systemctl enable --now lowart.service"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ExecStart=/opt/lowart/bin/lowart serve"),
        "{stdout}"
    );
    let unit = Path::new("/etc/systemd/system/lowart.service");
    assert!(
        !std::fs::read_to_string(unit).is_ok_and(|u| u.contains("/opt/lowart/bin/lowart")),
        "a dry run wrote {}",
        unit.display()
    );
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let root = tempfile::tempdir().unwrap();
    let root_arg = root.path().to_str().unwrap();
    let (ok, _, stderr) = install(&["--root", root_arg, "--bin", "lowart"]);
    assert!(!ok);
    assert!(stderr.contains("must be absolute"), "{stderr}");
    let (ok, _, stderr) = install(&["--root", root_arg, "--bin", BIN, "--user", "Bad User"]);
    assert!(!ok);
    assert!(stderr.contains("--user"), "{stderr}");
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);

    // An unwritable target: the error names the path.
    let file = root.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let (ok, _, stderr) = install(&["--root", file.to_str().unwrap(), "--bin", BIN]);
    assert!(!ok);
    assert!(stderr.contains("not-a-dir/etc"), "{stderr}");
}

#[test]
fn systemd_analyze_accepts_the_unit() {
    let tool = Path::new("/usr/bin/systemd-analyze");
    if !tool.exists() {
        eprintln!("skipped: {} is not installed", tool.display());
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let root_arg = root.path().to_str().unwrap();
    for extra in [&[][..], &["--user", "root"][..]] {
        let mut args = vec!["--root", root_arg, "--bin", BIN];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = install(&args);
        assert!(ok, "{stdout}{stderr}");
        let (unit_path, _, _) = paths(root.path());
        let output = std::process::Command::new(tool)
            .args(["verify", "--man=no"])
            .arg(&unit_path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{extra:?}: {stderr}");
        // Unknown or misplaced keys are warnings, not failures: there must be none.
        assert!(!stderr.contains("lowart.service"), "{extra:?}: {stderr}");
    }
}

#[test]
fn without_root_it_refuses_to_write_the_system_and_says_what_to_do() {
    let setpriv = Path::new("/usr/bin/setpriv");
    let running_as_root =
        std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    let mut command = if running_as_root {
        if !setpriv.exists() {
            eprintln!(
                "skipped: running as root and {} is absent",
                setpriv.display()
            );
            return;
        }
        // Drop to `nobody` for the one command.
        let mut command = std::process::Command::new(setpriv);
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
        command
    } else {
        lowart_command()
    };
    let output = command
        .args(["install", "--bin", "/usr/local/bin/lowart"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("needs root") && stderr.contains("--root DIR"),
        "{stderr}"
    );
}
