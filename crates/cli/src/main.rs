//! The `socketcluster` command: a standalone SocketCluster server and client tools to
//! poke at any SocketCluster server (ours or the JavaScript one). See `--help` and
//! `shared/CLI.md`.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::exit)]

mod bench;
mod client_cmds;
mod completions;
mod data;
mod history_cmd;
mod serve;
mod token;

use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// `socketcluster --version`: the crate version and the git commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("SOCKETCLUSTER_BUILD_COMMIT"),
    ")"
);

/// SocketCluster server and client tools.
#[derive(Debug, Parser)]
#[command(name = "socketcluster", version = VERSION, about, long_about = None)]
pub(crate) struct Cli {
    /// More logging on stderr (-v info, -vv debug, -vvv trace). `RUST_LOG` also works.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
    /// Less logging on stderr (-q errors only, -qq nothing).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a standalone SocketCluster server.
    Serve(Box<serve::settings::ServeArgs>),
    /// Invoke a procedure and print the response data as one line of JSON.
    Invoke(client_cmds::InvokeArgs),
    /// Transmit an event (fire and forget).
    Transmit(client_cmds::TransmitArgs),
    /// Publish to a channel and wait for the server's acknowledgement.
    Publish(client_cmds::PublishArgs),
    /// Subscribe to channels and print every publication as a JSON line.
    Subscribe(client_cmds::SubscribeArgs),
    /// Print a channel's history (from `socketcluster serve`'s HTTP API) as JSON lines.
    History(history_cmd::HistoryArgs),
    /// Print a signed token that a SocketCluster server with the same key accepts.
    Token(token::TokenArgs),
    /// Load generator: RPC, fan-out, channels, idle sockets, reconnect storms.
    Bench(bench::BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print a man page (roff), or write every page into a directory with `--out`.
    Man(completions::ManArgs),
}

/// `level` for our crates; dependencies stay at `warn` unless `RUST_LOG` says otherwise.
pub(crate) fn filter_for(level: &str) -> String {
    if level == "off" || level == "error" || level == "warn" {
        return level.to_owned();
    }
    format!(
        "warn,socketcluster={level},socketcluster_rs_server={level},socketcluster_rs_client={level},socketcluster_rs_protocol={level}"
    )
}

fn init_logging(verbose: u8, quiet: u8, json: bool) {
    let level = match (verbose, quiet) {
        (0, 0) => "warn",
        (0, 1) => "error",
        (0, _) => "off",
        (1, _) => "info",
        (2, _) => "debug",
        _ => "trace",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter_for(level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Completions(args) => return report(completions::completions(args)),
        Command::Man(args) => return report(completions::man(args)),
        _ => {}
    }
    if let Command::Token(args) = &cli.command {
        init_logging(cli.verbose, cli.quiet, false);
        return report(token::run(args));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(*args, cli.verbose, cli.quiet).await,
            Command::Invoke(args) => {
                init_logging(cli.verbose, cli.quiet, false);
                report(client_cmds::invoke(args).await)
            }
            Command::Transmit(args) => {
                init_logging(cli.verbose, cli.quiet, false);
                report(client_cmds::transmit(args).await)
            }
            Command::Publish(args) => {
                init_logging(cli.verbose, cli.quiet, false);
                report(client_cmds::publish(args).await)
            }
            Command::Subscribe(args) => {
                init_logging(cli.verbose, cli.quiet, false);
                report(client_cmds::subscribe(args).await)
            }
            Command::History(args) => {
                init_logging(cli.verbose, cli.quiet, false);
                report(history_cmd::history(args).await)
            }
            Command::Bench(args) => {
                init_logging(cli.verbose, cli.quiet, false);
                report(bench::run(args).await)
            }
            Command::Token(_) | Command::Completions(_) | Command::Man(_) => {
                unreachable!("handled above")
            }
        }
    })
}

/// Print an error as `Name: message` on stderr and turn it into exit status 1.
fn report<E: std::fmt::Display>(result: Result<ExitCode, E>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}
