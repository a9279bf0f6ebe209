//! `holdfast-server`: parse the configuration, then serve.

use clap::Parser as _;
use holdfast_server::config::{Args, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::resolve(Args::parse())?;
    let admin_password = std::env::var(holdfast_server::serve::ADMIN_PASSWORD_ENV)
        .ok()
        .map(zeroize::Zeroizing::new);
    holdfast_server::serve::run(config, admin_password).await
}
