// Package server is tunneld: it accepts sessions from tunnelc, checks them,
// binds a public listener per tunnel, and turns every public connection into
// a data stream to the client that owns the port.
//
// It owns the registry of sessions and ports: one live session per client
// name (a newer one takes over), one owner per port. It must not parse TOML:
// it is handed a validated *config.Server.
package server

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/mux"
	"github.com/tunnel-dev/tunnel/internal/proxy"
	"github.com/tunnel-dev/tunnel/internal/sockopt"
	"github.com/tunnel-dev/tunnel/internal/tlsconf"
)

// frontFailuresPerMinute is the shared web ports' gate's bound on failed
// handshakes per address: none in effect. A visitor's bad request is
// answered and counted there, not held against its address.
const frontFailuresPerMinute = 1 << 30

// Server is a running tunneld. Start binds, Serve runs until its context
// ends; both are called once.
type Server struct {
	cfg  atomic.Pointer[config.Server] // replaced whole by Reload; read with config()
	log  *slog.Logger
	opts mux.Options

	ln net.Listener

	regMu    sync.Mutex // serialises registration, so takeovers never interleave
	mu       sync.Mutex // guards the maps below
	sessions map[string]*session
	ports    map[int]*session
	bans     map[string]ban // kicked clients kept out for a while (ban.go)

	wg      sync.WaitGroup // every goroutine the server starts
	connSeq atomic.Uint64
	leases  *leases
	gate    *gate // bounds what unauthenticated peers cost
	// frontGate bounds the connections of the shared web ports still
	// being read to be routed, in all and per address, by the same
	// limits: a peer that opens connections and says nothing holds at
	// most handshake_limit_per_address of them, for header_timeout.
	frontGate *gate

	fingerprint string                        // of the certificate presented at start; "" without TLS
	clientCAs   atomic.Pointer[x509.CertPool] // client certificates must chain to these; nil: none asked for
	certs       atomic.Pointer[certSource]    // what TLS handshakes present; Reload replaces it

	started time.Time
	met     *serverMetrics

	// The shared ports of web tunnels ([web]); nil when off.
	httpLn, httpsLn         net.Listener
	httpRoutes, tlsRoutes   *router
	httpSuffix, httpsSuffix string
	webTLS                  *tls.Config // https terminated here; nil without [web] cert_file
	statsMu                 sync.Mutex  // guards stats
	stats                   map[string]*tunnelStats
}

// New prepares a server. cfg must be validated and have a token.
func New(cfg *config.Server, log *slog.Logger) (*Server, error) {
	if cfg.Token == "" && len(cfg.Clients) == 0 {
		return nil, errors.New("server: no token and no [[clients]]")
	}
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
		// A client opens its control stream and nothing else; the
		// server opens every data stream.
		IncomingStreams: 1,
	}
	certs, clientCAs, fingerprint, err := serverTLS(cfg, log)
	if err != nil {
		return nil, err
	}
	ls, err := openLeases(cfg.StateDir, cfg.PortLease.D(), log)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (tunneld must be able to write there; or set state_dir = \"\" to keep port leases in memory only)", cfg.File, err)
	}
	s := &Server{log: log, opts: opts, fingerprint: fingerprint, sessions: map[string]*session{}, ports: map[int]*session{}, leases: ls,
		started: time.Now(), stats: map[string]*tunnelStats{},
		gate:      newGate(cfg.HandshakeLimit, cfg.HandshakeLimitPerAddress, cfg.FailedHandshakesPerMinute, log),
		frontGate: newGate(cfg.HandshakeLimit, cfg.HandshakeLimitPerAddress, frontFailuresPerMinute, log.With("gate", "shared web ports"))}
	s.cfg.Store(cfg)
	s.clientCAs.Store(clientCAs)
	if certs != nil {
		s.certs.Store(certs)
		s.opts.TLS = tlsconf.Server(s.certificate, clientCAs)
	}
	s.met = newServerMetrics(s)
	s.opts.OnRTT = func(d time.Duration) { s.met.rtt.Observe(d.Seconds()) }
	return s, nil
}

// startWeb binds the shared ports of [web].
func (s *Server) startWeb(ctx context.Context) error {
	cfg := s.config()
	var lc net.ListenConfig
	if a := cfg.Web.HTTPAddr; a != "" {
		ln, err := lc.Listen(ctx, "tcp", a)
		if err != nil {
			return fmt.Errorf("%s: web.http_addr: %w", cfg.File, err)
		}
		s.httpLn, s.httpRoutes, s.httpSuffix = ln, newRouter(), portSuffix(ln, 80)
		s.log.Info("listening for http tunnels", "addr", ln.Addr().String(), "domains", fmt.Sprint(cfg.Web.Domains))
	}
	if a := cfg.Web.HTTPSAddr; a != "" {
		var wt *tls.Config
		var err error
		if cfg.Web.ACMEEmail != "" {
			// Automatic certificates replace cert_file: it is not loaded.
			if wt, err = s.acmeTLS(cfg); err != nil {
				return fmt.Errorf("%s: %w", cfg.File, err)
			}
		} else if wt, err = webTLSConfig(cfg, func(err error) { s.log.Error("[web] certificate reload failed", "err", err) }); err != nil {
			return fmt.Errorf("%s: web.cert_file: %w", cfg.File, err)
		}
		ln, err := lc.Listen(ctx, "tcp", a)
		if err != nil {
			if s.httpLn != nil {
				s.httpLn.Close()
			}
			return fmt.Errorf("%s: web.https_addr: %w", cfg.File, err)
		}
		s.httpsLn, s.tlsRoutes, s.httpsSuffix, s.webTLS = ln, newRouter(), portSuffix(ln, 443), wt
		s.log.Info("listening for https tunnels", "addr", ln.Addr().String(), "terminates", wt != nil)
	}
	return nil
}

// config is the configuration the server runs with now.
func (s *Server) config() *config.Server { return s.cfg.Load() }

// Start binds the session listener.
func (s *Server) Start(ctx context.Context) error {
	ln, err := mux.Listen(ctx, s.config().Listen, s.opts)
	if err != nil {
		return fmt.Errorf("session port: %w", err)
	}
	s.ln = ln
	if err := s.startWeb(ctx); err != nil {
		ln.Close()
		return err
	}
	leases := "off"
	switch {
	case s.leases.ttl > 0 && s.leases.path != "":
		leases = s.leases.path
	case s.leases.ttl > 0:
		leases = "in memory (set state_dir to keep them across restarts)"
	}
	s.log.Info("listening for sessions", "addr", ln.Addr().String(), "tls", s.opts.TLS != nil,
		"allow_ports", fmt.Sprint(s.config().Ports), "port_leases", leases)
	if s.opts.TLS == nil {
		s.log.Warn("TLS is off: tokens and all tunnel traffic cross the network in cleartext; remove tls = \"off\" from " + s.config().File + " unless something else encrypts the path")
	}
	return nil
}

// Fingerprint is the SHA-256 fingerprint of the certificate tunneld
// presented at start ("" without TLS).
func (s *Server) Fingerprint() string { return s.fingerprint }

// publicAddr is a public port as clients are told it.
func (s *Server) publicAddr(port int) string {
	return net.JoinHostPort(s.config().AdvertisedHost(), strconv.Itoa(port))
}

// HTTPAddr and HTTPSAddr are the shared web ports (after Start; nil when
// off).
func (s *Server) HTTPAddr() net.Addr  { return addrOfListener(s.httpLn) }
func (s *Server) HTTPSAddr() net.Addr { return addrOfListener(s.httpsLn) }

func addrOfListener(ln net.Listener) net.Addr {
	if ln == nil {
		return nil
	}
	return ln.Addr()
}

// Addr is the bound session address (after Start).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Sessions counts the sessions up now. It takes the server's lock, so it
// doubles as a liveness probe for the systemd watchdog.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Pending maps "client/tunnel" to why that tunnel is still waiting for its
// port, for every live session.
func (s *Server) Pending() map[string]string {
	s.mu.Lock()
	all := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		all = append(all, ss)
	}
	s.mu.Unlock()
	out := map[string]string{}
	for _, ss := range all {
		for name, why := range ss.pendingReasons() {
			out[ss.client+"/"+name] = why
		}
	}
	return out
}

// Serve accepts sessions until ctx ends, then says goodbye to every client,
// closes every session and public listener, and returns once every
// goroutine it started has returned. It returns nil after a shutdown and an
// error only if the listener fails.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.ln.Close() })
	defer stop()
	sweepDone := make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(s.gate.interval)
		defer t.Stop()
		for {
			select {
			case now := <-t.C:
				s.gate.sweep()
				s.frontGate.sweep()
				s.sweepStats(now)
				for _, rt := range []*router{s.httpRoutes, s.tlsRoutes} {
					if rt != nil {
						rt.sweep(now)
					}
				}
			case <-sweepDone:
				s.gate.sweep()
				s.frontGate.sweep()
				return
			}
		}
	}()
	for _, f := range []struct {
		ln     net.Listener
		what   string
		handle func(net.Conn, string)
	}{
		{s.httpLn, "http", func(c net.Conn, peer string) { s.serveHTTPConn(c, "http", s.httpRoutes, peer) }},
		{s.httpsLn, "https", s.serveTLSConn},
	} {
		if f.ln == nil {
			continue
		}
		stopFront := context.AfterFunc(ctx, func() { f.ln.Close() })
		defer stopFront()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveFront(ctx, f.ln, f.what, f.handle)
		}()
	}
	err := s.acceptLoop(ctx)
	close(sweepDone)
	s.ln.Close()
	for _, ln := range []net.Listener{s.httpLn, s.httpsLn} {
		if ln != nil {
			ln.Close()
		}
	}

	s.mu.Lock()
	all := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		all = append(all, ss)
	}
	s.mu.Unlock()
	for _, ss := range all {
		ss.shutdown(EndShutdown, "server shutting down")
	}
	s.wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (s *Server) acceptLoop(ctx context.Context) error {
	var delay time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() || isResourceErr(err) {
				// Back off like net/http: EMFILE and friends pass.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "err", err, "delay", delay)
				select {
				case <-time.After(delay):
				case <-ctx.Done():
					return nil
				}
				continue
			}
			return fmt.Errorf("accept sessions: %w", err)
		}
		delay = 0
		done, why := s.gate.admit(addrOf(c.RemoteAddr()))
		if why != "" {
			s.met.handshakeFailed("limited")
			// No goroutine, no log line of its own: the address's
			// summary counts it (gate.sweep).
			_ = sockopt.Abort(c)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handleConn(ctx, c, done)
		}()
	}
}

func newID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
