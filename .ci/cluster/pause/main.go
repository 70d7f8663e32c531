// The pod sandbox's process: it holds the pod's namespaces open and does nothing else until told to stop.
// Kubernetes' own pause is C (build/pause in its repository, not a Go module); this is the same job in Go, so the
// image is built here from source like everything else in the cluster. It also reaps orphans, as the original
// does, for pods that share their process namespace.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
