//! The `enclave` binary; all logic lives in the library.

fn main() -> std::process::ExitCode {
    enclave::cli::main()
}
