// Package rawio reads and writes sockets with raw system calls, for the
// data path's hot sockets.
//
// Go's own socket calls go through syscall.Syscall, which tells the
// scheduler the thread may block: when a call runs past sysmon's tick
// (20 µs to 10 ms), sysmon hands the thread's P to another thread, waking
// one. A write on loopback runs the receiver's TCP stack inline and often
// takes that long, so on a busy tunnel the runtime wakes and parks threads
// all the time: perf showed context switches and sysmon's own wake-ups at
// about a fifth of the daemons' CPU under 32-connection echo load (see
// docs/performance.md). Sockets from package net are non-blocking, so a
// read or write returns at once with data or EAGAIN and never needs the
// hand-off; RawSyscall skips it.
//
// Waiting stays with the runtime's poller: Socket parks on EAGAIN through
// syscall.RawConn, so deadlines and Close behave as on a net.Conn.
//
// Nothing here may be used on a blocking file descriptor.
package rawio

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Read is read(2) on a non-blocking descriptor. Like the calls below it
// retries EINTR itself, so a caller only tells EAGAIN from other errors.
func Read(fd int, p []byte) (int, error) { return rw(unix.SYS_READ, fd, p) }

// Write is write(2) on a non-blocking descriptor.
func Write(fd int, p []byte) (int, error) { return rw(unix.SYS_WRITE, fd, p) }

func rw(trap uintptr, fd int, p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return syscall3(trap, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
}

// syscall3 makes a raw system call, again while it is interrupted.
func syscall3(trap, a1, a2, a3 uintptr) (int, error) {
	for {
		n, _, e := unix.RawSyscall(trap, a1, a2, a3)
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		}
		return 0, e
	}
}

// maxIov bounds one writev; Linux's limit (UIO_MAXIOV) is 1024.
const maxIov = 64

// Writev is writev(2) on a non-blocking descriptor, of at most maxIov of
// bufs' non-empty buffers.
func Writev(fd int, bufs [][]byte) (int, error) {
	var iov [maxIov]unix.Iovec
	k := 0
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		if k == maxIov {
			break
		}
		iov[k].Base = &b[0]
		iov[k].SetLen(len(b))
		k++
	}
	if k == 0 {
		return 0, nil
	}
	return syscall3(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(k))
}

// Socket does blocking-style reads and writes on a socket from package
// net with raw calls, waiting in the runtime's poller when the socket is
// not ready. Reads are serialized with reads and writes with writes, as on
// a net.Conn; each kind keeps its call's state in the Socket so that a
// call allocates nothing.
type Socket struct {
	rc            syscall.RawConn
	r             op
	w             op
	local, remote net.Addr // for errors shaped as package net's
}

// op is the state of the read or the write in progress, for the callback
// that RawConn runs (built once, in New: a closure per call would escape
// and cost allocations on every message).
type op struct {
	mu   sync.Mutex
	fn   func(fd uintptr) bool
	p    []byte   // a read's buffer, or a Write's data
	bufs [][]byte // a WriteBuffers' data, when p is nil
	n    int64
	err  error
	// noWait makes a write return at a full socket buffer (TryWrite).
	noWait bool
}

// New returns c's Socket, or false when c is not a socket.
func New(c net.Conn) (*Socket, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, false
	}
	s := &Socket{rc: rc, local: c.LocalAddr(), remote: c.RemoteAddr()}
	s.r.fn = s.r.read
	s.w.fn = s.w.write
	return s, true
}

// Read reads what is there, waiting for data when there is none. Like
// net.Conn, it returns io.EOF itself at end of stream.
func (s *Socket) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	o := &s.r
	o.mu.Lock()
	defer o.mu.Unlock()
	o.p, o.n, o.err = p, 0, nil
	err := s.rc.Read(o.fn)
	n, rerr := int(o.n), o.err
	o.p, o.err = nil, nil
	switch {
	case err != nil:
		return 0, err
	case rerr != nil:
		return 0, s.opError("read", rerr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// opError dresses a system call's error as package net would (*net.OpError
// around *os.SyscallError), so that callers and logs cannot tell the two
// paths apart. The poller's own errors (deadline, closed) come already
// dressed by RawConn.
func (s *Socket) opError(op string, err error) error {
	network := "tcp"
	if s.local != nil {
		network = s.local.Network()
	}
	return &net.OpError{Op: op, Net: network, Source: s.local, Addr: s.remote, Err: err}
}

func (o *op) read(fd uintptr) bool {
	k, e := Read(int(fd), o.p)
	switch e {
	case nil:
		o.n = int64(k)
	case unix.EAGAIN:
		return false
	default:
		o.err = os.NewSyscallError("read", e)
	}
	return true
}

// Write writes all of p, waiting for room when the socket buffer is full.
func (s *Socket) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, err := s.write(p, nil, false)
	return int(n), err
}

// TryWrite writes what of p fits in the socket buffer now and never waits:
// it returns how much it wrote (possibly 0), with an error only when the
// socket failed.
func (s *Socket) TryWrite(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, err := s.write(p, nil, true)
	return int(n), err
}

// WriteBuffers writes all of bufs with as few writev calls as they fit,
// waiting for room when the socket buffer is full. It consumes bufs the
// way net.Buffers.WriteTo does.
func (s *Socket) WriteBuffers(bufs [][]byte) (int64, error) {
	return s.write(nil, bufs, false)
}

func (s *Socket) write(p []byte, bufs [][]byte, noWait bool) (int64, error) {
	o := &s.w
	o.mu.Lock()
	defer o.mu.Unlock()
	o.p, o.bufs, o.n, o.err, o.noWait = p, bufs, 0, nil, noWait
	err := s.rc.Write(o.fn)
	n, werr := o.n, o.err
	o.p, o.bufs, o.err = nil, nil, nil
	if werr != nil {
		return n, s.opError("write", werr)
	}
	return n, err
}

func (o *op) write(fd uintptr) bool {
	for len(o.p) > 0 || len(o.bufs) > 0 {
		var k int
		var e error
		if o.p != nil {
			k, e = Write(int(fd), o.p)
		} else {
			k, e = Writev(int(fd), o.bufs)
		}
		switch e {
		case nil:
		case unix.EAGAIN:
			return o.noWait // a TryWrite ends here; the others wait for room
		default:
			o.err = os.NewSyscallError("write", e)
			return true
		}
		o.n += int64(k)
		if o.p != nil {
			o.p = o.p[k:]
			if len(o.p) == 0 {
				return true
			}
		} else {
			o.bufs = consume(o.bufs, k)
		}
		if k == 0 && (len(o.p) > 0 || len(o.bufs) > 0) {
			o.err = io.ErrShortWrite // the call wrote nothing and said nothing
			return true
		}
	}
	return true
}

// consume drops the first n bytes from bufs.
func consume(bufs [][]byte, n int) [][]byte {
	for len(bufs) > 0 {
		if len(bufs[0]) > n {
			bufs[0] = bufs[0][n:]
			return bufs
		}
		n -= len(bufs[0])
		bufs = bufs[1:]
	}
	return bufs
}
