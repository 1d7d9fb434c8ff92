// Package proxy joins two connections and dials local services.
//
// Join copies both directions independently with correct half-close: EOF on
// one direction becomes CloseWrite on the other side's writer, and the pair
// is closed only when both directions are done — or at once, with a reset,
// when either side fails. It must not know about sessions or tunnels: a
// stream that can tell a dead session from a clean EOF does so through its
// own Read error.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/tunnel-dev/tunnel/internal/sockopt"
)

// BufSize is the copy buffer of one direction.
const BufSize = 32 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, BufSize); return &b }}

// Stats counts what Join moved.
type Stats struct {
	AToB, BToA int64
}

// Aborter is a conn that can be cut short so its peer sees an error rather
// than a clean end (a reset for TCP).
type Aborter interface{ Abort() error }

type closeWriter interface{ CloseWrite() error }

// Join copies between a and b until both directions have ended, then
// closes both. Join owns a and b: they are closed when it returns. The
// names label errors ("public -> stream: read: ...").
//
// A clean EOF from one side half-closes the other. Any other error aborts
// both sides (RST for TCP) so that nobody takes a truncated stream for a
// complete one, and Join returns the first error.
func Join(a net.Conn, aName string, b net.Conn, bName string) (Stats, error) {
	var st Stats
	errc := make(chan error, 2)
	go func() {
		n, err := copyHalf(b, a)
		st.AToB = n
		if err != nil {
			err = fmt.Errorf("%s -> %s: %w", aName, bName, err)
		}
		errc <- err
	}()
	go func() {
		n, err := copyHalf(a, b)
		st.BToA = n
		if err != nil {
			err = fmt.Errorf("%s -> %s: %w", bName, aName, err)
		}
		errc <- err
	}()
	var first error
	for range 2 {
		if err := <-errc; err != nil && first == nil {
			first = err
			// Unblock the other direction and tell both peers.
			abort(a)
			abort(b)
		}
	}
	if first == nil {
		a.Close()
		b.Close()
	}
	return st, first
}

// copyHalf copies src to dst until src ends. EOF half-closes dst.
func copyHalf(dst, src net.Conn) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var n int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if werr != nil {
				return n, fmt.Errorf("write: %w", werr)
			}
		}
		if rerr == io.EOF {
			return n, closeWrite(dst)
		}
		if rerr != nil {
			return n, fmt.Errorf("read: %w", rerr)
		}
	}
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(closeWriter); ok {
		if err := cw.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("close write: %w", err)
		}
		return nil
	}
	return c.Close()
}

func abort(c net.Conn) {
	if a, ok := c.(Aborter); ok {
		_ = a.Abort()
		return
	}
	_ = sockopt.Abort(c)
}

// DialLocal connects to a local service with the local leg's keepalive.
// The caller owns the conn.
func DialLocal(ctx context.Context, addr string, ka sockopt.KeepAlive, timeout time.Duration) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: timeout, KeepAliveConfig: ka.Config()}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// Cause names why a joined connection was aborted, for logs: which kind of
// failure ended it, in the words an operator searches for.
func Cause(err error) string {
	var se interface{ SessionLost() bool }
	switch {
	case err == nil:
		return "closed"
	case errors.As(err, &se) && se.SessionLost():
		return "session lost"
	case errors.Is(err, syscall.ETIMEDOUT):
		return "keepalive timeout: the peer vanished"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset by peer"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "peer unreachable"
	}
	return "error"
}
