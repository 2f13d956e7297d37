//! The operator image, built without a daemon by `image/build.sh`: its OCI
//! configuration (entrypoint, non-root user, the tag the chart expects) and
//! its root file system, run with `chroot` as that user: `enclave` and the
//! tools the workspace init step uses (git, ssh).

use std::{path::Path, process::Command};

use serde_json::Value;

use crate::support::{root, service};

fn blob(layout: &Path, digest: &str) -> Value {
    let hex = digest.strip_prefix("sha256:").unwrap();
    serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

fn chroot(rootfs: &Path, command: &[&str]) -> String {
    let out = Command::new("/usr/sbin/chroot")
        .arg("--userspec=65532:65532")
        .arg(rootfs)
        .args(command)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?} in the image: {said}");
    said
}

#[test]
fn the_image_runs_enclave_and_the_init_steps_tools_as_a_non_root_user() {
    crate::harness::require_root();
    // e2e/run-tests.sh builds (or reuses) the Debian root file system.
    service(
        "ENCLAVE_TEST_IMAGE_BASE",
        "the image's Debian root file system (image/base.sh, with mmdebstrap and umoci)",
    );
    let out = std::env::temp_dir().join(crate::support::unique("image-"));
    let built = Command::new(root().join("image/build.sh"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_enclave"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "image/build.sh: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let version = env!("CARGO_PKG_VERSION");
    assert!(out.join(format!("enclave-{version}.oci.tar")).is_file());

    // The OCI configuration: the tag the chart's default image names, the
    // entrypoint, a non-root user.
    let layout = out.join("oci");
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == version)
        .expect("the image is tagged with the crate's version");
    let manifest = blob(&layout, manifest["digest"].as_str().unwrap());
    let config = blob(&layout, manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/enclave"])
    );
    let chart = std::fs::read_to_string(root().join("charts/enclave/Chart.yaml")).unwrap();
    assert!(
        chart.contains(&format!("appVersion: \"{version}\"")),
        "the chart's default image tag (its appVersion) is the image's"
    );

    // The root file system runs what the pods run, as the image's user.
    let bundle = out.join("bundle");
    let unpacked = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{version}", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        unpacked.status.success(),
        "{}",
        String::from_utf8_lossy(&unpacked.stderr)
    );
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        chroot(&rootfs, &["/usr/local/bin/enclave", "--version"]).trim(),
        format!("enclave {version}")
    );
    assert!(chroot(&rootfs, &["git", "--version"]).starts_with("git version"));
    assert!(chroot(&rootfs, &["ssh", "-V"]).contains("OpenSSH"));
    assert!(chroot(&rootfs, &["id", "-un"]).trim() == "nonroot");
    // The CA bundle TLS to Vault and AWS needs.
    assert!(rootfs.join("etc/ssl/certs/ca-certificates.crt").is_file());
    std::fs::remove_dir_all(&out).unwrap();
}
