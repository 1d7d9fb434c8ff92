package server

// Web tunnels: http and https tunnels share the server's [web] ports and
// are chosen by name. Every public connection still travels over its own
// stream; the http front parses each request with net/http's parser (so
// one that names another tunnel's host is answered 421 and the
// connection closed, never passed on), applies the tunnel's basic auth,
// adds the forwarded headers and rewrites Host, and writes the request
// into the stream in a framing of its own (Content-Length or chunked,
// never both). Responses pass through as bytes. The https front reads
// the ClientHello with crypto/tls's parser to route by its server name
// and replays it into the stream, or terminates TLS with [web]'s
// certificate and serves the requests like the http front.

import (
	"bytes"

	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/protocol"
)

// webTunnel is the web half of an http or https tunnel's listener.
type webTunnel struct {
	kind       string // config.TypeHTTP or TypeHTTPS
	hosts      []string
	portSuffix string // ":8080" when the shared port is not the scheme's
	opts       protocol.WebTunnel
	users      map[string][]byte // basic auth: user -> bcrypt hash
	rt         *router

	authMu sync.Mutex
	// authOK remembers credentials that passed (their SHA-256), so a
	// kept-alive or returning visitor costs one bcrypt, not one per
	// request. Bounded; cleared when full.
	authOK map[[sha256.Size]byte]bool
}

// offlineFor is how long a name whose tunnel went away is answered as
// offline (502) rather than unknown (404).
const offlineFor = 24 * time.Hour

// maxAuthCache bounds a tunnel's remembered credentials.
const maxAuthCache = 256

// close stops the tunnel taking connections: its listener, or its
// routes (the names stay known as offline for port_lease).
func (pl *publicListener) close() {
	if pl.web != nil {
		pl.web.rt.release(pl, time.Now().Add(offlineFor))
		return
	}
	pl.ln.Close()
}

// closeListener stops new connections while open ones carry on (a
// drain): a web tunnel's routes stay, and the front answers 503.
func (pl *publicListener) closeListener() {
	if pl.web == nil {
		pl.ln.Close()
	}
}

// urls are every address the tunnel is reached by.
func (pl *publicListener) urls() []string {
	if pl.web == nil {
		return nil
	}
	out := make([]string, len(pl.web.hosts))
	for i, h := range pl.web.hosts {
		out[i] = pl.web.url(h)
	}
	return out
}

func (w *webTunnel) url(host string) string {
	return w.scheme() + "://" + host + w.portSuffix
}

func (w *webTunnel) scheme() string {
	if w.kind == config.TypeHTTPS {
		return "https"
	}
	return "http"
}

// hostsFor is the names request r asks for, or why it may not have them.
func (s *Server) hostsFor(id *identity, r protocol.TunnelRequest) ([]string, string, error) {
	cfg := s.config()
	w := r.Web
	if w == nil {
		return nil, protocol.CodeInvalidTunnel, errors.New("an http or https tunnel without its names (a client of another version?)")
	}
	var hosts []string
	if w.Subdomain != "" {
		if len(cfg.Web.Domains) == 0 {
			return nil, protocol.CodeHostNotAllowed, errors.New("this server has no [web] domains for a subdomain: ask for full hostnames")
		}
		for _, d := range cfg.Web.Domains {
			hosts = append(hosts, w.Subdomain+"."+d)
		}
	}
	hosts = append(hosts, w.Hostnames...)
	if len(hosts) > 2*16 {
		return nil, protocol.CodeInvalidTunnel, fmt.Errorf("%d host names; at most 32", len(hosts))
	}
	seen := map[string]bool{}
	out := hosts[:0]
	for _, h := range hosts {
		n, err := config.NormalizeHost(h)
		if err != nil {
			return nil, protocol.CodeInvalidTunnel, err
		}
		if !id.hostAllowed(n, cfg.Web.Domains) {
			return nil, protocol.CodeHostNotAllowed, fmt.Errorf("host name %s is not one this client may take (under the server's [web] domains %v, or its allow_hostnames)", n, cfg.Web.Domains)
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out, "", nil
}

// hostAllowed reports whether the client may take host name h.
func (id *identity) hostAllowed(h string, domains []string) bool {
	if len(id.hostnames) > 0 {
		for _, p := range id.hostnames {
			if config.HostMatches(p, h) || p == h {
				return true
			}
		}
		return false
	}
	for _, d := range domains {
		if config.HostMatches("*."+d, h) {
			return true
		}
	}
	return false
}

// bindWeb claims an http or https tunnel's names on the shared port.
func (s *Server) bindWeb(ss *session, r protocol.TunnelRequest) (*publicListener, string, error) {
	rt, suffix := s.httpRoutes, s.httpSuffix
	if r.Type == config.TypeHTTPS {
		rt, suffix = s.tlsRoutes, s.httpsSuffix
	}
	if rt == nil {
		return nil, protocol.CodeInvalidTunnel, fmt.Errorf("this server has no shared %s port ([web] %s_addr)", r.Type, r.Type)
	}
	hosts, code, err := s.hostsFor(ss.lim(), r)
	if err != nil {
		return nil, code, err
	}
	for _, l := range r.Web.Locations {
		if !strings.HasPrefix(l, "/") {
			return nil, protocol.CodeInvalidTunnel, fmt.Errorf("location %q is not a path prefix", l)
		}
	}
	if r.Web.Terminate && s.webTLS == nil {
		return nil, protocol.CodeInvalidTunnel, errors.New("tls_termination = \"server\", but this server has no [web] cert_file")
	}
	w := &webTunnel{kind: r.Type, hosts: hosts, opts: *r.Web, rt: rt, users: map[string][]byte{}, portSuffix: suffix, authOK: map[[sha256.Size]byte]bool{}}
	for _, a := range r.Web.BasicAuth {
		user, hash, ok := strings.Cut(a, ":")
		if !ok {
			return nil, protocol.CodeInvalidTunnel, errors.New("basic_auth entries are user:BCRYPT-HASH")
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return nil, protocol.CodeInvalidTunnel, fmt.Errorf("basic_auth for %q is not a bcrypt hash", clip(user))
		}
		w.users[user] = []byte(hash)
	}
	pl := newPublicListener(r.Name, 0, nil, s.statsFor(ss.client, r.Name), s.config().KeepAlive.Public.Sock(), w.url(hosts[0]))
	pl.web = w
	if r.Type == config.TypeHTTP || r.Web.Terminate {
		pl.st.web.Store(true)
	}
	prefixes := r.Web.Locations
	if r.Type == config.TypeHTTPS && !r.Web.Terminate {
		prefixes = nil // TLS passed through: no paths seen
	}
	if err := rt.claim(ss, pl, hosts, prefixes); err != nil {
		pl.st.Release()
		var held *hostHeldError
		if errors.As(err, &held) {
			return nil, protocol.CodeHostInUse, err
		}
		return nil, protocol.CodeInvalidTunnel, err
	}
	return pl, "", nil
}

// stillAllowed reports whether a reloaded identity still allows pl.
func (s *Server) stillAllowed(id *identity, pl *publicListener) bool {
	if pl.web == nil {
		return id.portAllowed(pl.port)
	}
	for _, h := range pl.web.hosts {
		if !id.hostAllowed(h, s.config().Web.Domains) {
			return false
		}
	}
	return true
}

// authorized checks a request's basic auth against the tunnel's users.
func (w *webTunnel) authorized(r *http.Request) bool {
	if len(w.users) == 0 {
		return true
	}
	user, pass, ok := r.BasicAuth()
	if !ok {
		return false
	}
	key := sha256.Sum256([]byte(user + "\x00" + pass))
	w.authMu.Lock()
	known := w.authOK[key]
	w.authMu.Unlock()
	if known {
		return true
	}
	hash, ok := w.users[user]
	if !ok || bcrypt.CompareHashAndPassword(hash, []byte(pass)) != nil {
		return false
	}
	w.authMu.Lock()
	if len(w.authOK) >= maxAuthCache {
		clear(w.authOK)
	}
	w.authOK[key] = true
	w.authMu.Unlock()
	return true
}

// headerLimit reads from a conn, at most n bytes while headers are read.
type headerLimit struct {
	r io.Reader
	n int64 // left while limited; < 0 unlimited
}

func (l *headerLimit) Read(p []byte) (int, error) {
	if l.n == 0 {
		return 0, errHeaderTooLarge
	}
	if l.n > 0 && int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	if l.n > 0 {
		l.n -= int64(n)
	}
	return n, err
}

var errHeaderTooLarge = errors.New("request headers too large")

// hostOf is a request's host, normalized, or "".
func hostOf(r *http.Request) string {
	h, err := config.NormalizeHost(r.Host)
	if err != nil {
		return ""
	}
	return h
}

// writeHead writes r's request line and headers onto dst for the local
// service: Host rewritten and the forwarded headers added when the
// tunnel says so, and the body's framing decided here, Content-Length or
// chunked (the parser already refused or resolved a request that had
// both). It reports whether the body goes chunked.
func (w *webTunnel) writeHead(dst *bytes.Buffer, r *http.Request, peer, scheme string) (chunked bool) {
	host := r.Host
	if w.opts.HostHeader != "" {
		host = w.opts.HostHeader
	}
	dst.WriteString(r.Method)
	dst.WriteByte(' ')
	dst.WriteString(r.RequestURI)
	dst.WriteByte(' ')
	dst.WriteString(r.Proto) // as the parser read it: HTTP/1.0 or 1.1
	dst.WriteString("\r\nHost: ")
	dst.WriteString(host)
	dst.WriteString("\r\n")
	// The parser has checked names and values (no CR or LF); written as
	// they came, in the map's order, less what is replaced below.
	for k, vs := range r.Header {
		switch k {
		case "Content-Length", "Transfer-Encoding":
			continue
		case "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded":
			if w.opts.Forwarded {
				continue
			}
		}
		for _, v := range vs {
			dst.WriteString(k)
			dst.WriteString(": ")
			dst.WriteString(v)
			dst.WriteString("\r\n")
		}
	}
	if w.opts.Forwarded {
		ip, _, _ := net.SplitHostPort(peer)
		dst.WriteString("X-Forwarded-For: ")
		for _, v := range r.Header.Values("X-Forwarded-For") {
			dst.WriteString(v)
			dst.WriteString(", ")
		}
		dst.WriteString(ip)
		dst.WriteString("\r\nX-Forwarded-Proto: ")
		dst.WriteString(scheme)
		dst.WriteString("\r\nX-Forwarded-Host: ")
		dst.WriteString(r.Host)
		dst.WriteString("\r\nForwarded: ")
		for _, v := range r.Header.Values("Forwarded") {
			dst.WriteString(v)
			dst.WriteString(", ")
		}
		dst.WriteString("for=")
		dst.WriteString(forwardedNode(ip))
		dst.WriteString(";host=")
		dst.WriteString(strconv.Quote(r.Host))
		dst.WriteString(";proto=")
		dst.WriteString(scheme)
		dst.WriteString("\r\n")
	}
	switch {
	case r.ContentLength > 0:
		dst.WriteString("Content-Length: ")
		dst.WriteString(strconv.FormatInt(r.ContentLength, 10))
		dst.WriteString("\r\n")
	case r.ContentLength < 0:
		chunked = true
		dst.WriteString("Transfer-Encoding: chunked\r\n")
	}
	dst.WriteString("\r\n")
	return chunked
}

// forwardedNode quotes an IPv6 address as RFC 7239 wants it.
func forwardedNode(ip string) string {
	if strings.Contains(ip, ":") {
		return strconv.Quote("[" + ip + "]")
	}
	return ip
}
