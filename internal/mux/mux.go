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
	// HandshakeTimeout bounds dialing and the TLS handshake.
	HandshakeTimeout time.Duration
	// IncomingStreams is how many streams the peer may open over the
	// session's life (0: no limit); more are refused before anything is
	// allocated for them. tunneld allows a client its control stream only.
	IncomingStreams int
	// Logger receives yamux's own log lines.
	Logger *slog.Logger
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
	if err := sockopt.SetUserTimeout(c.(*net.TCPConn), o.UserTimeout); err != nil {
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
	if err := sockopt.SetUserTimeout(c.(*net.TCPConn), l.o.UserTimeout); err != nil {
		c.Close()
		// Not fatal to the listener: the caller logs it and accepts again.
		return nil, tempError{fmt.Errorf("accept %s: %w", c.RemoteAddr(), err)}
	}
	return watch(c, l.o), nil
}

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
type yamuxLogger struct{ l *slog.Logger }

func (y yamuxLogger) Print(v ...any)            { y.log(fmt.Sprint(v...)) }
func (y yamuxLogger) Println(v ...any)          { y.log(fmt.Sprint(v...)) }
func (y yamuxLogger) Printf(f string, v ...any) { y.log(fmt.Sprintf(f, v...)) }

func (y yamuxLogger) log(msg string) {
	if y.l == nil {
		return
	}
	lvl := slog.LevelDebug
	switch {
	case sessionIOError(msg):
		// The socket error that ends the session: its owner logs the
		// outcome once, with this error as the cause, or as a goodbye
		// when the peer said one (then these lines are only the bulk
		// still in flight hitting a closed socket).
		lvl = slog.LevelDebug
	case strings.HasPrefix(msg, "[ERR]"),
		// A stream refused for a full accept backlog is a connection lost.
		strings.Contains(msg, "backlog exceeded"):
		lvl = slog.LevelWarn // protocol trouble, e.g. a window overrun
	case strings.HasPrefix(msg, "[WARN]"):
		lvl = slog.LevelDebug // e.g. "frame for missing stream": benign races of a close
	}
	y.l.Log(context.Background(), lvl, "yamux", "detail", strings.TrimSpace(msg))
}

// sessionIOError reports whether a yamux log line is the session's socket
// failing under it.
func sessionIOError(msg string) bool {
	for _, p := range []string{
		"[ERR] yamux: Failed to write frame",
		"[ERR] yamux: Failed to read header",
		"[ERR] yamux: Failed to read stream data",
		"[ERR] yamux: Failed to discard data",
		"[ERR] yamux: keepalive failed",
	} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// YamuxVersion names the yamux sessions run on: upstream's release and
// how many local patches the fork adds (third_party/yamux/PATCHES.md).
func YamuxVersion() string {
	return fmt.Sprintf("yamux %s + %d local patches", yamux.Upstream, yamux.LocalPatches)
}

// ErrSessionLost is returned by Stream.Read when the stream ended because
// its session died, not because the peer closed it.
var ErrSessionLost error = sessionLost{}

type sessionLost struct{}

func (sessionLost) Error() string { return "session lost" }

// SessionLost lets package proxy name the cause without importing mux.
func (sessionLost) SessionLost() bool { return true }

// errStreamReset is what a read of a stream the peer reset returns; it
// wraps ECONNRESET so it reads like the TCP reset it stands for.
var errStreamReset = fmt.Errorf("stream reset by peer: %w", syscall.ECONNRESET)

// Stream adapts a yamux stream for joining: CloseWrite half-closes (yamux's
// Close is a half-close), Abort cuts it at once, and Read reports a dead
// session as ErrSessionLost instead of yamux's plain io.EOF.
type Stream struct {
	*yamux.Stream
}

// CloseWrite sends FIN on the stream; reads keep working.
func (s Stream) CloseWrite() error { return s.Stream.Close() }

// Abort resets the stream: pending reads and writes here end at once, and
// the peer's fail with a reset rather than a clean end.
func (s Stream) Abort() error { return s.Stream.Reset() }

// NotifyReadable calls f once when the stream has data, has ended or
// failed (at once if it already has); f must not block. With Readable it
// lets package proxy park an idle direction without a goroutine.
func (s Stream) NotifyReadable(f func()) { s.Stream.NotifyReadable(f) }

// NotifyReadableOrDeliver is NotifyReadable, and until f is called the
// session hands arriving data straight to deliver, which must not block
// (see yamux's Stream.NotifyReadableOrDeliver).
func (s Stream) NotifyReadableOrDeliver(f func(), deliver func([]byte) (int, error)) {
	s.Stream.NotifyReadableOrDeliver(f, deliver)
}

// Readable reports whether a Read would return without waiting.
func (s Stream) Readable() bool { return s.Stream.Readable() }

// WaitReadableFor waits up to d for data, an end or a failure; false means
// the stream stayed idle. It uses (and then clears) the read deadline.
func (s Stream) WaitReadableFor(d time.Duration) bool {
	_ = s.Stream.SetReadDeadline(time.Now().Add(d))
	_, err := s.Stream.Read(nil)
	_ = s.Stream.SetReadDeadline(time.Time{})
	var te interface{ Timeout() bool }
	return !errors.As(err, &te) || !te.Timeout()
}

// Read is yamux's Read, but an EOF caused by a dead session is an error.
func (s Stream) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	switch {
	case err == io.EOF && s.Session().IsClosed():
		err = ErrSessionLost
	case err != nil:
		err = streamError(err)
	}
	return n, err
}

// Write is yamux's Write with its errors classified as Read's are: every
// way a dead session can fail a write (the stream closed under it, the
// frame's own write hitting the closed socket, the send queue shut) is
// ErrSessionLost, with the socket's error kept underneath.
func (s Stream) Write(p []byte) (int, error) {
	n, err := s.Stream.Write(p)
	if err != nil {
		err = streamError(err)
	}
	return n, err
}

// streamError classifies an error of a stream call.
func streamError(err error) error {
	switch {
	case errors.Is(err, yamux.ErrSessionShutdown):
		if err == yamux.ErrSessionShutdown {
			return ErrSessionLost
		}
		return fmt.Errorf("%w: %w", ErrSessionLost, err)
	case errors.Is(err, yamux.ErrConnectionReset):
		return errStreamReset
	}
	return err
}
