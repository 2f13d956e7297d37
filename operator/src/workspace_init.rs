//! `enclave workspace-init`: the init step of a workspace pod. It logs in
//! to Vault with the pod's own projected ServiceAccount token, reads that
//! developer's secrets and the company's secrets the role may read, writes
//! them into the memory-backed secrets volume (mode 0400, owned by the
//! pod's uid), then clones the company repository into the developer's
//! directory if it is not there yet.
//!
//! Which secret becomes which file (the company's shared secret first, the
//! developer's own secret of the same name overriding it):
//! - secret `env`: every key becomes a line `KEY=value` of `env`;
//! - secret `git`: key `ssh_private_key` → `git-ssh-key`, key
//!   `known_hosts` → `known_hosts` (used for the clone);
//! - secret `dbt`: key `profiles.yml` → `profiles.yml`.
//!
//! No secret value is written anywhere else or printed.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use thiserror::Error;

use crate::backends::vault::{VaultAuth, VaultClientBackend, VaultError, VaultSettings};

/// What the init step needs (the workspace builder passes each as a flag).
#[derive(Clone, Debug, clap::Args)]
pub struct InitSettings {
    /// Vault address.
    #[arg(long)]
    pub vault_address: String,
    /// CA bundle of Vault's TLS certificate.
    #[arg(long)]
    pub vault_ca_file: Option<PathBuf>,
    /// Kubernetes auth mount.
    #[arg(long)]
    pub auth_mount: String,
    /// The workspace's Vault role.
    #[arg(long)]
    pub role: String,
    /// The projected ServiceAccount token (audience `vault`).
    #[arg(long)]
    pub token_file: PathBuf,
    /// KV v2 mount.
    #[arg(long)]
    pub kv_mount: String,
    /// The developer's own secrets.
    #[arg(long)]
    pub developer_path: String,
    /// The company's secrets this role may read.
    #[arg(long)]
    pub shared_path: String,
    /// The memory-backed volume the secrets go to.
    #[arg(long)]
    pub secrets_dir: PathBuf,
    /// The developer's own directory.
    #[arg(long)]
    pub home: PathBuf,
    /// Company repository to clone.
    #[arg(long)]
    pub git_repository: Option<String>,
    /// Branch to check out.
    #[arg(long)]
    pub git_branch: Option<String>,
}

/// Why the init step failed (the pod restarts it).
#[derive(Debug, Error)]
pub enum InitError {
    /// Vault refused the login or a read.
    #[error("{0}")]
    Vault(#[from] VaultError),
    /// A secret cannot be written as a file.
    #[error("secret {secret}: {reason}")]
    BadSecret {
        /// Which secret (never its value).
        secret: String,
        /// What is wrong.
        reason: String,
    },
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The clone failed.
    #[error("git clone of {repository} failed: {message}")]
    Clone {
        /// The repository.
        repository: String,
        /// What git said.
        message: String,
    },
}

/// Runs the init step; returns a one-line summary (no secret values).
pub async fn run(settings: &InitSettings) -> Result<String, InitError> {
    let vault = VaultClientBackend::connect(VaultSettings {
        address: settings.vault_address.clone(),
        kv_mount: settings.kv_mount.clone(),
        auth_mount: settings.auth_mount.clone(),
        ca_cert: settings.vault_ca_file.clone(),
        auth: VaultAuth::Kubernetes {
            mount: settings.auth_mount.clone(),
            role: settings.role.clone(),
            jwt_path: settings.token_file.clone(),
        },
    })
    .await?;
    let shared = vault.read_secrets_below(&settings.shared_path).await?;
    let own = vault.read_secrets_below(&settings.developer_path).await?;
    let files = render_files(&shared, &own)?;
    for (name, content) in &files {
        write_private(&settings.secrets_dir.join(name), content)?;
    }
    let mut summary = format!(
        "wrote {} ({} company and {} own secrets read)",
        if files.is_empty() {
            "no files".to_owned()
        } else {
            files.keys().cloned().collect::<Vec<_>>().join(", ")
        },
        shared.len(),
        own.len()
    );
    if let Some(repository) = &settings.git_repository {
        summary.push_str("; ");
        summary.push_str(&clone(settings, repository)?);
    }
    Ok(summary)
}

type Secrets = BTreeMap<String, HashMap<String, String>>;

/// The files the secrets imply, by file name.
pub fn render_files(
    shared: &Secrets,
    own: &Secrets,
) -> Result<BTreeMap<String, String>, InitError> {
    let mut files = BTreeMap::new();
    // The developer's own secret of a name overrides the company's.
    let pick = |secret: &str, key: &str| {
        own.get(secret)
            .and_then(|s| s.get(key))
            .or_else(|| shared.get(secret).and_then(|s| s.get(key)))
            .cloned()
    };
    let mut env = BTreeMap::new();
    for source in [shared.get("env"), own.get("env")].into_iter().flatten() {
        for (key, value) in source {
            let valid_key = key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_key {
                return Err(InitError::BadSecret {
                    secret: "env".into(),
                    reason: format!("key {key:?} is not a valid environment variable name"),
                });
            }
            if value.contains(['\n', '\r', '\0']) {
                return Err(InitError::BadSecret {
                    secret: "env".into(),
                    reason: format!(
                        "the value of {key} spans lines, which an env file cannot hold"
                    ),
                });
            }
            env.insert(key.clone(), value.clone());
        }
    }
    if !env.is_empty() {
        let mut text = String::new();
        for (key, value) in &env {
            text.push_str(key);
            text.push('=');
            text.push_str(value);
            text.push('\n');
        }
        files.insert("env".to_owned(), text);
    }
    if let Some(key) = pick("git", "ssh_private_key") {
        let key = if key.ends_with('\n') {
            key
        } else {
            format!("{key}\n")
        };
        files.insert("git-ssh-key".to_owned(), key);
    }
    if let Some(hosts) = pick("git", "known_hosts") {
        files.insert("known_hosts".to_owned(), hosts);
    }
    if let Some(profiles) = pick("dbt", "profiles.yml") {
        files.insert("profiles.yml".to_owned(), profiles);
    }
    // The company controller's database credentials (`platform/database`),
    // single-quoted so that a shell may source the file (generated
    // passwords hold `;`, `#`, `(`, never a quote).
    if let (Some(user), Some(password)) = (
        own.get("database").and_then(|s| s.get("username")),
        own.get("database").and_then(|s| s.get("password")),
    ) {
        if [user, password]
            .iter()
            .any(|v| v.contains(['\n', '\r', '\0', '\'']))
        {
            return Err(InitError::BadSecret {
                secret: "database".into(),
                reason: "the username or password spans lines or holds a single quote".into(),
            });
        }
        files.insert(
            "database.env".to_owned(),
            format!("PGUSER='{user}'\nPGPASSWORD='{password}'\n"),
        );
    }
    Ok(files)
}

/// Writes `content` to `path` with mode 0400: to a new temporary file
/// first, then renamed, so a restart never sees half a file.
fn write_private(path: &Path, content: &str) -> Result<(), InitError> {
    let io = |source| InitError::Io {
        path: path.display().to_string(),
        source,
    };
    let temporary = path.with_extension("partial");
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&temporary)
        .map_err(io)?;
    file.write_all(content.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)
}

/// The directory a repository is cloned into: its last path segment
/// without `.git`, if that is a plain name.
pub fn clone_dir(repository: &str) -> Option<String> {
    let name = repository
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()?
        .trim_end_matches(".git");
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    plain.then(|| name.to_owned())
}

/// Clones into a temporary directory and renames it into place, so an
/// interrupted clone is retried instead of being taken for a checkout.
fn clone(settings: &InitSettings, repository: &str) -> Result<String, InitError> {
    let failed = |message: String| InitError::Clone {
        repository: repository.to_owned(),
        message,
    };
    let dir = clone_dir(repository)
        .ok_or_else(|| failed("its name gives no plain directory name to clone into".into()))?;
    let target = settings.home.join(&dir);
    if target.exists() {
        return Ok(format!("{dir} is already checked out"));
    }
    let partial = settings.home.join(format!(".{dir}.cloning"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| failed(e.to_string()))?;
    }
    let mut git = Command::new("git");
    git.arg("clone").arg("--quiet");
    if let Some(branch) = &settings.git_branch {
        git.arg("--branch").arg(branch);
    }
    git.arg("--").arg(repository).arg(&partial);
    git.env("GIT_TERMINAL_PROMPT", "0");
    let key = settings.secrets_dir.join("git-ssh-key");
    if key.exists() {
        let hosts = settings.secrets_dir.join("known_hosts");
        let hosts = if hosts.exists() {
            format!("-o UserKnownHostsFile={}", hosts.display())
        } else {
            String::new()
        };
        git.env(
            "GIT_SSH_COMMAND",
            format!(
                "ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes {hosts}",
                key.display()
            ),
        );
    }
    let output = git
        .output()
        .map_err(|e| failed(format!("cannot run git: {e}")))?;
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(failed(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    std::fs::rename(&partial, &target).map_err(|e| failed(e.to_string()))?;
    Ok(format!("cloned {dir}"))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::{InitError, clone_dir, render_files};

    fn secrets(entries: &[(&str, &[(&str, &str)])]) -> BTreeMap<String, HashMap<String, String>> {
        entries
            .iter()
            .map(|(name, kv)| {
                (
                    (*name).to_owned(),
                    kv.iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn the_developers_own_values_win_over_the_companys() {
        let shared = secrets(&[
            ("env", &[("WAREHOUSE", "shared"), ("REGION", "eu")]),
            ("dbt", &[("profiles.yml", "shared: {}\n")]),
            ("git", &[("ssh_private_key", "company-key")]),
        ]);
        let own = secrets(&[
            ("env", &[("WAREHOUSE", "mine")]),
            (
                "git",
                &[
                    ("ssh_private_key", "my-key\n"),
                    ("known_hosts", "host key\n"),
                ],
            ),
        ]);
        let files = render_files(&shared, &own).unwrap();
        assert_eq!(files["env"], "REGION=eu\nWAREHOUSE=mine\n");
        assert_eq!(files["git-ssh-key"], "my-key\n");
        assert_eq!(files["known_hosts"], "host key\n");
        assert_eq!(files["profiles.yml"], "shared: {}\n");
    }

    #[test]
    fn the_database_credentials_become_an_env_file_and_only_from_the_own_path() {
        let own = secrets(&[(
            "database",
            &[("username", "acme_owner"), ("password", "p4ss")],
        )]);
        let files = render_files(&BTreeMap::new(), &own).unwrap();
        assert_eq!(
            files["database.env"],
            "PGUSER='acme_owner'\nPGPASSWORD='p4ss'\n"
        );
        // A shared secret of that name is no database credential.
        let files = render_files(&own, &BTreeMap::new()).unwrap();
        assert!(!files.contains_key("database.env"));
        let broken = secrets(&[("database", &[("username", "a"), ("password", "x\ny")])]);
        assert!(matches!(
            render_files(&BTreeMap::new(), &broken),
            Err(InitError::BadSecret { .. })
        ));
    }

    #[test]
    fn nothing_to_write_without_secrets() {
        assert!(
            render_files(&BTreeMap::new(), &BTreeMap::new())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn an_env_file_refuses_bad_names_and_multi_line_values_without_echoing_them() {
        for (key, value) in [
            ("1ABC", "v"),
            ("A-B", "v"),
            ("", "v"),
            ("OK", "line\nnext"),
            ("OK", "a\0b"),
        ] {
            let own = secrets(&[("env", &[(key, value)])]);
            let err = render_files(&BTreeMap::new(), &own).unwrap_err();
            assert!(matches!(err, InitError::BadSecret { .. }));
            if !value.is_empty() && value != "v" {
                assert!(!err.to_string().contains(value), "{err}");
            }
        }
    }

    #[test]
    fn clone_directories_are_plain_names() {
        assert_eq!(
            clone_dir("https://git.example.com/acme/analytics.git").as_deref(),
            Some("analytics")
        );
        assert_eq!(
            clone_dir("git@github.com:acme/dbt-models.git").as_deref(),
            Some("dbt-models")
        );
        assert_eq!(
            clone_dir("ssh://git.example.com/acme/repo/").as_deref(),
            Some("repo")
        );
        for bad in [
            "https://git.example.com/.git",
            "https://x/..",
            "https://x/a%20b",
        ] {
            assert_eq!(clone_dir(bad), None, "{bad}");
        }
    }
}
