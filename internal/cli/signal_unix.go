//go:build !windows

package cli

import (
	"os"
	"syscall"
)

// statusSignal asks a running daemon for a status line.
var statusSignal os.Signal = syscall.SIGUSR1
