// Package client is tunnelc: it keeps one session to tunneld up, registers
// the configured tunnels on it, and joins every data stream the server opens
// to a fresh connection to the tunnel's local service.
//
// Contract of Run: it returns nil when its context ends, a *PermanentError
// when the server refuses the client in a way only a config change can fix,
// and otherwise reconnects with exponential backoff and full jitter. It must
// not parse TOML: it is handed a validated *config.Client.
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/internal/protocol"
	"github.com/tunnel-dev/tunnel/internal/proxy"
	"github.com/tunnel-dev/tunnel/internal/resume"
	"github.com/tunnel-dev/tunnel/internal/sockopt"
	"github.com/tunnel-dev/tunnel/internal/tlsconf"
)

// healthyAfter is how long a session must live for the backoff to reset.
const healthyAfter = time.Minute

// PermanentError is a refusal that retrying cannot fix.
type PermanentError struct {
	Code string
	Msg  string
}

func (e *PermanentError) Error() string {
	if e.Code == "tls" {
		return fmt.Sprintf("server not trusted: %s [%s]", e.Msg, e.Code)
	}
	return fmt.Sprintf("server refused: %s [%s]", e.Msg, e.Code)
}

// Client is a running tunnelc.
type Client struct {
	setup atomic.Pointer[setup]
	log   *slog.Logger

	mu     sync.Mutex
	status Status
	// picked remembers the port the server chose for each remote_port = 0
	// tunnel, so the next session asks for it again.
	picked map[string]int

	// line is the resumable session's state across its carriers (see
	// resume.go); nil when there is none. Only Run's goroutine sets it.
	line *lineage
	// handover is the mux session a reload replaced, open until its
	// successor's handshake is over; only Run's goroutine touches it.
	handover *mux.Session
	// cur is the session up now (under mu); reloadMu serialises reloads.
	cur      *session
	reloadMu sync.Mutex

	started time.Time
	// Under mu, for the status report: the session's mux, when it came
	// up, and why the last one ended or failed.
	ys      *mux.Session
	since   time.Time
	lastErr string

	statsMu sync.Mutex // guards tallies
	tallies map[string]*tunnelStats
	met     *clientMetrics
}

// config is the configuration the client runs with now.
func (c *Client) config() *config.Client { return c.setup.Load().cfg }

// options are the session options made from it.
func (c *Client) options() mux.Options { return c.setup.Load().opts }

// Status is what the client currently has, for tests and diagnostics.
type Status struct {
	Connected bool
	Session   string
	// Public maps each tunnel that is up to its public address.
	Public map[string]string
	// Pending maps each tunnel the server refused for now, and keeps
	// trying in this session, to the reason (say, its port is held).
	Pending map[string]string
	// Sessions counts sessions established since start, resumed ones
	// included.
	Sessions int
	// Resumes counts the sessions that were resumes of a lost one.
	Resumes int
}

// New prepares a client.
func New(cfg *config.Client, log *slog.Logger) (*Client, error) {
	c := &Client{log: log.With("client", cfg.Name), started: time.Now()}
	c.met = newClientMetrics(c)
	su, err := c.newSetup(cfg, log)
	if err != nil {
		return nil, err
	}
	c.setup.Store(su)
	return c, nil
}

// setup is what the client runs with: its config and the session options
// made from it. A reload replaces it whole; a session keeps the one it
// was made with for its handshake and transport.
type setup struct {
	cfg  *config.Client
	opts mux.Options
}

func (c *Client) newSetup(cfg *config.Client, log *slog.Logger) (*setup, error) {
	opts := mux.Options{
		KeepAlive:         cfg.KeepAlive.Session.Sock(),
		UserTimeout:       cfg.KeepAlive.Session.UserTimeout.D(),
		HeartbeatInterval: cfg.KeepAlive.Session.HeartbeatInterval.D(),
		HeartbeatTimeout:  cfg.KeepAlive.Session.HeartbeatTimeout.D(),
		HandshakeTimeout:  cfg.HandshakeTimeout.D(),
		// A parked stream's data goes straight into the joined socket,
		// a copy buffer's worth per write.
		DeliverBuffer:   proxy.BufSize,
		Logger:          log,
		StreamWindowCap: uint32(cfg.Window.StreamMax),
		WindowBudget:    uint64(cfg.Window.SessionBudget),
	}
	t, err := clientTLS(cfg)
	if err != nil {
		return nil, err
	}
	opts.TLS = t
	switch {
	case t == nil:
		log.Warn("TLS is off: the token and all tunnel traffic cross the network in cleartext; remove tls = \"off\" from " + cfg.File + " unless something else encrypts the path")
	case cfg.TLS.InsecureSkipVerify:
		log.Warn("server certificate NOT verified (insecure_skip_verify): anyone on the path can pose as the server and read the token; pin its fingerprint instead (`tunneld fingerprint` on the server)")
	}
	opts.OnRTT = func(d time.Duration) { c.met.rtt.Observe(d.Seconds()) }
	return &setup{cfg: cfg, opts: opts}, nil
}

// clientTLS builds the session's TLS from [tls] (nil when off).
func clientTLS(cfg *config.Client) (*tls.Config, error) {
	if !cfg.TLS.Enabled() {
		return nil, nil
	}
	c := tlsconf.Client{ServerName: cfg.TLS.ServerName, Fingerprint: cfg.TLS.Fingerprint, Insecure: cfg.TLS.InsecureSkipVerify}
	if c.ServerName == "" {
		c.ServerName, _, _ = net.SplitHostPort(cfg.Server)
	}
	if cfg.TLS.CAFile != "" {
		pool, err := tlsconf.LoadCAs(cfg.TLS.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%s: tls.ca_file: %w", cfg.File, err)
		}
		c.RootCAs = pool
	}
	if cfg.TLS.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s: tls.cert_file: %w", cfg.File, err)
		}
		c.Cert = &cert
	}
	return c.Config(), nil
}

// Status returns a copy of the current status.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.status
	s.Public = make(map[string]string, len(c.status.Public))
	for k, v := range c.status.Public {
		s.Public[k] = v
	}
	s.Pending = make(map[string]string, len(c.status.Pending))
	for k, v := range c.status.Pending {
		s.Pending[k] = v
	}
	return s
}

// Run keeps a session up until ctx ends; see the package doc.
func (c *Client) Run(ctx context.Context) error {
	// Whatever ends Run ends the connections held for a resume.
	defer c.endLine(ErrShuttingDown)
	defer c.closeHandover()
	attempt := 0
	for {
		start := time.Now()
		err := c.runSession(ctx)
		c.mu.Lock()
		c.status.Connected, c.status.Session, c.status.Public, c.status.Pending = false, "", nil, nil
		c.ys = nil
		if err != nil {
			c.lastErr = err.Error()
		}
		c.mu.Unlock()
		if ctx.Err() != nil {
			return nil
		}
		var perm *PermanentError
		if errors.As(err, &perm) {
			return err
		}
		if errors.Is(err, errReconfigured) {
			attempt = 0
			continue // at once: the server hands the ports over
		}
		if p := c.tlsVerifyError(err); p != nil {
			c.log.Error("server certificate rejected; not retrying", "err", err)
			return p
		}
		if time.Since(start) >= healthyAfter {
			attempt = 0
		}
		attempt++
		most := c.config().Reconnect.MaxDelay.D()
		if c.line != nil && c.line.alive() {
			// Connections wait for this session: try often while it can
			// still be resumed.
			most = min(most, resumeRetryMax)
		}
		delay := backoff(attempt, min(c.config().Reconnect.MinDelay.D(), most), most)
		c.met.reconnects.Inc()
		c.log.Warn("reconnecting", "attempt", attempt, "delay", delay.Round(time.Millisecond), "after", err)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil
		}
	}
}

// tlsVerifyError turns a failed verification of the server's certificate
// into a PermanentError that says what to fix: retrying cannot make an
// untrusted certificate trusted, and a client retrying forever looks
// connected to nobody.
func (c *Client) tlsVerifyError(err error) *PermanentError {
	if errors.Is(err, tlsconf.ErrClientCertRequired) {
		return &PermanentError{Code: "tls", Msg: fmt.Sprintf(
			"the server requires a client certificate: set cert_file and key_file under [tls] in %s to a certificate its operator issued for this client", c.config().File)}
	}
	var fe *tlsconf.FingerprintError
	if errors.As(err, &fe) {
		return &PermanentError{Code: "tls", Msg: fmt.Sprintf(
			"the server presented a certificate with fingerprint %s, but tls.fingerprint in %s pins %s. "+
				"If the server's certificate was replaced on purpose (compare `tunneld fingerprint` on the server), pin the new one; otherwise something is between you and the server",
			fe.Got, c.config().File, fe.Want)}
	}
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	if !errors.As(err, &cv) && !errors.As(err, &ua) && !errors.As(err, &he) && !errors.As(err, &ci) {
		return nil
	}
	msg := fmt.Sprintf("the server's certificate did not verify (%v)", unwrapAll(err))
	if fp := tlsconf.Presented(err); fp != "" {
		msg += fmt.Sprintf("; it presented fingerprint %s. If that is your tunneld's own certificate (compare `tunneld fingerprint` on the server), pin it with fingerprint = %q under [tls] in %s; "+
			"if it has a CA-signed certificate, set ca_file to that CA and server_name to a name it is issued for", fp, fp, c.config().File)
	} else {
		msg += fmt.Sprintf(": set ca_file to the CA that signed it and server_name to a name it is issued for, or pin its fingerprint, under [tls] in %s", c.config().File)
	}
	return &PermanentError{Code: "tls", Msg: msg}
}

// unwrapAll is the innermost error of a chain, for a message that names
// the cause once.
func unwrapAll(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

// backoff is exponential with full jitter: uniform in [0, min(max, lo*2^(n-1))].
func backoff(n int, lo, hi time.Duration) time.Duration {
	ceil := hi
	if n < 32 {
		ceil = min(hi, lo<<(n-1))
	}
	return rand.N(ceil + 1)
}

// session is one established session; runSession owns it.
type session struct {
	c       *Client
	line    *lineage // nil when the session is not resumable
	id      string
	ys      *mux.Session
	ctrl    *mux.Stream
	log     *slog.Logger
	tmu     sync.RWMutex // guards tunnels: a pending tunnel joins it later
	tunnels map[string]*config.Tunnel
	wg      sync.WaitGroup
	goodbye atomic.Pointer[string]
	ctrlMu  sync.Mutex // one writer at a time on the control stream
	// ctx ends when the session does, with the reason as its cause; every
	// dial and join of the session runs under it.
	ctx    context.Context
	cancel context.CancelCauseFunc
	// replace, called by a reload that needs a new session, ends the
	// accept loop and leaves the mux session open until its successor
	// is welcomed (see Reload).
	replace  context.CancelFunc
	replaced context.Context
}

// ErrShuttingDown is the cause of a session's connections ending because
// tunnelc is stopping.
var ErrShuttingDown = errors.New("client shutting down")

func (c *Client) runSession(ctx context.Context) error {
	su := c.setup.Load()
	cfg := su.cfg
	conn, err := mux.Dial(ctx, cfg.Server, su.opts)
	if err != nil {
		c.closeHandover()
		c.met.sessionEnded(EndUnreachable)
		return fmt.Errorf("cannot reach server: %w", err)
	}
	ys, err := mux.Client(conn, su.opts)
	if err != nil {
		conn.Close()
		c.closeHandover()
		return fmt.Errorf("session setup: %w", err)
	}
	handedOver := false
	defer func() {
		if !handedOver {
			ys.Close()
		}
	}()
	ctrl, welcome, err := c.handshake(su, ys)
	// The server has taken over from the session a reload replaced (or
	// refused us): it goes now.
	c.closeHandover()
	if err != nil {
		var perm *PermanentError
		if errors.As(err, &perm) {
			c.met.sessionEnded(EndRefused)
		} else {
			c.met.sessionEnded(EndHandshake)
		}
		if errors.As(err, &perm) && perm.Code == protocol.CodeResume {
			// Not ours to resume after all: start afresh.
			c.endLine(errResumeRefused)
			return fmt.Errorf("%s; starting a new session", perm.Msg)
		}
		return err
	}
	ss := &session{c: c, id: welcome.Session, ys: ys, ctrl: ctrl, tunnels: map[string]*config.Tunnel{}}
	ss.log = c.log.With("session", ss.id)
	ss.ctx, ss.cancel = context.WithCancelCause(ctx)
	defer ss.cancel(nil)
	ss.replaced, ss.replace = context.WithCancel(context.Background())
	defer ss.replace()
	ss.line = c.carryOn(ctx, welcome, ss.log)

	public, pending := map[string]string{}, map[string]string{}
	var perm []string
	for _, r := range welcome.Tunnels {
		t := cfg.Tunnels[r.Name]
		if t == nil {
			continue
		}
		switch {
		case r.OK:
			ss.tunnels[r.Name] = t
			public[r.Name] = r.Public
			ss.log.Info("tunnel ready", "tunnel", r.Name, "public", r.Public, "local", t.Local)
		case r.Pending:
			pending[r.Name] = r.Error
			ss.log.Warn("tunnel refused for now; the server keeps trying", "tunnel", r.Name, "code", r.Code, "err", r.Error)
		default:
			ss.log.Error("tunnel refused by server", "tunnel", r.Name, "code", r.Code, "err", r.Error)
			if r.Code == protocol.CodePortNotAllowed || r.Code == protocol.CodeInvalidTunnel || r.Code == protocol.CodeHostNotAllowed {
				perm = append(perm, fmt.Sprintf("tunnel %q: %s (fix [tunnels.%s] in %s)", r.Name, r.Error, r.Name, cfg.File))
			}
		}
	}
	if len(perm) > 0 || len(public) == 0 && len(pending) == 0 {
		c.met.sessionEnded(EndRefused)
	}
	if len(perm) > 0 {
		ss.sayGoodbye("tunnel refused")
		return &PermanentError{Code: protocol.CodeInvalidTunnel, Msg: fmt.Sprint(perm)}
	}
	if len(public) == 0 && len(pending) == 0 {
		// Leaving on purpose: say so, or tunneld logs a lost session.
		ss.sayGoodbye("no tunnel could be registered")
		return errors.New("no tunnel could be registered")
	}
	c.mu.Lock()
	for name, addr := range public {
		c.rememberPickedLocked(name, addr)
	}
	c.status.Connected, c.status.Session, c.status.Public, c.status.Pending = true, ss.id, public, pending
	c.ys, c.since, c.cur = ys, time.Now(), ss
	c.status.Sessions++
	if welcome.Resumed {
		c.status.Resumes++
	}
	c.mu.Unlock()
	if welcome.Client != "" {
		// The server names this client by its credentials; the configured
		// name is only a label.
		ss.log.Info("session up", "server", cfg.Server, "tunnels", len(public), "pending", len(pending), "authenticated_as", welcome.Client)
	} else {
		ss.log.Info("session up", "server", cfg.Server, "tunnels", len(public), "pending", len(pending))
	}

	// On shutdown the server closes the session when it reads the goodbye
	// (see protocol.Goodbye); closeLater only bounds the wait.
	var closeLater atomic.Pointer[time.Timer]
	stop := context.AfterFunc(ctx, func() {
		ss.sayGoodbye("client shutting down")
		closeLater.Store(time.AfterFunc(protocol.GoodbyeWait, func() { ys.Close() }))
	})
	defer func() {
		stop()
		if t := closeLater.Load(); t != nil {
			t.Stop()
		}
	}()
	ss.wg.Add(1)
	go func() {
		defer ss.wg.Done()
		ss.readControl()
	}()
	if welcome.Resumed {
		ss.reconcile(welcome.Tunnels)
	}
	err = ss.acceptLoop()
	handedOver = ss.replaced.Err() != nil && ctx.Err() == nil && !ys.IsClosed()
	if handedOver {
		// The control reader waits on the open session: wake it.
		_ = ctrl.SetReadDeadline(time.Now())
	} else {
		ys.Close()
	}
	// Every connection of the session ends with it, whatever its state:
	// one waiting on a silent local service would otherwise hold the
	// reconnect (wg.Wait) for as long as the service stays silent.
	switch {
	case ctx.Err() != nil:
		ss.cancel(ErrShuttingDown)
	case handedOver:
		ss.cancel(errReconfigured)
	default:
		ss.cancel(mux.ErrSessionLost)
	}
	ss.wg.Wait()
	c.mu.Lock()
	c.cur = nil
	c.mu.Unlock()
	if handedOver {
		c.met.sessionEnded(EndReconfigured)
		c.endLine(errReconfigured)
		c.handover = ys
		ss.log.Info("session replaced to apply the reloaded config; its connections end", "server", cfg.Server)
		return errReconfigured
	}
	if ctx.Err() != nil {
		c.met.sessionEnded(EndShutdown)
		ss.log.Info("session closed", "reason", "client shutting down")
		return nil
	}
	if r := ss.goodbye.Load(); r != nil {
		c.met.sessionEnded(EndServerClosed)
		ss.log.Info("session closed by server", "reason", *r)
		c.endLine(errClosedByServer)
		return fmt.Errorf("server closed the session: %s", *r)
	}
	c.met.sessionEnded(ss.ys.CauseKind(err))
	if ss.line != nil {
		n := ss.line.goAway()
		ss.log.Error("session lost; holding its connections to resume it", "server", cfg.Server, "cause", ss.ys.Cause(err), "err", err,
			"connections", n, "resume_window", ss.line.window)
	} else {
		ss.log.Error("session lost", "server", cfg.Server, "cause", ss.ys.Cause(err), "err", err)
	}
	return fmt.Errorf("session lost: %s", ss.ys.Cause(err))
}

// handshake sends hello and reads the answer, each under a deadline.
func (c *Client) handshake(su *setup, ys *mux.Session) (*mux.Stream, *protocol.Welcome, error) {
	cfg := su.cfg
	ctrl, err := ys.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("open control stream: %w", err)
	}
	hello := &protocol.Hello{Version: protocol.Version, Client: cfg.Name, Token: cfg.Token,
		ResumeWindow: cfg.ResumeWindow.D().Milliseconds()}
	if l := c.line; l != nil && l.alive() {
		hello.Resume = &protocol.ResumeRequest{Session: l.session, Secret: l.secret}
	}
	for _, name := range cfg.TunnelNames() {
		hello.Tunnels = append(hello.Tunnels, c.tunnelRequest(name, cfg.Tunnels[name]))
	}
	deadline := time.Now().Add(su.opts.HandshakeTimeout)
	_ = ctrl.SetDeadline(deadline)
	if err := protocol.WriteFrame(ctrl, protocol.Control{Type: protocol.TypeHello, Hello: hello}); err != nil {
		return nil, nil, fmt.Errorf("send hello: %w", err)
	}
	var m protocol.Control
	if err := protocol.ReadFrame(ctrl, &m); err != nil {
		hint := "is %s a tunneld, and do both sides agree on TLS?"
		if cfg.TLS.CertFile != "" {
			hint = "is %s a tunneld, and does it trust this client's certificate?"
		}
		return nil, nil, fmt.Errorf("read welcome ("+hint+"): %w", cfg.Server, err)
	}
	_ = ctrl.SetDeadline(time.Time{})
	switch {
	case m.Type == protocol.TypeError && m.Error != nil:
		switch m.Error.Code {
		case protocol.CodeInternal:
			return nil, nil, fmt.Errorf("server error: %s", m.Error.Message)
		case protocol.CodeBanned:
			return nil, nil, fmt.Errorf("server refused us for now: %s", m.Error.Message)
		}
		return nil, nil, &PermanentError{Code: m.Error.Code, Msg: m.Error.Message}
	case m.Type == protocol.TypeWelcome && m.Welcome != nil:
		return ctrl, m.Welcome, nil
	}
	return nil, nil, fmt.Errorf("unexpected reply %q to hello", m.Type)
}

func (ss *session) sayGoodbye(reason string) {
	_ = ss.send(protocol.Control{Type: protocol.TypeGoodbye, Goodbye: &protocol.Goodbye{Reason: reason}}, time.Second)
}

// send writes one control message, within timeout.
func (ss *session) send(m protocol.Control, timeout time.Duration) error {
	ss.ctrlMu.Lock()
	defer ss.ctrlMu.Unlock()
	_ = ss.ctrl.SetWriteDeadline(time.Now().Add(timeout))
	defer ss.ctrl.SetWriteDeadline(time.Time{})
	return protocol.WriteFrame(ss.ctrl, m)
}

// tunnelRequest is what the server is asked for tunnel name.
func (c *Client) tunnelRequest(name string, t *config.Tunnel) protocol.TunnelRequest {
	req := protocol.TunnelRequest{Name: name, Type: t.Type, RemotePort: t.RemotePort}
	switch t.Type {
	case config.TypeHTTP, config.TypeHTTPS:
		req.Web = &protocol.WebTunnel{Subdomain: t.Subdomain, Hostnames: t.Hostnames, Locations: t.Locations, HostHeader: t.HostHeader,
			Forwarded: t.Forwarded(), BasicAuth: t.BasicAuth, Terminate: t.TLSTermination == "server"}
	default:
		if t.RemotePort == 0 {
			c.mu.Lock()
			req.PreferPort = c.picked[name]
			c.mu.Unlock()
		}
	}
	return req
}

// rememberPickedLocked notes the port the server chose for a
// remote_port = 0 tunnel, so the next session asks for it again. The
// caller holds c.mu.
func (c *Client) rememberPickedLocked(name, addr string) {
	if c.picked == nil {
		c.picked = map[string]int{}
	}
	t := c.config().Tunnels[name]
	if _, p, err := net.SplitHostPort(addr); err == nil && t != nil && t.Type == config.TypeTCP && t.RemotePort == 0 {
		c.picked[name], _ = strconv.Atoi(p)
	}
}

// tunnel returns the config of a tunnel that is up in this session.
func (ss *session) tunnel(name string) *config.Tunnel {
	ss.tmu.RLock()
	defer ss.tmu.RUnlock()
	return ss.tunnels[name]
}

// tunnelResult takes the server's word on a tunnel that was pending or
// that a reload added: up, pending, or refused.
func (ss *session) tunnelResult(r *protocol.TunnelResult) {
	t := ss.c.config().Tunnels[r.Name]
	if t == nil {
		return // removed meanwhile
	}
	if !r.OK {
		c := ss.c
		c.mu.Lock()
		if c.status.Session == ss.id && r.Pending {
			if c.status.Pending == nil {
				c.status.Pending = map[string]string{}
			}
			c.status.Pending[r.Name] = r.Error
		}
		c.mu.Unlock()
		if r.Pending {
			ss.log.Warn("tunnel refused for now; the server keeps trying", "tunnel", r.Name, "code", r.Code, "err", r.Error)
		} else {
			ss.log.Error("tunnel refused by server", "tunnel", r.Name, "code", r.Code, "err", r.Error,
				"hint", fmt.Sprintf("fix [tunnels.%s] in %s and reload", r.Name, c.config().File))
		}
		return
	}
	ss.tmu.Lock()
	ss.tunnels[r.Name] = t
	ss.tmu.Unlock()
	c := ss.c
	c.mu.Lock()
	if c.status.Session == ss.id {
		if c.status.Public == nil {
			c.status.Public = map[string]string{}
		}
		c.status.Public[r.Name] = r.Public
		delete(c.status.Pending, r.Name)
	}
	c.rememberPickedLocked(r.Name, r.Public)
	c.mu.Unlock()
	ss.log.Info("tunnel ready", "tunnel", r.Name, "public", r.Public, "local", t.Local)
}

func (ss *session) readControl() {
	for {
		var m protocol.Control
		if err := protocol.ReadFrame(ss.ctrl, &m); err != nil {
			return
		}
		if m.Type == protocol.TypeTunnel && m.Tunnel != nil {
			ss.tunnelResult(m.Tunnel)
			continue
		}
		if m.Type == protocol.TypeGoodbye {
			r := "goodbye"
			if m.Goodbye != nil {
				r = m.Goodbye.Reason
			}
			ss.goodbye.Store(&r)
			ss.ys.Close()
			return
		}
	}
}

// acceptLoop hands every data stream to its own goroutine at once: it must
// never wait on a local dial, or yamux would close the whole session when a
// stream waits for acceptance longer than StreamOpenTimeout.
func (ss *session) acceptLoop() error {
	for {
		st, err := ss.ys.AcceptContext(ss.replaced)
		if err != nil {
			return err
		}
		ss.wg.Add(1)
		go ss.handleStream(st)
	}
}

// handleStream serves one data stream. It owns st.
//
// It calls ss.wg.Done once it has handed the connection to its join (or
// refused it); a join of a session that is not resumable calls it once
// the connection is over.
func (ss *session) handleStream(st *mux.Stream) {
	joined := false
	defer func() {
		if !joined {
			ss.wg.Done()
		}
	}()
	_ = st.SetReadDeadline(time.Now().Add(ss.c.options().HandshakeTimeout))
	var h protocol.StreamHeader
	if err := protocol.ReadFrame(st, &h); err != nil {
		st.Abort()
		ss.log.Warn("bad stream header", "err", err)
		return
	}
	_ = st.SetReadDeadline(time.Time{})
	log := ss.log.With("tunnel", h.Tunnel, "conn", h.Conn, "peer", h.RemoteAddr)
	if h.Resume {
		if !ss.resumeStream(st, &h, log) {
			return
		}
		// A connection taken while this client was away: new here.
	}
	t := ss.tunnel(h.Tunnel)
	if t == nil {
		ss.refuseStream(st, log, fmt.Sprintf("tunnel %q is not served by this client", h.Tunnel))
		return
	}
	// The tunnel side of the connection: the stream, or on a resumable
	// session a connection that outlives it, dialled and joined under the
	// lineage's context rather than the session's.
	var side joinable = st
	ctx := ss.ctx
	line := ss.line
	if !h.Resumable {
		line = nil
	}
	var rc *resume.Conn
	if line != nil {
		rc = resume.New(st, line.window)
		// A server that never acknowledges stalls the connection
		// instead of growing tunnelc: at most a stream window of ours.
		rc.LimitKept(int(ss.c.config().Window.StreamMax))
		side, ctx = rc, line.ctx
		if !line.add(h.Conn, rc) {
			_ = rc.Abort()
			return // the lineage ended meanwhile
		}
		defer line.wg.Done()
	}
	tally := ss.c.stats(h.Tunnel)
	local, err := proxy.DialLocal(ctx, t.Local, ss.c.config().KeepAlive.Local.Sock(), ss.c.config().DialTimeout.D())
	if err != nil {
		tally.noteDialFailed(err)
		ss.refuseStream(side, log, fmt.Sprintf("tunnel %q: dial %s: %v", h.Tunnel, t.Local, unwrapOp(err)))
		if rc != nil {
			line.closed(h.Conn, rc)
		}
		return
	}
	if v := t.ProxyProtocol; v != "" {
		if err := writeProxyHeader(local, v, &h); err != nil {
			_ = sockopt.Abort(local)
			ss.refuseStream(side, log, fmt.Sprintf("tunnel %q: PROXY header to %s: %v", h.Tunnel, t.Local, err))
			if rc != nil {
				line.closed(h.Conn, rc)
			}
			return
		}
	}
	if _, err := side.Write([]byte{protocol.DialOK}); err != nil {
		_ = sockopt.Abort(local)
		side.Abort()
		if rc != nil {
			line.closed(h.Conn, rc)
		}
		log.Info("stream gone before the local service answered", "err", err)
		return
	}
	log.Debug("joined", "local", t.Local)
	if line != nil {
		line.wg.Add(1)
	} else {
		joined = true
	}
	live := &proxy.Live{ID: h.Conn, Peer: h.RemoteAddr, Since: time.Now()}
	tally.Open(live)
	// In the background: this goroutine, grown by the handshake, ends here.
	pair := proxy.Go(ctx, side, "stream", local, "local", func(stats proxy.Stats, err error) {
		tally.Close(live, stats)
		if line != nil {
			defer line.wg.Done()
			line.closed(h.Conn, rc)
		} else {
			defer ss.wg.Done()
		}
		switch {
		case errors.Is(err, ErrShuttingDown):
			log.Debug("connection ended: client shutting down", "in", stats.AToB, "out", stats.BToA)
			return
		case err != nil:
			log.Info("connection aborted", "cause", mux.Cause(err), "err", err, "in", stats.AToB, "out", stats.BToA)
			return
		}
		log.Debug("connection closed", "in", stats.AToB, "out", stats.BToA)
	})
	live.Run(pair)
}

// joinable is the tunnel side of a connection: a stream or a resumable
// connection.
type joinable interface {
	net.Conn
	CloseWrite() error
	Abort() error
}

func (ss *session) refuseStream(s joinable, log *slog.Logger, msg string) {
	log.Warn("local service unreachable; public connection reset", "err", msg)
	_ = s.SetWriteDeadline(time.Now().Add(ss.c.options().HandshakeTimeout))
	_, err := s.Write([]byte{protocol.DialFailed})
	if err == nil {
		_ = protocol.WriteFrame(s, protocol.Error{Code: "dial", Message: msg})
	}
	// A half-close: the server resets the stream once it has read why.
	// A full close would reset it here if public data arrived meanwhile,
	// and that reset could overtake the reason.
	_ = s.CloseWrite()
}

// writeProxyHeader tells the local service who the public client is: a
// PROXY header, version v ("v1", "v2"), from the stream header's
// addresses, before any of the client's bytes.
func writeProxyHeader(local net.Conn, v string, h *protocol.StreamHeader) error {
	version := byte(1)
	if v == "v2" {
		version = 2
	}
	src, err := net.ResolveTCPAddr("tcp", h.RemoteAddr)
	if err != nil {
		return fmt.Errorf("public client address %q: %w", h.RemoteAddr, err)
	}
	dst, err := net.ResolveTCPAddr("tcp", h.PublicAddr)
	if err != nil {
		// A server that does not send it: the address we reached.
		dst = local.RemoteAddr().(*net.TCPAddr)
	}
	_ = local.SetWriteDeadline(time.Now().Add(5 * time.Second))
	defer local.SetWriteDeadline(time.Time{})
	_, err = proxyproto.HeaderProxyFromAddrs(version, src, dst).WriteTo(local)
	return err
}

// unwrapOp drops net.OpError's repetition of the address.
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}
