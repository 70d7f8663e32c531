# The cluster's pinned versions: sourced by every script in this folder, so each version has one home.
# go.mod is generated from these by `bash .ci/cluster/pin`; a change here needs a re-run of pin and a commit of
# go.mod and go.sum.
KUBERNETES_VERSION=v1.35.4
ETCD_VERSION=v3.6.16
