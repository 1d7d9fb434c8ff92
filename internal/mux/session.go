package mux

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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
	cause atomic.Pointer[string]
	done  chan struct{}
}

// Client starts the client side of a session on c (from Dial). The
// session owns c.
func Client(c net.Conn, o Options) (*Session, error) {
	return start(yamux.Client, c, o)
}

// Server starts the server side of a session on c (from Listen and
// Handshake). The session owns c.
func Server(c net.Conn, o Options) (*Session, error) {
	return start(yamux.Server, c, o)
}

func start(side func(io.ReadWriteCloser, *yamux.Config) (*yamux.Session, error), c net.Conn, o Options) (*Session, error) {
	s := &Session{conn: findWatch(c), o: o, done: make(chan struct{})}
	cfg := yamuxConfig(o, s)
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
	go s.monitor()
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

// Close closes the session and waits for its monitor and heartbeat
// goroutines and, through the fork's Close, for every goroutine of the
// yamux session: when it returns, nothing of the session runs on. It must
// not be called from a stream's read hook or deliver function.
func (s *Session) Close() error {
	err := s.ys.Close()
	<-s.done
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
// closed.
func (s *Session) Done() <-chan struct{} { return s.done }

// DefaultStreamWindow is the receive window of a stream. With yamux's
// 256 KiB one stream's sender stalls on window updates even on loopback;
// docs/performance.md has the measurements behind 4 MiB. Memory is only
// committed while a reader lags.
const DefaultStreamWindow = 4 << 20

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
	pingerDone := make(chan struct{})
	if hb {
		go func() {
			defer close(pingerDone)
			s.pinger(pings)
		}()
	} else {
		close(pingerDone)
	}
	var lastRx uint64
	lastSeen, lastPing := time.Now(), time.Now()
	for {
		select {
		case <-s.ys.CloseChan():
			close(pings)
			<-pingerDone // its Ping ends with the session
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
				s.ys.Close()
			}
		}
	}
}

// pinger sends one ping per request. Its answer only has to arrive; the
// round trip time does not matter.
func (s *Session) pinger(reqs <-chan struct{}) {
	for range reqs {
		_, _ = s.ys.Ping()
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
