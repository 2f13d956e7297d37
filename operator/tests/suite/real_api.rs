//! What only a real API server can prove: the operator's RBAC (the chart's
//! rules, checked by the authorizer), Pod Security admission of the pods
//! Enclave builds, and the CRDs' validation of bad input — on the control
//! plane `e2e/run-tests.sh` starts for the whole run.

use std::path::Path;

use enclave::builders::KubeObject;
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{Namespace, Pod, Secret, ServiceAccount},
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::control_plane::{
    ControlPlane, OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, chart_rules, client_from, operator_user,
};

/// `kubectl auth can-i VERB RESOURCE[/NAME] [--subresource SUB] [-n NS | -A]
/// --as USER`: yes or no. `resource` is `kind.group[/name][#subresource]`
/// (kubectl reads `a/b` as a name, never as a subresource).
pub(crate) fn can_i(
    cp: &ControlPlane,
    user: &str,
    verb: &str,
    resource: &str,
    ns: Option<&str>,
) -> bool {
    let mut cmd = cp.kubectl();
    let (resource, subresource) = match resource.split_once('#') {
        Some((r, sub)) => (r, Some(sub)),
        None => (resource, None),
    };
    cmd.args(["auth", "can-i", verb, resource, "--as", user]);
    if let Some(sub) = subresource {
        cmd.args(["--subresource", sub]);
    }
    match ns {
        Some(ns) => cmd.args(["-n", ns]),
        None => cmd.arg("--all-namespaces"),
    };
    let out = cmd.output().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        answer == "yes" || answer == "no",
        "kubectl auth can-i {verb} {resource}: {answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    answer == "yes"
}

#[tokio::test]
async fn the_operator_holds_the_charts_rules_and_nothing_more() {
    let cp = ControlPlane::shared().await;
    cp.install_crds().await;
    cp.install_operator_identity().await;
    let user = operator_user();
    let rules = chart_rules();
    // The company-admin role as installed is the one files/rbac.yaml says.
    let installed = Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(cp.admin.clone())
        .get("enclave-company-admin")
        .await
        .unwrap();
    assert_eq!(
        installed.rules.unwrap_or_default(),
        rules.company_admin,
        "the installed company-admin ClusterRole"
    );
    let installed = Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(cp.admin.clone())
        .get("enclave-workspace-access")
        .await
        .unwrap();
    assert_eq!(
        installed.rules.unwrap_or_default(),
        rules.workspace_access,
        "the installed workspace-access ClusterRole"
    );
    let mut table = vec![format!(
        "{:<8} {:<58} {:<16} answer",
        "verb", "resource", "scope"
    )];
    let mut wrong = Vec::new();
    let mut check = |verb: &str, resource: String, ns: Option<&str>, want: bool| {
        let got = can_i(&cp, &user, verb, &resource, ns);
        table.push(format!(
            "{verb:<8} {resource:<58} {:<16} {}",
            ns.unwrap_or("all namespaces"),
            if got { "yes" } else { "no" }
        ));
        if got != want {
            wrong.push(format!("{verb} {resource} in {ns:?}: expected {want}"));
        }
    };
    // Every verb on every resource the chart grants: yes.
    for (rules, ns) in [
        (&rules.operator, None),
        (&rules.operator_namespace, Some(OPERATOR_NAMESPACE)),
    ] {
        for rule in rules {
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    let (kind, sub) = match resource.split_once('/') {
                        Some((r, sub)) => (r, Some(sub)),
                        None => (resource.as_str(), None),
                    };
                    let qualified = match group.as_str() {
                        "" => kind.to_owned(),
                        g => format!("{kind}.{g}"),
                    };
                    let names = rule.resource_names.clone().unwrap_or_default();
                    let names: Vec<Option<&String>> = if names.is_empty() {
                        vec![None]
                    } else {
                        names.iter().map(Some).collect()
                    };
                    for verb in &rule.verbs {
                        for name in &names {
                            let mut spec = qualified.clone();
                            if let Some(name) = name {
                                spec = format!("{spec}/{name}");
                            }
                            if let Some(sub) = sub {
                                spec = format!("{spec}#{sub}");
                            }
                            check(verb, spec, ns, true);
                        }
                    }
                }
            }
        }
    }
    // What it must never hold.
    for (verb, resource, ns) in [
        ("escalate", "clusterroles.rbac.authorization.k8s.io", None),
        ("escalate", "roles.rbac.authorization.k8s.io", None),
        (
            "bind",
            "clusterroles.rbac.authorization.k8s.io/cluster-admin",
            None,
        ),
        ("bind", "clusterroles.rbac.authorization.k8s.io/admin", None),
        (
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            None,
        ),
        ("get", "secrets", None),
        ("list", "secrets", Some(OPERATOR_NAMESPACE)),
        ("create", "pods#exec", None),
        ("create", "pods#attach", None),
        ("create", "pods#portforward", None),
        ("get", "pods", None),
        ("create", "pods#exec", Some("default")),
        ("create", "pods", None),
        ("create", "serviceaccounts#token", None),
        ("impersonate", "users", None),
        (
            "delete",
            "customresourcedefinitions.apiextensions.k8s.io",
            None,
        ),
        ("*", "*", None),
        ("create", "jobs.batch", Some("default")),
        (
            "update",
            "leases.coordination.k8s.io/someone-else",
            Some(OPERATOR_NAMESPACE),
        ),
    ] {
        check(verb, resource.to_owned(), ns, false);
    }
    println!("kubectl auth can-i --as={user}\n{}", table.join("\n"));
    assert!(wrong.is_empty(), "{wrong:#?}");

    // And the API server refuses it for real: its own token, a 403.
    let token = cp.token(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, &[]).await;
    let kubeconfig = cp
        .dir
        .join(format!("{}.kubeconfig", crate::support::unique("op")));
    cp.write_kubeconfig(&kubeconfig, &cp.api, &token);
    let operator = client_from(&kubeconfig).await;
    let err = Api::<Secret>::namespaced(operator.clone(), OPERATOR_NAMESPACE)
        .list(&ListParams::default())
        .await
        .expect_err("the operator cannot list Secrets");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err:?}"
    );
    let admin_binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding =
        serde_json::from_value(json!({
            "metadata": {"name": crate::support::unique("escalation")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE}],
        }))
        .unwrap();
    let err = Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(operator.clone())
        .create(&PostParams::default(), &admin_binding)
        .await
        .expect_err("the operator cannot make itself cluster-admin");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err:?}"
    );
    // Its own Lease it may take; a RoleBinding to the company-admin
    // ClusterRole it may create (through `bind`), to cluster-admin not.
    let ns = crate::support::unique("bind-");
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    Api::<Namespace>::all(operator.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let binding = |role: &str| -> k8s_openapi::api::rbac::v1::RoleBinding {
        serde_json::from_value(json!({
            "metadata": {"name": role, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "oidc:someone"}],
        }))
        .unwrap()
    };
    let bindings = Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(operator, &ns);
    bindings
        .create(&PostParams::default(), &binding("enclave-company-admin"))
        .await
        .unwrap();
    let err = bindings
        .create(&PostParams::default(), &binding("admin"))
        .await
        .expect_err("binding another ClusterRole is an escalation");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err:?}"
    );
    // It may write Roles, but only with rules it holds there: outside a
    // company namespace (no workspace-access binding to itself) a Role
    // granting exec is refused.
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(json!({
        "metadata": {"name": "exec", "namespace": ns},
        "rules": [{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}],
    }))
    .unwrap();
    let err = Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(bindings.into_client(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .expect_err("a Role with rules the operator does not hold is an escalation");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err:?}"
    );
}

/// Applies `object` as the admin (server-side apply).
async fn admin_apply<K>(cp: &ControlPlane, object: &K)
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(
        cp.admin.clone(),
        object.meta().namespace.as_deref().unwrap(),
    );
    api.patch(
        &object.name_any(),
        &PatchParams::apply("enclave-tests").force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap();
}

/// Applies a namespace as the admin (its own field manager: the
/// operator's namespace is applied with labels elsewhere).
async fn admin_apply_namespace(cp: &ControlPlane, namespace: &Namespace) {
    Api::<Namespace>::all(cp.admin.clone())
        .patch(
            &namespace.name_any(),
            &PatchParams::apply("enclave-tests-namespaces").force(),
            &Patch::Apply(namespace),
        )
        .await
        .unwrap();
}

/// A pod from a pod template, for a dry-run create.
fn pod_from(
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    namespace: &str,
    name: &str,
) -> Pod {
    let mut metadata = template.metadata.clone().unwrap_or_default();
    metadata.name = Some(name.to_owned());
    metadata.namespace = Some(namespace.to_owned());
    Pod {
        metadata,
        spec: template.spec.clone(),
        status: None,
    }
}

/// A dry-run create of `pod`. The ServiceAccount admission plugin looks
/// accounts up in its informer cache, which may not hold one created a
/// moment ago yet (seconds on a loaded machine): that one refusal is
/// retried for up to 30 s.
async fn dry_run_pod(cp: &ControlPlane, pod: &Pod) -> Result<(), String> {
    let api = Api::<Pod>::namespaced(cp.admin.clone(), pod.metadata.namespace.as_deref().unwrap());
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut attempts = 0;
    loop {
        match api.create(&params, pod).await {
            Ok(_) => return Ok(()),
            Err(e)
                if e.to_string().contains("error looking up service account") && attempts < 300 =>
            {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[tokio::test]
async fn pod_security_admission_admits_enclaves_pods_and_refuses_a_noncompliant_one() {
    let cp = ControlPlane::shared().await;
    cp.install_operator_identity().await;
    let plan = crate::support::all_plans();
    let mut admitted = Vec::new();
    for (_, plan) in &plan {
        for tenant in &plan.tenants {
            // The company namespace, as the operator creates it (`restricted`
            // enforced), and each workspace's ServiceAccount (the
            // ServiceAccount admission plugin wants it to exist).
            for object in &tenant.company.objects {
                if let KubeObject::Namespace(ns) = object {
                    admin_apply_namespace(&cp, ns).await;
                    let labels = ns.labels();
                    assert_eq!(
                        labels
                            .get("pod-security.kubernetes.io/enforce")
                            .map(String::as_str),
                        Some("restricted")
                    );
                }
            }
            for developer in &tenant.developers {
                for object in &developer.objects {
                    if let KubeObject::ServiceAccount(sa) = object {
                        // Without its owner reference: no Developer of that
                        // uid exists here, and the garbage collector would
                        // delete the account under the test.
                        let mut sa = sa.clone();
                        sa.metadata.owner_references = None;
                        admin_apply(&cp, &sa).await;
                    }
                }
                for object in &developer.objects {
                    match object {
                        KubeObject::StatefulSet(set) => {
                            let ns = set.namespace().unwrap();
                            let pod =
                                pod_from(&set.spec.template, &ns, &format!("{}-0", set.name_any()));
                            dry_run_pod(&cp, &pod).await.unwrap_or_else(|e| {
                                panic!("workspace pod {ns}/{}: {e}", set.name_any())
                            });
                            admitted.push(format!("workspace {ns}/{}", set.name_any()));
                        }
                        KubeObject::Job(job) => {
                            admin_apply(&cp, &storage_prep_account(job)).await;
                            let template = &job.spec.as_ref().unwrap().template;
                            let pod = pod_from(template, OPERATOR_NAMESPACE, &job.name_any());
                            dry_run_pod(&cp, &pod).await.unwrap_or_else(|e| {
                                panic!("storage-prep pod {}: {e}", job.name_any())
                            });
                            admitted.push(format!(
                                "storage-prep {OPERATOR_NAMESPACE}/{}",
                                job.name_any()
                            ));
                            // Root with CHOWN is why the operator's namespace
                            // is `baseline`: `restricted` refuses this pod.
                            let restricted = tenant_namespace(tenant);
                            let mut account = storage_prep_account(job);
                            account.metadata.namespace = Some(restricted.clone());
                            admin_apply(&cp, &account).await;
                            let pod = pod_from(template, &restricted, &job.name_any());
                            let err = dry_run_pod(&cp, &pod)
                                .await
                                .expect_err("restricted refuses root");
                            assert!(err.contains("violates PodSecurity"), "{err}");
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    println!(
        "admitted by the real PodSecurity admission:\n{}",
        admitted.join("\n")
    );
    assert!(admitted.iter().any(|a| a.starts_with("workspace")));
    assert!(admitted.iter().any(|a| a.starts_with("storage-prep")));

    // A pod that breaks `restricted` (no seccomp profile, root allowed,
    // capabilities kept) is refused in a company namespace. Not a
    // privileged one: `--allow-privileged=false` refuses that before
    // PodSecurity looks.
    let ns = tenant_namespace(&plan[0].1.tenants[0]);
    let bad: Pod = serde_json::from_value(json!({
        "metadata": {"name": "not-hardened", "namespace": ns},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    let err = dry_run_pod(&cp, &bad).await.expect_err("refused");
    assert!(
        err.contains("violates PodSecurity \"restricted:latest\""),
        "{err}"
    );
}

fn tenant_namespace(tenant: &enclave::plan::TenantPlan) -> String {
    tenant
        .company
        .objects
        .iter()
        .find_map(|o| match o {
            KubeObject::Namespace(ns) => ns.metadata.name.clone(),
            _ => None,
        })
        .unwrap()
}

fn storage_prep_account(job: &Job) -> ServiceAccount {
    let spec = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let name = spec
        .service_account_name
        .clone()
        .unwrap_or_else(|| "default".into());
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": OPERATOR_NAMESPACE}}))
        .unwrap()
}

/// Files of `operator/tests/bad/` whose problem only `enclave plan` can
/// see (it reads every document at once and knows the configuration);
/// the API server takes one object at a time, and the operator reports
/// these as conditions instead.
const PLAN_ONLY: &[(&str, &str)] = &[
    (
        "02-company-defined-twice.yaml",
        "two documents, one object: the second is an update",
    ),
    (
        "07-company-with-namespace.yaml",
        "the API server ignores a namespace on a cluster-scoped object (verified: created)",
    ),
    (
        "10-developer-without-company.yaml",
        "a Developer in a namespace no Company owns: condition NoCompany",
    ),
    (
        "11-developer-without-namespace.yaml",
        "kubectl puts it in its context's namespace: condition NoCompany",
    ),
    (
        "35-two-companies-one-namespace.yaml",
        "a namespace already claimed: condition Conflict",
    ),
    (
        "36-unknown-kind.yaml",
        "not ours: the API server has no such kind at all",
    ),
    (
        "40-unsupported-version.yaml",
        "the API server serves no such version at all",
    ),
    (
        "44-image-not-allowed.yaml",
        "the allow-list is on another object (the Company): condition ImageNotAllowed",
    ),
];

#[tokio::test]
async fn the_api_server_refuses_every_bad_resource_naming_the_field_plan_names() {
    let cp = ControlPlane::shared().await;
    cp.install_crds().await;
    let dir = crate::support::root().join("operator/tests/bad");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut table = Vec::new();
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file).unwrap();
        // The field `enclave plan` names (its first `# expect:` line).
        let field = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap()
            .to_owned();
        if let Some((_, why)) = PLAN_ONLY.iter().find(|(f, _)| *f == name) {
            table.push(format!("{name:<42} plan only: {why}"));
            continue;
        }
        // Namespaces the documents name must exist, or the server would
        // refuse them for that before looking at them.
        for ns in text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("namespace: "))
        {
            let namespace: Namespace =
                serde_json::from_value(json!({"metadata": {"name": ns.trim()}})).unwrap();
            if enclave::validation::is_dns_label(ns.trim()) {
                admin_apply_namespace(&cp, &namespace).await;
            }
        }
        let (refused, message) = kubectl_apply_dry_run(&cp, file);
        let first_line = message
            .lines()
            .find(|l| l.contains(&field))
            .unwrap_or_default();
        table.push(format!("{name:<42} {field:<34} {}", first_line.trim()));
        if !refused || !message.contains(&field) {
            failures.push(format!(
                "{name}: expected the API server to refuse it naming {field:?}; refused: {refused}; said:\n{message}"
            ));
        }
    }
    println!(
        "kubectl apply --dry-run=server --validate=strict:\n{}",
        table.join("\n")
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `kubectl apply --dry-run=server --validate=strict -f file`: refused,
/// and what kubectl said.
fn kubectl_apply_dry_run(cp: &ControlPlane, file: &Path) -> (bool, String) {
    let out = cp
        .kubectl()
        .args(["apply", "--dry-run=server", "--validate=strict", "-f"])
        .arg(file)
        .output()
        .unwrap();
    (
        !out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
