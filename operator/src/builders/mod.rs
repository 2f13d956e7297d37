//! Pure builders: from a Company or Developer (and the operator
//! configuration) to every object, policy and action it implies. No I/O here:
//! the controllers apply what these return, `enclave plan` prints it.

mod cloud;
mod controller;
mod database;
mod labels;
mod namespace;
mod network;
mod objects;
mod rbac;
mod settings;
mod storage;
mod vault;
mod workspace;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;

pub use cloud::{ExternalAction, System, aws_tags, quote_ident};
pub use controller::CREDENTIALS_VERSION_ANNOTATION;
pub use database::{DatabaseRequest, InstanceSettings, database_request};
pub use objects::KubeObject;
pub use settings::{
    CompanySettings, DatabaseFacts, DeveloperSettings, FileSystemFacts, Observed, STORAGE_KIND_FSX,
    STORAGE_KIND_VOLUME, StorageKind,
};
pub use storage::{FileSystemRequest, cleanup_job, file_system_request, home_volume, prep_job};
pub use vault::{
    JwtAuthRole, KubernetesAuthRole, OWNERSHIP_MARKER, PersonAccess, VaultPolicy, VaultRule,
    operator_policy, render_hcl,
};

use crate::{
    config::OperatorConfig,
    crd::{Company, Developer},
    names::{CompanyNames, DeveloperNames},
};

/// Everything one Company implies, apart from its Developers.
#[derive(Clone, Debug)]
pub struct CompanyPlan {
    /// The resolved settings (spec merged with the operator's defaults).
    pub settings: CompanySettings,
    /// Kubernetes objects, in apply order.
    pub objects: Vec<KubeObject>,
    /// Vault policies.
    pub policies: Vec<VaultPolicy>,
    /// Vault Kubernetes-auth roles.
    pub roles: Vec<KubernetesAuthRole>,
    /// Actions on systems outside the cluster, in order.
    pub actions: Vec<ExternalAction>,
}

/// Everything one Developer implies.
#[derive(Clone, Debug)]
pub struct DeveloperPlan {
    /// The resolved settings.
    pub settings: DeveloperSettings,
    /// Kubernetes objects, in apply order.
    pub objects: Vec<KubeObject>,
    /// Vault policies.
    pub policies: Vec<VaultPolicy>,
    /// Vault Kubernetes-auth roles.
    pub roles: Vec<KubernetesAuthRole>,
    /// What the person (an Admin) gets in Vault, if anything.
    pub person: Option<PersonAccess>,
    /// Actions on systems outside the cluster, in order.
    pub actions: Vec<ExternalAction>,
}

/// Annotation naming the uid of an earlier Company whose external
/// resources (database, file system, tagged with that uid) this one takes
/// over: an explicit, audited adoption instead of a silent one.
pub const ADOPT_UID_ANNOTATION: &str = "enclave.dev/adopt-uid";

/// Inputs every company builder needs.
#[derive(Clone, Debug)]
pub struct CompanyContext<'a> {
    /// The Company.
    pub company: &'a Company,
    /// Operator configuration.
    pub config: &'a OperatorConfig,
    /// Its names.
    pub names: CompanyNames,
    /// Resolved settings.
    pub settings: CompanySettings,
    /// What was observed of its external resources.
    pub observed: Observed,
}

impl<'a> CompanyContext<'a> {
    /// Resolves `company` against `config` and what was `observed`.
    pub fn new(company: &'a Company, config: &'a OperatorConfig, observed: Observed) -> Self {
        let name = company.metadata.name.as_deref().unwrap_or_default();
        let names = CompanyNames::new(name, company.spec.namespace.as_deref());
        let settings = CompanySettings::resolve(company, config, &names, &observed);
        Self {
            company,
            config,
            names,
            settings,
            observed,
        }
    }

    /// Owner reference to the Company, for children that should be garbage
    /// collected with it (never the namespace or anything holding data).
    pub fn owner(&self) -> Option<OwnerReference> {
        self.company.controller_owner_ref(&())
    }

    /// The uid that names and tags the Company's external resources: its
    /// own, or the one of an earlier Company whose resources it adopts
    /// (annotation `enclave.dev/adopt-uid`, for a Company re-created after
    /// its CRD or object was lost; empty before the API assigned one).
    pub fn uid(&self) -> &str {
        self.company
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ADOPT_UID_ANNOTATION))
            .or(self.company.metadata.uid.as_ref())
            .map_or("", String::as_str)
    }
}

/// Inputs every developer builder needs.
#[derive(Clone, Debug)]
pub struct DeveloperContext<'a> {
    /// The owning company.
    pub company: &'a CompanyContext<'a>,
    /// The Developer.
    pub developer: &'a Developer,
    /// Its names.
    pub names: DeveloperNames,
    /// Resolved settings.
    pub settings: DeveloperSettings,
}

impl<'a> DeveloperContext<'a> {
    /// Resolves `developer` of `company`; `posix_id` is its allocated uid/gid.
    pub fn new(company: &'a CompanyContext<'a>, developer: &'a Developer, posix_id: i64) -> Self {
        let name = developer.metadata.name.as_deref().unwrap_or_default();
        let names = company.names.developer(name, &developer.spec.subject);
        let settings = DeveloperSettings::resolve(company, developer, &names, posix_id);
        Self {
            company,
            developer,
            names,
            settings,
        }
    }

    /// Owner reference to the Developer.
    pub fn owner(&self) -> Option<OwnerReference> {
        self.developer.controller_owner_ref(&())
    }
}

/// Builds everything `ctx`'s Company implies (not its Developers).
pub fn build_company(ctx: &CompanyContext<'_>) -> CompanyPlan {
    let mut objects = vec![
        KubeObject::Namespace(namespace::namespace(ctx)),
        KubeObject::ResourceQuota(namespace::resource_quota(ctx)),
        KubeObject::LimitRange(namespace::limit_range(ctx)),
    ];
    objects.extend(
        network::policies(ctx)
            .into_iter()
            .map(KubeObject::NetworkPolicy),
    );
    if let Some(ca) = namespace::vault_ca(ctx) {
        objects.push(KubeObject::ConfigMap(ca));
    }
    objects.push(KubeObject::RoleBinding(rbac::company_admin_binding(ctx)));
    objects.push(KubeObject::RoleBinding(rbac::operator_access_binding(ctx)));
    objects.push(KubeObject::ServiceAccount(
        rbac::controller_service_account(ctx),
    ));
    if let Some(policy) = storage::prep_network_policy(ctx) {
        objects.push(KubeObject::NetworkPolicy(policy));
    }
    if let Some((pv, pvc)) = storage::company_root(ctx) {
        objects.push(KubeObject::PersistentVolume(pv));
        objects.push(KubeObject::PersistentVolumeClaim(pvc));
    }
    if let Some(deployment) = controller::deployment(ctx) {
        objects.push(KubeObject::Deployment(deployment));
    }
    let mut actions = cloud::database_actions(ctx);
    actions.extend(cloud::storage_actions(ctx));
    CompanyPlan {
        settings: ctx.settings.clone(),
        objects,
        policies: vec![vault::controller_policy(ctx)],
        roles: vec![vault::controller_role(ctx)],
        actions,
    }
}

/// Builds everything `ctx`'s Developer implies.
pub fn build_developer(ctx: &DeveloperContext<'_>) -> DeveloperPlan {
    let mut objects = vec![
        KubeObject::ServiceAccount(workspace::service_account(ctx)),
        KubeObject::Role(rbac::workspace_access_role(ctx)),
        KubeObject::RoleBinding(rbac::workspace_access_binding(ctx)),
    ];
    if let Some(binding) = rbac::developer_admin_binding(ctx) {
        objects.push(KubeObject::RoleBinding(binding));
    }
    let (pv, pvc) = storage::home_volume(ctx);
    if let Some(pv) = pv {
        objects.push(KubeObject::PersistentVolume(pv));
    }
    objects.push(KubeObject::PersistentVolumeClaim(pvc));
    if let Some(job) = storage::prep_job(ctx) {
        objects.push(KubeObject::Job(job));
    }
    objects.push(KubeObject::Service(workspace::service(ctx)));
    objects.push(KubeObject::StatefulSet(workspace::stateful_set(ctx)));
    DeveloperPlan {
        settings: ctx.settings.clone(),
        objects,
        policies: vec![vault::developer_policy(ctx)],
        roles: vec![vault::developer_role(ctx)],
        person: vault::admin_person_access(ctx),
        actions: cloud::developer_actions(ctx),
    }
}
