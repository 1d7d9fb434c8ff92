package cli

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tunnel-dev/tunnel/internal/admin"
	"github.com/tunnel-dev/tunnel/internal/config"
)

// AdminClient reaches the admin endpoint of the daemon whose config is
// cfg, or the one flag names (a socket path, or host:port).
func AdminClient(file string, cfg config.Admin, flag string) (*admin.Client, error) {
	switch {
	case strings.Contains(flag, "/"):
		cfg = config.Admin{Socket: flag, Token: cfg.Token}
	case flag != "":
		cfg = config.Admin{Address: flag, Token: cfg.Token}
	case !cfg.Enabled():
		return nil, &ExitError{Code: ExitConfig, Err: fmt.Errorf(
			"%s has no [admin] socket or address, so the daemon serves no admin endpoint: add one (and reload or restart the daemon), or name it with --admin", file)}
	}
	return admin.Dial(cfg), nil
}

// AdminError turns an endpoint's refusal into an exit error with its
// message; other errors (and nil) pass as they are.
func AdminError(err error) error {
	var ae *admin.Error
	if errors.As(err, &ae) {
		return &ExitError{Code: ExitFailure, Err: fmt.Errorf("%s (HTTP %d)", ae.Msg, ae.Status)}
	}
	return err
}

// Bytes is n in binary units, for tables.
func Bytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// Age is how long ago t was, rounded for a table.
func Age(now, t time.Time) string {
	d := now.Sub(t)
	switch {
	case d < time.Hour:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		return d.Round(time.Minute).String()
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}
