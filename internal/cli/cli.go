// Package cli holds what tunneld's and tunnelc's commands share: logger
// construction, the signal-bound context, and exit codes. It must not hold
// tunnel logic; the commands only wire config to server or client.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"syscall"

	"github.com/tunnel-dev/tunnel/internal/config"

	"github.com/tunnel-dev/tunnel/internal/mux"
)

// Version and Commit are set at build time (-ldflags "-X
// .../internal/cli.Version=... -X .../internal/cli.Commit=..."); without
// Commit, the commit go build stamped, if it did (-buildvcs).
var (
	Version = "dev"
	Commit  = ""
)

// VersionLine is what --version prints: the build, the commit it was built
// from (when the build recorded one), the yamux it carries (our fork, not
// upstream's release: scanners and users should know) and the Go release.
func VersionLine() string {
	ymx := mux.YamuxVersion()
	commit := ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/hashicorp/yamux" && d.Replace == nil {
				ymx = "yamux " + d.Version // built without the fork: say so
			}
		}
		commit = vcsCommit(bi.Settings)
	}
	if Commit != "" {
		commit = Commit
	}
	if commit != "" {
		return fmt.Sprintf("%s (commit %s, %s, %s)", Version, commit, ymx, runtime.Version())
	}
	return fmt.Sprintf("%s (%s, %s)", Version, ymx, runtime.Version())
}

// vcsCommit is the commit go build stamped (the first 12 hex digits, and
// "-dirty" for a tree with changes), "" when it stamped none.
func vcsCommit(settings []debug.BuildSetting) string {
	var rev string
	dirty := false
	for _, s := range settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" && dirty {
		rev += "-dirty"
	}
	return rev
}

// ExitError carries a process exit code out of a command's RunE.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// Exit codes. Refusal and config errors use sysexits.h values, distinct
// from Go's 2 for a panic, so a systemd unit can stop restarting on them
// (RestartPreventExitStatus=77 78) and still restart after a crash.
const (
	ExitFailure = 1  // runtime failure
	ExitRefused = 77 // EX_NOPERM: the server refused us for good (token, version, tunnel)
	ExitConfig  = 78 // EX_CONFIG: the config is invalid
)

// Logger builds the daemon's logger. levelFlag, when set, overrides the
// config's level. The returned Level lets a reload change the level.
func Logger(w io.Writer, l config.Log, levelFlag string) (*slog.Logger, *Level, error) {
	lv := &Level{flag: levelFlag != ""}
	lv.v.Set(l.SlogLevel())
	if levelFlag != "" {
		var fl slog.Level
		if err := fl.UnmarshalText([]byte(levelFlag)); err != nil {
			return nil, nil, &ExitError{ExitConfig, fmt.Errorf("--log-level: %q is not a level (debug, info, warn, error)", levelFlag)}
		}
		lv.v.Set(fl)
	}
	opts := &slog.HandlerOptions{Level: &lv.v}
	if l.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), lv, nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), lv, nil
}

// Level is the logger's level, which a reloaded config may change
// unless --log-level set it.
type Level struct {
	v    slog.LevelVar
	flag bool
}

// Apply takes the level of a reloaded config.
func (l *Level) Apply(c config.Log) {
	if !l.flag {
		l.v.Set(c.SlogLevel())
	}
}

// SignalContext is cancelled by the first SIGINT or SIGTERM. After that the
// signals are released, so a second one ends the process at once.
func SignalContext() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()
	return ctx, stop
}

// Main runs a command tree and turns its error into an exit code. Only main
// calls os.Exit.
func Main(run func() error) int {
	err := run()
	if err == nil {
		return 0
	}
	fmt.Fprintln(os.Stderr, "error:", err)
	var e *ExitError
	if errors.As(err, &e) {
		return e.Code
	}
	return ExitFailure
}

// StatusOnSignal logs one "status" line each time the process gets SIGUSR1
// (`kill -USR1 <pid>`): the daemon's own attributes plus goroutine and
// descriptor counts and live heap and stack bytes, for operators and for
// the tests' leak and memory checks.
// It stops when ctx ends; the returned function waits for that.
func StatusOnSignal(ctx context.Context, log *slog.Logger, attrs func() []any) (wait func()) {
	return onSignal(ctx, statusSignal, func() {
		fds := -1
		if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
			fds = len(ents)
		}
		// A collection first, so heap_bytes is what is live, not what
		// garbage happens to be waiting: the status is asked for
		// rarely, and a precise number is its point.
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		log.Info("status", append(attrs(), "goroutines", runtime.NumGoroutine(), "fds", fds,
			"heap_bytes", ms.HeapAlloc, "stack_bytes", ms.StackInuse)...)
	})
}

// onSignal runs f at every sig until ctx ends; the returned function
// waits for that. A nil sig (none on this system) does nothing.
func onSignal(ctx context.Context, sig os.Signal, f func()) (wait func()) {
	if sig == nil {
		return func() {}
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, sig)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer signal.Stop(ch)
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				f()
			}
		}
	}()
	return func() { <-done }
}

// CPUProfile writes a pprof CPU profile to path until the returned function
// is called; path "" does nothing. Behind the hidden --cpuprofile flag, for
// docs/performance.md.
func CPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
