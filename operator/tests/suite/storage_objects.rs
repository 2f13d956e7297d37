//! The volume objects of each storage mode: PersistentVolume rooted at the
//! developer's own directory (FSx) or a claim from the StorageClass (volume),
//! and the storage-prep Job (FSx only). Schema and checkov checks run over
//! these too (see `kubernetes_schemas` and `checkov`).

use enclave::builders::KubeObject;

use crate::support::storage_plan;

#[test]
fn volume_objects_per_storage_mode() {
    let plan = storage_plan();
    assert_eq!(plan.tenants.len(), 3);
    for t in &plan.tenants {
        let objects: Vec<serde_json::Value> = t
            .company
            .objects
            .iter()
            .chain(t.developers.iter().flat_map(|d| d.objects.iter()))
            .filter(|o| {
                matches!(
                    o,
                    KubeObject::PersistentVolume(_)
                        | KubeObject::PersistentVolumeClaim(_)
                        | KubeObject::Job(_)
                )
            })
            .map(KubeObject::to_json)
            .collect();
        insta::assert_snapshot!(
            t.name.clone(),
            serde_saphyr::to_string_multiple(&objects).unwrap()
        );
    }
}

#[test]
fn a_developer_pod_mounts_only_its_own_directory() {
    let plan = storage_plan();
    for t in &plan.tenants {
        for d in &t.developers {
            let claim = d.objects.iter().find_map(|o| match o {
                KubeObject::PersistentVolumeClaim(pvc) => pvc.metadata.name.clone(),
                _ => None,
            });
            let sts = d.objects.iter().find_map(|o| match o {
                KubeObject::StatefulSet(s) => Some(s.clone()),
                _ => None,
            });
            let pod = sts.unwrap().spec.template.spec.unwrap();
            let claims: Vec<_> = pod
                .volumes
                .iter()
                .flatten()
                .filter_map(|v| v.persistent_volume_claim.as_ref())
                .map(|c| c.claim_name.clone())
                .collect();
            assert_eq!(
                claims,
                [claim.clone().unwrap()],
                "{}: one claim, its own",
                t.name
            );
            for c in pod
                .containers
                .iter()
                .chain(pod.init_containers.iter().flatten())
            {
                assert!(
                    c.volume_mounts
                        .iter()
                        .flatten()
                        .all(|m| m.sub_path.is_none() && m.sub_path_expr.is_none()),
                    "no subPath in {}",
                    t.name
                );
            }
            if let Some(KubeObject::PersistentVolume(pv)) =
                d.objects.iter().find(|o| o.kind() == "PersistentVolume")
            {
                let spec = pv.spec.clone().unwrap();
                let key = claim.unwrap().trim_start_matches("home-").to_owned();
                let root = spec
                    .nfs
                    .map(|n| n.path)
                    .or_else(|| {
                        spec.csi
                            .map(|c| c.volume_attributes.unwrap()["mountname"].clone())
                    })
                    .unwrap();
                assert!(root.ends_with(&format!("/developers/{key}")), "{root}");
                assert_eq!(
                    spec.persistent_volume_reclaim_policy.as_deref(),
                    Some("Retain")
                );
            }
        }
    }
}
