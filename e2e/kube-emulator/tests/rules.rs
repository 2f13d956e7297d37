//! Each Kubernetes rule the emulator implements, stated by a test, through
//! the real `kube::Client`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use enclave::crd::{Company, Developer};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::core::v1::{ConfigMap, Namespace, Pod},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
};
use kube_emulator::{Emulator, Fault};
use serde_json::json;

async fn start() -> (Emulator, Client) {
    let emulator = Emulator::start().await.unwrap();
    let config = Config::new(emulator.url.parse().unwrap());
    (emulator, Client::try_from(config).unwrap())
}

fn code(e: &kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("not an API error: {other}"),
    }
}

#[allow(clippy::needless_pass_by_value)] // reads better at the call sites
fn cm(name: &str, data: serde_json::Value) -> ConfigMap {
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}),
    )
    .unwrap()
}

/// Names of the ConfigMaps `params` lists.
async fn listed(api: &Api<ConfigMap>, params: &ListParams) -> Vec<String> {
    api.list(params)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| c.name_any())
        .collect()
}

/// Removes every finalizer of `name`, as a controller does when it is done.
async fn clear_finalizers<K>(api: &Api<K>, name: &str)
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
}

async fn namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

#[tokio::test]
async fn discovery_lists_versions_groups_and_resources() {
    let (_e, client) = start().await;
    assert_eq!(client.apiserver_version().await.unwrap().minor, "37");
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .unwrap();
    let groups: Vec<String> = discovery.groups().map(|g| g.name().to_owned()).collect();
    for g in [
        "",
        "apps",
        "batch",
        "rbac.authorization.k8s.io",
        "apiextensions.k8s.io",
    ] {
        assert!(groups.iter().any(|x| x == g), "{g} in {groups:?}");
    }
}

#[tokio::test]
async fn crud_with_real_status_errors() {
    let (_e, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = api
        .create(&PostParams::default(), &cm("a", json!({"k": "v"})))
        .await
        .unwrap();
    assert!(created.uid().is_some() && created.creation_timestamp().is_some());
    assert_eq!(
        code(
            &api.create(&PostParams::default(), &cm("a", json!({})))
                .await
                .unwrap_err()
        ),
        (409, "AlreadyExists".into())
    );
    assert_eq!(
        code(&api.get("nope").await.unwrap_err()),
        (404, "NotFound".into())
    );
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(code(&api.get("a").await.unwrap_err()).0, 404);
    let other: Api<ConfigMap> = Api::namespaced(client, "missing-namespace");
    assert_eq!(
        code(
            &other
                .create(&PostParams::default(), &cm("x", json!({})))
                .await
                .unwrap_err()
        )
        .0,
        404
    );
}

#[tokio::test]
async fn a_stale_update_gets_409_and_resource_versions_grow() {
    let (_e, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let first = api
        .create(&PostParams::default(), &cm("a", json!({"k": "1"})))
        .await
        .unwrap();
    let mut stale = first.clone();
    let mut fresh = first.clone();
    fresh.data = Some([("k".to_owned(), "2".to_owned())].into());
    let second = api
        .replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap();
    let (rv1, rv2): (u64, u64) = (
        first.resource_version().unwrap().parse().unwrap(),
        second.resource_version().unwrap().parse().unwrap(),
    );
    assert!(rv2 > rv1);
    stale.data = Some([("k".to_owned(), "3".to_owned())].into());
    assert_eq!(
        code(
            &api.replace("a", &PostParams::default(), &stale)
                .await
                .unwrap_err()
        ),
        (409, "Conflict".into())
    );
}

#[tokio::test]
async fn applying_without_a_field_removes_it_and_conflicts_need_force() {
    let (_e, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let apply = |mgr: &str| PatchParams::apply(mgr);
    let v = |data: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": data});
    api.patch(
        "a",
        &apply("one"),
        &Patch::Apply(v(json!({"x": "1", "y": "2"}))),
    )
    .await
    .unwrap();
    api.patch("a", &apply("two"), &Patch::Apply(v(json!({"z": "3"}))))
        .await
        .unwrap();
    let after = api
        .patch("a", &apply("one"), &Patch::Apply(v(json!({"x": "1"}))))
        .await
        .unwrap();
    let data = after.data.unwrap();
    assert!(
        !data.contains_key("y"),
        "a field its manager stopped applying is removed"
    );
    assert_eq!(
        data.get("z").map(String::as_str),
        Some("3"),
        "another manager's field stays"
    );
    let err = api
        .patch(
            "a",
            &apply("two"),
            &Patch::Apply(v(json!({"x": "changed"}))),
        )
        .await
        .unwrap_err();
    assert_eq!(
        code(&err).0,
        409,
        "a value owned by another manager conflicts"
    );
    let forced = api
        .patch(
            "a",
            &apply("two").force(),
            &Patch::Apply(v(json!({"x": "changed", "z": "3"}))),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["x"], "changed");
    // Now "one" no longer owns x: applying without it does not remove it.
    let after = api
        .patch("a", &apply("one"), &Patch::Apply(v(json!({}))))
        .await
        .unwrap();
    assert_eq!(after.data.unwrap()["x"], "changed");
}

#[tokio::test]
async fn apply_merges_containers_by_name() {
    let (_e, client) = start().await;
    let api: Api<Pod> = Api::namespaced(client, "default");
    let pod = |c: serde_json::Value| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [c]}});
    api.patch(
        "p",
        &PatchParams::apply("a"),
        &Patch::Apply(pod(json!({"name": "web", "image": "nginx"}))),
    )
    .await
    .unwrap();
    let both = api
        .patch(
            "p",
            &PatchParams::apply("b"),
            &Patch::Apply(pod(json!({"name": "sidecar", "image": "envoy"}))),
        )
        .await
        .unwrap();
    let names: Vec<String> = both
        .spec
        .unwrap()
        .containers
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["web", "sidecar"]);
}

#[tokio::test]
async fn merge_and_json_patches_and_the_null_test() {
    let (_e, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &cm("a", json!({"k": "v"})))
        .await
        .unwrap();
    let merged = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": null, "n": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(merged.data.unwrap().keys().collect::<Vec<_>>(), ["n"]);
    // kube-runtime's finalizer helper: test that finalizers is null, then add.
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["enclave.dev/cleanup"]}
    ]))
    .unwrap();
    let patched = api
        .patch("a", &PatchParams::default(), &Patch::<()>::Json(ops))
        .await
        .unwrap();
    assert_eq!(patched.finalizers(), ["enclave.dev/cleanup"]);
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/n", "value": "2"}])).unwrap();
    assert_eq!(
        code(
            &api.patch("a", &PatchParams::default(), &Patch::<()>::Json(failing))
                .await
                .unwrap_err()
        )
        .0,
        422
    );
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let (_e, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut held = cm("a", json!({}));
    held.metadata.finalizers = Some(vec!["enclave.dev/cleanup".into()]);
    api.create(&PostParams::default(), &held).await.unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let marked = api.get("a").await.unwrap();
    assert!(
        marked.metadata.deletion_timestamp.is_some(),
        "deletionTimestamp is set, the object stays"
    );
    clear_finalizers(&api, "a").await;
    assert_eq!(
        code(&api.get("a").await.unwrap_err()).0,
        404,
        "removing the last finalizer deletes it"
    );
}

#[tokio::test]
async fn deleting_a_namespace_removes_its_objects_and_waits_for_finalizers() {
    let (_e, client) = start().await;
    namespace(&client, "tenant").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "tenant");
    let pod = |name: &str, fin: bool| {
        let mut p: Pod = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "i"}]}})).unwrap();
        if fin {
            p.metadata.finalizers = Some(vec!["test/hold".into()]);
        }
        p
    };
    pods.create(&PostParams::default(), &pod("plain", false))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("held", true))
        .await
        .unwrap();
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.delete("tenant", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        code(&pods.get("plain").await.unwrap_err()).0,
        404,
        "deleting a namespace deletes its pods"
    );
    let ns = nss.get("tenant").await.unwrap();
    assert_eq!(
        ns.status.unwrap().phase.as_deref(),
        Some("Terminating"),
        "it waits for the held pod"
    );
    assert_eq!(
        code(
            &pods
                .create(&PostParams::default(), &pod("new", false))
                .await
                .unwrap_err()
        )
        .0,
        403
    );
    clear_finalizers(&pods, "held").await;
    assert_eq!(
        code(&nss.get("tenant").await.unwrap_err()).0,
        404,
        "empty, the namespace goes"
    );
}

#[tokio::test]
async fn owner_references_are_garbage_collected() {
    let (_e, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let owner = api
        .create(&PostParams::default(), &cm("owner", json!({})))
        .await
        .unwrap();
    let mut child = cm("child", json!({}));
    child.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.uid().unwrap(),
            ..Default::default()
        },
    ]);
    api.create(&PostParams::default(), &child).await.unwrap();
    api.create(&PostParams::default(), &cm("bystander", json!({})))
        .await
        .unwrap();
    api.delete("owner", &DeleteParams::default()).await.unwrap();
    assert_eq!(code(&api.get("child").await.unwrap_err()).0, 404);
    assert!(api.get("bystander").await.is_ok());
}

#[tokio::test]
async fn label_and_field_selectors_and_pagination() {
    let (_e, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    for (name, tier) in [("a", "web"), ("b", "web"), ("c", "db"), ("d", "")] {
        let mut c = cm(name, json!({}));
        if !tier.is_empty() {
            c.metadata.labels = Some([("tier".to_owned(), tier.to_owned())].into());
        }
        api.create(&PostParams::default(), &c).await.unwrap();
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| {
        l.items
            .into_iter()
            .map(|c| c.name_any())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed(&api, &ListParams::default().labels("tier=web")).await,
        ["a", "b"]
    );
    assert_eq!(
        listed(
            &api,
            &ListParams::default().labels("tier in (db),tier!=web")
        )
        .await,
        ["c"]
    );
    assert_eq!(
        listed(&api, &ListParams::default().labels("!tier")).await,
        ["d"]
    );
    assert_eq!(
        listed(&api, &ListParams::default().fields("metadata.name=b")).await,
        ["b"]
    );
    let page = api.list(&ListParams::default().limit(3)).await.unwrap();
    let token = page.metadata.continue_.clone().unwrap();
    assert_eq!(names(page), ["a", "b", "c"]);
    assert_eq!(
        listed(&api, &ListParams::default().limit(3).continue_token(&token)).await,
        ["d"]
    );
}

#[tokio::test]
async fn watch_streams_changes_and_an_old_resource_version_gets_410() {
    let (e, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let start = api
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap()
        .resource_version()
        .unwrap();
    let mut stream = api
        .watch(&WatchParams::default().timeout(10), &start)
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &cm("b", json!({})))
        .await
        .unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match stream.try_next().await.unwrap().unwrap() {
            WatchEvent::Added(c) => seen.push(format!("added {}", c.name_any())),
            WatchEvent::Deleted(c) => seen.push(format!("deleted {}", c.name_any())),
            WatchEvent::Bookmark(_) | WatchEvent::Modified(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(seen, ["added b", "deleted a"]);
    e.store.compact();
    api.create(&PostParams::default(), &cm("c", json!({})))
        .await
        .unwrap();
    let mut old = api
        .watch(&WatchParams::default().timeout(5), &start)
        .await
        .map(StreamExt::boxed);
    let gone = match &mut old {
        Err(err) => code(err).0,
        Ok(stream) => match stream.try_next().await {
            Ok(Some(WatchEvent::Error(e))) => e.code,
            Err(err) => code(&err).0,
            other => panic!("{other:?}"),
        },
    };
    assert_eq!(gone, 410);
}

async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in enclave::cli::crds() {
        api.create(&PostParams::default(), &crd).await.unwrap();
    }
}

#[tokio::test]
async fn crds_install_examples_apply_and_cel_rules_hold() {
    let (_e, client) = start().await;
    install_crds(&client).await;
    let companies: Api<Company> = Api::all(client.clone());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let docs = enclave::plan::load(&[root.join("examples")]).unwrap();
    for doc in docs {
        let kind = doc.value["kind"].as_str().unwrap().to_owned();
        let name = doc.value["metadata"]["name"].as_str().unwrap().to_owned();
        if kind == "Company" {
            companies
                .patch(
                    &name,
                    &PatchParams::apply("test"),
                    &Patch::Apply(&doc.value),
                )
                .await
                .unwrap();
            namespace(&client, &format!("company-{name}")).await;
        } else {
            let ns = doc.value["metadata"]["namespace"].as_str().unwrap();
            let devs: Api<Developer> = Api::namespaced(client.clone(), ns);
            devs.patch(
                &name,
                &PatchParams::apply("test"),
                &Patch::Apply(&doc.value),
            )
            .await
            .unwrap();
        }
    }
    assert_eq!(
        companies
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );

    let bad = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": "sys"}, "spec": {"namespace": "kube-system"}});
    let err = companies
        .patch("sys", &PatchParams::apply("test"), &Patch::Apply(&bad))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = &err else {
        panic!("{err}")
    };
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("must not be a system namespace"),
        "{}",
        status.message
    );

    let change = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": "acme"}, "spec": {"database": {"mode": "Shared"}}});
    let err = companies
        .patch(
            "acme",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&change),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = &err else {
        panic!("{err}")
    };
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("database.mode is immutable"),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn status_writes_do_not_bump_generation_and_spec_writes_keep_status() {
    let (_e, client) = start().await;
    install_crds(&client).await;
    let companies: Api<Company> = Api::all(client.clone());
    let co = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": "acme"}, "spec": {}});
    let created = companies
        .patch("acme", &PatchParams::apply("t"), &Patch::Apply(&co))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let status = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": "acme"}, "status": {"namespace": "company-acme"}});
    let with_status = companies
        .patch_status("acme", &PatchParams::apply("op"), &Patch::Apply(&status))
        .await
        .unwrap();
    assert_eq!(
        with_status.metadata.generation,
        Some(1),
        "a status write does not bump generation"
    );
    assert_eq!(
        with_status.status.unwrap().namespace.as_deref(),
        Some("company-acme")
    );
    let spec = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": "acme"}, "spec": {"displayName": "Acme"}, "status": {"namespace": "ignored"}});
    let after = companies
        .patch("acme", &PatchParams::apply("t"), &Patch::Apply(&spec))
        .await
        .unwrap();
    assert_eq!(
        after.metadata.generation,
        Some(2),
        "a spec change bumps generation"
    );
    assert_eq!(
        after.status.unwrap().namespace.as_deref(),
        Some("company-acme"),
        "main writes keep status"
    );
}

#[tokio::test]
async fn injected_faults_and_request_counters() {
    let (e, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    e.store.inject(Fault {
        verb: Some("get".into()),
        name: Some("a".into()),
        remaining: 1,
        status: 500,
        ..Fault::default()
    });
    assert_eq!(code(&api.get("a").await.unwrap_err()).0, 500);
    assert!(api.get("a").await.is_ok(), "only the next request was hit");
    // 429 with Retry-After: kube's client waits and retries on its own.
    e.store.inject(Fault {
        verb: Some("get".into()),
        remaining: 1,
        status: 429,
        retry_after: Some(1),
        ..Fault::default()
    });
    let started = std::time::Instant::now();
    assert!(api.get("a").await.is_ok());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the client honoured Retry-After"
    );
    e.store.inject(Fault {
        verb: Some("update".into()),
        remaining: 1,
        status: 409,
        ..Fault::default()
    });
    let current = api.get("a").await.unwrap();
    assert_eq!(
        code(
            &api.replace("a", &PostParams::default(), &current)
                .await
                .unwrap_err()
        )
        .0,
        409
    );
    let counters = e.store.counters();
    assert_eq!(counters.get("get configmaps -"), Some(&5), "{counters:?}");
    assert_eq!(counters.get("create configmaps -"), Some(&1));
    assert_eq!(counters.get("update configmaps -"), Some(&1));
}

#[tokio::test]
async fn a_kube_runtime_controller_reacts_across_a_watch_cut() {
    use std::sync::{Arc, Mutex};

    use kube::runtime::{Controller, controller::Action, watcher};
    let (e, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = Arc::clone(&seen);
    let controller = Controller::new(api.clone(), watcher::Config::default()).run(
        move |cm: Arc<ConfigMap>, _ctx: Arc<()>| {
            let log = Arc::clone(&log);
            async move {
                let state = match (
                    cm.metadata.deletion_timestamp.is_some(),
                    cm.data.as_ref().and_then(|d| d.get("v")),
                ) {
                    (true, _) => "deleting".to_owned(),
                    (false, v) => v.cloned().unwrap_or_default(),
                };
                log.lock()
                    .unwrap()
                    .push(format!("{}={state}", cm.name_any()));
                Ok::<_, kube::Error>(Action::await_change())
            }
        },
        |_, _, _| Action::requeue(Duration::from_millis(100)),
        Arc::new(()),
    );
    let task = tokio::spawn(controller.for_each(|_| async {}));
    let wait_for = |want: &'static str| {
        let seen = Arc::clone(&seen);
        async move {
            for _ in 0..200 {
                if seen.lock().unwrap().iter().any(|s| s == want) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("never saw {want}: {:?}", seen.lock().unwrap());
        }
    };
    api.create(&PostParams::default(), &cm("a", json!({"v": "1"})))
        .await
        .unwrap();
    wait_for("a=1").await;
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "2"}})),
    )
    .await
    .unwrap();
    wait_for("a=2").await;
    e.store.cut_watches();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "3"}})),
    )
    .await
    .unwrap();
    wait_for("a=3").await;
    task.abort();
}

#[tokio::test]
async fn token_requests_and_reviews_identify_service_accounts() {
    use k8s_openapi::api::{authentication::v1::TokenRequest, core::v1::ServiceAccount};
    let (_e, client) = start().await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "alice"}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": ["vault"], "expirationSeconds": 600}}))
            .unwrap();
    let token = sas
        .create_token_request("alice", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap();
    let review = |token: String, audiences: Vec<&'static str>| {
        let client = client.clone();
        async move {
            let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token, "audiences": audiences}});
            let req = http::Request::post("/apis/authentication.k8s.io/v1/tokenreviews")
                .body(serde_json::to_vec(&body).unwrap())
                .unwrap();
            client.request::<serde_json::Value>(req).await.unwrap()["status"].clone()
        }
    };
    let ok = review(token.clone(), vec!["vault"]).await;
    assert_eq!(ok["authenticated"], true, "{ok}");
    assert_eq!(
        ok["user"]["username"],
        "system:serviceaccount:default:alice"
    );
    assert_eq!(
        review(token.clone(), vec!["other"]).await["authenticated"],
        false,
        "wrong audience"
    );
    let forged = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(
        review(forged, vec![]).await["authenticated"],
        false,
        "bad signature"
    );
    sas.delete("alice", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        review(token, vec![]).await["authenticated"],
        false,
        "the ServiceAccount is gone"
    );
    assert_eq!(
        code(
            &sas.create_token_request("nobody", &PostParams::default(), &request)
                .await
                .unwrap_err()
        )
        .0,
        404
    );
}

#[tokio::test]
async fn openbao_kubernetes_auth_logs_in_bound_service_accounts_only() {
    use k8s_openapi::api::{authentication::v1::TokenRequest, core::v1::ServiceAccount};
    let (Ok(addr), Ok(root_token)) = (
        std::env::var("ENCLAVE_TEST_VAULT_ADDR"),
        std::env::var("ENCLAVE_TEST_VAULT_TOKEN"),
    ) else {
        assert!(
            std::env::var("ENCLAVE_SKIP_SERVICES").as_deref() == Ok("1"),
            "ENCLAVE_TEST_VAULT_ADDR is not set: this test needs an OpenBao server; run e2e/run-tests.sh"
        );
        eprintln!("SKIPPED: no OpenBao (ENCLAVE_SKIP_SERVICES=1)");
        return;
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (e, client) = start().await;
    namespace(&client, "company-acme").await;
    for (ns, name) in [
        ("company-acme", "developer-alice"),
        ("company-acme", "developer-bob"),
        ("default", "developer-alice"),
    ] {
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        sas.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
        )
        .await
        .unwrap();
    }
    let vault = vaultrs::client::VaultClient::new(
        vaultrs::client::VaultClientSettingsBuilder::default()
            .address(&addr)
            .token(&root_token)
            .build()
            .unwrap(),
    )
    .unwrap();
    let mount = format!("k8s-emulator-{}", e.url.rsplit(':').next().unwrap());
    vaultrs::sys::auth::enable(&vault, &mount, "kubernetes", None)
        .await
        .unwrap();
    let ca = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../operator/tests/fixtures/test-ca.pem"),
    )
    .unwrap();
    let mut config =
        vaultrs::api::auth::kubernetes::requests::ConfigureKubernetesAuthRequest::builder();
    config.kubernetes_ca_cert(ca).disable_local_ca_jwt(true);
    vaultrs::auth::kubernetes::configure(&vault, &mount, &e.url, Some(&mut config))
        .await
        .unwrap();
    let mut role = vaultrs::api::auth::kubernetes::requests::CreateKubernetesRoleRequest::builder();
    role.bound_service_account_names(vec!["developer-alice".into()])
        .bound_service_account_namespaces(vec!["company-acme".into()])
        .audience("vault")
        .token_policies(vec!["default".into()]);
    vaultrs::auth::kubernetes::role::create(&vault, &mount, "alice", Some(&mut role))
        .await
        .unwrap();

    let anonymous = vaultrs::client::VaultClient::new(
        vaultrs::client::VaultClientSettingsBuilder::default()
            .address(&addr)
            .token("")
            .build()
            .unwrap(),
    )
    .unwrap();
    let login = |ns: &'static str, name: &'static str| {
        let (client, anonymous, mount) = (client.clone(), &anonymous, mount.clone());
        async move {
            let sas: Api<ServiceAccount> = Api::namespaced(client, ns);
            let request: TokenRequest =
                serde_json::from_value(json!({"spec": {"audiences": ["vault"]}})).unwrap();
            let jwt = sas
                .create_token_request(name, &PostParams::default(), &request)
                .await
                .unwrap()
                .status
                .unwrap()
                .token
                .unwrap();
            vaultrs::auth::kubernetes::login(anonymous, &mount, "alice", &jwt)
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:?}"))
        }
    };
    login("company-acme", "developer-alice")
        .await
        .expect("the bound ServiceAccount logs in");
    let other_name = login("company-acme", "developer-bob").await.unwrap_err();
    assert!(other_name.contains("not authorized"), "{other_name}");
    let other_namespace = login("default", "developer-alice").await.unwrap_err();
    assert!(
        other_namespace.contains("not authorized"),
        "{other_namespace}"
    );
}

#[tokio::test]
async fn built_in_objects_are_validated_against_the_official_schemas() {
    if std::env::var_os("ENCLAVE_TEST_K8S_SCHEMAS").is_none() {
        assert!(
            std::env::var("ENCLAVE_SKIP_SERVICES").as_deref() == Ok("1"),
            "ENCLAVE_TEST_K8S_SCHEMAS is not set: this test needs the kubernetes-validate schemas; run e2e/run-tests.sh"
        );
        eprintln!("SKIPPED: no Kubernetes JSON schemas (ENCLAVE_SKIP_SERVICES=1)");
        return;
    }
    let (_e, client) = start().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let unknown = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}], "hostNetwrok": true}});
    let err = pods
        .patch("p", &PatchParams::apply("t"), &Patch::Apply(&unknown))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = &err else {
        panic!("{err}")
    };
    assert_eq!(status.code, 422, "{}", status.message);
    assert!(status.message.contains("hostNetwrok"), "{}", status.message);
    let typed = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": "eighty"}]}]}});
    assert_eq!(
        code(
            &pods
                .patch("p", &PatchParams::apply("t"), &Patch::Apply(&typed))
                .await
                .unwrap_err()
        )
        .0,
        422
    );
    let fine = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
    pods.patch("p", &PatchParams::apply("t"), &Patch::Apply(&fine))
        .await
        .unwrap();
}

#[tokio::test]
async fn foreground_deletion_removes_dependents_before_the_owner() {
    let (_e, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut held_owner = cm("owner", json!({}));
    held_owner.metadata.finalizers = Some(vec!["test/hold".into()]);
    let owner = api
        .create(&PostParams::default(), &held_owner)
        .await
        .unwrap();
    let mut child = cm("child", json!({}));
    child.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.uid().unwrap(),
            block_owner_deletion: Some(true),
            ..Default::default()
        },
    ]);
    api.create(&PostParams::default(), &child).await.unwrap();
    api.delete("owner", &DeleteParams::foreground())
        .await
        .unwrap();
    assert_eq!(
        code(&api.get("child").await.unwrap_err()).0,
        404,
        "the dependent goes first"
    );
    let owner = api.get("owner").await.unwrap();
    assert_eq!(
        owner.finalizers(),
        ["test/hold"],
        "foregroundDeletion is released once dependents are gone"
    );
    clear_finalizers(&api, "owner").await;
    assert_eq!(code(&api.get("owner").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn the_control_api_injects_faults_and_reads_counters_over_http() {
    let (e, client) = start().await;
    let control = |method: &str, path: &str, body: serde_json::Value| {
        let client = client.clone();
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .unwrap();
        async move { client.request_text(req).await.unwrap() }
    };
    control(
        "POST",
        "/emulator/faults",
        json!({"verb": "get", "resource": "configmaps", "remaining": 1, "status": 500}),
    )
    .await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    assert_eq!(code(&api.get("anything").await.unwrap_err()).0, 500);
    let counters: serde_json::Value =
        serde_json::from_str(&control("GET", "/emulator/counters", json!(null)).await).unwrap();
    assert_eq!(counters["get configmaps -"], 1);
    control("POST", "/emulator/compact", json!(null)).await;
    assert!(
        e.store
            .since(
                &e.store.resource("", "v1", "configmaps").unwrap(),
                None,
                Some(1)
            )
            .is_err(),
        "compacted history answers 410"
    );
}

#[tokio::test]
async fn a_frozen_list_is_stale_while_watches_stay_live() {
    let (e, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &cm("old", json!({})))
        .await
        .unwrap();
    e.store.freeze_lists();
    api.create(&PostParams::default(), &cm("new", json!({})))
        .await
        .unwrap();
    let stale = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        stale
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>(),
        ["old"],
        "the list is stale"
    );
    assert!(api.get("new").await.is_ok(), "gets are live");
    e.store.thaw();
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );
}

#[tokio::test]
async fn streaming_lists_send_initial_events_then_the_end_bookmark() {
    let (_e, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    for name in ["a", "b"] {
        api.create(&PostParams::default(), &cm(name, json!({})))
            .await
            .unwrap();
    }
    let mut stream = api
        .watch(&WatchParams::streaming_lists().timeout(5), "0")
        .await
        .unwrap()
        .boxed();
    let mut added = Vec::new();
    loop {
        match stream.try_next().await.unwrap().unwrap() {
            WatchEvent::Added(c) => added.push(c.name_any()),
            WatchEvent::Bookmark(b) => {
                assert_eq!(
                    b.metadata
                        .annotations
                        .get("k8s.io/initial-events-end")
                        .map(String::as_str),
                    Some("true")
                );
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(added, ["a", "b"]);
}

#[tokio::test]
async fn custom_resources_get_defaults_and_unknown_fields_are_pruned_unless_strict() {
    use kube::{api::DynamicObject, core::ApiResource};
    let (_e, client) = start().await;
    install_crds(&client).await;
    let ar = ApiResource::erase::<Company>(&());
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let with_unknown = |name: &str| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": name}, "spec": {"displayNme": "typo"}})).unwrap()
    };
    let created = api
        .create(&PostParams::default(), &with_unknown("lenient"))
        .await
        .unwrap();
    let spec = &created.data["spec"];
    assert!(
        spec.get("displayNme").is_none(),
        "the undeclared field was pruned: {spec}"
    );
    assert_eq!(
        spec["database"]["mode"], "Dedicated",
        "schema defaults are stored: {spec}"
    );
    assert_eq!(spec["storage"]["deletionPolicy"], "Snapshot");
    assert_eq!(spec["deletionProtection"], false);
    let strict = {
        let body = serde_json::to_vec(&with_unknown("strict")).unwrap();
        let req =
            http::Request::post("/apis/enclave.dev/v1alpha1/companies?fieldValidation=Strict")
                .header("content-type", "application/json")
                .body(body)
                .unwrap();
        client.request::<serde_json::Value>(req).await.unwrap_err()
    };
    assert_eq!(code(&strict).0, 422, "strict field validation refuses it");
    let applied = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": "applied"}, "spec": {"displayNme": "typo"}});
    assert_eq!(
        code(
            &api.patch("applied", &PatchParams::apply("t"), &Patch::Apply(&applied))
                .await
                .unwrap_err()
        )
        .0,
        422,
        "apply is always strict"
    );
}

#[tokio::test]
async fn an_object_created_for_a_deleted_owner_is_collected() {
    let (_e, client) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut orphan = cm("late", json!({}));
    orphan.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "gone".into(),
            uid: "00000000-0000-0000-0000-00000000dead".into(),
            ..Default::default()
        },
    ]);
    api.create(&PostParams::default(), &orphan).await.unwrap();
    assert_eq!(code(&api.get("late").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn deleting_a_crd_deletes_its_instances_first_honouring_their_finalizers() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt;
    let (_emulator, client) = start().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Company::crd())
        .await
        .unwrap();
    let companies: Api<Company> = Api::all(client.clone());
    for (name, finalizers) in [("held", json!(["example.com/hold"])), ("free", json!([]))] {
        let co: Company = serde_json::from_value(
            json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company",
            "metadata": {"name": name, "finalizers": finalizers}, "spec": {}}),
        )
        .unwrap();
        companies.create(&PostParams::default(), &co).await.unwrap();
    }
    crds.delete("companies.enclave.dev", &DeleteParams::default())
        .await
        .unwrap();
    // The CRD terminates while an instance's finalizer holds it.
    let crd = crds.get("companies.enclave.dev").await.unwrap();
    assert!(crd.metadata.deletion_timestamp.is_some());
    assert!(
        companies.get_opt("free").await.unwrap().is_none(),
        "no finalizer: gone at once"
    );
    let held = companies.get("held").await.unwrap();
    assert!(
        held.metadata.deletion_timestamp.is_some(),
        "marked for deletion"
    );
    let late: Company = serde_json::from_value(json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": "late"}, "spec": {}})).unwrap();
    let refused = companies
        .create(&PostParams::default(), &late)
        .await
        .unwrap_err();
    assert_eq!(
        code(&refused).0,
        405,
        "no new instances while the CRD terminates"
    );
    assert_eq!(
        code(
            &crds
                .create(&PostParams::default(), &Company::crd())
                .await
                .unwrap_err()
        )
        .0,
        409,
        "a terminating CRD cannot be re-created"
    );
    // The finalizer released: the instance goes, then the CRD and its resource.
    clear_finalizers(&companies, "held").await;
    assert!(
        crds.get_opt("companies.enclave.dev")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        code(&companies.list(&ListParams::default()).await.unwrap_err()).0,
        404
    );
    // Re-installed, it serves again, empty.
    crds.create(&PostParams::default(), &Company::crd())
        .await
        .unwrap();
    assert!(
        companies
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}
