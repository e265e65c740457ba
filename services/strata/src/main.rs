//! `strata`: the command-line tool. Parses arguments and hands over to [`strata::run`].

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = strata::Cli::parse();
    strata_runtime::init_tracing_with_default("warn");
    strata_runtime::exit_with(strata::run(cli)).await
}
