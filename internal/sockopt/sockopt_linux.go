//go:build linux

package sockopt

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SetUserTimeout sets TCP_USER_TIMEOUT: how long transmitted data may stay
// unacknowledged (or a zero window unopened) before the kernel aborts the
// connection. Zero restores the kernel default.
func SetUserTimeout(c syscall.Conn, d time.Duration) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("set TCP_USER_TIMEOUT: %w", err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d.Milliseconds()))
	})
	if err = errors.Join(err, serr); err != nil {
		return fmt.Errorf("set TCP_USER_TIMEOUT: %w", err)
	}
	return nil
}

// Read asks the kernel for the liveness options of c's socket.
func Read(c syscall.Conn) (Options, error) {
	var o Options
	rc, err := c.SyscallConn()
	if err != nil {
		return o, err
	}
	var errs []error
	get := func(fd, level, opt int) int {
		v, err := unix.GetsockoptInt(fd, level, opt)
		errs = append(errs, err)
		return v
	}
	err = rc.Control(func(fd uintptr) {
		f := int(fd)
		o.KeepAlive = get(f, unix.SOL_SOCKET, unix.SO_KEEPALIVE) != 0
		o.Idle = time.Duration(get(f, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)) * time.Second
		o.Interval = time.Duration(get(f, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)) * time.Second
		o.Count = get(f, unix.IPPROTO_TCP, unix.TCP_KEEPCNT)
		o.UserTimeout = time.Duration(get(f, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)) * time.Millisecond
		o.NoDelay = get(f, unix.IPPROTO_TCP, unix.TCP_NODELAY) != 0
	})
	if err = errors.Join(append(errs, err)...); err != nil {
		return o, fmt.Errorf("getsockopt: %w", err)
	}
	return o, nil
}

// SetNotSentLowat sets TCP_NOTSENT_LOWAT: a write waits while more than n
// bytes sit in the socket not yet sent, instead of filling the whole send
// buffer. Data already handed to the kernel cannot be reordered; keeping
// that queue short lets a sender decide late what goes next.
func SetNotSentLowat(c syscall.Conn, n int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("set TCP_NOTSENT_LOWAT: %w", err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, n)
	})
	if err = errors.Join(err, serr); err != nil {
		return fmt.Errorf("set TCP_NOTSENT_LOWAT: %w", err)
	}
	return nil
}
