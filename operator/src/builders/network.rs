//! NetworkPolicies: default deny, then exactly what a workspace needs.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
        NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
        util::intstr::IntOrString,
    },
};
use kube::api::ObjectMeta;

use super::{CompanyContext, labels};
use crate::names::LABEL_COMPONENT;

/// Cloud metadata endpoints (AWS IPv4 and IPv6): never reachable from a workspace.
const METADATA_ENDPOINTS: [&str; 2] = ["169.254.169.254", "fd00:ec2::254"];

fn policy(ctx: &CompanyContext<'_>, name: &str, spec: NetworkPolicySpec) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ctx.names.namespace().to_owned()),
            labels: Some(labels::company(ctx.names.company())),
            owner_references: ctx.owner().map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        end_port: None,
    }
}

/// Parses `a.b.c.d/n` or `x::/n`.
fn parse_cidr(cidr: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = cidr.split_once('/')?;
    Some((ip.parse().ok()?, len.parse().ok()?))
}

fn contains(cidr: &str, ip: &str) -> bool {
    let (Some((net, len)), Ok(ip)) = (parse_cidr(cidr), ip.parse::<IpAddr>()) else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// An egress peer for `cidr` that never includes a metadata endpoint.
/// `None` when `cidr` is nothing but a metadata endpoint.
pub fn egress_peer(cidr: &str) -> Option<NetworkPolicyPeer> {
    let mut except = Vec::new();
    for endpoint in METADATA_ENDPOINTS {
        if contains(cidr, endpoint) {
            let host = if endpoint.contains(':') {
                format!("{endpoint}/128")
            } else {
                format!("{endpoint}/32")
            };
            if host == cidr {
                return None;
            }
            except.push(host);
        }
    }
    Some(NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr.to_owned(),
            except: (!except.is_empty()).then_some(except),
        }),
        ..NetworkPolicyPeer::default()
    })
}

fn egress_rule(cidr: &str, ports: &[i32]) -> Option<NetworkPolicyEgressRule> {
    Some(NetworkPolicyEgressRule {
        to: Some(vec![egress_peer(cidr)?]),
        ports: (!ports.is_empty()).then(|| ports.iter().copied().map(tcp).collect()),
    })
}

/// Every NetworkPolicy of the company namespace.
pub fn policies(ctx: &CompanyContext<'_>) -> Vec<NetworkPolicy> {
    let all_pods = LabelSelector::default();
    let workspaces = LabelSelector {
        match_labels: Some(BTreeMap::from([(
            LABEL_COMPONENT.to_owned(),
            "workspace".to_owned(),
        )])),
        ..LabelSelector::default()
    };
    let net = &ctx.config.network;
    let mut out = vec![
        // Nothing in, nothing out, and so no pod reaches another pod.
        policy(
            ctx,
            "default-deny",
            NetworkPolicySpec {
                pod_selector: Some(all_pods.clone()),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ..NetworkPolicySpec::default()
            },
        ),
        policy(
            ctx,
            "allow-dns",
            NetworkPolicySpec {
                pod_selector: Some(all_pods.clone()),
                policy_types: Some(vec!["Egress".into()]),
                egress: Some(vec![NetworkPolicyEgressRule {
                    to: Some(vec![NetworkPolicyPeer {
                        namespace_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(
                                "kubernetes.io/metadata.name".to_owned(),
                                net.dns_namespace.clone(),
                            )])),
                            ..LabelSelector::default()
                        }),
                        pod_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([net.dns_pod_label.clone()])),
                            ..LabelSelector::default()
                        }),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ports: Some(vec![
                        NetworkPolicyPort {
                            port: Some(IntOrString::Int(53)),
                            protocol: Some("UDP".into()),
                            end_port: None,
                        },
                        tcp(53),
                    ]),
                }]),
                ..NetworkPolicySpec::default()
            },
        ),
        policy(
            ctx,
            "allow-workspace-ingress",
            NetworkPolicySpec {
                pod_selector: Some(workspaces.clone()),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        namespace_selector: Some(LabelSelector {
                            match_expressions: Some(vec![LabelSelectorRequirement {
                                key: "kubernetes.io/metadata.name".into(),
                                operator: "In".into(),
                                values: Some(ctx.settings.ingress_namespaces.clone()),
                            }]),
                            ..LabelSelector::default()
                        }),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ports: Some(vec![tcp(ctx.config.workspace.port)]),
                }]),
                ..NetworkPolicySpec::default()
            },
        ),
    ];
    let platform: Vec<_> = net
        .platform_egress
        .iter()
        .filter_map(|e| egress_rule(&e.cidr, &e.ports))
        .collect();
    if !platform.is_empty() {
        out.push(policy(
            ctx,
            "allow-platform-egress",
            NetworkPolicySpec {
                pod_selector: Some(workspaces.clone()),
                policy_types: Some(vec!["Egress".into()]),
                egress: Some(platform.clone()),
                ..NetworkPolicySpec::default()
            },
        ));
    }
    let company: Vec<_> = ctx
        .settings
        .egress
        .iter()
        .filter_map(|e| egress_rule(&e.cidr, &e.ports))
        .collect();
    // The company controller reaches what workspaces reach (Vault, the
    // database, the company's own systems), through a policy of its own.
    let controller_egress: Vec<_> = platform.iter().chain(&company).cloned().collect();
    if ctx.settings.controller_image.is_some() && !controller_egress.is_empty() {
        out.push(policy(
            ctx,
            "allow-company-controller-egress",
            NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        LABEL_COMPONENT.to_owned(),
                        super::controller::COMPONENT.to_owned(),
                    )])),
                    ..LabelSelector::default()
                }),
                policy_types: Some(vec!["Egress".into()]),
                egress: Some(controller_egress),
                ..NetworkPolicySpec::default()
            },
        ));
    }
    if !company.is_empty() {
        out.push(policy(
            ctx,
            "allow-company-egress",
            NetworkPolicySpec {
                pod_selector: Some(workspaces),
                policy_types: Some(vec!["Egress".into()]),
                egress: Some(company),
                ..NetworkPolicySpec::default()
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_endpoint_is_excluded_from_wide_ranges() {
        let peer = egress_peer("0.0.0.0/0").unwrap();
        assert_eq!(
            peer.ip_block.unwrap().except,
            Some(vec!["169.254.169.254/32".to_owned()])
        );
        let peer = egress_peer("10.0.0.0/8").unwrap();
        assert_eq!(peer.ip_block.unwrap().except, None);
        let peer = egress_peer("::/0").unwrap();
        assert_eq!(
            peer.ip_block.unwrap().except,
            Some(vec!["fd00:ec2::254/128".to_owned()])
        );
        assert!(egress_peer("169.254.169.254/32").is_none());
        assert!(
            egress_peer("169.254.0.0/16")
                .unwrap()
                .ip_block
                .unwrap()
                .except
                .is_some()
        );
    }
}
