// Package sockopt sets and reads the TCP liveness options of a socket:
// keepalive (idle, interval, count) and TCP_USER_TIMEOUT.
//
// It exists so that every leg of a tunnel (session, public, local) is
// configured by the same code, and so that tests and diagnostics can read the
// options back from the kernel rather than trusting a config struct. It must
// not dial, listen or hold connections.
//
// Keepalive works everywhere (package net sets it). TCP_USER_TIMEOUT and
// reading the options back are Linux's: elsewhere SetUserTimeout reports
// errors.ErrUnsupported for a non-zero timeout and Read reports it always.
package sockopt

import (
	"net"
	"time"
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

// Options is what the kernel reports for a socket.
type Options struct {
	KeepAlive   bool
	Idle        time.Duration
	Interval    time.Duration
	Count       int
	UserTimeout time.Duration
	NoDelay     bool
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
