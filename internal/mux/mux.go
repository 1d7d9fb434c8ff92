// Package mux owns the session between tunnelc and tunneld: dialing and
// listening with TCP keepalive and TCP_USER_TIMEOUT, optional TLS, and the
// yamux configuration (heartbeat, windows, timeouts) on top.
//
// It must not know about tunnels: it hands out sessions and streams, and
// says why a session died.
package mux

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tunnel-dev/tunnel/internal/sockopt"
)

// Options configure one end of a session.
type Options struct {
	// KeepAlive is the TCP keepalive of the session socket.
	KeepAlive sockopt.KeepAlive
	// UserTimeout is TCP_USER_TIMEOUT on the session socket: how long sent
	// data may stay unacknowledged before the kernel gives up. It is what
	// bounds a dead path while a transfer runs (keepalive is suspended then).
	UserTimeout time.Duration
	// HeartbeatInterval is how often a ping is sent; the session is closed
	// when nothing at all has arrived for HeartbeatInterval +
	// HeartbeatTimeout. Zero interval turns the heartbeat off.
	HeartbeatInterval time.Duration
	HeartbeatTimeout  time.Duration
	// TLS, when set, wraps the socket: a client config on Dial, a server
	// config on Handshake.
	TLS *tls.Config
	// StreamWindow is the most a stream may have received and not yet
	// read (yamux's MaxStreamWindowSize); 0 means DefaultStreamWindow. It
	// bounds what a slow reader can make this end buffer per stream.
	StreamWindow uint32
	// StreamWindowCap is how far auto-tuning may grow a stream's window
	// (0: DefaultStreamWindowCap; at most StreamWindow turns it off), and
	// WindowBudget the grown window times the open streams (0:
	// DefaultWindowBudget).
	StreamWindowCap uint32
	WindowBudget    uint64
	// HandshakeTimeout bounds dialing and the TLS handshake.
	HandshakeTimeout time.Duration
	// IncomingStreams is how many streams the peer may open over the
	// session's life (0: no limit); more are refused before anything is
	// allocated for them. tunneld allows a client its control stream only.
	IncomingStreams int
	// DeliverBuffer is the most of a frame the session hands a parked
	// stream's writer in one call (NotifyReadableOrDeliver); set it to
	// the copy buffer of what writes, 0 for 256 KiB.
	DeliverBuffer int
	// Logger receives yamux's own log lines.
	Logger *slog.Logger
	// OnRTT, when set, gets the session socket's smoothed round trip
	// each time the monitor samples it (every few seconds, see
	// sampleEvery): for a metrics histogram. It must not block.
	OnRTT func(time.Duration)
}

// Dial connects to a tunneld session address with the session's socket
// options and, if configured, TLS. The caller owns the returned conn.
func Dial(ctx context.Context, addr string, o Options) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, o.HandshakeTimeout)
	defer cancel()
	c, err := connect(ctx, addr, o)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	if err := setUserTimeout(c.(*net.TCPConn), o); err != nil {
		c.Close()
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	w := watch(c, o)
	if o.TLS == nil {
		return w, nil
	}
	ck := &corker{watchConn: w}
	tc := tls.Client(ck, o.TLS)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			// A cleartext tunneld reads the ClientHello as a bad frame
			// and hangs up.
			return nil, fmt.Errorf("dial %s: tls handshake: %w (the server hung up: if it runs with tls = \"off\", both sides must agree)", addr, err)
		}
		return nil, fmt.Errorf("dial %s: tls handshake: %w", addr, err)
	}
	return newTLSConn(tc, ck), nil
}

// ConnectAttempt bounds one connection attempt of Dial. A SYN that gets
// no answer (a black-holed path) is retransmitted by the kernel after 1,
// 3, 7 s...: a dial pending across the moment the path heals would wait
// for the next retransmission, seconds later. Dial starts a fresh attempt,
// with a fresh SYN, every ConnectAttempt instead, so a session comes back
// within about a second of the path, during an attempt.
const ConnectAttempt = time.Second

// connect dials addr with the session's keepalive, a fresh attempt every
// ConnectAttempt until ctx ends; an answer other than silence (refused,
// unreachable) ends it at once.
func connect(ctx context.Context, addr string, o Options) (net.Conn, error) {
	for {
		d := net.Dialer{KeepAliveConfig: o.KeepAlive.Config(), Timeout: ConnectAttempt}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			return c, nil
		}
		var ne net.Error
		if ctx.Err() != nil || !errors.As(err, &ne) || !ne.Timeout() {
			return nil, err
		}
	}
}

// Listen opens the session listener. Accepted conns carry the session's
// keepalive and TCP_USER_TIMEOUT; TLS is not done in Accept (it would let
// one slow peer hold the accept loop) but by Handshake, per connection.
func Listen(ctx context.Context, addr string, o Options) (net.Listener, error) {
	lc := net.ListenConfig{KeepAliveConfig: o.KeepAlive.Config()}
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return &listener{Listener: ln, o: o}, nil
}

type listener struct {
	net.Listener
	o Options
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if err := setUserTimeout(c.(*net.TCPConn), l.o); err != nil {
		c.Close()
		// Not fatal to the listener: the caller logs it and accepts again.
		return nil, tempError{fmt.Errorf("accept %s: %w", c.RemoteAddr(), err)}
	}
	return watch(c, l.o), nil
}

// NotSentLowat bounds what the session socket holds unsent in the kernel
// (TCP_NOTSENT_LOWAT) while the link is slow. The session chooses what to
// send next — control frames and small frames before bulk data — and that
// choice is undone by whatever already waits in the kernel: on a slow link
// a full send buffer is seconds of data. 16 KiB is what HTTP/2 servers use
// for the same reason. It does not bound data in flight, only data not yet
// sent. On a fast path it would only cost wakeups (on loopback a seventh
// of the bulk rate and of the request rate, docs/performance.md), so the
// session sets it when its writes start to wait and clears it when they
// stop (yamux's Config.SlowLink).
const NotSentLowat = 16 << 10

// slowLink keeps the session socket's unsent queue short while the link
// is slow (see NotSentLowat). 0 restores the system's default (no bound).
func slowLink(c net.Conn) func(bool) {
	w := findWatch(c)
	if w == nil {
		return nil
	}
	tc, ok := w.Conn.(*net.TCPConn)
	if !ok {
		return nil
	}
	return func(slow bool) {
		n := 0
		if slow {
			n = NotSentLowat
		}
		// Where the system has no such option the session only loses the
		// bound, not its order.
		_ = sockopt.SetNotSentLowat(tc, n)
		w.bound.setSlow(slow)
	}
}

// setUserTimeout sets the session socket's TCP_USER_TIMEOUT. Where the
// system has none (it is Linux's), the session goes without, once said
// in the log: the heartbeat still bounds a dead path, and TCP's own
// retransmission limit ends the socket eventually.
func setUserTimeout(c *net.TCPConn, o Options) error {
	err := sockopt.SetUserTimeout(c, o.UserTimeout)
	if errors.Is(err, errors.ErrUnsupported) {
		noUserTimeout.Do(func() {
			if o.Logger != nil {
				o.Logger.Warn("user_timeout is not applied: this system has no TCP_USER_TIMEOUT; the heartbeat bounds a dead session instead", "user_timeout", o.UserTimeout)
			}
		})
		return nil
	}
	return err
}

var noUserTimeout sync.Once

// handshake runs tc's handshake under HandshakeTimeout; on error it
// closes c, the conn under tc.
func handshake(tc *tls.Conn, c net.Conn, o Options) error {
	ctx, cancel := context.WithTimeout(context.Background(), o.HandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return fmt.Errorf("tls handshake: %w", err)
	}
	return nil
}

type tempError struct{ error }

func (tempError) Temporary() bool { return true }
func (tempError) Timeout() bool   { return false }

// Handshake runs the server side of TLS on an accepted conn, if configured,
// under HandshakeTimeout. On error it closes c.
func Handshake(c net.Conn, o Options) (net.Conn, error) {
	if o.TLS == nil {
		return c, nil
	}
	w, ok := c.(*watchConn)
	if !ok { // not from Listen: plain TLS, no cork
		tc := tls.Server(c, o.TLS)
		if err := handshake(tc, c, o); err != nil {
			return nil, err
		}
		return tc, nil
	}
	ck := &corker{watchConn: w}
	tc := tls.Server(ck, o.TLS)
	if err := handshake(tc, c, o); err != nil {
		return nil, err
	}
	return newTLSConn(tc, ck), nil
}

// yamuxLogger turns yamux's "[ERR] yamux: ..." lines into slog events.
// yamux says a line's level only by its tag, so the tag is read; what a
// line is about is judged by the session's state, never by its words.
type yamuxLogger struct {
	l *slog.Logger
	s *Session
}

func (y yamuxLogger) Print(v ...any)            { y.log(fmt.Sprint(v...)) }
func (y yamuxLogger) Println(v ...any)          { y.log(fmt.Sprint(v...)) }
func (y yamuxLogger) Printf(f string, v ...any) { y.log(fmt.Sprintf(f, v...)) }

func (y yamuxLogger) log(msg string) {
	if y.l == nil {
		return
	}
	lvl := slog.LevelDebug
	switch {
	case y.s != nil && y.s.failing():
		// The socket failed under the session, or it is being closed:
		// these lines are that failure, or frames still in flight
		// hitting it. The session's owner logs the outcome once, with
		// its cause, or as a goodbye when the peer said one.
	case strings.HasPrefix(msg, "[ERR]"):
		lvl = slog.LevelWarn // protocol trouble, e.g. a window overrun
	case strings.Contains(msg, "backlog exceeded"):
		// Tagged [WARN] like the benign races below, but a stream
		// refused for a full accept backlog is a connection lost.
		lvl = slog.LevelWarn
	}
	y.l.Log(context.Background(), lvl, "yamux", "detail", strings.TrimSpace(msg))
}

// YamuxVersion names the yamux sessions run on: upstream's release and
// how many local patches the fork adds (third_party/yamux/PATCHES.md).
func YamuxVersion() string {
	return fmt.Sprintf("yamux %s + %d local patches", yamux.Upstream, yamux.LocalPatches)
}
