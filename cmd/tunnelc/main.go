// Command tunnelc is the tunnel client: it connects to tunneld and serves
// the public connections of its tunnels from local services.
package main

import (
	"os"

	"github.com/tunnel-dev/tunnel/internal/cli"
)

func main() {
	os.Exit(cli.Main(func() error { return newRoot().Execute() }))
}
