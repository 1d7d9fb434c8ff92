// Command tunneld is the tunnel server: it accepts tunnelc sessions and
// exposes their services on public ports.
package main

import (
	"os"

	"github.com/tunnel-dev/tunnel/internal/cli"
)

func main() {
	os.Exit(cli.Main(func() error { return newRoot().Execute() }))
}
