// Package rawio reads and writes sockets with raw system calls, for the
// data path's hot sockets.
//
// Go's own socket calls go through syscall.Syscall, which tells the
// scheduler the thread may block: when a call runs past sysmon's tick
// (20 µs to 10 ms), sysmon hands the thread's P to another thread, waking
// one. A write on loopback runs the receiver's TCP stack inline and often
// takes that long, so on a busy tunnel the runtime wakes and parks threads
// all the time (docs/performance.md has the profile). Sockets from
// package net are non-blocking, so a
// read or write returns at once with data or EAGAIN and never needs the
// hand-off; RawSyscall skips it.
//
// Waiting stays with the runtime's poller: Socket parks on EAGAIN through
// syscall.RawConn, so deadlines and Close behave as on a net.Conn.
//
// Nothing here may be used on a blocking file descriptor.
//
// The kernel reads and writes these buffers behind the race detector's
// back: -race sees the Go code hand a buffer to a system call, not the
// kernel's access to it, so a buffer reused while a call still holds it
// would go unseen. Every call here returns before its buffer is handed
// back (reads in the poller's callback, with the buffer taken for that
// one read).
//
// Only Linux takes this path. Elsewhere New reports false and callers use
// package net; tunnelc must build and run on laptops.
package rawio

import (
	"io"
	"net"
	"sync"
	"syscall"
)

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
	// ReadPooled's: its callback, the pool it takes a buffer from for
	// each read, and the buffer it took.
	pfn  func(fd uintptr) bool
	pool *sync.Pool
	bp   *[]byte
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

// ReadPooled waits until the socket has data and reads it into a buffer
// from pool (which holds *[]byte), taken only once data is there: a
// connection waiting for data holds no buffer. The caller puts the
// buffer back; it is nil when there was nothing to read into it (EOF, an
// error). Like Read, it returns io.EOF at end of stream.
func (s *Socket) ReadPooled(pool *sync.Pool) (*[]byte, int, error) {
	o := &s.r
	o.mu.Lock()
	defer o.mu.Unlock()
	o.pool, o.bp, o.n, o.err = pool, nil, 0, nil
	err := s.rc.Read(o.pfn)
	bp, n, rerr := o.bp, int(o.n), o.err
	o.pool, o.bp, o.err = nil, nil, nil
	if bp != nil && (err != nil || rerr != nil || n == 0) {
		pool.Put(bp)
		bp = nil
	}
	switch {
	case err != nil:
		return nil, 0, err
	case rerr != nil:
		return nil, 0, s.opError("read", rerr)
	case n == 0:
		return nil, 0, io.EOF
	}
	return bp, n, nil
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
