// Command etcd is the upstream etcd server, built from its published Go module
// at the version pinned in go.mod. Tests start it on loopback.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
