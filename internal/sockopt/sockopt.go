// Package sockopt sets and reads the TCP liveness options of a socket:
// keepalive (idle, interval, count) and TCP_USER_TIMEOUT.
//
// It exists so that every leg of a tunnel (session, public, local) is
// configured by the same code, and so that tests and diagnostics can read the
// options back from the kernel rather than trusting a config struct. It must
// not dial, listen or hold connections.
package sockopt

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// KeepAlive is the TCP keepalive of one leg. A dead idle peer is noticed
// after Idle + Interval*Count. The zero value disables keepalive.
type KeepAlive struct {
	Idle     time.Duration
	Interval time.Duration
	Count    int
}

// Enabled reports whether k turns keepalive on.
func (k KeepAlive) Enabled() bool { return k.Idle > 0 && k.Interval > 0 && k.Count > 0 }

// Bound is the time after the last packet from the peer by which a dead
// idle path is noticed.
func (k KeepAlive) Bound() time.Duration { return k.Idle + k.Interval*time.Duration(k.Count) }

// Config converts k for net.Dialer, net.ListenConfig and
// (*net.TCPConn).SetKeepAliveConfig. A disabled k yields Enable=false with
// negative fields, which stops Go from applying its own 15 s defaults.
func (k KeepAlive) Config() net.KeepAliveConfig {
	if !k.Enabled() {
		return net.KeepAliveConfig{Enable: false, Idle: -1, Interval: -1, Count: -1}
	}
	return net.KeepAliveConfig{Enable: true, Idle: k.Idle, Interval: k.Interval, Count: k.Count}
}

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

// Options is what the kernel reports for a socket.
type Options struct {
	KeepAlive   bool
	Idle        time.Duration
	Interval    time.Duration
	Count       int
	UserTimeout time.Duration
	NoDelay     bool
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

// Abort closes c so that the peer gets a RST instead of a FIN. Used when a
// connection is cut short, so a peer never mistakes a truncated stream for a
// complete one.
func Abort(c net.Conn) error {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	return c.Close()
}
