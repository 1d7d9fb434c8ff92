package mux

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// Session is a yamux session with the project's own heartbeat, which judges
// the peer by whether anything at all arrives rather than by how fast a
// ping is answered.
//
// yamux's keepalive sends its ping on the same queue as data and ends the
// session when one answer is later than ConnectionWriteTimeout. Under load
// the answer waits behind every queued frame on both ends, so on a slow
// saturated link it kills healthy sessions (internal/fault's
// TestHeartbeatUnderLoad runs that case). A
// saturated session receives data all the time, so "nothing received for
// interval + timeout" cannot be fooled by load, and still catches a frozen
// relay or a hung peer, which send nothing.
type Session struct {
	ys    *yamux.Session
	ysp   atomic.Pointer[yamux.Session] // ys, for the logger, which may run before ys is set
	conn  *watchConn
	o     Options
	cause atomic.Pointer[cause]
	done  chan struct{}

	mon     sync.Mutex // held while the monitor runs; guards what follows
	monT    *time.Timer
	stopped bool
	start   time.Time
	every   time.Duration // TCP_INFO sampling period
	// lastPing is when the monitor last pinged, nextSample when it
	// samples the socket next.
	lastPing, nextSample time.Time
	// quietPing is how long nothing must have arrived before this end
	// pings: the heartbeat interval on the client, two grid slots more
	// on the server (see serverPingDelay).
	quietPing time.Duration
}

// Client starts the client side of a session on c (from Dial). The
// session owns c.
func Client(c net.Conn, o Options) (*Session, error) {
	return start(yamux.Client, c, o, o.HeartbeatInterval)
}

// Server starts the server side of a session on c (from Listen and
// Handshake). The session owns c.
func Server(c net.Conn, o Options) (*Session, error) {
	return start(yamux.Server, c, o, o.HeartbeatInterval+serverPingDelay(o))
}

// serverPingDelay is how much longer than the client the server lets a
// session be quiet before it pings. With both ends' monitors on grids
// (see monitorGrid), both would often find the session quiet in the
// same slot and each ping: two pings and two answers per interval
// instead of one of each. The server waiting two slots more lets the
// client's ping arrive first, so an idle server only answers; it pings
// itself when the client has gone quiet, early enough to hear an answer
// before its timeout.
func serverPingDelay(o Options) time.Duration {
	return min(2*monitorGrid(o), o.HeartbeatTimeout/2)
}

func start(side func(io.ReadWriteCloser, *yamux.Config) (*yamux.Session, error), c net.Conn, o Options, quietPing time.Duration) (*Session, error) {
	s := &Session{conn: findWatch(c), o: o, done: make(chan struct{}), quietPing: quietPing}
	cfg := yamuxConfig(o, s)
	switch c.(type) {
	case *tlsConn, *tls.Conn:
		// TLS holds a whole record already; yamux's 4 KiB read buffer
		// on top would be a second copy kept per session.
		cfg.ReadBufferSize = -1
	}
	cfg.SlowLink = slowLink(c)
	if cfg.SlowLink != nil {
		cfg.Hold = s.conn.hold
	}
	ys, err := side(c, cfg)
	if err != nil {
		return nil, err
	}
	s.ys = ys
	s.ysp.Store(ys)
	s.startMonitor()
	return s, nil
}

// Open opens a stream; the peer's Accept returns it once this end writes.
func (s *Session) Open() (*Stream, error) {
	st, err := s.ys.OpenStream()
	if err != nil {
		return nil, sessionError(err)
	}
	return newStream(st), nil
}

// OpenWith opens a stream whose first bytes are first: they travel in the
// frame that announces the stream, so the peer's Accept returns with them
// already there, however busy the session is with other streams.
func (s *Session) OpenWith(first []byte) (*Stream, error) {
	st, err := s.ys.OpenStreamWith(first)
	if err != nil {
		return nil, sessionError(err)
	}
	return newStream(st), nil
}

// Accept waits for the peer's next stream. Its error, once the session
// has ended, is why it ended (see Cause).
func (s *Session) Accept() (*Stream, error) {
	st, err := s.ys.AcceptStream()
	if err != nil {
		return nil, sessionError(err)
	}
	return newStream(st), nil
}

// AcceptContext is Accept, given up when ctx ends.
func (s *Session) AcceptContext(ctx context.Context) (*Stream, error) {
	st, err := s.ys.AcceptStreamWithContext(ctx)
	if err != nil {
		return nil, sessionError(err)
	}
	return newStream(st), nil
}

// sessionError is a session call's error without yamux's types: a
// session closed here is net.ErrClosed, as a closed listener's Accept.
func sessionError(err error) error {
	if errors.Is(err, yamux.ErrSessionShutdown) {
		return net.ErrClosed
	}
	return err
}

// Close closes the session and stops its monitor (waiting for a run of
// it in progress) and, through the fork's Close, waits for every goroutine
// of the yamux session: when it returns, nothing of the session runs on.
// It must not be called from a stream's read hook or deliver function.
func (s *Session) Close() error {
	err := s.ys.Close()
	s.stopMonitor()
	return err
}

// Closed is closed as soon as the session is closing, from either end or
// for any reason; Done follows once its goroutines have stopped.
func (s *Session) Closed() <-chan struct{} { return s.ys.CloseChan() }

// IsClosed reports whether the session is closing or closed.
func (s *Session) IsClosed() bool { return s.ys.IsClosed() }

// failing reports whether the session's socket has failed or the session
// is closing.
func (s *Session) failing() bool {
	if s.conn != nil && s.conn.failed.Load() {
		return true
	}
	ys := s.ysp.Load()
	return ys != nil && ys.IsClosed()
}

// Done is closed when the session's monitor has stopped, after the session
// closed: at Close, or at the monitor's next run after the session closed
// on its own.
func (s *Session) Done() <-chan struct{} { return s.done }

// DefaultStreamWindow is the receive window of a stream. With yamux's
// 256 KiB one stream's sender stalls on window updates even on loopback;
// docs/performance.md has the measurements behind 4 MiB. Memory is only
// committed while a reader lags.
const DefaultStreamWindow = 4 << 20

// DefaultStreamWindowCap is how far a stream's window may grow when the
// session measures a bandwidth-delay product above what DefaultStreamWindow
// carries per round trip (4 MiB is 168 Mbit/s at 200 ms; 16 MiB, 670).
// DefaultWindowBudget bounds a grown window times the streams open: what
// one session may hold for slow readers beyond the default windows. A
// reader that does not read holds at most its window.
const (
	DefaultStreamWindowCap = 16 << 20
	DefaultWindowBudget    = 64 << 20
)

func yamuxConfig(o Options, s *Session) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = nil
	cfg.Logger = yamuxLogger{l: o.Logger, s: s}
	cfg.DeliverBufferSize = o.DeliverBuffer
	// Accept queues a stream's ACK and returns: the goroutine accepting
	// every new stream must not wait a write slot on a busy link for each.
	cfg.QueueAcceptAck = true
	// Our monitor is the heartbeat; see Session.
	cfg.EnableKeepAlive = false
	// A stream write waits in yamux's send queue at most this long. On a
	// slow link megabytes queue legitimately, so this is only a backstop:
	// a dead session is closed by the monitor, which unblocks every write.
	cfg.ConnectionWriteTimeout = max(2*(o.HeartbeatInterval+o.HeartbeatTimeout), 2*time.Minute)
	cfg.IncomingStreamLimit = o.IncomingStreams
	// AcceptBacklog stays yamux's 256 on a server that accepts a single
	// stream: it also bounds the streams this end has opened and the peer
	// not yet acknowledged (a server's public connections).
	cfg.MaxStreamWindowSize = DefaultStreamWindow
	if o.StreamWindow > 0 {
		cfg.MaxStreamWindowSize = max(o.StreamWindow, 256<<10) // yamux's minimum
	}
	// Auto-tuning: windows grow with the measured bandwidth-delay product
	// (the fork's BDP estimator) up to the cap, within the budget.
	cfg.StreamWindowCap = DefaultStreamWindowCap
	if o.StreamWindowCap > 0 {
		cfg.StreamWindowCap = o.StreamWindowCap
	}
	cfg.WindowBudget = DefaultWindowBudget
	if o.WindowBudget > 0 {
		cfg.WindowBudget = o.WindowBudget
	}
	return cfg
}

// The monitor closes the session when nothing at all has been received
// for HeartbeatInterval + HeartbeatTimeout, and pings the peer when
// nothing has been received for HeartbeatInterval: a session that hears
// from its peer (data, or the peer's own pings) has nothing to ask, so an
// idle session costs one ping and its answer per interval, not two. It
// also samples the socket's TCP state so that a kernel timeout can be
// explained. It is a timer, not a goroutine: it runs when the next of
// these is due, so a thousand idle sessions on one server cost a few
// wakeups a second and no parked stack each.
func (s *Session) startMonitor() {
	s.mon.Lock()
	defer s.mon.Unlock()
	s.start = time.Now()
	s.every = sampleEvery(s.o)
	s.lastPing, s.nextSample = s.start, s.start.Add(s.every)
	first := s.every
	if s.o.HeartbeatInterval > 0 {
		first = min(first, s.o.HeartbeatInterval)
	}
	s.monT = time.AfterFunc(onGrid(s.start, s.start.Add(first), monitorGrid(s.o)), s.monitor)
}

// monitorGrid is the slot to which a monitor's runs are rounded up: the
// monitors of all sessions with the same heartbeat then fire together, so
// a thousand idle sessions wake the process a few times a second instead
// of a few hundred (each wakeup is a context switch, most of an idle
// server's CPU). A twentieth of the heartbeat interval, at most 250 ms
// (the default 10 s heartbeat is then late by at most 2.5 %).
func monitorGrid(o Options) time.Duration {
	g := 250 * time.Millisecond
	if hb := o.HeartbeatInterval; hb > 0 {
		g = min(g, hb/20)
	}
	return max(g, time.Millisecond)
}

// gridEpoch is where every monitor's grid starts.
var gridEpoch = time.Now()

// onGrid is how long from now until t rounded up to the grid.
func onGrid(now, t time.Time, grid time.Duration) time.Duration {
	d := t.Sub(gridEpoch)
	d = (d + grid - 1) / grid * grid
	return max(gridEpoch.Add(d).Sub(now), time.Millisecond)
}

// stopMonitor stops the monitor, after a run in progress, and closes done.
func (s *Session) stopMonitor() {
	s.mon.Lock()
	if !s.stopped {
		s.stopped = true
		s.monT.Stop()
		close(s.done)
	}
	s.mon.Unlock()
}

// monitorRan, when set (by tests), is called at each monitor run.
var monitorRan atomic.Pointer[func(*Session, time.Time)]

func (s *Session) monitor() {
	if f := monitorRan.Load(); f != nil {
		(*f)(s, time.Now())
	}
	s.mon.Lock()
	if s.stopped {
		s.mon.Unlock()
		return
	}
	if s.ys.IsClosed() {
		s.mon.Unlock()
		s.stopMonitor()
		return
	}
	expired := ""
	defer func() {
		s.mon.Unlock()
		if expired != "" {
			s.cause.CompareAndSwap(nil, &cause{KindHeartbeatTimeout, expired})
			s.ys.Close()
			s.stopMonitor()
		}
	}()
	now := time.Now()
	lastSeen := s.start
	if s.conn != nil {
		lastSeen = time.Unix(0, s.conn.lastRead.Load())
		if !now.Before(s.nextSample) {
			s.conn.sample()
			if st := s.conn.info.Load(); st != nil && st.rtt > 0 && s.o.OnRTT != nil {
				s.o.OnRTT(st.rtt)
			}
			// Receive buffers a burst left on streams quiet since the
			// last sample go back to the heap, and what readers consumed
			// without a window update is acknowledged.
			s.ys.ShrinkIdle()
			s.ys.FlushAcks()
			s.nextSample = now.Add(s.every)
		}
	}
	next := s.nextSample
	if hb := s.o.HeartbeatInterval; hb > 0 {
		quiet := now.Sub(lastSeen)
		if s.conn != nil && quiet >= hb+s.o.HeartbeatTimeout {
			expired = fmt.Sprintf("heartbeat timeout: nothing received for %s (heartbeat every %s, timeout %s)",
				quiet.Round(100*time.Millisecond), hb, s.o.HeartbeatTimeout)
			return
		}
		// Without a watched socket nothing tells what arrived: ping
		// every interval.
		if (s.conn == nil || quiet >= s.quietPing) && now.Sub(s.lastPing) >= hb {
			s.ys.SendPing()
			s.lastPing = now
		}
		// The next ping is due an interval after the last ping and
		// quietPing after the last thing heard.
		ping := s.lastPing.Add(hb)
		if s.conn != nil && lastSeen.Add(s.quietPing).After(ping) {
			ping = lastSeen.Add(s.quietPing)
		}
		next = earliest(next, ping)
		if s.conn != nil {
			next = earliest(next, lastSeen.Add(hb+s.o.HeartbeatTimeout))
		}
	}
	s.monT.Reset(onGrid(now, next, monitorGrid(s.o)))
}

// earliest is the first of ts that is after the others.
func earliest(t time.Time, ts ...time.Time) time.Time {
	for _, u := range ts {
		if u.Before(t) {
			t = u
		}
	}
	return t
}

// sampleEvery is how often the monitor samples the socket's TCP state,
// for Cause: a quarter of the shortest kernel timeout it may have to
// explain, so that the last sample before one fires saw its cause, within
// a quarter second and five seconds.
func sampleEvery(o Options) time.Duration {
	d := 5 * time.Second
	if o.UserTimeout > 0 {
		d = min(d, o.UserTimeout/4)
	}
	if o.KeepAlive.Enabled() {
		d = min(d, o.KeepAlive.Bound()/4)
	}
	return max(d, 250*time.Millisecond)
}

// RTT is the session socket's smoothed round trip as the kernel reports
// it now (0 where TCP_INFO is not read), for status pages.
func (s *Session) RTT() time.Duration {
	if s.conn == nil {
		return 0
	}
	rc, err := s.conn.SyscallConn()
	if err != nil {
		return 0
	}
	var rtt time.Duration
	_ = rc.Control(func(fd uintptr) {
		if st, ok := readTCPState(fd); ok {
			rtt = st.rtt
		}
	})
	return rtt
}

// Cause explains why the session ended, given the error its accept loop
// returned: the heartbeat, a TCP timeout told apart by the socket's last
// state (keepalive probes unanswered, or data unacknowledged past
// TCP_USER_TIMEOUT), a reset or close by the peer, or a local close.
func (s *Session) Cause(err error) string { return s.classify(err).text }

// CauseKind is Cause's kind, for metrics.
func (s *Session) CauseKind(err error) string { return s.classify(err).kind }

func (s *Session) classify(err error) cause {
	if c := s.cause.Load(); c != nil {
		return *c
	}
	if s.conn != nil {
		if c := s.conn.cause.Load(); c != nil {
			return *c
		}
	}
	return classify(err)
}
