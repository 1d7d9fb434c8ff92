package mux

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/tunnel-dev/tunnel/internal/rawio"
	"golang.org/x/sys/unix"
)

// Session is a yamux session with the project's own heartbeat, which judges
// the peer by whether anything at all arrives rather than by how fast a
// ping is answered.
//
// yamux's keepalive sends its ping on the same queue as data and ends the
// session when one answer is later than ConnectionWriteTimeout. Under load
// the answer waits behind every queued frame on both ends: measured here
// (TestHeartbeatUnderLoad, 8 connections on an 8 Mbit/s link), yamux's
// 1 s/2 s keepalive killed a healthy session 2 s into the transfer. A
// saturated session receives data all the time, so "nothing received for
// interval + timeout" cannot be fooled by load, and still catches a frozen
// relay or a hung peer, which send nothing.
type Session struct {
	*yamux.Session
	conn  *watchConn
	o     Options
	cause atomic.Pointer[string]
	done  chan struct{}
}

// Client starts the yamux client side on c (from Dial). The session owns c.
func Client(c net.Conn, o Options) (*Session, error) {
	ys, err := yamux.Client(c, yamuxConfig(o))
	if err != nil {
		return nil, err
	}
	return newSession(ys, c, o), nil
}

// Server starts the yamux server side on c (from Listen and Handshake).
func Server(c net.Conn, o Options) (*Session, error) {
	ys, err := yamux.Server(c, yamuxConfig(o))
	if err != nil {
		return nil, err
	}
	return newSession(ys, c, o), nil
}

func newSession(ys *yamux.Session, c net.Conn, o Options) *Session {
	s := &Session{Session: ys, conn: findWatch(c), o: o, done: make(chan struct{})}
	go s.monitor()
	return s
}

// Done is closed when the session's monitor has stopped, after the session
// closed.
func (s *Session) Done() <-chan struct{} { return s.done }

// DefaultStreamWindow is the receive window of a stream. yamux's 256 KiB
// caps one stream near 4 Gbit/s on loopback here; 4 MiB roughly doubles
// that (docs/performance.md). Memory is only committed while a reader lags.
const DefaultStreamWindow = 4 << 20

func yamuxConfig(o Options) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = nil
	cfg.Logger = yamuxLogger{o.Logger}
	// Our monitor is the heartbeat; see Session.
	cfg.EnableKeepAlive = false
	// A stream write waits in yamux's send queue at most this long. On a
	// slow link megabytes queue legitimately, so this is only a backstop:
	// a dead session is closed by the monitor, which unblocks every write.
	cfg.ConnectionWriteTimeout = max(2*(o.HeartbeatInterval+o.HeartbeatTimeout), 2*time.Minute)
	cfg.IncomingStreamLimit = o.IncomingStreams
	cfg.MaxStreamWindowSize = DefaultStreamWindow
	if o.StreamWindow > 0 {
		cfg.MaxStreamWindowSize = max(o.StreamWindow, 256<<10) // yamux's minimum
	}
	return cfg
}

// monitor pings every HeartbeatInterval and closes the session when nothing
// has been received for HeartbeatInterval + HeartbeatTimeout. It also
// samples the socket's TCP state so a kernel timeout can be explained.
func (s *Session) monitor() {
	defer close(s.done)
	hb := s.o.HeartbeatInterval > 0
	tick := 250 * time.Millisecond // TCP_INFO sampling, for Cause
	if hb {
		tick = min(s.o.HeartbeatInterval, s.o.HeartbeatTimeout) / 4
		tick = min(max(tick, 10*time.Millisecond), 250*time.Millisecond)
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	pings := make(chan struct{}, 1)
	if hb {
		go s.pinger(pings)
	}
	var lastRx uint64
	lastSeen, lastPing := time.Now(), time.Now()
	for {
		select {
		case <-s.CloseChan():
			close(pings)
			return
		case now := <-t.C:
			if s.conn != nil {
				if rx := s.conn.rx.Load(); rx != lastRx {
					lastRx, lastSeen = rx, now
				}
				s.conn.sample()
			}
			if !hb {
				continue
			}
			if now.Sub(lastPing) >= s.o.HeartbeatInterval {
				lastPing = now
				select {
				case pings <- struct{}{}:
				default: // the last ping is still on its way
				}
			}
			if s.conn != nil && now.Sub(lastSeen) >= s.o.HeartbeatInterval+s.o.HeartbeatTimeout {
				c := fmt.Sprintf("heartbeat timeout: nothing received for %s (heartbeat every %s, timeout %s)",
					now.Sub(lastSeen).Round(100*time.Millisecond), s.o.HeartbeatInterval, s.o.HeartbeatTimeout)
				s.cause.CompareAndSwap(nil, &c)
				s.Session.Close()
			}
		}
	}
}

// pinger sends one ping per request. Its answer only has to arrive; the
// round trip time does not matter.
func (s *Session) pinger(reqs <-chan struct{}) {
	for range reqs {
		_, _ = s.Ping()
	}
}

// Cause explains why the session ended, given the error its accept loop
// returned: the heartbeat, a TCP timeout told apart by the socket's last
// state (keepalive probes unanswered, or data unacknowledged past
// TCP_USER_TIMEOUT), a reset or close by the peer, or a local close.
func (s *Session) Cause(err error) string {
	if c := s.cause.Load(); c != nil {
		return *c
	}
	if s.conn != nil {
		if c := s.conn.cause.Load(); c != nil {
			return *c
		}
	}
	return Cause(err)
}

// watchConn counts received bytes and, when a read fails with ETIMEDOUT,
// explains it from the last TCP_INFO sample.
type watchConn struct {
	net.Conn
	rx       atomic.Uint64
	first    atomic.Uint32 // the first byte read, | 1<<8 once there is one
	lastRead atomic.Int64  // unix nanos of the last read that returned bytes
	info     atomic.Pointer[unix.TCPInfo]
	cause    atomic.Pointer[string]
	ka       time.Duration // keepalive idle + interval*count, for the message
	ut       time.Duration
	// rw does the I/O: the socket through package rawio (no runtime
	// hand-off per call), or the conn itself when it is no socket.
	rw ioer
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
	w.noteTimeout(err)
	return n, err
}

// Write notes a kernel timeout like Read does: with data in flight the
// sender's write is often the first call to see it.
func (w *watchConn) Write(p []byte) (int, error) {
	n, err := w.rw.Write(p)
	w.noteTimeout(err)
	return n, err
}

// WriteBuffers writes several buffers with one writev; the patched yamux
// uses it to send a frame's header and body without copying them together.
func (w *watchConn) WriteBuffers(b net.Buffers) (int64, error) {
	n, err := w.rw.WriteBuffers(b)
	w.noteTimeout(err)
	return n, err
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
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			w.info.Store(info)
		}
	})
}

// noteTimeout records why the kernel gave up, the first time a call on the
// socket fails with ETIMEDOUT.
func (w *watchConn) noteTimeout(err error) {
	if err != nil && errors.Is(err, syscall.ETIMEDOUT) && w.cause.Load() == nil {
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
func (w *watchConn) explainTimeout() string {
	quiet := time.Since(time.Unix(0, w.lastRead.Load())).Round(100 * time.Millisecond)
	last := w.info.Load()
	w.sample()
	inFlight := false
	for _, info := range []*unix.TCPInfo{last, w.info.Load()} {
		if info == nil {
			continue
		}
		// Rcv_wnd is set on every kernel that reports Snd_wnd; an older
		// kernel's shorter struct leaves both zero.
		zeroWindow := info.Snd_wnd == 0 && info.Rcv_wnd != 0
		if info.Unacked > 0 || info.Retransmits > 0 || info.Backoff > 0 || zeroWindow {
			inFlight = true
		}
	}
	if inFlight {
		return fmt.Sprintf("user timeout: sent data unacknowledged, nothing received for %s (user_timeout %s)", quiet, w.ut)
	}
	if w.ka > 0 {
		// Not "idle": streams may have been waiting for window, with
		// nothing of ours on the wire; TCP's books decide the label.
		return fmt.Sprintf("keepalive timeout: probes unanswered, nothing received for %s, nothing of ours unacknowledged (keepalive bound %s)", quiet, w.ka)
	}
	return fmt.Sprintf("tcp timeout after %s without a reply", quiet)
}

// Cause explains a session error without the session's own knowledge.
func Cause(err error) string {
	switch {
	case err == nil:
		return "closed"
	case errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, os.ErrDeadlineExceeded):
		return "tcp timeout (keepalive or user_timeout)"
	case errors.Is(err, yamux.ErrSessionShutdown), errors.Is(err, net.ErrClosed):
		return "closed locally"
	case errors.Is(err, io.EOF):
		return "closed by peer"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset by peer"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "no route to host"
	}
	return err.Error()
}
