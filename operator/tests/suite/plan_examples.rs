//! `enclave plan` on the examples: snapshots of both outputs, and the
//! isolation promises checked on the planned objects themselves.

use enclave::{
    builders::KubeObject,
    plan::{all_objects, render_json, render_summary, render_yaml},
};

use crate::support::{enclave, examples_plan, root, unique};

#[test]
fn summary_snapshot() {
    insta::assert_snapshot!(render_summary(&examples_plan()).unwrap());
}

#[test]
fn yaml_snapshot() {
    insta::assert_snapshot!(render_yaml(&examples_plan()).unwrap());
}

#[test]
fn cli_prints_the_same_summary_and_exits_zero() {
    let out = enclave()
        .args(["plan", "-f"])
        .arg(root().join("examples"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        render_summary(&examples_plan()).unwrap()
    );
}

/// The CLI plans and renders shares of the tenants on every core; what it
/// writes is byte for byte what rendering them one at a time gives, over
/// more tenants than one window holds.
#[test]
fn cli_renders_many_tenants_in_parallel_exactly_as_in_order() {
    let dir = std::env::temp_dir().join(unique("enclave-many-"));
    let status = std::process::Command::new("python3")
        .arg(root().join("e2e/bench/tenants.py"))
        .args(["300", "2"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "tenants.py failed");
    let plan = enclave::plan::plan_paths(
        std::slice::from_ref(&dir),
        &enclave::config::OperatorConfig::default(),
    )
    .unwrap();
    assert_eq!(plan.tenants.len(), 300);
    for (output, expected) in [
        ("summary", render_summary(&plan).unwrap()),
        ("yaml", render_yaml(&plan).unwrap()),
        ("json", render_json(&plan).unwrap()),
    ] {
        let out = enclave()
            .args(["plan", "--output", output, "-f"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8(out.stdout).unwrap() == expected,
            "{output} differs"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The CLI writes one tenant at a time; what it writes is byte for byte
/// what rendering the whole plan at once gives.
#[test]
fn cli_streams_the_same_yaml_and_json() {
    let plan = examples_plan();
    for (output, expected) in [
        ("yaml", render_yaml(&plan).unwrap()),
        ("json", render_json(&plan).unwrap()),
    ] {
        let out = enclave()
            .args(["plan", "--output", output, "-f"])
            .arg(root().join("examples"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8(out.stdout).unwrap(), expected, "{output}");
    }
    let whole = serde_json::to_string_pretty(
        &serde_json::from_str::<serde_json::Value>(&render_json(&plan).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        render_json(&plan).unwrap(),
        whole,
        "streamed JSON is pretty JSON"
    );
}

#[test]
fn plan_shows_two_tenants_with_everything_they_imply() {
    let plan = examples_plan();
    assert_eq!(
        plan.tenants
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["acme", "globex"]
    );
    for t in &plan.tenants {
        let kinds: Vec<&str> = t.company.objects.iter().map(KubeObject::kind).collect();
        for kind in [
            "Namespace",
            "ResourceQuota",
            "LimitRange",
            "NetworkPolicy",
            "RoleBinding",
            "ServiceAccount",
        ] {
            assert!(kinds.contains(&kind), "{} lacks {kind}", t.name);
        }
        assert!(!t.company.actions.is_empty());
        for d in &t.developers {
            let kinds: Vec<&str> = d.objects.iter().map(KubeObject::kind).collect();
            for kind in [
                "ServiceAccount",
                "StatefulSet",
                "PersistentVolumeClaim",
                "Service",
            ] {
                assert!(kinds.contains(&kind), "{} lacks {kind}", d.settings.name);
            }
        }
    }
    let acme = &plan.tenants[0];
    assert!(
        acme.developers
            .iter()
            .all(|d| d.objects.iter().any(|o| o.kind() == "Job")),
        "FSx developers get a storage-prep Job"
    );
    let json = render_json(&plan).unwrap();
    assert!(
        json.contains("CreateDBInstance")
            && json.contains("CreateFileSystem")
            && json.contains("CREATE DATABASE")
    );
}

#[test]
fn nothing_of_one_company_references_the_other() {
    let plan = examples_plan();
    for (i, t) in plan.tenants.iter().enumerate() {
        let other = &plan.tenants[1 - i].name;
        let mine = serde_json::json!({
            "objects": t.company.objects.iter().chain(t.developers.iter().flat_map(|d| d.objects.iter())).map(KubeObject::to_json).collect::<Vec<_>>(),
            "policies": t.company.policies.iter().chain(t.developers.iter().flat_map(|d| d.policies.iter())).collect::<Vec<_>>(),
            "roles": t.company.roles.iter().chain(t.developers.iter().flat_map(|d| d.roles.iter())).collect::<Vec<_>>(),
            "actions": t.company.actions.iter().chain(t.developers.iter().flat_map(|d| d.actions.iter())).collect::<Vec<_>>(),
        })
        .to_string();
        assert!(
            !mine.contains(other.as_str()),
            "{}'s plan mentions {other}",
            t.name
        );
    }
}

#[test]
fn vault_policies_grant_only_own_paths_and_no_sudo() {
    let plan = examples_plan();
    for t in &plan.tenants {
        let company_prefixes = [
            format!("secret/data/companies/{}/", t.name),
            format!("secret/metadata/companies/{}/", t.name),
        ];
        for p in &t.company.policies {
            for r in &p.rules {
                assert!(
                    company_prefixes.iter().any(|c| r.path.starts_with(c)),
                    "{}: {}",
                    p.name,
                    r.path
                );
                assert!(
                    !r.path.contains("/developers/"),
                    "the company controller reads no developer's secrets"
                );
            }
        }
        for d in &t.developers {
            for p in &d.policies {
                for r in &p.rules {
                    assert!(
                        company_prefixes.iter().any(|c| r.path.starts_with(c)),
                        "{}: {}",
                        p.name,
                        r.path
                    );
                    assert!(!r.capabilities.iter().any(|c| c == "sudo"));
                    if r.path.contains("/developers/") {
                        let key = r
                            .path
                            .split("/developers/")
                            .nth(1)
                            .unwrap()
                            .trim_end_matches("/*");
                        assert!(
                            key.starts_with(&format!("{}-", d.settings.name)),
                            "{} reaches {key}",
                            d.settings.name
                        );
                    }
                }
                assert!(p.hcl.starts_with(enclave::builders::OWNERSHIP_MARKER));
            }
            for role in &d.roles {
                assert_eq!(role.bound_service_account_names.len(), 1);
                assert_eq!(
                    role.bound_service_account_namespaces,
                    std::slice::from_ref(&t.company.settings.namespace)
                );
                assert!(!role.bound_service_account_names[0].contains('*'));
                assert!(role.token_ttl <= 3600);
            }
        }
    }
}

#[test]
fn every_managed_object_carries_the_label_set() {
    for o in all_objects(&examples_plan()) {
        let labels = o.metadata().labels.clone().unwrap_or_default();
        assert_eq!(
            labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("enclave"),
            "{}",
            o.display_name()
        );
        assert!(
            labels.contains_key("enclave.dev/company"),
            "{}",
            o.display_name()
        );
    }
}

#[test]
fn namespaces_and_data_volumes_have_no_owner_reference() {
    for o in all_objects(&examples_plan()) {
        if matches!(
            o,
            KubeObject::Namespace(_) | KubeObject::PersistentVolume(_)
        ) {
            assert!(
                o.metadata().owner_references.is_none(),
                "{} must not be garbage collected",
                o.display_name()
            );
        }
    }
}

#[test]
fn network_policies_never_allow_the_metadata_endpoint() {
    for o in all_objects(&examples_plan()) {
        if let KubeObject::NetworkPolicy(np) = o {
            for rule in np.spec.as_ref().unwrap().egress.iter().flatten() {
                for peer in rule.to.iter().flatten() {
                    if let Some(block) = &peer.ip_block {
                        assert!(!block.cidr.starts_with("169.254."), "{}", block.cidr);
                    }
                }
            }
        }
    }
}
