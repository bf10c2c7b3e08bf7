use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    paymux::cli::run(paymux::cli::Cli::parse()).await
}
