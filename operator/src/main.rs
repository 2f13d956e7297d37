//! The `enclave` binary; all logic lives in the library.

/// jemalloc instead of glibc's malloc: the operator spends about a tenth
/// less CPU per Developer with it, at the same memory; `enclave plan` runs
/// faster and peaks higher (a cache per thread), within its budget
/// (`e2e/BENCHMARKS.md`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    enclave::cli::main()
}
