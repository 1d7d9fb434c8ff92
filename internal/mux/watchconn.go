package mux

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tunnel-dev/tunnel/internal/rawio"
)

// watchConn counts received bytes and, when a read fails with ETIMEDOUT,
// explains it from the last TCP_INFO sample.
type watchConn struct {
	net.Conn
	rx       atomic.Uint64
	first    atomic.Uint32 // the first byte read, | 1<<8 once there is one
	lastRead atomic.Int64  // unix nanos of the last read that returned bytes
	info     atomic.Pointer[tcpState]
	failed   atomic.Bool // a read or write on the socket has failed
	cause    atomic.Pointer[cause]
	ka       time.Duration // keepalive idle + interval*count, for the message
	ut       time.Duration
	// rw does the I/O: the socket through package rawio (no runtime
	// hand-off per call), or the conn itself when it is no socket.
	rw ioer

	// bound paces the session's bulk frames while the link is slow (see
	// queueBound).
	bound queueBound
}

// ioer is a socket's I/O.
type ioer interface {
	Read([]byte) (int, error)
	Write([]byte) (int, error)
	WriteBuffers([][]byte) (int64, error)
}

func watch(c net.Conn, o Options) *watchConn {
	w := &watchConn{Conn: c, ut: o.UserTimeout}
	if s, ok := rawio.New(c); ok {
		w.rw = s
	} else {
		w.rw = netIO{c}
	}
	if o.KeepAlive.Enabled() {
		w.ka = o.KeepAlive.Bound()
	}
	w.lastRead.Store(time.Now().UnixNano())
	return w
}

// SyscallConn exposes the socket, for socket options.
func (w *watchConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := w.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("not a socket")
	}
	return sc.SyscallConn()
}

// FirstByte is the first byte c received, if any: enough to tell a TLS
// ClientHello from a session's first frame.
func FirstByte(c net.Conn) (byte, bool) {
	w := findWatch(c)
	if w == nil {
		return 0, false
	}
	v := w.first.Load()
	return byte(v), v != 0
}

// TLSRecordHandshake is the first byte of every TLS ClientHello (the
// record type "handshake").
const TLSRecordHandshake = 0x16

// findWatch digs the watchConn out from under TLS.
func findWatch(c net.Conn) *watchConn {
	if tc, ok := c.(*tlsConn); ok {
		return tc.c.watchConn
	}
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	w, _ := c.(*watchConn)
	return w
}

func (w *watchConn) Read(p []byte) (int, error) {
	n, err := w.rw.Read(p)
	if n > 0 {
		if w.rx.Load() == 0 {
			w.first.Store(uint32(p[0]) | 1<<8)
		}
		w.rx.Add(uint64(n))
		w.lastRead.Store(time.Now().UnixNano())
	}
	w.noteFailure(err)
	return n, err
}

// Write notes a kernel timeout like Read does: with data in flight the
// sender's write is often the first call to see it.
func (w *watchConn) Write(p []byte) (int, error) {
	n, err := w.rw.Write(p)
	w.noteFailure(err)
	return n, err
}

// WriteBuffers writes several buffers with one writev; the patched yamux
// uses it to send a frame's header and body without copying them together.
func (w *watchConn) WriteBuffers(b net.Buffers) (int64, error) {
	n, err := w.rw.WriteBuffers(b)
	w.noteFailure(err)
	return n, err
}

// hold is yamux's Config.Hold: how long bulk frames wait before the send
// loop asks again (see queueBound).
func (w *watchConn) hold() time.Duration {
	rc, err := w.SyscallConn()
	if err != nil {
		return 0
	}
	var s tcpSample
	var ok bool
	if rc.Control(func(fd uintptr) { s, ok = readSample(fd) }) != nil || !ok {
		return 0
	}
	return w.bound.hold(time.Now(), s)
}

// netIO is the socket I/O of a conn that is not a socket (tests' pipes).
type netIO struct{ net.Conn }

func (c netIO) WriteBuffers(b [][]byte) (int64, error) {
	bufs := net.Buffers(b)
	return bufs.WriteTo(c.Conn)
}

// sample records the socket's TCP state; it runs on the monitor's tick.
func (w *watchConn) sample() {
	rc, err := w.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		if st, ok := readTCPState(fd); ok {
			w.info.Store(st)
		}
	})
}

// noteFailure records that the socket failed, and why the kernel gave up
// the first time a call fails with ETIMEDOUT.
func (w *watchConn) noteFailure(err error) {
	if err == nil {
		return
	}
	w.failed.Store(true)
	if errors.Is(err, syscall.ETIMEDOUT) && w.cause.Load() == nil {
		c := w.explainTimeout()
		w.cause.CompareAndSwap(nil, &c)
	}
}

// explainTimeout tells a retransmission timeout (TCP_USER_TIMEOUT: data
// in flight, keepalive suspended) from a keepalive timeout (idle, probes
// unanswered), from the socket's TCP_INFO: the monitor's last sample and
// one taken now, as the kernel may have cleared its books by the time the
// error surfaces. Data in flight is data unacknowledged or retransmitted,
// or a send window the peer has closed (its zero-window probes count as
// probes too, which without this read as keepalive's).
func (w *watchConn) explainTimeout() cause {
	quiet := time.Since(time.Unix(0, w.lastRead.Load())).Round(100 * time.Millisecond)
	last := w.info.Load()
	w.sample()
	inFlight, known := false, false
	for _, st := range []*tcpState{last, w.info.Load()} {
		if st != nil {
			known = true
			inFlight = inFlight || st.inFlight
		}
	}
	switch {
	case !known:
		return cause{KindTCPTimeout, fmt.Sprintf("tcp timeout after %s without a reply", quiet)}
	case inFlight:
		return cause{KindUserTimeout, fmt.Sprintf("user timeout: sent data unacknowledged, nothing received for %s (user_timeout %s)", quiet, w.ut)}
	case w.ka > 0:
		// Not "idle": streams may have been waiting for window, with
		// nothing of ours on the wire; TCP's books decide the label.
		return cause{KindKeepAliveTimeout, fmt.Sprintf("keepalive timeout: probes unanswered, nothing received for %s, nothing of ours unacknowledged (keepalive bound %s)", quiet, w.ka)}
	}
	return cause{KindTCPTimeout, fmt.Sprintf("tcp timeout after %s without a reply", quiet)}
}
