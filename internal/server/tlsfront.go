package server

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/tlsconf"
)

// errPeeked stops the handshake crypto/tls runs only to parse a
// ClientHello.
var errPeeked = errors.New("client hello read")

// helloRecorder is the public connection as the ClientHello's parser
// sees it: what it reads is kept (to replay it into the stream), bounded;
// what it would write (an alert) goes nowhere.
type helloRecorder struct {
	net.Conn
	buf bytes.Buffer
	max int
}

func (h *helloRecorder) Read(p []byte) (int, error) {
	if h.buf.Len() >= h.max {
		return 0, errHeaderTooLarge
	}
	if len(p) > h.max-h.buf.Len() {
		p = p[:h.max-h.buf.Len()]
	}
	n, err := h.Conn.Read(p)
	h.buf.Write(p[:n])
	return n, err
}

func (h *helloRecorder) Write(p []byte) (int, error) { return len(p), nil }

// alertUnrecognizedName is a fatal TLS alert record, unrecognized_name
// (RFC 6066): what a client is told when no tunnel has its server name.
var alertUnrecognizedName = []byte{21, 3, 3, 0, 2, 2, 112}

// serveTLSConn routes one public connection of the shared HTTPS port by
// its ClientHello's server name: passed through to the tunnel's stream,
// ClientHello first, or terminated here and served as HTTP.
func (s *Server) serveTLSConn(c net.Conn, peer string) {
	cfg := s.config().Web
	rec := &helloRecorder{Conn: c, max: int(cfg.MaxHeaderBytes)}
	var name string
	_ = c.SetReadDeadline(time.Now().Add(cfg.HeaderTimeout.D()))
	err := tls.Server(rec, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		name = h.ServerName
		return nil, errPeeked
	}}).Handshake()
	_ = c.SetReadDeadline(time.Time{})
	if !errors.Is(err, errPeeked) {
		// Not TLS, cut short, too large or too slow: nothing to route.
		s.met.webRefused("https", WebNotTLS)
		_ = c.SetWriteDeadline(time.Now().Add(time.Second))
		if rec.buf.Len() > 0 && rec.buf.Bytes()[0] == 22 {
			_, _ = c.Write(alertUnrecognizedName)
		}
		c.Close()
		return
	}
	host, herr := config.NormalizeHost(name)
	var rt *route
	if herr == nil {
		rt, _ = s.tlsRoutes.lookup(host, "")
	}
	if rt == nil || rt.pl.draining.Load() {
		why := WebUnknownName
		if rt != nil {
			why = WebDraining
		}
		s.met.webRefused("https", why)
		_ = c.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = c.Write(alertUnrecognizedName)
		c.Close()
		return
	}
	replay := &aheadConn{Conn: c, r: io.MultiReader(bytes.NewReader(rec.buf.Bytes()), c), peer: peerAddr(peer, c.RemoteAddr())}
	if !rt.pl.web.opts.Terminate {
		rt.ss.takePublic(rt.pl, replay)
		return
	}
	tc := tls.Server(replay, s.webTLS)
	_ = tc.SetDeadline(time.Now().Add(cfg.HeaderTimeout.D()))
	if err := tc.Handshake(); err != nil {
		s.met.webRefused("https", WebTLSHandshake)
		c.Close()
		return
	}
	_ = tc.SetDeadline(time.Time{})
	s.serveHTTPConn(tc, "https", s.tlsRoutes, peer)
}

// webTLSConfig is what https tunnels terminated here are served with.
func webTLSConfig(cfg *config.Server, onError func(error)) (*tls.Config, error) {
	if cfg.Web.CertFile == "" {
		return nil, nil
	}
	fc, err := tlsconf.NewFileCert(cfg.Web.CertFile, cfg.Web.KeyFile, onError)
	if err != nil {
		return nil, err
	}
	return &tls.Config{GetCertificate: fc.Get, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}, nil
}

// portSuffix is ":PORT" for a URL, unless port is the scheme's own.
func portSuffix(ln net.Listener, own int) string {
	if ln == nil {
		return ""
	}
	p := ln.Addr().(*net.TCPAddr).Port
	if p == own {
		return ""
	}
	return ":" + strconv.Itoa(p)
}
