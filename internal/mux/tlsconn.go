package mux

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// tlsConn is a session's TLS conn whose writes reach the socket in one
// system call each. crypto/tls hands every record (at most 16 KiB) to the
// conn under it with its own Write, so one 256 KiB yamux frame cost 17
// socket writes, and on loopback each write runs the receiver's TCP stack
// too. tlsConn corks the conn under TLS for the length of a write: the
// records gather in a buffer and leave together.
//
// A write that times out midway does not break the conn, as it would a
// bare tls.Conn (whose records would be cut mid-way): the records TLS made
// are kept whole in the corker and what did not leave goes first on the
// next write. And a write deadline already past fails a write before TLS
// sees it, as net.Conn's contract asks.
type tlsConn struct {
	*tls.Conn
	c  *corker
	wd atomic.Int64 // write deadline, Unix nanoseconds, 0 for none

	mu      sync.Mutex // guards scratch: WriteBuffers may be called concurrently
	scratch []byte
}

func newTLSConn(tc *tls.Conn, c *corker) *tlsConn { return &tlsConn{Conn: tc, c: c} }

func (t *tlsConn) Write(p []byte) (int, error) {
	if expired(&t.wd) {
		return 0, errDeadline
	}
	t.c.cork()
	n, err := t.Conn.Write(p)
	if ferr := t.c.flush(); err == nil {
		err = ferr
	}
	return n, err
}

// SetDeadline and SetWriteDeadline note the write deadline for Write.
func (t *tlsConn) SetDeadline(d time.Time) error {
	t.wd.Store(unixNano(d))
	return t.Conn.SetDeadline(d)
}

func (t *tlsConn) SetWriteDeadline(d time.Time) error {
	t.wd.Store(unixNano(d))
	return t.Conn.SetWriteDeadline(d)
}

// Close closes the socket, then TLS. tls.Conn.Close would first send
// close_notify under a 5 s write deadline, and a corked write's flush can
// be blocked on the socket with TLS's own write already returned, so TLS
// would not know to skip it: closing a session whose path died (which is
// when sessions get closed) would stall for 5 s. The peer reads EOF at a
// record boundary either way, and yamux says goodbye in its own frames.
func (t *tlsConn) Close() error {
	err := t.c.watchConn.Close()
	_ = t.Conn.Close() // its close_notify fails at once on the closed socket
	return err
}

// smallFrame is the size up to which WriteBuffers joins a frame's header
// and body into one record; larger bodies go as records of their own
// after a small header record, which costs less than copying them.
const smallFrame = 16 << 10

// WriteBuffers writes a yamux frame (header, body) as the records of one
// corked write.
func (t *tlsConn) WriteBuffers(b net.Buffers) (int64, error) {
	total := 0
	for _, p := range b {
		total += len(p)
	}
	if total <= smallFrame {
		t.mu.Lock()
		defer t.mu.Unlock()
		t.scratch = t.scratch[:0]
		for _, p := range b {
			t.scratch = append(t.scratch, p...)
		}
		n, err := t.Write(t.scratch)
		return int64(n), err
	}
	if expired(&t.wd) {
		return 0, errDeadline
	}
	t.c.cork()
	var n int64
	var err error
	for _, p := range b {
		k, werr := t.Conn.Write(p)
		n += int64(k)
		if werr != nil {
			err = werr
			break
		}
	}
	if ferr := t.c.flush(); err == nil {
		err = ferr
	}
	return n, err
}

// corker sits between crypto/tls and the session's watchConn and, while
// corked, keeps what TLS writes instead of writing it. Every write to the
// socket goes through its lock, so records written by TLS itself (alerts,
// key updates from the read side) keep their order with the corked ones.
type corker struct {
	*watchConn
	mu     sync.Mutex
	corked bool
	// pend is what gathered; its buffer goes back to pendPool whenever
	// it has all been written, so a quiet session holds none (it grows
	// to the largest write, up to maxPend, and a thousand sessions that
	// once moved bulk data kept theirs).
	pend []byte
	box  *[]byte // what pend's buffer travels in to and from the pool
}

var pendPool sync.Pool

// gather appends p to what is pending, taking a buffer from the pool when
// none is held. The caller holds mu.
func (c *corker) gather(p []byte) {
	if c.box == nil {
		c.box, _ = pendPool.Get().(*[]byte)
		if c.box == nil {
			c.box = new([]byte)
		}
		c.pend = (*c.box)[:0]
	}
	c.pend = append(c.pend, p...)
}

// maxPend bounds what a cork gathers: a larger write goes out in pieces
// of about this size (yamux writes at most 256 KiB at a time, so this
// only guards against other callers).
const maxPend = 1 << 20

func (c *corker) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		// Records of a write that another write's flush uncorked, or
		// TLS's own (an alert, a key update): after whatever a failed
		// flush left. A timeout keeps the record pending instead of
		// failing TLS's write, which would break the conn for good; the
		// flush that follows every Write reports it.
		all := len(p)
		if err := c.sendLocked(); err == nil {
			n, err := c.watchConn.Write(p)
			if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
				return n, err
			}
			p = p[n:]
		} else if !errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, err
		}
		c.gather(p)
		return all, nil
	}
	if len(c.pend) > 0 && len(c.pend)+len(p) > maxPend {
		// If this fails, the rest stays pending and the flush says so;
		// failing TLS's write here would break the conn for good.
		_ = c.sendLocked()
	}
	c.gather(p)
	return len(p), nil
}

func (c *corker) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// flush uncorks and writes what gathered, in one write. What a failed
// write left stays pending, whole records behind it, for the next write.
func (c *corker) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	return c.sendLocked()
}

func (c *corker) sendLocked() error {
	if len(c.pend) == 0 {
		return nil
	}
	n, err := c.watchConn.Write(c.pend)
	c.pend = c.pend[:copy(c.pend, c.pend[n:])]
	if len(c.pend) == 0 && c.box != nil {
		*c.box = c.pend
		pendPool.Put(c.box)
		c.box, c.pend = nil, nil
	}
	return err
}

// PeerCertificates is the certificate chain the peer of a TLS session
// conn presented, leaf first, as sent: nil without TLS or when it sent
// none. The caller verifies it.
func PeerCertificates(c net.Conn) []*x509.Certificate {
	switch c := c.(type) {
	case *tlsConn:
		return c.ConnectionState().PeerCertificates
	case *tls.Conn:
		return c.ConnectionState().PeerCertificates
	}
	return nil
}
