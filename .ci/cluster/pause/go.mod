module notes.local/ci-cluster/pause

go 1.26.8
