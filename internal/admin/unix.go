//go:build !windows

package admin

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// listenUnix binds a unix socket at path with mode 0600.
func listenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket: remove it or choose another path", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another daemon is serving its admin API there", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	// The umask makes the socket 0600 from its creation, not after a
	// chmod that leaves a moment open; nothing else of the daemon makes
	// files while it starts.
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w (its directory must exist: the units make /run/tunneld and /run/tunnelc with RuntimeDirectory=)", err)
	}
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
