//! `strata`: the command-line tool. Parses arguments and hands over to [`strata::run`].

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = strata::Cli::parse();
    // Errors reach the user once, as the command's one-line error; STRATA_LOG=info shows the stages at work.
    strata_runtime::init_tracing_with_default("off");
    match strata::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<strata::cmd::archive::NotArchived>().is_some() => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            // `{:#}` joins the context chain on one line.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
