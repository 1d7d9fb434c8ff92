package server

// The shared ports' fronts: the accept loops of [web] http_addr and
// https_addr, and what each public connection goes through before it is
// handed to its tunnel's session like any other public connection.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tunnel-dev/tunnel/internal/sockopt"
)

// serveFront accepts on a shared port until it is closed; handle runs
// for each connection on a goroutine of the server's, with the public
// client's address (a trusted proxy's PROXY header read first).
func (s *Server) serveFront(ctx context.Context, ln net.Listener, what string, handle func(c net.Conn, peer string)) {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			if isResourceErr(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("shared port accept failed; retrying", "port", what, "err", err, "delay", delay)
				select {
				case <-time.After(delay):
				case <-ctx.Done():
					return
				}
				continue
			}
			s.log.Error("shared port failed", "port", what, "err", err)
			return
		}
		delay = 0
		done, why := s.frontGate.admit(addrOf(c.RemoteAddr()))
		if why != "" {
			_ = abortConn(c) // counted in the gate's summary
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer done(false) // routed, or refused: the front is done with it
			pc, err := s.proxied(c, s.config().Web.HeaderTimeout.D())
			if err != nil {
				s.log.Warn("shared port: connection dropped", "port", what, "err", err)
				_ = abortConn(c)
				return
			}
			handle(pc, pc.RemoteAddr().String())
		}()
	}
}

// frontConn is a public connection of an http tunnel as its stream sees
// it: each request read with net/http's parser and written anew (see
// webTunnel.writeHead); what the service answers passes through as it
// is. It is no syscall.Conn on purpose: package proxy must read it
// through Read, never the socket under it.
type frontConn struct {
	net.Conn
	br     *bufio.Reader
	lim    *headerLimit
	pl     *publicListener
	rt     *router
	scheme string
	peer   string
	max    int64
	idle   time.Duration
	header time.Duration

	next    *http.Request // the request to send next
	out     bytes.Buffer  // serialized request bytes not yet read
	body    io.ReadCloser
	chunked bool
	tmp     []byte
	raw     bool // after an Upgrade: bytes pass as they are
	done    bool

	wmu  sync.Mutex
	last []byte // a page to send once the service has finished (see CloseWrite)

	// answered: a page went out for a service the client could not
	// reach; the connection is then closed, not reset, so it arrives.
	answered atomic.Bool

	// reroute is a request for another tunnel: the stream ends before
	// it, and when the join is over (Close) the connection goes on to
	// that tunnel with it.
	reroute *http.Request
	srv     *Server
}

func (f *frontConn) RemoteAddr() net.Addr { return peerAddr(f.peer, f.Conn.RemoteAddr()) }

func (f *frontConn) Read(p []byte) (int, error) {
	for {
		if f.out.Len() > 0 {
			return f.out.Read(p)
		}
		if f.raw {
			return f.br.Read(p)
		}
		if f.body != nil {
			if err := f.readBody(); err != nil {
				return 0, err
			}
			continue
		}
		if f.done {
			return 0, io.EOF
		}
		f.nextRequest()
	}
}

// readBody moves the next piece of the current request's body to out.
func (f *frontConn) readBody() error {
	if f.tmp == nil {
		f.tmp = make([]byte, 32<<10)
	}
	n, err := f.body.Read(f.tmp)
	if n > 0 {
		if f.chunked {
			fmt.Fprintf(&f.out, "%x\r\n", n)
		}
		f.out.Write(f.tmp[:n])
		if f.chunked {
			f.out.WriteString("\r\n")
		}
	}
	switch {
	case errors.Is(err, io.EOF):
		if f.chunked {
			f.out.WriteString("0\r\n\r\n")
		}
		f.body.Close()
		f.body = nil
	case err != nil:
		return fmt.Errorf("request body: %w", err)
	}
	return nil
}

// nextRequest reads and checks the next request and queues it; one that
// may not pass ends the requests, with a page to send after the service
// has answered the ones before it.
func (f *frontConn) nextRequest() {
	r := f.next
	f.next = nil
	if r == nil {
		// The next request may be a while (idle_timeout); once it has
		// begun, its headers get header_timeout, as the first's did.
		_ = f.Conn.SetReadDeadline(time.Now().Add(f.idle))
		f.lim.n = f.max
		_, err := f.br.Peek(1)
		begun := err == nil
		if begun {
			deadline := time.Now().Add(f.header)
			_ = f.Conn.SetReadDeadline(deadline)
			r, err = http.ReadRequest(f.br)
			err = timedOut(err, deadline)
		}
		f.lim.n = -1
		_ = f.Conn.SetReadDeadline(time.Time{})
		if err != nil {
			f.done = true
			switch {
			case !begun:
				// Idle past idle_timeout, or closed: keep-alive's end.
			case errors.Is(err, os.ErrDeadlineExceeded):
				f.srv.met.webRefused(f.scheme, WebHeaderTimeout)
			case !errors.Is(err, io.EOF):
				f.srv.met.webRefused(f.scheme, WebBadRequest)
				f.finalPage(http.StatusBadRequest, "Bad Request", "The request could not be read.")
			}
			return
		}
		w := f.pl.web
		if rt, _ := f.rt.lookup(hostOf(r), r.URL.Path); rt == nil || rt.pl != f.pl {
			// Another tunnel's (or none's): the service answers what
			// came before, then the connection is routed afresh.
			f.done = true
			f.reroute = r
			return
		}
		if !w.authorized(r) {
			f.done = true
			f.srv.met.webRefused(f.scheme, WebUnauthorized)
			f.finalPage(http.StatusUnauthorized, "Unauthorized", "This tunnel needs a user name and password.", `WWW-Authenticate: Basic realm="tunnel"`)
			return
		}
	}
	f.pl.st.requests.Add(1)
	f.chunked = f.pl.web.writeHead(&f.out, r, f.peer, f.scheme)
	if r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
		f.body = r.Body
	}
	if upgrade(r) {
		f.raw = true
	}
}

func upgrade(r *http.Request) bool {
	return r.Header.Get("Upgrade") != "" && headerHas(r.Header, "Connection", "upgrade")
}

func headerHas(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for _, t := range bytes.Split([]byte(v), []byte(",")) {
			if bytes.EqualFold(bytes.TrimSpace(t), []byte(token)) {
				return true
			}
		}
	}
	return false
}

// finalPage is sent after the service's last answer (CloseWrite).
func (f *frontConn) finalPage(status int, title, text string, extra ...string) {
	var b bytes.Buffer
	writePage(&b, status, title, text, extra...)
	f.wmu.Lock()
	f.last = b.Bytes()
	f.wmu.Unlock()
}

func (f *frontConn) Write(p []byte) (int, error) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	return f.Conn.Write(p)
}

// CloseWrite follows the service's last byte with the page a refused
// request earned, then half-closes the public connection.
func (f *frontConn) CloseWrite() error {
	f.wmu.Lock()
	last := f.last
	f.last = nil
	reroute := f.reroute != nil
	f.wmu.Unlock()
	if reroute {
		return nil // the connection goes on (Close)
	}
	if last != nil {
		_, _ = f.Conn.Write(last)
	}
	return halfClose(f.Conn)
}

// WriteSocket lets package proxy write answers straight to the socket:
// writes of the page a refused request earned come after the last of
// them (CloseWrite), never between.
func (f *frontConn) WriteSocket() net.Conn { return writeSocket(f.Conn) }

// writeSocket is c's socket when writes may go to it: c itself, or what
// an aheadConn wraps; nil (none) under TLS.
func writeSocket(c net.Conn) net.Conn {
	switch c := c.(type) {
	case *net.TCPConn:
		return c
	case *aheadConn:
		return writeSocket(c.Conn)
	}
	return nil
}

// Close ends the join's hold on the public connection: it is closed,
// or routed afresh for the request that named another tunnel.
func (f *frontConn) Close() error {
	if f.reroute == nil {
		return f.Conn.Close()
	}
	r := f.reroute
	f.reroute = nil
	f.srv.wg.Add(1)
	go func() {
		defer f.srv.wg.Done()
		f.srv.route(f.Conn, f.br, f.lim, r, f.scheme, f.rt, f.peer)
	}()
	return nil
}

// serviceUnreachable answers the visitor with a 502 page: the client
// could not reach its local service (why is for the logs, not for the
// public).
func (f *frontConn) serviceUnreachable(string) {
	f.srv.met.webRefused(f.scheme, WebUnreachable)
	var b bytes.Buffer
	writePage(&b, http.StatusBadGateway, "Bad Gateway", "The tunnel's service did not answer. Try again later.")
	_ = f.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := f.Conn.Write(b.Bytes()); err == nil {
		f.answered.Store(true)
	}
}

// Abort resets the public connection, or closes it after a page.
func (f *frontConn) Abort() error {
	if f.answered.Load() {
		if cw, ok := f.Conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		return f.Conn.Close()
	}
	return abortConn(f.Conn)
}

// aheadConn is a connection some of whose bytes were read ahead (a PROXY
// header through a bufio.Reader, a ClientHello peeked to route it): r
// yields those first, then the rest. Like frontConn it is no
// syscall.Conn, so package proxy reads it through Read; its writes may
// go to the socket (WriteSocket).
type aheadConn struct {
	net.Conn
	r    io.Reader
	peer net.Addr // the public client's: a trusted proxy's word, or the socket's
}

func (a *aheadConn) Read(p []byte) (int, error) { return a.r.Read(p) }
func (a *aheadConn) RemoteAddr() net.Addr       { return a.peer }
func (a *aheadConn) Abort() error               { return abortConn(a.Conn) }
func (a *aheadConn) WriteSocket() net.Conn      { return writeSocket(a.Conn) }

func (a *aheadConn) CloseWrite() error { return halfClose(a.Conn) }

// halfClose sends c's FIN, or closes it when it cannot half-close (TLS).
func halfClose(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// abortConn resets c: a TCP connection, or the one under TLS.
func abortConn(c net.Conn) error {
	if a, ok := c.(interface{ Abort() error }); ok {
		return a.Abort()
	}
	if tc, ok := c.(*tls.Conn); ok {
		_ = sockopt.Abort(tc.NetConn())
		return tc.Close()
	}
	return sockopt.Abort(c)
}

// peerAddr is the public client's address: what a trusted proxy said, or
// the connection's own.
func peerAddr(peer string, own net.Addr) net.Addr {
	if peer == "" || peer == own.String() {
		return own
	}
	if a, err := net.ResolveTCPAddr("tcp", peer); err == nil {
		return a
	}
	return own
}

// writePage writes a small HTML error response that closes the
// connection. It says what happened and never anything internal.
func writePage(w io.Writer, status int, title, text string, extra ...string) {
	body := fmt.Sprintf("<!doctype html>\n<title>%d %s</title>\n<h1>%d %s</h1>\n<p>%s</p>\n", status, title, status, title, text)
	fmt.Fprintf(w, "HTTP/1.1 %d %s\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\nCache-Control: no-store\r\n",
		status, http.StatusText(status), len(body))
	for _, h := range extra {
		fmt.Fprintf(w, "%s\r\n", h)
	}
	fmt.Fprintf(w, "\r\n%s", body)
}

// refuseVisitor counts a visitor of shared port ("http" or "https") answered
// with a page for reason, and answers it.
func (s *Server) refuseVisitor(c net.Conn, port, reason string, status int, title, text string, extra ...string) {
	s.met.webRefused(port, reason)
	refusePage(c, status, title, text, extra...)
}

// refusePage answers c with a page and closes it.
func refusePage(c net.Conn, status int, title, text string, extra ...string) {
	var b bytes.Buffer
	writePage(&b, status, title, text, extra...)
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.Write(b.Bytes())
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		// Let the page reach the client before the close: a reset
		// with its request unread could overtake it.
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	}
	c.Close()
}

// timedOut is err, or os.ErrDeadlineExceeded when the read's deadline
// has passed: net/http's parser reports a header line cut by the
// deadline as malformed ("missing colon"), and a visitor too slow for
// header_timeout is no bad request.
func timedOut(err error, deadline time.Time) error {
	if err != nil && !errors.Is(err, errHeaderTooLarge) && !time.Now().Before(deadline) {
		return fmt.Errorf("%w: %w", os.ErrDeadlineExceeded, err)
	}
	return err
}

// serveHTTPConn routes one public connection of the shared HTTP port (or
// of https terminated here) by its first request, and hands it to the
// session of the tunnel that serves it.
func (s *Server) serveHTTPConn(c net.Conn, scheme string, rt *router, peer string) {
	cfg := s.config().Web
	lim := &headerLimit{r: c, n: int64(cfg.MaxHeaderBytes)}
	br := bufio.NewReaderSize(lim, 4096)
	deadline := time.Now().Add(cfg.HeaderTimeout.D())
	_ = c.SetReadDeadline(deadline)
	r, err := http.ReadRequest(br)
	err = timedOut(err, deadline)
	lim.n = -1
	_ = c.SetReadDeadline(time.Time{})
	switch {
	case errors.Is(err, errHeaderTooLarge):
		s.refuseVisitor(c, scheme, WebHeaderTooLarge, http.StatusRequestHeaderFieldsTooLarge, "Request Header Fields Too Large", "The request's headers are too large.")
		return
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.met.webRefused(scheme, WebHeaderTimeout)
		c.Close() // too slow to be answered
		return
	case err != nil && errors.Is(err, io.EOF):
		s.met.webRefused(scheme, WebNoRequest)
		c.Close() // said nothing
		return
	case err != nil:
		s.refuseVisitor(c, scheme, WebBadRequest, http.StatusBadRequest, "Bad Request", "The request could not be read.")
		return
	}
	s.route(c, br, lim, r, scheme, rt, peer)
}

// route hands public connection c, whose request r was read, to the
// tunnel that serves r, or answers why none does.
func (s *Server) route(c net.Conn, br *bufio.Reader, lim *headerLimit, r *http.Request, scheme string, rt *router, peer string) {
	host := hostOf(r)
	if host == "" {
		s.refuseVisitor(c, scheme, WebNoHost, http.StatusBadRequest, "Bad Request", "The request has no Host header, so no tunnel can be chosen.")
		return
	}
	route, offline := rt.lookup(host, r.URL.Path)
	switch {
	case route == nil && offline:
		s.refuseVisitor(c, scheme, WebOffline, http.StatusBadGateway, "Tunnel Offline", "The tunnel serving this name is offline. Try again later.")
		return
	case route == nil:
		s.refuseVisitor(c, scheme, WebUnknownHost, http.StatusNotFound, "Not Found", "No tunnel serves this name.")
		return
	}
	pl, ss := route.pl, route.ss
	if pl.draining.Load() {
		s.refuseVisitor(c, scheme, WebDraining, http.StatusServiceUnavailable, "Service Unavailable", "This tunnel takes no new connections now.")
		return
	}
	if !pl.web.authorized(r) {
		s.refuseVisitor(c, scheme, WebUnauthorized, http.StatusUnauthorized, "Unauthorized", "This tunnel needs a user name and password.", `WWW-Authenticate: Basic realm="tunnel"`)
		return
	}
	cfg := s.config().Web
	fc := &frontConn{Conn: c, br: br, lim: lim, pl: pl, rt: rt, scheme: scheme, peer: peer, next: r, srv: s,
		max: int64(cfg.MaxHeaderBytes), idle: cfg.IdleTimeout.D(), header: cfg.HeaderTimeout.D()}
	ss.takePublic(pl, fc)
}

// takePublic hands a public connection of a shared port to the session,
// counted against its limits like one of its own listener's.
func (ss *session) takePublic(pl *publicListener, c net.Conn) {
	log := ss.log.With("tunnel", pl.name)
	if limit, what := ss.takeConn(pl); limit > 0 {
		pl.st.refused.Add(1)
		pl.noteRefused(log, limit, what)
		if fc, ok := c.(*frontConn); ok {
			ss.srv.refuseVisitor(fc.Conn, fc.scheme, WebAtLimit, http.StatusServiceUnavailable, "Service Unavailable", "This tunnel is at its connection limit. Try again later.")
			return
		}
		ss.srv.met.webRefused("https", WebAtLimit) // passed through: no page
		_ = abortConn(c)
		return
	}
	if !ss.parts.Go(func() { ss.handlePublic(pl, c, log) }) {
		_ = abortConn(c) // the session is ending
		ss.releaseConn(pl)
	}
}
