//! The classifier service binary: reads its settings from the environment and serves
//! the API until SIGTERM/SIGINT. Logs are JSON lines on stderr.
//!
//! `classifier healthcheck` instead asks the service on this host for `/health` (exit 0
//! when healthy, 1 otherwise): the container's health check.

use std::process::ExitCode;

use classifier::config::Config;

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "healthcheck")
    {
        return healthcheck();
    }
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let result = Config::from_env().and_then(|config| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)?
            .block_on(classifier::server::run(config))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "fatal");
            ExitCode::FAILURE
        }
    }
}

fn healthcheck() -> ExitCode {
    let port = match std::env::var("PORT") {
        Err(_) => classifier::config::DEFAULT_PORT,
        Ok(v) => match v.trim().parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                eprintln!("unhealthy: PORT {v:?} is not a port number");
                return ExitCode::FAILURE;
            }
        },
    };
    match classifier::healthcheck::check(port, classifier::healthcheck::TIMEOUT) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unhealthy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
