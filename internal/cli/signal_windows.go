package cli

import "os"

// statusSignal: Windows has no SIGUSR1, so no status line on a signal.
var statusSignal os.Signal
