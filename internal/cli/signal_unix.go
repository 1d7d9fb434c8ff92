//go:build !windows

package cli

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// statusSignal asks a running daemon for a status line; reloadSignal
// makes it re-read its config.
var (
	statusSignal os.Signal = syscall.SIGUSR1
	reloadSignal os.Signal = syscall.SIGHUP
)

// monotonicUsec is CLOCK_MONOTONIC in microseconds, as systemd's
// MONOTONIC_USEC wants it.
func monotonicUsec() (int64, bool) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, false
	}
	return int64(ts.Sec)*1_000_000 + int64(ts.Nsec)/1000, true
}
