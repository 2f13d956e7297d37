//! The `enclave` binary; all logic lives in the library.

/// jemalloc instead of glibc's malloc: the operator holds tens of
/// thousands of small objects (its watches' stores), and jemalloc packs
/// them with less overhead and gives freed memory back to the system.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    enclave::cli::main()
}
