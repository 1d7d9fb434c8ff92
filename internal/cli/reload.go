package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/tunnel-dev/tunnel/internal/admin"
)

// Reloader runs a daemon's reloads one at a time, from SIGHUP or the
// admin endpoint, and tells systemd (RELOADING=1 with MONOTONIC_USEC, as
// systemd 253's Type=notify-reload expects, then READY=1 and the status).
type Reloader struct {
	log    *slog.Logger
	apply  func() (any, error)
	status func() string
	mu     sync.Mutex
}

// NewReloader makes a Reloader; apply re-reads the config file and
// applies it, or returns why not (the running config then stays).
func NewReloader(log *slog.Logger, apply func() (any, error), status func() string) *Reloader {
	return &Reloader{log: log, apply: apply, status: status}
}

// Reload runs one reload; source says what asked ("SIGHUP", "admin").
func (r *Reloader) Reload(source string) (any, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	msg := daemon.SdNotifyReloading
	if us, ok := monotonicUsec(); ok {
		msg += fmt.Sprintf("\nMONOTONIC_USEC=%d", us)
	}
	_, _ = daemon.SdNotify(false, msg)
	r.log.Info("reloading the config", "asked_by", source)
	res, err := r.apply()
	if err != nil {
		r.log.Error("config reload refused; the running config stays", "asked_by", source, "err", err)
	}
	_, _ = daemon.SdNotify(false, daemon.SdNotifyReady+"\nSTATUS="+r.status())
	return res, err
}

// OnSignal reloads at every SIGHUP until ctx ends; the returned function
// waits for that. Without SIGHUP (Windows) it does nothing.
func (r *Reloader) OnSignal(ctx context.Context) (wait func()) {
	return onSignal(ctx, reloadSignal, func() { _, _ = r.Reload("SIGHUP") })
}

// ServeReload puts POST /v1/reload on a: a config that does not load or
// apply is a 422 with the same words check prints.
func ServeReload(a *admin.Server, r *Reloader) {
	a.Handle("POST /v1/reload", func(*http.Request) (any, error) {
		res, err := r.Reload("admin")
		if err != nil {
			return nil, &admin.Error{Status: http.StatusUnprocessableEntity, Msg: err.Error()}
		}
		return res, nil
	})
}

// AskReload asks a running daemon to reload and prints what it did; a
// config it refused is an ExitConfig error with the daemon's words.
func AskReload(ctx context.Context, c *admin.Client, out io.Writer) error {
	var res map[string]any
	if err := c.Post(ctx, "/v1/reload", nil, &res); err != nil {
		var ae *admin.Error
		if errors.As(err, &ae) && ae.Status == http.StatusUnprocessableEntity {
			return &ExitError{Code: ExitConfig, Err: fmt.Errorf("reload refused, the running config stays:\n%s", ae.Msg)}
		}
		return err
	}
	keys := make([]string, 0, len(res))
	for k := range res {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintln(out, "reloaded")
	for _, k := range keys {
		if list, ok := res[k].([]any); ok && len(list) > 0 {
			fmt.Fprintf(out, "  %-14s %v\n", strings.ReplaceAll(k, "_", " "), list)
		}
	}
	return nil
}
