//! The `lowart` command: parse, load settings, init logging, run.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lowart::cli::{self, KeyRequest};
use lowart::config::{Secret, Settings};
use lowart::master_key::{self, Installed, Rotation};
use lowart::startup::{Application, connect_and_migrate};

/// mimalloc instead of the system allocator: per-thread free lists where glibc's malloc
/// took about an eighth of the request path's CPU (a buffer allocated on a worker and
/// freed on another thread went through arena locks), and less memory held between
/// bursts. See bench/README.md for the figures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "lowart",
    version,
    about = "An OpenAI-compatible AI API gateway"
)]
struct Cli {
    /// Configuration file (defaults to ./config.toml; a missing default file means defaults).
    #[arg(
        long,
        global = true,
        env = "LOWART_CONFIG",
        default_value = "config.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the effective configuration with secrets masked; exit non-zero if invalid.
    CheckConfig,
    /// Re-seal every stored secret under a new master key and install it (stop the
    /// gateway first). A key file is replaced (the old one kept as `<file>.<id>.bak`); a
    /// configured key is printed once, to be put in the configuration.
    RotateMasterKey {
        /// The new key (64 hex characters); a random one when absent.
        #[arg(long, env = "LOWART_NEW_MASTER_KEY", hide_env_values = true)]
        new_key: Option<String>,
    },
    /// Install Lowart as a systemd service: a hardened unit
    /// (/etc/systemd/system/lowart.service), a default configuration
    /// (/etc/lowart/config.toml, kept if present) and an environment file for secrets
    /// (/etc/lowart/lowart.env, mode 0600, kept if present); then `systemctl daemon-reload`
    /// and `systemctl enable lowart`.
    Install {
        /// Write everything under DIR instead of / and run no systemctl command.
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Print the files and commands; write and run nothing.
        #[arg(long)]
        dry_run: bool,
        /// The binary the unit runs (default: this executable).
        #[arg(long, value_name = "PATH")]
        bin: Option<PathBuf>,
        /// Run as this existing user instead of a dynamic one (DynamicUser=yes).
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Start the service now as well (`systemctl enable --now`).
        #[arg(long)]
        now: bool,
    },
    /// Manage API keys on the database directly (no running gateway needed).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an API key for a user (created with role `user` if absent), as
    /// `POST /admin/keys` does, audited with the actor `cli`.
    ///
    /// The key is printed once, alone on stdout (`KEY=$(lowart keys create --user alice)`);
    /// its id and prefix go to stderr. It is stored only as a hash. Works on the configured
    /// database (migrated first, as `serve` does), whether a gateway is running or not.
    Create {
        /// The user the key belongs to.
        #[arg(long, value_name = "USER_ID", value_parser = cli::parse_user_id)]
        user: String,
        /// A label for the key.
        #[arg(long)]
        name: Option<String>,
        /// The only models the key may use, comma-separated (default: every model).
        #[arg(long, value_name = "A,B", value_delimiter = ',', value_parser = cli::parse_model_name)]
        models: Option<Vec<String>>,
        /// The key's own requests-per-minute limit (overrides its user's).
        #[arg(long, value_name = "N")]
        rpm: Option<u32>,
        /// When the key stops working: Unix milliseconds or RFC 3339
        /// (e.g. 2027-01-31T00:00:00Z).
        #[arg(long, value_name = "TIME", value_parser = cli::parse_expiry)]
        expires_at: Option<i64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Installing needs no configuration (it writes one).
    if let Some(Command::Install {
        root,
        dry_run,
        bin,
        user,
        now,
    }) = cli.command
    {
        return install(root, dry_run, bin, user, now);
    }
    let settings = match Settings::load(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "lowart: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        let _ = writeln!(std::io::stdout(), "{}", settings.masked_json());
        // The TLS pair is read and checked as `serve` would.
        if let (Some(cert), Some(key)) = (&settings.server.tls_cert, &settings.server.tls_key) {
            let files = lowart::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            };
            let provider = rustls::crypto::ring::default_provider();
            if let Err(e) = files.load(&provider) {
                let _ = writeln!(std::io::stderr(), "lowart: {e}");
                return ExitCode::from(2);
            }
        }
        return ExitCode::SUCCESS;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let telemetry = match lowart::telemetry::init(&settings.telemetry) {
        Ok(guard) => guard,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "lowart: {e}");
            return ExitCode::from(2);
        }
    };
    let run = async move {
        match cli.command {
            Some(Command::Migrate) => {
                connect_and_migrate(&settings).await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Some(Command::RotateMasterKey { new_key }) => {
                let db = connect_and_migrate(&settings).await?;
                let new_key = new_key.map(Secret::new);
                let rotation = master_key::rotate(&settings, db, new_key.as_ref()).await?;
                report_rotation(&rotation);
                Ok(())
            }
            Some(Command::Keys {
                command:
                    KeysCommand::Create {
                        user,
                        name,
                        models,
                        rpm,
                        expires_at,
                    },
            }) => {
                let request = KeyRequest {
                    user_id: user,
                    name,
                    models,
                    rpm_limit: rpm,
                    expires_at,
                };
                let created = cli::create_key(&settings, request).await?;
                report_key(&created);
                Ok(())
            }
            _ => serve(settings).await,
        }
    };
    let result = actix_web::rt::System::new().block_on(run);
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "lowart failed");
            let _ = writeln!(std::io::stderr(), "lowart: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> Result<(), lowart::startup::StartupError> {
    let app = Application::build(settings, true).await?;
    if let Some(key) = app.generated_admin_key() {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "\n  Admin API key (shown once, stored only as a hash):\n\n    {}\n",
            key.expose()
        );
        let _ = out.flush();
    }
    app.run_until_stopped().await
}

fn install(
    root: Option<PathBuf>,
    dry_run: bool,
    bin: Option<PathBuf>,
    user: Option<String>,
    now: bool,
) -> ExitCode {
    let bin = match bin.map_or_else(std::env::current_exe, Ok) {
        Ok(bin) => bin,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "lowart: cannot tell this executable's path ({e}); pass --bin PATH"
            );
            return ExitCode::from(2);
        }
    };
    let options = lowart::install::InstallOptions {
        root,
        dry_run,
        bin,
        user,
        now,
    };
    match lowart::install::run(&options, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "lowart install: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The key alone on stdout (for scripts), what it is on stderr.
fn report_key(created: &cli::CreatedKey) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", created.key.expose());
    let _ = out.flush();
    let info = &created.info;
    let user = if created.created_user {
        format!("new user `{}` (role user)", info.user_id)
    } else {
        format!("user `{}`", info.user_id)
    };
    let _ = writeln!(
        std::io::stderr(),
        "Created API key {} (prefix {}) for {user}; it is shown once.",
        info.id,
        info.prefix.as_deref().unwrap_or("none"),
    );
}

fn report_rotation(rotation: &Rotation) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "Master key rotated from {} to {}: {} stored secret(s) re-sealed.",
        rotation.old_id, rotation.new_id, rotation.resealed
    );
    let _ = match &rotation.installed {
        Installed::File { path, backup } => writeln!(
            out,
            "{} now holds the new key; the old key is kept in {} (back up the new file).",
            path.display(),
            backup.display()
        ),
        Installed::Configured { new_key } => writeln!(
            out,
            "The master key is configured, so the new key is shown once:\n\n    {}\n\nSet security.master_key (LOWART_MASTER_KEY) to it before the next start; the old key no longer opens the database.",
            new_key.expose()
        ),
    };
    let _ = out.flush();
}
