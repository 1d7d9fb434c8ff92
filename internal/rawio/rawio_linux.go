//go:build linux

package rawio

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

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
	s.r.pfn = s.r.readPooled
	s.w.fn = s.w.write
	return s, true
}

// read is read(2) on a non-blocking descriptor. Like the calls below it
// retries EINTR itself, so a caller only tells EAGAIN from other errors.
func read(fd int, p []byte) (int, error) { return rw(unix.SYS_READ, fd, p) }

// write is write(2) on a non-blocking descriptor.
func write(fd int, p []byte) (int, error) { return rw(unix.SYS_WRITE, fd, p) }

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

// writev is writev(2) on a non-blocking descriptor, of at most maxIov of
// bufs' non-empty buffers.
func writev(fd int, bufs [][]byte) (int, error) {
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

// readPooled is read with a buffer from o.pool, given back when the
// socket has nothing yet.
func (o *op) readPooled(fd uintptr) bool {
	o.bp = o.pool.Get().(*[]byte)
	k, e := read(int(fd), *o.bp)
	switch e {
	case nil:
		o.n = int64(k)
	case unix.EAGAIN:
		o.pool.Put(o.bp)
		o.bp = nil
		return false
	default:
		o.err = os.NewSyscallError("read", e)
	}
	return true
}

func (o *op) read(fd uintptr) bool {
	k, e := read(int(fd), o.p)
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

func (o *op) write(fd uintptr) bool {
	for len(o.p) > 0 || len(o.bufs) > 0 {
		var k int
		var e error
		if o.p != nil {
			k, e = write(int(fd), o.p)
		} else {
			k, e = writev(int(fd), o.bufs)
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
