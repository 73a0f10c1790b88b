//! The `lowart` command: parse, load settings, init logging, run.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lowart::config::Settings;
use lowart::startup::{Application, connect_and_migrate};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "lowart: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        let _ = writeln!(std::io::stdout(), "{}", settings.masked_json());
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
