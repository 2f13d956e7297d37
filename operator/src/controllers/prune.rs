//! Pruning: in-cluster children the spec no longer implies (the last egress
//! rule dropped, an Admin turned Developer) are found by label and deleted
//! — only those whose owner reference names the owner's uid, so a label
//! copied onto someone else's object never gets it deleted.
//! Objects that hold data (claims, volumes) and storage Jobs are never
//! pruned here: they follow the deletion policy.

use std::{collections::BTreeSet, fmt::Debug};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::{ConfigMap, LimitRange, ResourceQuota, Service, ServiceAccount},
        networking::v1::NetworkPolicy,
        rbac::v1::{Role, RoleBinding},
    },
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams},
};
use serde::de::DeserializeOwned;

use super::{Backends, Context, Error};
use crate::{
    builders::KubeObject,
    names::{LABEL_COMPANY, LABEL_DEVELOPER, LABEL_MANAGED_BY, MANAGED_BY},
};

/// Whose children to look at.
pub enum Owner<'a> {
    /// A Company's own objects (not its Developers').
    Company {
        /// The Company.
        name: &'a str,
        /// Its uid.
        uid: &'a str,
    },
    /// One Developer's objects.
    Developer {
        /// The company.
        company: &'a str,
        /// The Developer.
        name: &'a str,
        /// Its uid.
        uid: &'a str,
    },
}

impl Owner<'_> {
    fn selector(&self) -> String {
        match self {
            Owner::Company { name, .. } => {
                format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPANY}={name},!{LABEL_DEVELOPER}")
            }
            Owner::Developer { company, name, .. } => format!(
                "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPANY}={company},{LABEL_DEVELOPER}={name}"
            ),
        }
    }

    fn uid(&self) -> &str {
        match self {
            Owner::Company { uid, .. } | Owner::Developer { uid, .. } => uid,
        }
    }
}

fn kind_and_name(object: &KubeObject) -> (&'static str, String) {
    (
        object.kind(),
        object.metadata().name.clone().unwrap_or_default(),
    )
}

async fn prune_kind<K, B: Backends>(
    ctx: &Context<B>,
    namespace: &str,
    owner: &Owner<'_>,
    keep: &BTreeSet<(&'static str, String)>,
) -> Result<Vec<String>, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let kind = K::kind(&());
    // The watch cache knows of no stray child of this kind: no LIST.
    let strays = ctx.cache.strays(&[&kind], namespace, owner.uid(), keep);
    if strays.is_some_and(|s| s.is_empty()) {
        return Ok(Vec::new());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let mut pruned = Vec::new();
    for object in api
        .list(&ListParams::default().labels(&owner.selector()))
        .await?
        .items
    {
        let name = object.name_any();
        let ours = object
            .owner_references()
            .iter()
            .any(|r| r.uid == owner.uid());
        if !ours
            || object.meta().deletion_timestamp.is_some()
            || keep.iter().any(|(k, n)| *k == kind.as_ref() && *n == name)
        {
            continue;
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => pruned.push(format!("{kind} {name}")),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(pruned)
}

/// Deletes `owner`'s labelled children in `namespace` that are not in
/// `desired`; returns what went (for the audit trail). Only the kinds in
/// which the watch cache knows of a child not desired are listed (all of
/// them while it has not listed yet): a steady tenant costs no request.
pub async fn prune<B: Backends>(
    ctx: &Context<B>,
    namespace: &str,
    owner: &Owner<'_>,
    desired: &[KubeObject],
) -> Result<Vec<String>, Error> {
    let keep: BTreeSet<_> = desired.iter().map(kind_and_name).collect();
    let mut pruned = Vec::new();
    pruned.extend(prune_kind::<NetworkPolicy, B>(ctx, namespace, owner, &keep).await?);
    pruned.extend(prune_kind::<RoleBinding, B>(ctx, namespace, owner, &keep).await?);
    pruned.extend(prune_kind::<Role, B>(ctx, namespace, owner, &keep).await?);
    pruned.extend(prune_kind::<ServiceAccount, B>(ctx, namespace, owner, &keep).await?);
    pruned.extend(prune_kind::<Service, B>(ctx, namespace, owner, &keep).await?);
    pruned.extend(prune_kind::<StatefulSet, B>(ctx, namespace, owner, &keep).await?);
    pruned.extend(prune_kind::<Deployment, B>(ctx, namespace, owner, &keep).await?);
    pruned.extend(prune_kind::<ConfigMap, B>(ctx, namespace, owner, &keep).await?);
    pruned.extend(prune_kind::<ResourceQuota, B>(ctx, namespace, owner, &keep).await?);
    pruned.extend(prune_kind::<LimitRange, B>(ctx, namespace, owner, &keep).await?);
    Ok(pruned)
}
