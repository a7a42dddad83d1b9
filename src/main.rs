//! The `doppel` command line: a thin layer over the library (see `doppel::run`), one file
//! per subcommand under `src/cli/`.

mod cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cli::main().await
}
