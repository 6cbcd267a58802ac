//! The `chatpool` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    chatpool::cli::main()
}
