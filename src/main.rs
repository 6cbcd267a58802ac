//! The `chatpool` binary: everything lives in the library.

/// jemalloc returns freed memory to the system; with glibc's allocator 100
/// registrations (19 MiB of Argon2 memory each) left the process at over
/// 600 MiB for good (see docs/benchmarks.md, "Memory").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    chatpool::cli::main()
}
