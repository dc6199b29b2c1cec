//! The `iris` command line (DESIGN.md §2). `main` parses it; each command is a function here.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, ConfigError};
use crate::keys;

/// Iris: an RFC 8693 token-exchange proxy for Ory Hydra and Kratos.
#[derive(Debug, Parser)]
#[command(name = "iris", version, about)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve {
        /// Configuration file (YAML); may repeat, later files override earlier ones.
        #[arg(short = 'c', long = "config")]
        config: Vec<PathBuf>,
    },
    /// Validate the configuration and print it as JSON with secrets redacted.
    Check {
        /// Configuration file (YAML); may repeat, later files override earlier ones.
        #[arg(short = 'c', long = "config")]
        config: Vec<PathBuf>,
    },
    /// Manage signing keys.
    Keys {
        /// What to do with keys.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Read a client secret on stdin and print its argon2id PHC hash.
    HashSecret,
}

/// `iris keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new private JWK (JSON).
    Generate {
        /// ES256, RS256 or EdDSA.
        #[arg(long, default_value = "ES256")]
        alg: String,
        /// The key id; defaults to the RFC 7638 thumbprint.
        #[arg(long)]
        kid: Option<String>,
    },
}

impl Cli {
    /// Runs the parsed command.
    pub fn run(self) -> ExitCode {
        match self.command {
            Command::Serve { config } => serve(&config),
            Command::Check { config } => check(&config),
            Command::Keys {
                command: KeysCommand::Generate { alg, kid },
            } => generate_key(&alg, kid.as_deref()),
            Command::HashSecret => hash_secret(),
        }
    }
}

/// Writes a line to stdout; a closed pipe (`iris check | head`) is not worth a panic.
fn print_line(text: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn load(files: &[PathBuf]) -> Result<(config::RawConfig, config::Settings), ConfigError> {
    let raw = config::load(files)?;
    let settings = raw.validate()?;
    Ok((raw, settings))
}

fn check(files: &[PathBuf]) -> ExitCode {
    let (raw, settings) = match load(files) {
        Ok(loaded) => loaded,
        Err(error) => return fail(error),
    };
    for path in &settings.signing_keys {
        if let Err(error) = keys::load_file(path) {
            return fail(format!("signing.keys: {error}"));
        }
    }
    if let Err(error) = crate::clients::Authenticator::new(
        &settings.clients,
        settings.allow_plaintext_secrets,
        std::sync::Arc::new(crate::store::MemoryStore::default()),
    ) {
        return fail(error);
    }
    if settings.signing_keys.is_empty() {
        eprintln!(
            "warning: signing.keys is empty: `iris serve` will sign with an ephemeral ES256 key and \
             tokens will stop verifying after a restart; create a key with `iris keys generate`"
        );
    }
    print_line(raw.redacted_json());
    ExitCode::SUCCESS
}

fn serve(files: &[PathBuf]) -> ExitCode {
    let (_, settings) = match load(files) {
        Ok(loaded) => loaded,
        Err(error) => return fail(error),
    };
    crate::telemetry::init(&settings.log);
    // Public connections run on per-core runtimes of their own (server::workers); this one
    // accepts connections and serves the admin listener and background work. Single-threaded:
    // the accept loop then runs on the thread that polls the listener, where a runtime with a
    // worker thread woke the main thread from that worker for every new connection.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(crate::telemetry::on_park)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(error),
    };
    let result = runtime.block_on(async {
        // Installed before the listeners exist, so no signal can find the process unprepared.
        let shutdown = crate::server::shutdown_signal();
        let public =
            tokio::net::TcpListener::bind((settings.public.host.as_str(), settings.public.port))
                .await?;
        let admin =
            tokio::net::TcpListener::bind((settings.admin.host.as_str(), settings.admin.port))
                .await?;
        crate::server::run(settings, public, admin, shutdown).await
    });
    // Lines still held by threads that will not park again (telemetry's batches).
    crate::telemetry::flush_all();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "iris stopped");
            fail(error)
        }
    }
}

fn generate_key(alg: &str, kid: Option<&str>) -> ExitCode {
    match keys::generate(alg, kid) {
        Ok(jwk) => {
            print_line(serde_json::to_string_pretty(&jwk).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(error) => fail(error),
    }
}

fn hash_secret() -> ExitCode {
    let mut input = String::new();
    if let Err(error) = std::io::stdin().read_to_string(&mut input) {
        return fail(format!("reading stdin: {error}"));
    }
    // One trailing newline (from `echo` or a terminal) is not part of the secret.
    let secret = input
        .strip_suffix("\r\n")
        .or_else(|| input.strip_suffix('\n'))
        .unwrap_or(&input);
    if secret.is_empty() {
        return fail("the secret on stdin is empty");
    }
    match crate::clients::hash_secret(secret) {
        Ok(hash) => {
            print_line(hash);
            ExitCode::SUCCESS
        }
        Err(error) => fail(error),
    }
}
