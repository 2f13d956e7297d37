# managed-by: enclave
# The Enclave operator: tenant ACL policies and Kubernetes-auth roles named
# enclave-*, and the tenants' secrets below companies/. Nothing else.

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

path "auth/token/lookup-self" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}
