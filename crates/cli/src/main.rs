//! The `socketcluster` command: a standalone SocketCluster server and client tools to
//! poke at any SocketCluster server (ours or the JavaScript one). See `--help`.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::exit)]

#[allow(dead_code)] // used by the client commands (invoke, transmit, publish)
mod data;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// SocketCluster server and client tools.
#[derive(Debug, Parser)]
#[command(name = "socketcluster", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a signed token that a SocketCluster server with the same key accepts.
    Token(token::TokenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Token(args) => token::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}
