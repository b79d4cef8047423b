//! The `herald` binary: parses the command line and hands it to the library.

fn main() -> std::process::ExitCode {
    herald::cli::run()
}
