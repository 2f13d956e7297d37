//! The workspace pod against every Pod Security Standards `restricted` rule
//! (<https://kubernetes.io/docs/concepts/security/pod-security-standards>/).

use enclave::builders::KubeObject;
use k8s_openapi::api::core::v1::{Container, PodSpec};

use crate::support::examples_plan;

const ALLOWED_VOLUME_TYPES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

fn check_container(pod: &PodSpec, c: &Container, problems: &mut Vec<String>) {
    let name = &c.name;
    let sc = c.security_context.clone().unwrap_or_default();
    let psc = pod.security_context.clone().unwrap_or_default();
    // Privileged containers.
    if sc.privileged == Some(true) {
        problems.push(format!("{name}: privileged"));
    }
    // Capabilities (restricted): drop ALL, add at most NET_BIND_SERVICE.
    let caps = sc.capabilities.clone().unwrap_or_default();
    if !caps.drop.unwrap_or_default().iter().any(|d| d == "ALL") {
        problems.push(format!("{name}: does not drop ALL capabilities"));
    }
    if caps
        .add
        .unwrap_or_default()
        .iter()
        .any(|a| a != "NET_BIND_SERVICE")
    {
        problems.push(format!("{name}: adds capabilities"));
    }
    // HostPorts.
    if c.ports
        .iter()
        .flatten()
        .any(|p| p.host_port.is_some_and(|h| h != 0))
    {
        problems.push(format!("{name}: hostPort"));
    }
    // Privilege escalation.
    if sc.allow_privilege_escalation != Some(false) {
        problems.push(format!("{name}: allowPrivilegeEscalation is not false"));
    }
    // Running as non-root, and not as uid 0.
    if sc.run_as_non_root.or(psc.run_as_non_root) != Some(true) {
        problems.push(format!("{name}: runAsNonRoot is not true"));
    }
    if sc.run_as_user.or(psc.run_as_user) == Some(0) {
        problems.push(format!("{name}: runs as uid 0"));
    }
    // Seccomp.
    let seccomp = sc.seccomp_profile.or(psc.seccomp_profile).map(|s| s.type_);
    if !matches!(seccomp.as_deref(), Some("RuntimeDefault" | "Localhost")) {
        problems.push(format!("{name}: seccomp profile {seccomp:?}"));
    }
    // /proc mount, SELinux, AppArmor (baseline rules the restricted level includes).
    if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
        problems.push(format!("{name}: procMount"));
    }
    if let Some(se) = sc.se_linux_options.or(psc.se_linux_options.clone())
        && (se.user.is_some()
            || se.role.is_some()
            || se.type_.as_deref().is_some_and(|t| {
                ![
                    "container_t",
                    "container_init_t",
                    "container_kvm_t",
                    "container_engine_t",
                ]
                .contains(&t)
            }))
    {
        problems.push(format!("{name}: SELinux options"));
    }
    if sc
        .app_armor_profile
        .is_some_and(|a| a.type_ == "Unconfined")
    {
        problems.push(format!("{name}: AppArmor unconfined"));
    }
    // Not a PSS rule, but part of our hardening contract.
    if sc.read_only_root_filesystem != Some(true) {
        problems.push(format!("{name}: root filesystem is writable"));
    }
}

fn restricted_violations(pod: &PodSpec) -> Vec<String> {
    let mut problems = Vec::new();
    if pod.host_network == Some(true) || pod.host_pid == Some(true) || pod.host_ipc == Some(true) {
        problems.push("host namespaces".into());
    }
    if pod.host_users == Some(true) {
        problems.push("hostUsers".into());
    }
    for v in pod.volumes.iter().flatten() {
        let json = serde_json::to_value(v).unwrap();
        for key in json
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.as_str() != "name")
        {
            if !ALLOWED_VOLUME_TYPES.contains(&key.as_str()) {
                problems.push(format!("volume {} has type {key}", v.name));
            }
        }
    }
    if let Some(sysctls) = pod
        .security_context
        .as_ref()
        .and_then(|s| s.sysctls.as_ref())
        && !sysctls.is_empty()
    {
        problems.push("sysctls".into());
    }
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        check_container(pod, c, &mut problems);
    }
    problems
}

#[test]
fn workspace_pods_meet_pod_security_restricted() {
    let mut checked = 0;
    for t in examples_plan().tenants {
        for d in t.developers {
            for o in d.objects {
                if let KubeObject::StatefulSet(sts) = o {
                    let pod = sts.spec.template.spec.unwrap();
                    assert_eq!(
                        restricted_violations(&pod),
                        Vec::<String>::new(),
                        "{}",
                        d.settings.name
                    );
                    assert_eq!(pod.automount_service_account_token, Some(false));
                    assert_eq!(
                        pod.security_context.unwrap().run_as_user,
                        Some(d.settings.posix_id)
                    );
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 3);
}

#[test]
fn the_check_catches_a_violation() {
    let t = examples_plan().tenants.remove(0);
    let KubeObject::StatefulSet(sts) = t.developers[0]
        .objects
        .iter()
        .find(|o| o.kind() == "StatefulSet")
        .unwrap()
        .clone()
    else {
        unreachable!()
    };
    let mut pod = sts.spec.template.spec.unwrap();
    pod.containers[0]
        .security_context
        .as_mut()
        .unwrap()
        .allow_privilege_escalation = Some(true);
    pod.host_network = Some(true);
    let problems = restricted_violations(&pod);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("allowPrivilegeEscalation")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("host namespaces")),
        "{problems:?}"
    );
}
