package cli

import "os"

// statusSignal, reloadSignal: Windows has neither SIGUSR1 nor SIGHUP, so
// no status line and no reload on a signal (the admin endpoint reloads).
var statusSignal, reloadSignal os.Signal

// monotonicUsec: no systemd on Windows.
func monotonicUsec() (int64, bool) { return 0, false }
