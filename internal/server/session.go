package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/internal/protocol"
	"github.com/tunnel-dev/tunnel/internal/proxy"
	"github.com/tunnel-dev/tunnel/internal/sockopt"
)

// session is one live client. handleConn owns it: handshake makes it, run
// starts it, and the control reader finishes it. shutdown may be called
// from anywhere (a takeover, the server's stop) and is idempotent.
type session struct {
	srv    *Server
	id     string
	since  time.Time
	client string                   // the authenticated identity's name
	limp   atomic.Pointer[identity] // what the client may do; a reload may replace it
	conns  atomic.Int64
	log    *slog.Logger
	// res is the session's resumption state; nil when resumption is off
	// (see resume.go).
	res *resumable

	mu sync.Mutex
	// car carries the session now; nil while its client is away (the
	// session lost its carrier and waits for a resume).
	car        *carrier
	lastRemote string // the client's address on its latest carrier
	listeners  []*publicListener
	pending    map[string]*pendingTunnel // refused for now, retried (see pending.go)
	reason     string                    // why shutdown was called, if it was
	kind       string                    // and its kind (End*), for metrics
	closed     bool

	// Bytes of the session's connections that ended, each way.
	endIn, endOut atomic.Uint64

	parts parts // every goroutine of the session but the control reader's
	once  sync.Once
	// ctx ends when the session does, with the reason as its cause; every
	// public connection's join runs under it.
	ctx    context.Context
	cancel context.CancelCauseFunc
	// srvCtx is the server's (set by run): its end is a shutdown. done is
	// run's: called once when the session is over.
	srvCtx context.Context
	done   func()
}

// carrier is one mux session under a session: the first one, then one
// per resume.
type carrier struct {
	ys     *mux.Session
	ctrl   *mux.Stream
	ctrlMu sync.Mutex // one writer at a time on the control stream
	remote string     // the client's address on this carrier
}

// lim is what the client may do now.
func (ss *session) lim() *identity { return ss.limp.Load() }

// carrier returns what carries the session now, nil while it is away.
func (ss *session) carrier() *carrier {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.car
}

// errServerShutdown is the cause of a session's connections ending
// because tunneld is stopping.
var errServerShutdown = errors.New("server shutting down")

type publicListener struct {
	name     string
	port     int
	ln       net.Listener
	conns    atomic.Int64
	st       *tunnelStats
	draining atomic.Bool // closed by the operator; the port stays the session's
	// ka is the keepalive the listener was bound with, which its
	// connections inherit; one a reload changed is set on each.
	ka sockopt.KeepAlive

	// The accept loop, and the hand-over of the socket to a newer
	// session of the same client (handOver).
	loopMu      sync.Mutex
	loopStarted bool
	handed      bool
	loopDone    chan struct{}

	// public is the address (or first URL) clients and operators are
	// told; web is set for an http or https tunnel, which has no
	// listener of its own (ln is nil): the shared port routes to it.
	public string
	web    *webTunnel

	// Refusals at a connection limit are logged at most once per
	// refusalLogEvery per tunnel, with a count.
	refusedMu  sync.Mutex
	refused    int
	refusedLog time.Time
}

// handleConn runs one session from the first byte to the last. It owns c.
// handshook is the gate's: it is called once, when the handshake is over,
// with whether it failed.
func (s *Server) handleConn(ctx context.Context, c net.Conn, handshook func(failed bool)) {
	defer handshook(true) // a no-op once the handshake succeeded
	ss, fresh := s.handshake(ctx, c, handshook)
	if ss == nil || !fresh {
		// Refused, or a resume: the session's first carrier counted
		// it, and its new one is watched like the first.
		return
	}
	// No goroutine waits for the session's end: this one ends here (TLS
	// and the hello grew its stack, which a goroutine parked for the
	// session's life would keep, once per idle session), and the one that
	// finds the control stream ended finishes the session (see run). The
	// accept loop's count of this goroutine covers the Add.
	s.wg.Add(1)
	ss.run(ctx, func() {
		ss.cancel(nil)
		s.wg.Done()
	})
}

// handshake takes a connection from TLS to the welcome: the session, the
// control stream, the hello, who the client is, its tunnels. It returns
// the registered session, welcomed, or nil when it refused the peer or
// lost it (having closed what it made and logged why); fresh is false
// when the hello resumed a session that was already running.
func (s *Server) handshake(ctx context.Context, c net.Conn, handshook func(failed bool)) (ss *session, fresh bool) {
	addr := addrOf(c.RemoteAddr())
	log := s.log.With("remote", c.RemoteAddr().String())
	// refused logs a refused handshake, unless the address is past its
	// allowance of failures (then its summary counts it), and charges the
	// failure at once: before the peer reads the refusal and tries again.
	refused := func(reason, msg string, args ...any) {
		s.met.handshakeFailed(reason)
		if s.gate.logRefusal(addr) {
			log.Warn(msg, args...)
		}
		handshook(true)
	}
	c, err := mux.Handshake(c, s.opts)
	if err != nil {
		refused("tls", "session refused", "err", err, "hint", tlsHint(err))
		return nil, false
	}
	ys, err := mux.Server(c, s.opts)
	if err != nil {
		c.Close()
		log.Error("session setup failed", "err", err)
		return nil, false
	}
	ok := false
	defer func() {
		if !ok {
			ys.Close()
		}
	}()

	hctx, cancel := context.WithTimeout(ctx, s.opts.HandshakeTimeout)
	ctrl, err := ys.AcceptContext(hctx)
	cancel()
	if err != nil {
		// Garbage on the port ends here: yamux rejects a bad frame header.
		hint := "is the peer tunnelc?"
		if b, ok := mux.FirstByte(c); ok && b == mux.TLSRecordHandshake && s.opts.TLS == nil {
			hint = "the peer speaks TLS, and this server has tls = \"off\" in " + s.config().File + ": both sides must agree (TLS is the default)"
		}
		refused("no_control_stream", "session refused: no control stream", "err", err, "hint", hint)
		return nil, false
	}
	if ctrl.ID() != 1 {
		// The session allows one stream; it must be the client's first.
		refused("protocol", "session refused: control stream has the wrong id", "id", ctrl.ID(),
			"hint", "is the peer tunnelc?")
		return nil, false
	}
	_ = ctrl.SetReadDeadline(time.Now().Add(s.opts.HandshakeTimeout))
	var msg protocol.Control
	if err := protocol.ReadFrame(ctrl, &msg); err != nil {
		refused("bad_hello", "session refused: bad hello", "err", err)
		return nil, false
	}
	_ = ctrl.SetReadDeadline(time.Time{})
	hello := msg.Hello
	switch {
	case msg.Type != protocol.TypeHello:
		s.refuse(ctrl, refused, protocol.CodeBadRequest, fmt.Sprintf("expected hello, got %q", clip(msg.Type)))
		return nil, false
	case hello == nil:
		s.refuse(ctrl, refused, protocol.CodeBadRequest, "hello message without a body: a client of another protocol version, or not tunnelc?")
		return nil, false
	}
	// Not authenticated yet: the name is whatever the peer says, and as
	// long as a frame allows; log no more of it than a real one can be.
	base := log
	log = log.With("client", clip(hello.Client))
	if hello.Version != protocol.Version {
		s.refuse(ctrl, refused, protocol.CodeVersion, fmt.Sprintf(
			"protocol version mismatch: client speaks %d, server speaks %d; run the same release of tunnelc and tunneld",
			hello.Version, protocol.Version))
		return nil, false
	}
	id, err := s.authenticate(hello, mux.PeerCertificates(c))
	if err != nil {
		var ae *authError
		if errors.As(err, &ae) {
			s.refuse(ctrl, refused, ae.code, ae.msg)
		}
		return nil, false
	}
	if why := s.banned(id.name); why != "" {
		s.refuse(ctrl, refused, protocol.CodeBanned, why)
		return nil, false
	}
	// From here on the client is who it authenticated as.
	log = base.With("client", id.name)
	if id.declared != "" {
		log = log.With("declared_name", id.declared)
	}
	if n := len(hello.Tunnels); n > s.config().MaxTunnelsPerClient {
		// Refused whole and said so: answering each would make a
		// welcome larger than a frame may be, which could not be sent.
		s.refuse(ctrl, refused, protocol.CodeBadRequest, fmt.Sprintf(
			"%d tunnels in one hello, more than the server's max_tunnels_per_client (%d): configure fewer tunnels in this client",
			n, s.config().MaxTunnelsPerClient))
		return nil, false
	}

	car := &carrier{ys: ys, ctrl: ctrl, remote: c.RemoteAddr().String()}
	if hello.Resume != nil {
		resumed, err := s.resumeSession(id, hello, car, log)
		if err != nil {
			var ae *authError
			if errors.As(err, &ae) {
				s.refuse(ctrl, refused, ae.code, ae.msg)
			}
			return nil, false
		}
		if resumed != nil {
			handshook(false)
			ok = true
			return resumed, false
		}
	}
	ss = &session{srv: s, id: newID(), since: time.Now(), client: id.name, car: car, lastRemote: car.remote}
	ss.limp.Store(id)
	ss.log = log.With("session", ss.id)
	ss.ctx, ss.cancel = context.WithCancelCause(context.Background())
	grant := ss.offerResume(hello)
	results := s.register(ss, hello.Tunnels)
	if err := ss.send(protocol.Control{Type: protocol.TypeWelcome,
		Welcome: fitWelcome(&protocol.Welcome{Session: ss.id, Tunnels: results, Client: authenticatedAs(id), Resume: grant})}); err != nil {
		ss.log.Warn("session lost during handshake", "err", err)
		ss.shutdown("", "")
		ss.cancel(mux.ErrSessionLost)
		ss.parts.wait()
		s.unregister(ss)
		return nil, false
	}
	handshook(false)
	up := 0
	for _, r := range results {
		if r.OK {
			up++
		}
	}
	args := []any{"tunnels", up, "refused", len(results) - up}
	if ss.res != nil {
		args = append(args, "resume_window", ss.res.window)
	}
	ss.log.Info("session up", args...)
	ok = true
	return ss, true
}

// run serves a welcomed session: it starts the accept loops and watches
// the control stream, and returns. done is called once the session has
// ended and finish has run.
func (ss *session) run(ctx context.Context, done func()) {
	ss.mu.Lock()
	ss.srvCtx, ss.done = ctx, done
	car := ss.car
	ss.mu.Unlock()
	for _, pl := range ss.publicListeners() {
		ss.serveListener(pl)
	}
	// After the accept loops above: a pending tunnel that comes up starts
	// its own.
	ss.startPending()
	ss.watchControl(car)
}

// watchControl reads the client's control messages as they arrive. An
// idle session's control stream holds no goroutine (a parked reader was
// one of the five an idle session cost, about 4 KiB of stack): one starts
// when the stream becomes readable — a message, its end, or the session's
// — reads what there is and parks the stream again. The one that finds
// the stream ended ends the carrier, so a goodbye read just before the
// session closes names the close before the carrier is taken for lost.
func (ss *session) watchControl(car *carrier) {
	car.ctrl.NotifyReadable(func() {
		go func() {
			if ss.readControl(car) {
				ss.watchControl(car)
				return
			}
			ss.carrierEnded(car)
		}()
	})
}

// carrierEnded runs once car's control stream has ended. A carrier a
// resume replaced is just closed; the current one, lost to the network,
// leaves the session away for its client to resume (resume.go), and
// otherwise the session is over.
func (ss *session) carrierEnded(car *carrier) {
	switch {
	case ss.carrier() != car:
		car.ys.Close() // a resume took over
	case !car.ys.IsClosed():
		// The client ended its control stream and nothing else: it
		// cannot be told anything any more.
		ss.end(EndClientClosed, "the client closed its control stream", false)
	}
	<-car.ys.Closed()
	car.ys.Close() // waits for the mux session's own goroutines
	// The client never opens further streams (the session refuses them:
	// IncomingStreams), so nothing waits in Accept for the session's end:
	// on a closed session it returns at once, with why the session died.
	lost := endError(car.ys)
	if ss.goAway(car, lost) {
		return
	}
	ss.finish(car.ys.Cause(lost), car.ys.CauseKind(lost), lost)
}

// finish waits for every part of the session, gives its ports up, logs
// how it ended and calls run's done. cause, its kind and lost say why a
// session that was not ended on purpose was lost.
func (ss *session) finish(cause, kind string, lost error) {
	// Every public connection ends with the session, whatever its state:
	// one whose client stays open and silent would otherwise hold the
	// session (parts.wait), and with it a shutdown, for as long as it does.
	ss.mu.Lock()
	ctx, done := ss.srvCtx, ss.done
	ss.mu.Unlock()
	switch {
	case ctx.Err() != nil:
		ss.cancel(errServerShutdown)
	case errors.Is(lost, errResumeExpired), errors.Is(lost, errEnded):
		ss.cancel(lost)
	default:
		ss.cancel(mux.ErrSessionLost)
	}
	ss.shutdown("", "")
	ss.parts.wait()
	ss.res.endAll()
	for _, pl := range ss.publicListeners() {
		pl.st.Release()
	}
	ss.srv.unregister(ss)
	ss.mu.Lock()
	reason := ss.reason
	if ss.kind != "" {
		kind = ss.kind
	}
	ss.mu.Unlock()
	ss.srv.met.sessionEnded(kind)
	if reason != "" {
		ss.log.Info("session closed", "reason", reason)
	} else {
		ss.log.Warn("session lost", "cause", cause, "err", lost)
	}
	done()
}

// endError is why the closed mux session ended: Accept's error. A stream
// still queued for Accept (there is none past the control stream, but the
// session should not trust that) is reset on the way.
func endError(ys *mux.Session) error {
	for {
		st, err := ys.Accept()
		if err != nil {
			return err
		}
		_ = st.Abort()
	}
}

func (s *Server) refuse(ctrl *mux.Stream, logf func(string, string, ...any), code, message string) {
	logf(code, "session refused", "code", code, "err", message)
	_ = ctrl.SetWriteDeadline(time.Now().Add(s.opts.HandshakeTimeout))
	_ = protocol.WriteFrame(ctrl, protocol.Control{Type: protocol.TypeError, Error: &protocol.Error{Code: code, Message: message}})
	// Let the frame reach the client before the session is torn down.
	_ = ctrl.CloseWrite()
	_ = ctrl.SetReadDeadline(time.Now().Add(time.Second))
	var drain [1]byte
	_, _ = ctrl.Read(drain[:])
}

// register takes over the ports of an older session of the same client and
// binds a listener per requested tunnel.
func (s *Server) register(ss *session, reqs []protocol.TunnelRequest) []protocol.TunnelResult {
	s.regMu.Lock()
	defer s.regMu.Unlock()

	s.mu.Lock()
	old := s.sessions[ss.client]
	s.sessions[ss.client] = ss
	s.mu.Unlock()
	var handed map[string]*publicListener
	if old != nil {
		ss.log.Info("taking over from older session of the same client", "old_session", old.id)
		// Its listening sockets pass to us as they are, for the tunnels
		// we ask for again: a public port never closes in a takeover.
		handed = old.handOver()
		old.shutdown(EndReplaced, "replaced by session "+ss.id)
		// Its ports are free for us now (its goroutines wind down on
		// their own), and for us first: the sessions waiting for one of
		// them hear of the ones we do not take only after we bound ours.
		freed := s.release(old)
		defer func() { s.freed(old, freed) }()
	}
	results := s.registerTunnels(ss, reqs, map[string]bool{}, handed)
	for _, pl := range handed {
		pl.close() // not asked for again
		pl.st.Release()
	}
	return results
}

// handOver takes the session's listeners from it for a newer session of
// the same client: their accept loops stop (a deadline in the past ends
// a waiting Accept; the socket stays open) and the session no longer
// closes them. It returns them by tunnel name; drained ones are closed.
func (ss *session) handOver() map[string]*publicListener {
	ss.mu.Lock()
	ls := ss.listeners
	ss.listeners = nil
	ss.mu.Unlock()
	out := make(map[string]*publicListener, len(ls))
	for _, pl := range ls {
		pl.loopMu.Lock()
		pl.handed = true
		started := pl.loopStarted
		pl.loopMu.Unlock()
		tl, ok := pl.ln.(*net.TCPListener)
		if pl.web != nil {
			// Its routes pass when the new session claims them.
			out[pl.name] = pl
			continue
		}
		if !ok || pl.draining.Load() {
			pl.ln.Close()
			<-waitIf(started, pl.loopDone)
			pl.st.Release()
			continue
		}
		_ = tl.SetDeadline(time.Unix(1, 0))
		<-waitIf(started, pl.loopDone)
		_ = tl.SetDeadline(time.Time{})
		out[pl.name] = pl
	}
	return out
}

// waitIf is ch when cond, else a closed channel.
func waitIf(cond bool, ch chan struct{}) <-chan struct{} {
	if cond {
		return ch
	}
	c := make(chan struct{})
	close(c)
	return c
}

// registerTunnels binds a listener per request, or records it pending,
// and returns the results; seen names the session's tunnels so far. The
// caller holds regMu.
//
// handed holds listeners a replaced session of the client handed over: a
// request for the same tunnel on the same port (or any port) takes its
// socket as it is; the ones taken are deleted from it.
func (s *Server) registerTunnels(ss *session, reqs []protocol.TunnelRequest, seen map[string]bool, handed map[string]*publicListener) []protocol.TunnelResult {
	results := make([]protocol.TunnelResult, 0, len(reqs))
	for _, r := range reqs {
		res := protocol.TunnelResult{Name: r.Name}
		var err error
		switch {
		case !config.ValidName(r.Name):
			res.Name = clip(r.Name)
			res.Code, err = protocol.CodeInvalidTunnel, fmt.Errorf("tunnel name %q is not a valid name (letters, digits, '.', '_', '-'; at most 64)", res.Name)
		case seen[r.Name]:
			res.Code, err = protocol.CodeInvalidTunnel, fmt.Errorf("tunnel name %q is repeated (or already up in this session)", r.Name)
		case r.Type != config.TypeTCP && r.Type != config.TypeHTTP && r.Type != config.TypeHTTPS:
			res.Code, err = protocol.CodeInvalidTunnel, fmt.Errorf("type %q is not supported (tcp, http, https)", r.Type)
		case len(ss.publicListeners()) >= ss.lim().maxTunnels:
			res.Code, err = protocol.CodeInvalidTunnel, fmt.Errorf("more than %d tunnels, the most this client may have", ss.lim().maxTunnels)
		default:
			var pl *publicListener
			if h := handed[r.Name]; h != nil && h.web == nil && r.Web == nil && (r.RemotePort == 0 || r.RemotePort == h.port) && ss.lim().portAllowed(h.port) {
				pl = s.adopt(ss, h, r)
				delete(handed, r.Name)
			} else {
				pl, res.Code, err = s.bind(ss, r)
			}
			if err == nil && !ss.addListener(pl) {
				pl.close()
				pl.st.Release()
				res.Code, err = protocol.CodeInternal, errors.New("session closed during registration")
			}
			if err == nil {
				res.OK = true
				res.Public, res.URLs = pl.public, pl.urls()
				ss.log.Info("tunnel up", "tunnel", r.Name, "public", pl.public)
			}
		}
		seen[r.Name] = true
		if err != nil {
			res.Error = err.Error()
			log := ss.log.With("tunnel", res.Name, "code", res.Code, "err", err)
			var held *portHeldError
			if errors.As(err, &held) {
				log = log.With("holder", held.holder)
			}
			if transient(res.Code) && ss.addPending(r, res.Code, res.Error) {
				res.Pending = true
				log.Warn("tunnel refused for now; retrying in this session")
			} else {
				log.Warn("tunnel refused")
			}
		}
		results = append(results, res)
	}
	return results
}

// adopt makes a listener a replaced session handed over ss's, for r.
func (s *Server) adopt(ss *session, h *publicListener, r protocol.TunnelRequest) *publicListener {
	pl := newPublicListener(h.name, h.port, h.ln, s.statsFor(ss.client, h.name), h.ka, h.public)
	h.st.Release()
	s.mu.Lock()
	s.ports[h.port] = ss
	s.mu.Unlock()
	if r.RemotePort == 0 {
		s.leases.hold(ss.client, r.Name, h.port) // as bind does for a port it picked
	}
	return pl
}

// bind opens the public listener for one tunnel and records its owner.
func (s *Server) bind(ss *session, r protocol.TunnelRequest) (*publicListener, string, error) {
	if r.Type == config.TypeHTTP || r.Type == config.TypeHTTPS {
		return s.bindWeb(ss, r)
	}
	ka := s.config().KeepAlive.Public.Sock()
	lc := net.ListenConfig{KeepAliveConfig: ka.Config()}
	try := func(port int) (*publicListener, string, error) {
		s.mu.Lock()
		owner := s.ports[port]
		s.mu.Unlock()
		if owner != nil {
			if owner == ss {
				// A config mistake, not something that passes: two
				// tunnels of one client cannot share a port.
				return nil, protocol.CodeInvalidTunnel, fmt.Errorf("port %d is already used by another tunnel of this client", port)
			}
			return nil, protocol.CodePortInUse, &portHeldError{port: port, holder: owner.client}
		}
		addr := net.JoinHostPort(s.config().BindAddr, strconv.Itoa(port))
		ln, err := lc.Listen(context.Background(), "tcp", addr)
		if err != nil {
			if errors.Is(err, syscall.EADDRINUSE) {
				return nil, protocol.CodePortInUse, fmt.Errorf("port %d is in use on the server by another program: %w", port, err)
			}
			return nil, protocol.CodeBindFailed, fmt.Errorf("bind %s: %w", addr, err)
		}
		s.mu.Lock()
		s.ports[port] = ss
		s.mu.Unlock()
		return newPublicListener(r.Name, port, ln, s.statsFor(ss.client, r.Name), ka, s.publicAddr(port)), "", nil
	}
	if r.RemotePort != 0 {
		if !ss.lim().portAllowed(r.RemotePort) {
			return nil, protocol.CodePortNotAllowed, fmt.Errorf("port %d is outside the ports this client may use, %v", r.RemotePort, ss.lim().ports)
		}
		return try(r.RemotePort)
	}
	// remote_port = 0: the port leased to this tunnel, then the one the
	// client remembers, then a free port that is leased to nobody, and
	// only when there is none a port leased to another client.
	got := func(pl *publicListener) (*publicListener, string, error) {
		s.leases.hold(ss.client, r.Name, pl.port)
		return pl, "", nil
	}
	leasedToOther := func(port int) bool {
		_, ok := s.leases.holder(port, ss.client, r.Name)
		return ok
	}
	if p := s.leases.of(ss.client, r.Name); p != 0 && ss.lim().portAllowed(p) {
		if pl, _, err := try(p); err == nil {
			return got(pl)
		}
	}
	if p := r.PreferPort; p != 0 && ss.lim().portAllowed(p) && !leasedToOther(p) {
		if pl, _, err := try(p); err == nil {
			return got(pl)
		}
	}
	total := 0
	for _, pr := range ss.lim().ports {
		total += pr.Hi - pr.Lo + 1
	}
	nth := func(k int) int {
		for _, pr := range ss.lim().ports {
			if n := pr.Hi - pr.Lo + 1; k < n {
				return pr.Lo + k
			} else {
				k -= n
			}
		}
		return 0
	}
	var lastErr error
	for range 64 {
		port := nth(rand.IntN(total))
		if leasedToOther(port) {
			continue
		}
		pl, _, err := try(port)
		if err == nil {
			return got(pl)
		}
		lastErr = err
	}
	// The random picks found nothing: the range is small or nearly full.
	// Walk it once from a random start, unleased ports first.
	start := rand.IntN(total)
	var leased []int
	for i := range total {
		port := nth((start + i) % total)
		if leasedToOther(port) {
			leased = append(leased, port)
			continue
		}
		pl, _, err := try(port)
		if err == nil {
			return got(pl)
		}
		lastErr = err
	}
	for _, port := range leased {
		le, _ := s.leases.holder(port, ss.client, r.Name)
		pl, _, err := try(port)
		if err != nil {
			lastErr = err
			continue
		}
		if le != nil {
			ss.log.Warn("no unleased port free: giving a port leased to another client", "tunnel", r.Name, "port", port,
				"leased_to", le.Client+"/"+le.Tunnel, "lease_until", le.Until.Format(time.RFC3339))
		}
		return got(pl)
	}
	return nil, protocol.CodePortInUse, fmt.Errorf("no free port among the ports this client may use, %v (last try: %v)", ss.lim().ports, lastErr)
}

// unregister forgets ss and the ports it held, if they are still its, and
// tells the sessions waiting for one of those ports to try again now.
func (s *Server) unregister(ss *session) { s.freed(ss, s.release(ss)) }

// release forgets ss and returns the ports it held.
func (s *Server) release(ss *session) []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sessions[ss.client] == ss {
		delete(s.sessions, ss.client)
	}
	var freed []int
	for port, owner := range s.ports {
		if owner == ss {
			delete(s.ports, port)
			freed = append(freed, port)
		}
	}
	return freed
}

// freed ends ss's leases on ports and tells the other sessions waiting
// for one of them to try again now.
func (s *Server) freed(ss *session, ports []int) {
	if len(ports) == 0 {
		return
	}
	s.mu.Lock()
	// A port the same client holds again (a takeover) keeps its lease
	// running and is not free; one another client took meanwhile ends
	// this client's hold on it all the same.
	var ended, free []int
	for _, p := range ports {
		owner := s.ports[p]
		if owner == nil || owner.client != ss.client {
			ended = append(ended, p)
		}
		if owner == nil {
			free = append(free, p)
		}
	}
	var others []*session
	if len(free) > 0 {
		others = make([]*session, 0, len(s.sessions))
		for _, o := range s.sessions {
			others = append(others, o)
		}
	}
	s.mu.Unlock()
	s.leases.release(ss.client, ended)
	for _, o := range others {
		o.portsFreed(free)
	}
}

// shutdown closes the session's public listeners and the session itself;
// every public connection of it is aborted as its stream dies. A non-empty
// reason marks a deliberate close and is sent to the client first.
func (ss *session) shutdown(kind, reason string) { ss.end(kind, reason, reason != "") }

func newPublicListener(name string, port int, ln net.Listener, st *tunnelStats, ka sockopt.KeepAlive, public string) *publicListener {
	return &publicListener{name: name, port: port, ln: ln, st: st, ka: ka, loopDone: make(chan struct{}), public: public}
}

// serveListener runs pl's accept loop as a part of the session. The
// caller has recorded pl as the session's (so end closes it); if the
// session's parts are already being waited for, the session is over and
// pl is closed here.
func (ss *session) serveListener(pl *publicListener) {
	pl.loopMu.Lock()
	defer pl.loopMu.Unlock()
	if pl.handed || pl.web != nil {
		return // a newer session has it; or routed by the shared port
	}
	pl.loopStarted = true
	if !ss.parts.Go(func() {
		defer close(pl.loopDone)
		ss.acceptPublic(pl)
	}) {
		pl.close()
		close(pl.loopDone)
	}
}

// end stops the session's listeners and closes it, with the reason logged
// when the session is over. tell sends the client a goodbye first and then
// leaves the close to the client, for at most GoodbyeWait (see
// protocol.Goodbye); without it the session is closed at once.
func (ss *session) end(kind, reason string, tell bool) {
	ss.once.Do(func() {
		ss.mu.Lock()
		ss.reason, ss.kind = reason, kind
		ss.closed = true
		ls := ss.listeners
		for _, p := range ss.pending {
			p.timer.Stop()
		}
		// Only a session that ran can have lost its carrier (goAway).
		car := ss.car
		ss.mu.Unlock()
		ss.res.stopAway()
		for _, pl := range ls {
			pl.close()
		}
		if car == nil {
			// Nothing carries the session, so nothing will notice its
			// end: finish it here, in the background (a takeover ends
			// the old session under the registration lock).
			var lost error = errResumeExpired
			if reason != "" {
				lost = fmt.Errorf("%w: %s", errEnded, reason)
			}
			go ss.finish("not resumed within resume_window", EndResumeExpired, lost)
			return
		}
		if tell && ss.send(protocol.Control{Type: protocol.TypeGoodbye, Goodbye: &protocol.Goodbye{Reason: reason}}) == nil &&
			ss.parts.Go(func() { closeAfterGoodbye(car.ys) }) {
			return
		}
		car.ys.Close()
	})
}

// closeAfterGoodbye closes ys if the client, told goodbye, has not closed
// it within GoodbyeWait.
func closeAfterGoodbye(ys *mux.Session) {
	t := time.NewTimer(protocol.GoodbyeWait)
	defer t.Stop()
	select {
	case <-t.C:
		ys.Close()
	case <-ys.Closed():
	}
}

// addListener records pl unless the session is already shut down.
func (ss *session) addListener(pl *publicListener) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closed {
		return false
	}
	ss.listeners = append(ss.listeners, pl)
	return true
}

func (ss *session) publicListeners() []*publicListener {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return append([]*publicListener(nil), ss.listeners...)
}

// send writes one control message, bounded so a stuck peer cannot hold us.
func (ss *session) send(m protocol.Control) error {
	car := ss.carrier()
	if car == nil {
		return errAway
	}
	return car.send(m, ss.srv.opts.HandshakeTimeout)
}

func (car *carrier) send(m protocol.Control, timeout time.Duration) error {
	car.ctrlMu.Lock()
	defer car.ctrlMu.Unlock()
	_ = car.ctrl.SetWriteDeadline(time.Now().Add(timeout))
	defer car.ctrl.SetWriteDeadline(time.Time{})
	return protocol.WriteFrame(car.ctrl, m)
}

// readControl reads the client's control messages while the stream has
// something to read. It returns false once the stream has ended (or the
// client said goodbye, after which nothing it says matters), true when
// it has read all there was.
func (ss *session) readControl(car *carrier) bool {
	for car.ctrl.Readable() {
		var m protocol.Control
		if err := protocol.ReadFrame(car.ctrl, &m); err != nil {
			return false
		}
		switch m.Type {
		case protocol.TypeGoodbye:
			reason := "client said goodbye"
			if m.Goodbye != nil && m.Goodbye.Reason != "" {
				reason += ": " + m.Goodbye.Reason
			}
			ss.end(EndGoodbye, reason, false)
			return false
		case protocol.TypeTunnelAdd:
			if m.Add != nil {
				ss.addTunnel(*m.Add)
			}
		case protocol.TypeTunnelRemove:
			if m.Remove != nil {
				ss.removeTunnel(m.Remove.Name, time.Duration(m.Remove.DrainMs)*time.Millisecond)
			}
		default:
			ss.log.Debug("ignoring control message", "type", m.Type)
		}
	}
	return true
}

// acceptPublic accepts public connections on pl until it is closed.
func (ss *session) acceptPublic(pl *publicListener) {
	log := ss.log.With("tunnel", pl.name)
	var delay time.Duration
	for {
		c, err := pl.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			pl.loopMu.Lock()
			handed := pl.handed
			pl.loopMu.Unlock()
			if handed {
				return // the deadline handOver set
			}
			if isResourceErr(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				log.Warn("public accept failed; retrying", "err", err, "delay", delay)
				// With the session's context: an ending session must not
				// wait out a backoff (its listener's close ends Accept, not
				// this sleep).
				t := time.NewTimer(delay)
				select {
				case <-t.C:
				case <-ss.ctx.Done():
					t.Stop()
					return
				}
				continue
			}
			log.Error("public listener failed", "err", err)
			return
		}
		delay = 0
		if limit, what := ss.takeConn(pl); limit > 0 {
			_ = sockopt.Abort(c.(*net.TCPConn))
			pl.st.refused.Add(1)
			pl.noteRefused(log, limit, what)
			continue
		}
		pc := c.(*net.TCPConn)
		if ka := ss.srv.config().KeepAlive.Public.Sock(); ka != pl.ka {
			_ = pc.SetKeepAliveConfig(ka.Config()) // reloaded since the bind
		}
		if !ss.parts.Go(func() { ss.handlePublic(pl, pc, log) }) {
			_ = sockopt.Abort(pc) // the session is ending
			ss.releaseConn(pl)
		}
	}
}

// handlePublic carries one public connection over a new stream, or holds
// it while the client is away. It owns pc; the join it starts is a part
// of the session of its own.
func (ss *session) handlePublic(pl *publicListener, pc net.Conn, log *slog.Logger) {
	tunnel := pl.name
	joined := false
	defer func() {
		if !joined {
			ss.releaseConn(pl)
		}
	}()
	if tc, ok := pc.(*net.TCPConn); ok && pl.web == nil {
		// A tcp tunnel's own listener: a trusted proxy's header first.
		c, err := ss.srv.proxied(tc, ss.srv.opts.HandshakeTimeout)
		if err != nil {
			_ = abortConn(pc)
			log.Warn("public connection dropped", "err", err)
			return
		}
		pc = c
	}
	id := ss.srv.connSeq.Add(1)
	log = log.With("conn", id, "peer", pc.RemoteAddr().String())
	h := protocol.StreamHeader{Tunnel: tunnel, RemoteAddr: pc.RemoteAddr().String(), PublicAddr: pc.LocalAddr().String(), Conn: id, Resumable: ss.res != nil}
	var side dataConn
	var hc *heldConn
	car := ss.carrier()
	if car != nil {
		hdr, err := protocol.AppendFrame(nil, h)
		if err != nil {
			_ = abortConn(pc)
			log.Error("public connection dropped: stream header", "err", err)
			return
		}
		// The header rides on the stream's opening frame: the client
		// bounds its wait for the header from the stream's arrival, and
		// on a session congested by bulk streams a header sent after the
		// SYN can queue behind seconds of their data
		// (TestHeartbeatUnderLoad).
		st, err := car.ys.OpenWith(hdr)
		switch {
		case err == nil && ss.res != nil:
			hc = ss.res.newConn(h, st, car)
			side = hc.rc
		case err == nil:
			side = st
		case ss.res != nil && car.ys.IsClosed():
			car = nil // lost just now: held like one that comes while away
		default:
			_ = abortConn(pc)
			log.Warn("public connection dropped: cannot open stream", "err", err)
			return
		}
	}
	if car == nil {
		if ss.res == nil {
			_ = abortConn(pc)
			return
		}
		if hc = ss.res.holdNew(h); hc == nil {
			_ = abortConn(pc)
			pl.st.refused.Add(1)
			ss.res.refusedWhileAway(log, tunnel)
			return
		}
		side = hc.rc
		log.Debug("public connection held: the client is away")
	}
	if !ss.parts.enter() {
		_ = abortConn(pc) // the session is ending
		_ = side.Abort()
		ss.res.forget(hc)
		return
	}
	if hc != nil {
		ss.res.track(ss, hc)
	}
	log.Debug("public connection open")
	joined = true
	lc := &proxy.Live{ID: id, Owner: ss, Peer: h.RemoteAddr, Since: time.Now()}
	pl.st.Open(lc)
	// In the background: this goroutine, grown by the handshake, ends here.
	dr := &dialResult{dataConn: side}
	if fc, ok := pc.(*frontConn); ok {
		dr.failed = fc.serviceUnreachable
	}
	pair := proxy.Go(ss.ctx, pc, "public", dr, "stream", func(stats proxy.Stats, err error) {
		defer ss.parts.leave()
		defer ss.releaseConn(pl)
		pl.st.Close(lc, stats)
		ss.endIn.Add(uint64(stats.AToB))
		ss.endOut.Add(uint64(stats.BToA))
		ss.res.joinEnded(ss, hc)
		if errors.Is(err, errClosedByOperator) {
			log.Info("public connection closed by the operator", "in", stats.AToB, "out", stats.BToA)
			return
		}
		if errors.Is(err, errTunnelRemoved) {
			log.Info("public connection reset: its tunnel was removed and the drain is over", "err", err, "in", stats.AToB, "out", stats.BToA)
			return
		}
		if errors.Is(err, errServerShutdown) {
			log.Debug("public connection ended: server shutting down", "in", stats.AToB, "out", stats.BToA)
			return
		}
		if err != nil {
			var de *dialError
			if errors.As(err, &de) {
				pl.st.dialFailed.Add(1)
				log.Warn("public connection reset: client could not reach the local service", "err", de.msg)
				return
			}
			log.Info("public connection aborted", "cause", mux.Cause(err), "err", err, "in", stats.AToB, "out", stats.BToA)
			return
		}
		log.Debug("public connection closed", "in", stats.AToB, "out", stats.BToA)
	})
	lc.Run(pair)
}

// fitWelcome shortens w's error messages until it fits a frame: a welcome
// too large to send would leave the client with nothing. Names and
// addresses are bounded (at most max_tunnels_per_client results, names of
// at most 64 bytes), so only the messages can need it.
func fitWelcome(w *protocol.Welcome) *protocol.Welcome {
	for budget := 512; ; budget /= 2 {
		if _, err := protocol.AppendFrame(nil, protocol.Control{Type: protocol.TypeWelcome, Welcome: w}); err == nil || budget < 8 {
			return w
		}
		for i := range w.Tunnels {
			if e := w.Tunnels[i].Error; len(e) > budget {
				w.Tunnels[i].Error = runePrefix(e, budget) + "…"
			}
		}
	}
}

// authenticatedAs is the name to tell a client in its welcome: its
// identity, when that is not what it declared.
func authenticatedAs(id *identity) string {
	if id.declared == "" {
		return ""
	}
	return id.name
}

// takeConn counts a new public connection of pl against the client's and
// the tunnel's limits; past one it counts nothing and returns the limit
// and its name.
func (ss *session) takeConn(pl *publicListener) (int, string) {
	perTunnel, perClient := pl.conns.Add(1), ss.conns.Add(1)
	if n := ss.lim().maxConnsPerTunnel; n > 0 && perTunnel > int64(n) {
		ss.releaseConn(pl)
		return n, "max_connections_per_tunnel"
	}
	if n := ss.lim().maxConns; n > 0 && perClient > int64(n) {
		ss.releaseConn(pl)
		return n, "max_connections (per client)"
	}
	return 0, ""
}

func (ss *session) releaseConn(pl *publicListener) {
	pl.conns.Add(-1)
	ss.conns.Add(-1)
}

// refusalLogEvery bounds the log lines of a tunnel at its connection limit.
const refusalLogEvery = 10 * time.Second

func (pl *publicListener) noteRefused(log *slog.Logger, limit int, what string) {
	pl.refusedMu.Lock()
	pl.refused++
	if time.Since(pl.refusedLog) < refusalLogEvery {
		pl.refusedMu.Unlock()
		return
	}
	n := pl.refused
	pl.refused, pl.refusedLog = 0, time.Now()
	pl.refusedMu.Unlock()
	log.Warn("public connections refused: the client is at its connection limit", "limit", what, "max", limit, "refused", n,
		"hint", "raise "+what+" in tunneld.toml if this load is expected")
}

// portHeldError refuses a port another client holds. The client is told
// the port is taken, not by whom: who else uses this server is the
// operator's business; the server's log names the holder.
type portHeldError struct {
	port   int
	holder string
}

func (e *portHeldError) Error() string {
	return fmt.Sprintf("port %d is held by another client; the tunnel comes up when that client lets go, or choose another remote_port", e.port)
}

// clipLen is the most of a string from an unauthenticated peer that goes
// into a log line or an error: client names are at most 64 bytes.
const clipLen = 64

// clip shortens s to clipLen bytes on a rune boundary, saying how long it
// was.
func clip(s string) string {
	if len(s) <= clipLen {
		return s
	}
	return fmt.Sprintf("%s…(%d bytes)", runePrefix(s, clipLen), len(s))
}

// runePrefix is at most the first n bytes of s, cut on a rune boundary.
func runePrefix(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// tlsHint turns the usual TLS handshake failures into what to fix.
func tlsHint(err error) string {
	var rh tls.RecordHeaderError
	var op *net.OpError
	var ne net.Error
	switch {
	case errors.As(err, &rh):
		return "the peer does not speak TLS: tunnelc speaks it unless its tunnel.toml says tls = \"off\" (or [tls] enabled = false); remove that"
	case errors.As(err, &op) && op.Op == "remote error":
		// crypto/tls reports an alert from the peer so; its type is
		// unexported. In the handshake it is almost always this:
		return "the client rejected this server's certificate: pin its fingerprint (`tunneld fingerprint`) or set ca_file and server_name under [tls] in its tunnel.toml"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "the peer sent no TLS handshake within handshake_timeout"
	}
	return "see the TLS error"
}
