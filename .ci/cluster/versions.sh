# The cluster's pinned versions, sourced by every script in this folder so each has one home. After a change, run
# `bash .ci/cluster/pin` and commit the go.mod and go.sum files it rewrites.
KUBERNETES_VERSION=v1.35.4
ETCD_VERSION=v3.6.16
# The node: its container runtime, the runtime's runtime, the pod network's plugins, the CRI client.
CONTAINERD_VERSION=v2.4.2
RUNC_VERSION=v1.5.3
CNI_PLUGINS_VERSION=v1.10.0
CRI_TOOLS_VERSION=v1.37.0
# Cluster DNS, as a kube-system pod labelled k8s-app=kube-dns like kind's.
COREDNS_VERSION=v1.15.0
# The NetworkPolicy enforcer: kube-router's firewall alone (iptables and ipset; the kernel has no nftables queue,
# which kube-network-policies needs). The proxy serves only v2.1.0, which has reported security flaws: tolerable for
# a cluster that lives for one CI run on this machine's own addresses and faces no untrusted traffic.
KUBE_ROUTER_VERSION=v2.1.0
# The CRDs of the components' custom resources, as their projects publish them, for server-side dry runs.
# Gateway API v1.7.0 needs Go 1.27 to unpack (its go.mod says so); v1.6.3 is the newest that Go 1.26 accepts.
GATEWAY_API_VERSION=v1.6.3
PROMETHEUS_OPERATOR_VERSION=v0.85.0
