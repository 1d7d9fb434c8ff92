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
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tunnel-dev/tunnel/internal/sockopt"
)

// BufSize is the copy buffer of one direction.
const BufSize = 256 << 10

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
	var once sync.Once
	var first error
	fail := func(err error) {
		once.Do(func() {
			first = err
			// Unblock the other direction and tell both peers.
			abort(a)
			abort(b)
		})
	}
	// One direction runs on the caller's goroutine: an idle connection
	// then costs one goroutine less per process.
	done := make(chan struct{})
	go func() {
		defer close(done)
		n, err := copyHalf(a, b)
		st.BToA = n
		if err != nil {
			fail(fmt.Errorf("%s -> %s: %w", bName, aName, err))
		}
	}()
	n, err := copyHalf(b, a)
	st.AToB = n
	if err != nil {
		fail(fmt.Errorf("%s -> %s: %w", aName, bName, err))
	}
	<-done
	if first == nil {
		a.Close()
		b.Close()
	}
	return st, first
}

// copyHalf copies src to dst until src ends. EOF half-closes dst.
//
// A buffer is held only while data flows: when a read drains src (returns
// less than a full buffer) the buffer goes back to the pool, and the next
// wait for data holds none. So an idle connection costs no buffer, and a
// busy one copies in BufSize chunks (measured: 256 KiB chunks moved twice
// the bytes per CPU second of 32 KiB ones; docs/performance.md).
func copyHalf(dst, src net.Conn) (int64, error) {
	wait := readWaiter(src)
	var bp *[]byte
	defer func() {
		if bp != nil {
			bufPool.Put(bp)
		}
	}()
	var n int64
	for {
		if bp == nil {
			if err := wait(); err == io.EOF {
				return n, closeWrite(dst)
			} else if err != nil {
				return n, fmt.Errorf("read: %w", err)
			}
			bp = bufPool.Get().(*[]byte)
		}
		buf := *bp
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
		if nr < len(buf) {
			bufPool.Put(bp)
			bp = nil
		}
	}
}

// ReadWaiter is a conn that can wait for data without a buffer.
type ReadWaiter interface{ WaitReadable() error }

// readWaiter returns how to wait until c has data (or an error) to read.
func readWaiter(c net.Conn) func() error {
	if w, ok := c.(ReadWaiter); ok {
		return w.WaitReadable
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return func() error { return nil }
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return func() error { return nil }
	}
	return func() error {
		// RawConn.Read parks on the poller while f returns false. It
		// resets the poller's readiness first, so f must look for data
		// itself: a peek that would block means "wait". A peek that fails
		// consumes the socket's error (a reset), so it is returned here.
		var perr error
		err := rc.Read(func(fd uintptr) bool {
			switch errno := peek(fd); errno {
			case unix.EAGAIN:
				return false
			case 0:
			default:
				perr = errno
			}
			return true
		})
		if perr != nil {
			return perr
		}
		return err
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

// peek looks at one byte without taking it and returns the errno: EAGAIN
// when fd has nothing to read yet, 0 for data or EOF.
func peek(fd uintptr) unix.Errno {
	var b [1]byte
	_, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
		unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	return errno
}
