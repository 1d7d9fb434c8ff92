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
	"sync/atomic"
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
	type result struct {
		st  Stats
		err error
	}
	ch := make(chan result, 1)
	Go(a, aName, b, bName, func(st Stats, err error) { ch <- result{st, err} })
	r := <-ch
	return r.st, r.err
}

// Go is Join in the background: it returns at once and calls done once,
// when both directions have ended and a and b are closed. A direction whose
// source can notify (a stream) parks while idle instead of holding a
// goroutine; the other runs on a fresh goroutine, so the caller's (often
// grown by handshake work) can end. An idle connection then costs one small
// goroutine per daemon.
func Go(a net.Conn, aName string, b net.Conn, bName string, done func(Stats, error)) {
	j := &joiner{a: a, b: b}
	ab := &half{j: j, dst: b, src: a, name: aName + " -> " + bName}
	ba := &half{j: j, dst: a, src: b, name: bName + " -> " + aName}
	var left atomic.Int32
	left.Store(2)
	finish := func() {
		if left.Add(-1) != 0 {
			return
		}
		if j.first == nil {
			a.Close()
			b.Close()
		}
		done(Stats{AToB: ab.n, BToA: ba.n}, j.first)
	}
	ab.finish, ba.finish = finish, finish
	ab.start()
	ba.start()
}

// ReadNotifier is a conn that can call back when it becomes readable, so a
// copy can wait for it without a goroutine.
type ReadNotifier interface {
	// NotifyReadable calls f once when a Read would not wait (at once if
	// so already); f must not block.
	NotifyReadable(f func())
	// Readable reports whether a Read would not wait.
	Readable() bool
}

type joiner struct {
	a, b  net.Conn
	once  sync.Once
	first error
}

// fail records the first error and aborts both sides, which unblocks the
// other direction and tells both peers.
func (j *joiner) fail(err error) {
	j.once.Do(func() {
		j.first = err
		abort(j.a)
		abort(j.b)
	})
}

// half is one direction of a join.
type half struct {
	j        *joiner
	dst, src net.Conn
	name     string
	n        int64
	eof      bool
	finish   func()
}

func (h *half) finished() bool { return h.eof }

// start runs the direction in the background: parked on its source's
// notification when it has one, else on a goroutine of its own.
func (h *half) start() {
	if rn, ok := h.src.(ReadNotifier); ok {
		rn.NotifyReadable(h.wake)
		return
	}
	go h.run()
}

func (h *half) wake() { go h.resume() }

// resume copies what the source has, then parks again; it runs on a fresh
// goroutine each time the source becomes readable.
func (h *half) resume() {
	rn := h.src.(ReadNotifier)
	for {
		if !rn.Readable() {
			rn.NotifyReadable(h.wake)
			return
		}
		drained, err := h.copyOnce()
		if err != nil || h.finished() {
			h.end(err)
			return
		}
		if drained {
			rn.NotifyReadable(h.wake)
			return
		}
	}
}

// run copies until the source ends, blocking while it is idle.
func (h *half) run() {
	n, err := copyHalf(h.dst, h.src)
	h.n += n
	h.end(err)
}

func (h *half) end(err error) {
	if err != nil {
		h.j.fail(fmt.Errorf("%s: %w", h.name, err))
	}
	h.finish()
}

// copyOnce does one read and its write. drained is true when the read
// took everything there was (less than a full buffer).
func (h *half) copyOnce() (drained bool, err error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	nr, rerr := h.src.Read(buf)
	if nr > 0 {
		nw, werr := h.dst.Write(buf[:nr])
		h.n += int64(nw)
		if werr != nil {
			return false, fmt.Errorf("write: %w", werr)
		}
	}
	if rerr == io.EOF {
		h.eof = true
		return false, closeWrite(h.dst)
	}
	if rerr != nil {
		return false, fmt.Errorf("read: %w", rerr)
	}
	return nr < len(buf), nil
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
