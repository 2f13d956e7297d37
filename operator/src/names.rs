//! Every name Enclave gives anything comes from here.
//!
//! Names are deterministic (the operator keeps no state of its own: a name is
//! how it finds what it made), stay within each system's limits, and are
//! injective across tenants: where a name joins a company and a developer,
//! the parts are separated by `--`, which no validated Company or Developer
//! name contains, and where a name must be shortened, a hash of the full name
//! is appended so two tenants never share it.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// Longest Kubernetes label value, namespace and most object names (DNS-1123 label).
pub const DNS_LABEL_MAX: usize = 63;
/// Longest StatefulSet name: the pods' `controller-revision-hash` label
/// appends 11 characters and must stay a label value.
pub const STATEFULSET_MAX: usize = 52;
/// Longest RDS DB instance and snapshot identifier.
pub const RDS_IDENTIFIER_MAX: usize = 63;
/// Longest PostgreSQL identifier in bytes (NAMEDATALEN - 1).
pub const POSTGRES_IDENTIFIER_MAX: usize = 63;
/// Longest FSx client request token.
pub const FSX_TOKEN_MAX: usize = 63;

/// Label every object Enclave manages carries.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "enclave";
/// Label naming the company an object belongs to.
pub const LABEL_COMPANY: &str = "enclave.dev/company";
/// Annotation of a company namespace with the uid of the Company that owns
/// it: a label alone can be set by anyone who may label namespaces.
pub const ANNOTATION_COMPANY_UID: &str = "enclave.dev/company-uid";
/// Label naming the developer an object belongs to.
pub const LABEL_DEVELOPER: &str = "enclave.dev/developer";
/// Label naming the part of the tenant an object is (`workspace`, `storage-prep`, …).
pub const LABEL_COMPONENT: &str = "enclave.dev/component";

/// Eight hex characters of SHA-256 over `parts`, each terminated by a NUL so
/// that `["ab", "c"]` and `["a", "bc"]` differ.
pub fn short_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    digest[..4]
        .iter()
        .fold(String::with_capacity(8), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// `name` if it fits in `max` bytes; otherwise its first bytes, cut back to a
/// letter or digit, then `-` and a hash of the whole name. `name` must be
/// ASCII (every name here is built from validated ASCII parts).
pub fn fit(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let hash = short_hash(&[name]);
    let keep = max.saturating_sub(hash.len() + 1);
    let head = name[..keep.min(name.len())].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if head.is_empty() {
        hash
    } else {
        format!("{head}-{hash}")
    }
}

/// Names of everything one company implies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompanyNames {
    company: String,
    namespace: String,
}

impl CompanyNames {
    /// Names for company `company` whose namespace is `namespace_override`
    /// or, by default, `company-<name>`.
    pub fn new(company: &str, namespace_override: Option<&str>) -> Self {
        let namespace = match namespace_override {
            Some(ns) => ns.to_owned(),
            None => fit(&format!("company-{company}"), DNS_LABEL_MAX),
        };
        Self {
            company: company.to_owned(),
            namespace,
        }
    }

    /// The Company's name.
    pub fn company(&self) -> &str {
        &self.company
    }

    /// The company namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// ServiceAccount of the company-specific controller.
    pub fn controller_service_account(&self) -> &'static str {
        "company-controller"
    }

    /// RoleBinding that grants company admins the company-admin ClusterRole
    /// in this namespace.
    pub fn admin_binding(&self) -> &'static str {
        "company-admin"
    }

    /// RoleBinding that lets the operator hold, in this namespace only, the
    /// workspace access it grants each person.
    pub fn operator_access_binding(&self) -> &'static str {
        "enclave-operator-workspace-access"
    }

    /// Vault policy and Kubernetes-auth role of the company controller.
    pub fn vault_controller(&self) -> String {
        fit(
            &format!("enclave-{}--company-controller", self.company),
            DNS_LABEL_MAX,
        )
    }

    /// KV v2 path (below the mount) that holds everything of this company.
    pub fn kv_company_root(&self) -> String {
        format!("companies/{}", self.company)
    }

    /// ConfigMap with Vault's CA bundle, for the init steps.
    pub fn vault_ca_config_map(&self) -> &'static str {
        "enclave-vault-ca"
    }

    /// KV v2 path recording which Company (uid) the KV root belongs to, so a
    /// later Company of the same name never inherits retained secrets.
    pub fn kv_company_owner(&self) -> String {
        format!("companies/{}/platform/owner", self.company)
    }

    /// KV v2 path of the company's shared secrets (`dev/`, `prod/`).
    pub fn kv_company_shared(&self) -> String {
        format!("companies/{}/shared", self.company)
    }

    /// KV v2 path below which every developer's personal secrets are.
    pub fn kv_company_developers(&self) -> String {
        format!("companies/{}/developers", self.company)
    }

    /// KV path of the credentials the operator generated for the database.
    pub fn kv_database_credentials(&self) -> String {
        format!("companies/{}/platform/database", self.company)
    }

    /// RDS DB instance identifier (Dedicated mode).
    pub fn rds_instance(&self) -> String {
        fit(&format!("enclave-{}", self.company), RDS_IDENTIFIER_MAX)
    }

    /// Final snapshot identifier; `company_uid` keeps a re-created company
    /// with the same name from colliding with an earlier final snapshot.
    pub fn rds_final_snapshot(&self, company_uid: &str) -> String {
        let tag = short_hash(&[company_uid]);
        fit(
            &format!("enclave-{}-final-{tag}", self.company),
            RDS_IDENTIFIER_MAX,
        )
    }

    /// PostgreSQL database name (both modes).
    pub fn postgres_database(&self) -> String {
        fit(
            &format!("enclave_{}", self.company.replace('-', "_")),
            POSTGRES_IDENTIFIER_MAX,
        )
        .replace('-', "_")
    }

    /// PostgreSQL login role of the company.
    pub fn postgres_role(&self) -> String {
        fit(
            &format!("enclave_{}_owner", self.company.replace('-', "_")),
            POSTGRES_IDENTIFIER_MAX,
        )
        .replace('-', "_")
    }

    /// RDS master user name (Dedicated mode); RDS allows at most 16 characters.
    pub fn rds_master_user(&self) -> &'static str {
        "enclave_admin"
    }

    /// FSx client request token: the same for every retry of one company's
    /// creation, different for a re-created company of the same name.
    pub fn fsx_request_token(&self, company_uid: &str) -> String {
        fit(
            &format!("enclave-{}-{}", self.company, short_hash(&[company_uid])),
            FSX_TOKEN_MAX,
        )
    }

    /// Idempotency token of the file system's DeleteFileSystem (at most 63
    /// characters, like every FSx token).
    pub fn fsx_delete_request_token(&self, company_uid: &str) -> String {
        fit(
            &format!(
                "enclave-{}-{}-delete",
                self.company,
                short_hash(&[company_uid])
            ),
            FSX_TOKEN_MAX,
        )
    }

    /// Directory of the company below the file system root.
    pub fn storage_root(&self) -> String {
        format!("/companies/{}", self.company)
    }

    /// PersistentVolume (cluster-scoped) and PVC (operator namespace) of the
    /// file system root that the company's storage-prep Jobs mount.
    pub fn storage_root_volume(&self) -> String {
        fit(&format!("enclave-{}--root", self.company), DNS_LABEL_MAX)
    }

    /// Deny-all NetworkPolicy of the company's storage-prep pods (operator namespace).
    pub fn storage_prep_policy(&self) -> String {
        fit(
            &format!("enclave-{}--storage-prep", self.company),
            DNS_LABEL_MAX,
        )
    }

    /// Names of developer `developer` (the resource name) whose person is `subject`.
    pub fn developer(&self, developer: &str, subject: &str) -> DeveloperNames {
        DeveloperNames::new(self, developer, subject)
    }
}

/// Names of everything one developer implies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeveloperNames {
    company: String,
    name: String,
    key: String,
}

impl DeveloperNames {
    fn new(company: &CompanyNames, name: &str, subject: &str) -> Self {
        Self {
            company: company.company.clone(),
            name: name.to_owned(),
            key: format!("{name}-{}", short_hash(&[subject])),
        }
    }

    /// The Developer's resource name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The developer key: name plus a hash of the person's subject. Personal
    /// data (directory, KV secrets, PV) is keyed to it, so a new person with
    /// an old name never finds the old person's data.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The workspace's ServiceAccount.
    pub fn service_account(&self) -> String {
        fit(&format!("developer-{}", self.name), DNS_LABEL_MAX)
    }

    /// The workspace StatefulSet and its headless Service.
    pub fn workspace(&self) -> String {
        fit(&format!("workspace-{}", self.name), STATEFULSET_MAX)
    }

    /// The one workspace pod.
    pub fn workspace_pod(&self) -> String {
        format!("{}-0", self.workspace())
    }

    /// Role and RoleBinding that let the person reach their own workspace
    /// pod (exec, attach, port-forward, logs) and read their own Developer.
    pub fn workspace_access(&self) -> String {
        fit(&format!("workspace-access-{}", self.name), DNS_LABEL_MAX)
    }

    /// RoleBinding that makes an Admin developer a company admin.
    pub fn admin_binding(&self) -> String {
        fit(&format!("company-admin-{}", self.name), DNS_LABEL_MAX)
    }

    /// PVC of the private directory, in the company namespace.
    pub fn home_claim(&self) -> String {
        fit(&format!("home-{}", self.key), DNS_LABEL_MAX)
    }

    /// PersistentVolume (cluster-scoped) that exposes only the private directory.
    pub fn home_volume(&self) -> String {
        fit(
            &format!("enclave-{}--{}", self.company, self.key),
            DNS_LABEL_MAX,
        )
    }

    /// Storage-prep Job, in the operator namespace.
    pub fn storage_prep_job(&self) -> String {
        fit(
            &format!("storage-prep-{}--{}", self.company, self.key),
            DNS_LABEL_MAX,
        )
    }

    /// Job (operator namespace) that archives or removes the private
    /// directory when the Developer is deleted, per the deletion policy.
    pub fn storage_cleanup_job(&self) -> String {
        fit(
            &format!("storage-cleanup-{}--{}", self.company, self.key),
            DNS_LABEL_MAX,
        )
    }

    /// Private directory below the file system root.
    pub fn storage_path(&self) -> String {
        format!("/companies/{}/developers/{}", self.company, self.key)
    }

    /// Vault policy and Kubernetes-auth role of the workspace.
    pub fn vault_role(&self) -> String {
        fit(
            &format!("enclave-{}--{}", self.company, self.key),
            DNS_LABEL_MAX,
        )
    }

    /// Vault policy and JWT-auth role of the person (not the pod) when they
    /// are a company admin.
    pub fn vault_person(&self) -> String {
        fit(
            &format!("enclave-{}--{}--admin", self.company, self.key),
            DNS_LABEL_MAX,
        )
    }

    /// KV v2 path (below the mount) of the developer's own secrets.
    pub fn kv_developer(&self) -> String {
        format!("companies/{}/developers/{}", self.company, self.key)
    }

    /// KV v2 path of the uid/gid recorded for this person, kept while data
    /// owned by it may exist (so it is never handed to anyone else, and the
    /// same person re-created gets it back).
    pub fn kv_posix_id(&self) -> String {
        format!("companies/{}/platform/posix-ids/{}", self.company, self.key)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    /// A valid Company/Developer name of up to `max` characters.
    fn name(max: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[a-z](-?[a-z0-9]){{0,{}}}", max / 2))
            .expect("valid regex")
            .prop_filter("length", move |s| s.len() <= max)
    }

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= DNS_LABEL_MAX
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    fn is_rds_identifier(s: &str) -> bool {
        s.len() <= RDS_IDENTIFIER_MAX
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.contains("--")
            && !s.ends_with('-')
    }

    fn is_postgres_identifier(s: &str) -> bool {
        s.len() <= POSTGRES_IDENTIFIER_MAX
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    }

    #[test]
    fn fit_keeps_short_names_and_hashes_long_ones() {
        assert_eq!(fit("abc", 63), "abc");
        let long = "a".repeat(100);
        let fitted = fit(&long, 63);
        assert_eq!(fitted.len(), 63);
        assert_ne!(fit(&format!("{long}x"), 63), fitted);
    }

    #[test]
    fn developer_key_depends_on_subject() {
        let co = CompanyNames::new("acme", None);
        let a = co.developer("alice", "sub-1");
        let b = co.developer("alice", "sub-2");
        assert_ne!(a.key(), b.key());
        assert_ne!(a.storage_path(), b.storage_path());
        assert_ne!(a.kv_developer(), b.kv_developer());
        assert_eq!(a.service_account(), b.service_account());
        assert_eq!(a, co.developer("alice", "sub-1"));
    }

    #[test]
    fn separator_keeps_company_and_developer_apart() {
        // "a" + "x-dev-y" and "a-dev-x" + "y" must not share a Vault role.
        let one = CompanyNames::new("a", None).developer("x-dev-y", "s");
        let two = CompanyNames::new("a-dev-x", None).developer("y", "s");
        assert_ne!(one.vault_role(), two.vault_role());
        let three = CompanyNames::new("a-x", None).developer("y", "s");
        let four = CompanyNames::new("a", None).developer("x-y", "s");
        assert_ne!(three.vault_role(), four.vault_role());
        assert_ne!(three.home_volume(), four.home_volume());
    }

    proptest! {
        #[test]
        fn every_name_is_legal(company in name(40), dev in name(30), subject in "[A-Za-z0-9][A-Za-z0-9._:|-]{0,80}") {
            let co = CompanyNames::new(&company, None);
            let d = co.developer(&dev, &subject);
            for label in [
                co.namespace().to_owned(), co.vault_controller(), co.storage_root_volume(), co.storage_prep_policy(),
                d.key().to_owned(), d.service_account(), d.workspace(), d.workspace_pod(),
                d.admin_binding(), d.home_claim(), d.home_volume(), d.storage_prep_job(), d.vault_role(),
            ] {
                prop_assert!(is_dns_label(&label), "{label} is not a DNS label");
            }
            prop_assert!(d.workspace().len() <= STATEFULSET_MAX);
            prop_assert!(is_rds_identifier(&co.rds_instance()), "{}", co.rds_instance());
            prop_assert!(is_rds_identifier(&co.rds_final_snapshot("3f1c-uid")), "{}", co.rds_final_snapshot("3f1c-uid"));
            prop_assert!(is_rds_identifier(&co.fsx_request_token("uid")));
            prop_assert!(co.fsx_delete_request_token("uid").len() <= FSX_TOKEN_MAX);
            prop_assert_ne!(co.fsx_delete_request_token("uid"), co.fsx_request_token("uid"));
            prop_assert!(is_postgres_identifier(&co.postgres_database()), "{}", co.postgres_database());
            prop_assert!(is_postgres_identifier(&co.postgres_role()), "{}", co.postgres_role());
        }

        #[test]
        fn distinct_tenants_get_distinct_names(
            c1 in name(40), d1 in name(30), s1 in "[a-z0-9]{1,12}",
            c2 in name(40), d2 in name(30), s2 in "[a-z0-9]{1,12}",
        ) {
            let (co1, co2) = (CompanyNames::new(&c1, None), CompanyNames::new(&c2, None));
            if c1 != c2 {
                prop_assert_ne!(co1.namespace(), co2.namespace());
                prop_assert_ne!(co1.rds_instance(), co2.rds_instance());
                prop_assert_ne!(co1.postgres_database(), co2.postgres_database());
                prop_assert_ne!(co1.postgres_role(), co2.postgres_role());
                prop_assert_ne!(co1.vault_controller(), co2.vault_controller());
                prop_assert_ne!(co1.kv_company_root(), co2.kv_company_root());
                prop_assert_ne!(co1.storage_root(), co2.storage_root());
            }
            if (c1.as_str(), d1.as_str(), s1.as_str()) != (c2.as_str(), d2.as_str(), s2.as_str()) {
                let (x, y) = (co1.developer(&d1, &s1), co2.developer(&d2, &s2));
                prop_assert_ne!(x.vault_role(), y.vault_role());
                prop_assert_ne!(x.home_volume(), y.home_volume());
                prop_assert_ne!(x.storage_prep_job(), y.storage_prep_job());
                prop_assert_ne!(x.storage_path(), y.storage_path());
                prop_assert_ne!(x.kv_developer(), y.kv_developer());
            }
        }
    }

    #[test]
    fn many_long_names_do_not_collide() {
        let mut seen = HashSet::new();
        for i in 0..5000 {
            let co = CompanyNames::new(&format!("{}{i}", "c".repeat(36)), None);
            let d = co.developer(&format!("{}{i}", "d".repeat(26)), "s");
            assert!(seen.insert(d.storage_prep_job()), "collision at {i}");
        }
    }
}
