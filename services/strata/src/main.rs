//! `strata`: the command-line tool. Parses arguments and hands over to [`strata::run`].

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = match strata::Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print as clap writes them; a usage error is one line, like every other error.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("{}", one_line(&e.render().to_string()));
            return std::process::ExitCode::from(2);
        }
    };
    // Errors reach the user once, as the command's one-line error; STRATA_LOG=info shows the stages at work.
    // The WAL streamer runs like a service, and logs like one.
    let default_log = if matches!(cli.command, strata::Command::WalStream { .. }) { "info" } else { "off" };
    strata_runtime::init_tracing_with_default(default_log);
    match strata::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<strata::cmd::archive::NotArchived>().is_some() => {
            eprintln!("{}", escape_controls(&e.to_string()));
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            // One line naming each cause once; a control character that came in with a user's input (a file
            // name with a newline) must not split it.
            eprintln!("error: {}", escape_controls(&strata_runtime::error_line(&e)));
            std::process::ExitCode::FAILURE
        }
    }
}

/// clap's multi-line usage error as one line: its lines joined, without the pointer to --help.
fn one_line(text: &str) -> String {
    let parts: Vec<&str> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("For more information")).collect();
    let line = parts.join(" ");
    if line.starts_with("error:") {
        line
    } else {
        format!("error: {line}")
    }
}

/// `text` with control characters written as escapes (`\n`, `\u{1b}`), so an error is one line whatever
/// names it quotes.
fn escape_controls(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}
