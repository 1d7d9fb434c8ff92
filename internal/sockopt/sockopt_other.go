//go:build !linux

package sockopt

import (
	"errors"
	"fmt"
	"syscall"
	"time"
)

// SetUserTimeout reports errors.ErrUnsupported for a non-zero timeout:
// TCP_USER_TIMEOUT is Linux's. Callers fall back on their heartbeat.
func SetUserTimeout(c syscall.Conn, d time.Duration) error {
	if d == 0 {
		return nil
	}
	return fmt.Errorf("set TCP_USER_TIMEOUT: %w", errors.ErrUnsupported)
}

// Read reports errors.ErrUnsupported: reading the options back is
// implemented for Linux only.
func Read(c syscall.Conn) (Options, error) {
	return Options{}, fmt.Errorf("getsockopt: %w", errors.ErrUnsupported)
}

// SetNotSentLowat reports errors.ErrUnsupported: it is set on Linux only.
func SetNotSentLowat(c syscall.Conn, n int) error {
	return fmt.Errorf("set TCP_NOTSENT_LOWAT: %w", errors.ErrUnsupported)
}
