//! The `enclave` command line.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{
    config::OperatorConfig,
    crd::{Company, Developer},
    plan,
};

/// Exit code of invalid input.
pub const EXIT_INVALID: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "enclave",
    version,
    about = "Isolated tenants for a multi-tenant data platform on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags of `enclave run` (each also read from its environment variable).
#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Operator configuration (YAML); defaults apply without one.
    #[arg(long, env = "ENCLAVE_CONFIG")]
    config: Option<PathBuf>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "ENCLAVE_HTTP_ADDRESS", default_value = "0.0.0.0:8080")]
    http_address: std::net::SocketAddr,
    /// Take the leader Lease before acting (turn off only with one replica).
    #[arg(long, env = "ENCLAVE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader Lease in the operator namespace.
    #[arg(long, env = "ENCLAVE_LEASE_NAME", default_value = "enclave-operator")]
    lease_name: String,
    /// Seconds the leader's Lease stays valid without renewal; a standby
    /// takes over at most this long after the leader died.
    #[arg(long, env = "ENCLAVE_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// This replica's identity (default: the pod name from POD_NAME, else
    /// the host name and process id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format.
    #[arg(long, env = "ENCLAVE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// One JSON object per line, with the reconcile span's fields.
    Json,
    /// Human-readable lines.
    Text,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show everything the given tenants imply (Kubernetes objects, Vault
    /// policies and roles, AWS and SQL actions), offline.
    Plan {
        /// Files or directories of Company and Developer manifests.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Summary)]
        output: Output,
        /// Operator configuration (YAML); defaults apply without one.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the controllers against the cluster of the current kubeconfig (or
    /// the in-cluster ServiceAccount).
    Run(Box<RunArgs>),
    /// Log in to Vault with the pod's ServiceAccount token, write the
    /// developer's secrets into the secrets volume and clone the company
    /// repository (the workspace pod's init step, not run by users).
    WorkspaceInit(Box<crate::workspace_init::InitSettings>),
    /// Create, archive or remove one developer's directory below a company
    /// root (run by the operator's storage-prep Job, not by users).
    StoragePrep {
        /// The company root, as mounted in the Job.
        #[arg(long)]
        root: PathBuf,
        /// The directory below the root, e.g. `developers/<key>`.
        #[arg(long)]
        path: String,
        /// Owner of the directory.
        #[arg(long)]
        uid: u32,
        /// Group of the directory.
        #[arg(long)]
        gid: u32,
        /// Mode, in octal.
        #[arg(long, default_value = "0700")]
        mode: String,
        /// What to do.
        #[arg(long, value_enum, default_value_t = crate::storage_prep::Action::Create)]
        action: crate::storage_prep::Action,
    },
    /// Print Enclave's own Vault policy (what the operator's Vault role needs).
    VaultPolicy {
        /// KV v2 mount of tenant secrets.
        #[arg(long, default_value = "secret")]
        kv_mount: String,
        /// Kubernetes auth mount of tenant roles.
        #[arg(long, default_value = "kubernetes")]
        auth_mount: String,
        /// JWT auth mount of admin people's roles (`vault.personAuthMount`),
        /// if any.
        #[arg(long, default_value = "")]
        person_auth_mount: String,
    },
    /// Set Vault up for Enclave, idempotently: the KV v2 and Kubernetes auth
    /// mounts of the operator configuration, Enclave's own policy
    /// (`enclave`) and the operator's login role. Run once by an
    /// administrator, with `VAULT_TOKEN` a token that may manage mounts,
    /// policies and roles; prints what it created, updated or found in place.
    VaultSetup(VaultSetupArgs),
    /// Print the CustomResourceDefinitions, or write them into a directory.
    Crdgen {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Also write the CRDs into this Helm chart's `crds/` and the
        /// operator configuration's schema into its `values.schema.json`.
        #[arg(long)]
        chart: Option<PathBuf>,
        /// Server-side apply them to the cluster instead (in-cluster
        /// credentials or `KUBECONFIG`): the chart's upgrade hook, since
        /// Helm never upgrades `crds/`.
        #[arg(long, conflicts_with_all = ["out_dir", "chart"])]
        apply: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    /// A readable tree per company.
    Summary,
    /// The exact Kubernetes objects, as multi-document YAML.
    Yaml,
    /// Everything (objects, Vault, actions) as JSON.
    Json,
}

fn storage_prep(
    root: &std::path::Path,
    path: &str,
    uid: u32,
    gid: u32,
    mode: &str,
    action: crate::storage_prep::Action,
) -> ExitCode {
    use crate::storage_prep::run;
    let Ok(mode) = u32::from_str_radix(mode.trim_start_matches("0o"), 8) else {
        eprintln!("error: --mode {mode:?} is not an octal mode such as 0700");
        return ExitCode::from(EXIT_INVALID);
    };
    match run(root, path, uid, gid, mode, action) {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run_controllers(args: &RunArgs) -> ExitCode {
    let config = match args
        .config
        .as_ref()
        .map(|p| OperatorConfig::load(p))
        .transpose()
    {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    if !config.vault.ca_file.is_empty()
        && let Err(e) = std::fs::read_to_string(&config.vault.ca_file)
    {
        eprintln!(
            "error: vault.caFile {} cannot be read ({e}); mount the CA bundle there (the chart: extraVolumes and extraVolumeMounts) or leave vault.caFile empty",
            config.vault.ca_file
        );
        return ExitCode::from(EXIT_INVALID);
    }
    // The Vault client logs expected 404s as errors; keep them out unless asked for.
    let mut filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    for quiet in ["rustify", "vaultrs"] {
        if !filter.contains(quiet) {
            filter.push(',');
            filter.push_str(quiet);
            filter.push_str("=off");
        }
    }
    // Colours only on a terminal: a log file or collector gets plain text.
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match args.log_format {
        LogFormat::Json => subscriber.json().with_current_span(true).init(),
        LogFormat::Text => subscriber.init(),
    }
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "enclave".into());
        format!("{}-{}", host.trim(), std::process::id())
    });
    let options = crate::controllers::RunOptions {
        http_address: args.http_address,
        leader_election: args.leader_election,
        lease_name: args.lease_name.clone(),
        lease_seconds: args.lease_seconds,
        identity,
    };
    // One thread: the operator waits on the network far more than it
    // computes, and handing every response from an I/O thread to the
    // controllers' thread cost it more CPU than all its own work.
    let runtime = match current_thread_runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        match kube::Client::try_default().await {
            Ok(client) => match crate::controllers::run(client, config, options).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "enclave run stops");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("error: cannot reach the Kubernetes API ({e}); check KUBECONFIG or the in-cluster ServiceAccount");
                ExitCode::FAILURE
            }
        }
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

fn workspace_init(settings: &crate::workspace_init::InitSettings) -> ExitCode {
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(crate::workspace_init::run(settings)) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Every CRD Enclave serves.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Company::crd(), Developer::crd()]
        .into_iter()
        .map(crate::crd::declare_metadata_name)
        .collect()
}

/// One CRD as YAML, as written to `crds/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, String> {
    serde_saphyr::to_string(crd)
        .map(|y| format!("# Generated by `enclave crdgen`; do not edit.\n{y}"))
        .map_err(|e| e.to_string())
}

fn crdgen(out_dir: Option<&PathBuf>) -> Result<(), String> {
    for crd in crds() {
        let yaml = crd_yaml(&crd)?;
        match out_dir {
            Some(dir) => {
                let name = crd.metadata.name.unwrap_or_default();
                let path = dir.join(format!("{name}.yaml"));
                std::fs::write(&path, yaml)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}

/// The arguments of `enclave vault-setup`.
#[derive(clap::Args, Debug)]
struct VaultSetupArgs {
    /// The operator configuration (Vault address, mounts, role, namespace).
    #[arg(long, env = "ENCLAVE_CONFIG")]
    config: Option<PathBuf>,
    /// The operator's ServiceAccount (the chart's is `enclave`).
    #[arg(long, default_value = "enclave")]
    service_account: String,
    /// Its namespace (the Helm release's); default: the configuration's
    /// `operatorNamespace`, else `enclave-system`.
    #[arg(long)]
    namespace: Option<String>,
    /// Configure the auth mount to review tokens with this API server
    /// (a Vault outside the cluster); unset: leave its configuration.
    #[arg(long)]
    kubernetes_host: Option<String>,
    /// PEM file of that API server's CA.
    #[arg(long, requires = "kubernetes_host")]
    kubernetes_ca_file: Option<PathBuf>,
    /// File with a token allowed to create TokenReviews
    /// (`system:auth-delegator`); unset: Vault uses its own pod's token.
    #[arg(long, requires = "kubernetes_host")]
    token_reviewer_jwt_file: Option<PathBuf>,
}

fn vault_setup(args: &VaultSetupArgs) -> ExitCode {
    match vault_setup_steps(args) {
        Ok(steps) => {
            for step in steps {
                println!(
                    "{:<10} {}",
                    format!("{:?}", step.change).to_lowercase(),
                    step.what
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn vault_setup_steps(
    args: &VaultSetupArgs,
) -> Result<Vec<crate::backends::vault::SetupStep>, String> {
    use crate::backends::vault::{
        KubernetesAuthConfig, SetupRequest, VaultAuth, VaultClientBackend, VaultSettings,
    };
    let config = args
        .config
        .as_ref()
        .map(|p| OperatorConfig::load(p))
        .transpose()
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let token = std::env::var("VAULT_TOKEN").map_err(|_| {
        "VAULT_TOKEN is not set: give a token that may manage mounts, policies and roles (an administrator's)".to_owned()
    })?;
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let kubernetes = match &args.kubernetes_host {
        Some(host) => Some(KubernetesAuthConfig {
            host: host.clone(),
            ca_pem: args.kubernetes_ca_file.as_ref().map(read).transpose()?,
            reviewer_jwt: args
                .token_reviewer_jwt_file
                .as_ref()
                .map(read)
                .transpose()?,
        }),
        None => None,
    };
    let vault = &config.vault;
    let settings = VaultSettings {
        address: vault.address.clone(),
        kv_mount: vault.kv_mount.clone(),
        auth_mount: vault.auth_mount.clone(),
        ca_cert: (!vault.ca_file.is_empty()).then(|| vault.ca_file.clone().into()),
        auth: VaultAuth::Token(token),
    };
    let request = SetupRequest {
        kv_mount: vault.kv_mount.clone(),
        auth_mount: vault.auth_mount.clone(),
        person_auth_mount: vault.person_auth_mount.clone(),
        role: vault.operator_role.clone(),
        service_account: args.service_account.clone(),
        namespace: args
            .namespace
            .clone()
            .unwrap_or_else(|| config.operator_namespace.clone()),
        token_ttl_seconds: vault.token_ttl_seconds,
        kubernetes,
    };
    let runtime = current_thread_runtime()?;
    runtime.block_on(async {
        let backend = VaultClientBackend::connect(settings)
            .await
            .map_err(|e| e.to_string())?;
        backend.setup(&request).await.map_err(|e| e.to_string())
    })
}

/// Server-side applies the CRDs (field manager `enclave-crds`, taking
/// over fields an earlier `helm install` set).
fn apply_crds() -> Result<(), String> {
    use kube::api::{Api, Patch, PatchParams};
    let runtime = current_thread_runtime()?;
    runtime.block_on(async {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("cannot reach the API server: {e}"))?;
        let api: Api<CustomResourceDefinition> = Api::all(client);
        for crd in crds() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            // The hook may only get and patch: a CRD that is not installed
            // (an Argo CD PreSync before its first sync, `--skip-crds`) is
            // left to whoever installs crds/.
            let present = api
                .get_opt(&name)
                .await
                .map_err(|e| format!("cannot read CRD {name}: {e}"))?;
            if present.is_none() {
                println!("skipped {name}: not installed; apply crds/ to install it");
                continue;
            }
            api.patch(&name, &PatchParams::apply("enclave-crds").force(), &Patch::Apply(&crd))
                .await
                .map_err(|e| format!("cannot apply CRD {name}: {e}; the hook's ServiceAccount needs get and patch on it"))?;
            println!("applied {name}");
        }
        Ok(())
    })
}

/// A single-threaded runtime for the one-shot commands.
fn current_thread_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// The generated parts of the Helm chart at `chart`: `crds/` and the
/// `definitions` of `values.schema.json`.
fn chartgen(chart: &Path) -> Result<(), String> {
    let crds = chart.join("crds");
    std::fs::create_dir_all(&crds).map_err(|e| format!("cannot create {}: {e}", crds.display()))?;
    crdgen(Some(&crds))?;
    let path = chart.join("values.schema.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut schema: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    schema["definitions"] = crate::config::chart_values_definitions();
    let text = serde_json::to_string_pretty(&schema).map_err(|e| e.to_string())?;
    std::fs::write(&path, format!("{text}\n"))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn run_plan(files: &[PathBuf], output: Output, config: Option<PathBuf>) -> ExitCode {
    let mut config = match config.map(|p| OperatorConfig::load(&p)).transpose() {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    // The plan shows the CA's ConfigMap even where the file is not.
    if !config.vault.ca_file.is_empty() && config.vault.ca_pem.is_none() {
        config.vault.ca_pem = Some(format!(
            "# the PEM bundle at vault.caFile ({}), read by the operator\n",
            config.vault.ca_file
        ));
    }
    let tenants = match plan::tenants_of_paths(files, &config) {
        Ok(tenants) => tenants,
        Err(problems) => {
            for p in &problems {
                eprintln!("error: {p}");
            }
            eprintln!(
                "{} problem(s); nothing planned. Fix the input and run again.",
                problems.len()
            );
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let format = match output {
        Output::Summary => plan::Format::Summary,
        Output::Yaml => plan::Format::Yaml,
        Output::Json => plan::Format::Json,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = tenants
        .write(&mut out, &config, format)
        .and_then(|()| std::io::Write::flush(&mut out));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the plan: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Plan {
            files,
            output,
            config,
        } => run_plan(&files, output, config),
        Command::Run(args) => run_controllers(&args),
        Command::WorkspaceInit(settings) => workspace_init(&settings),
        Command::StoragePrep {
            root,
            path,
            uid,
            gid,
            mode,
            action,
        } => storage_prep(&root, &path, uid, gid, &mode, action),
        Command::VaultPolicy {
            kv_mount,
            auth_mount,
            person_auth_mount,
        } => {
            print!(
                "{}",
                crate::builders::operator_policy(&kv_mount, &auth_mount, &person_auth_mount)
            );
            ExitCode::SUCCESS
        }
        Command::VaultSetup(args) => vault_setup(&args),
        Command::Crdgen { apply: true, .. } => match apply_crds() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Crdgen { out_dir, chart, .. } => match crdgen(out_dir.as_ref())
            .and_then(|()| chart.as_ref().map_or(Ok(()), |c| chartgen(c)))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
