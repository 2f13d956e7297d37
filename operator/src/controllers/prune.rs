//! Pruning: in-cluster children the spec no longer implies (the last egress
//! rule dropped, an Admin turned Developer) are found by label and deleted
//! — only those whose owner reference names the owner's uid, so a label
//! copied onto someone else's object never gets it deleted.
//! Objects that hold data (claims, volumes) and storage Jobs are never
//! pruned here: they follow the deletion policy.

use std::{collections::BTreeSet, fmt::Debug};

use k8s_openapi::{
    NamespaceResourceScope, Resource as _,
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
    let listed: Vec<_> = keep.iter().cloned().collect();
    let strays = ctx.cache.strays(KINDS, namespace, owner.uid(), &listed);
    let look = |kind: &str| strays.as_ref().is_none_or(|s| s.contains(kind));
    let mut pruned = Vec::new();
    macro_rules! prune {
        ($($kind:ty),*) => {$(
            if look(<$kind>::KIND) {
                pruned.extend(prune_kind::<$kind, B>(ctx, namespace, owner, &keep).await?);
            }
        )*};
    }
    prune!(
        NetworkPolicy,
        RoleBinding,
        Role,
        ServiceAccount,
        Service,
        StatefulSet,
        Deployment,
        ConfigMap,
        ResourceQuota,
        LimitRange
    );
    Ok(pruned)
}

/// The kinds [`prune`] looks at.
const KINDS: &[&str] = &[
    NetworkPolicy::KIND,
    RoleBinding::KIND,
    Role::KIND,
    ServiceAccount::KIND,
    Service::KIND,
    StatefulSet::KIND,
    Deployment::KIND,
    ConfigMap::KIND,
    ResourceQuota::KIND,
    LimitRange::KIND,
];
