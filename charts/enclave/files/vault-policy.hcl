# managed-by: enclave
# The Enclave operator: tenant ACL policies and Kubernetes-auth roles named
# enclave-*, the tenants' secrets below companies/, and read access to its
# own platform secrets below enclave/. Nothing else.

path "sys/policies/acl/enclave-*" {
  capabilities = ["create", "read", "update", "delete"]
}

path "auth/kubernetes/role/enclave-*" {
  capabilities = ["create", "read", "update", "delete"]
}

path "secret/data/companies/*" {
  capabilities = ["create", "read", "update", "delete"]
}

path "secret/metadata/companies/*" {
  capabilities = ["read", "list", "delete"]
}

# Platform secrets the operator reads, e.g. the shared PostgreSQL admin.
path "secret/data/enclave/*" {
  capabilities = ["read"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}
