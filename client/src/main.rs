//! `jobctl`: the command-line tool of jobctl. See `jobctl --help` and the
//! crate's README.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
