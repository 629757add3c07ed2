//! The `reconciled` binary: parse the command line, set up logging, run, map errors to exit
//! codes (0 success, 1 failure, 2 bad configuration or usage).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use reconciled::cli::{self, Cli};
use reconciled::settings::ConfigError;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        EnvFilter::try_from_env("RECONCILED_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.downcast_ref::<cli::ExitStatus>().is_some() => {
            ExitCode::from(err.downcast_ref::<cli::ExitStatus>().map_or(1, |s| s.0))
        }
        Err(err) => {
            let mut message = err.to_string();
            for cause in err.chain().skip(1) {
                message.push_str(&format!(": {cause}"));
            }
            eprintln!("reconciled: {message}");
            if err.downcast_ref::<ConfigError>().is_some()
                || err.downcast_ref::<cli::UsageError>().is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
