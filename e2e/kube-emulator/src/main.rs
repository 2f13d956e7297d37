//! `kube-emulator`: runs the emulator until interrupted, for manual use
//! with kubectl or for tests in another process. Prints its URL and
//! kubeconfig path.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let emulator = match kube_emulator::Emulator::start().await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot start the emulator: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("kube-emulator listening on {}", emulator.url);
    println!("export KUBECONFIG={}", emulator.kubeconfig.display());
    let _ = tokio::signal::ctrl_c().await;
    std::process::ExitCode::SUCCESS
}
