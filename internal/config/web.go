package config

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Web is tunneld's shared HTTP and HTTPS listeners ([web]): many http and
// https tunnels behind one port each, chosen by the request's Host or the
// TLS ClientHello's server name.
type Web struct {
	// HTTPAddr and HTTPSAddr are the shared listeners ("" off).
	HTTPAddr  string `toml:"http_addr"`
	HTTPSAddr string `toml:"https_addr"`
	// Domains are the base domains a tunnel's subdomain is taken under
	// (subdomain = "app" is app.DOMAIN for each).
	Domains []string `toml:"domains"`
	// CertFile and KeyFile are what https tunnels with
	// tls_termination = "server" are served with (a certificate for the
	// base domains, usually a wildcard).
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
	// ACMEEmail, when set, has tunneld get certificates for the names of
	// https tunnels terminated here from an ACME CA (Let's Encrypt unless
	// ACMEDirectory says otherwise), answering its tls-alpn-01 challenge
	// on https_addr; they are kept in state_dir/acme. cert_file is then
	// not used.
	ACMEEmail     string `toml:"acme_email"`
	ACMEDirectory string `toml:"acme_directory"`
	// ACMECAFile, for a private ACME CA, is the CA its API's certificate
	// is checked against (the system's roots otherwise).
	ACMECAFile string `toml:"acme_ca_file"`
	// HeaderTimeout bounds the wait for a request's headers (and a
	// ClientHello); MaxHeaderBytes their size.
	HeaderTimeout  Duration `toml:"header_timeout"`
	MaxHeaderBytes Size     `toml:"max_header_bytes"`
	// IdleTimeout bounds the wait for the next request on a kept-alive
	// public connection.
	IdleTimeout Duration `toml:"idle_timeout"`
}

// DefaultWeb is [web] unless configured: off, with bounds for when it is
// turned on.
var DefaultWeb = Web{HeaderTimeout: Duration(10 * time.Second), MaxHeaderBytes: 64 << 10, IdleTimeout: Duration(2 * time.Minute)}

// Enabled reports whether a shared listener is configured.
func (w Web) Enabled() bool { return w.HTTPAddr != "" || w.HTTPSAddr != "" }

func (c *Server) validateWeb(ps *problems) {
	w := &c.Web
	for _, f := range []struct{ key, addr string }{{"web.http_addr", w.HTTPAddr}, {"web.https_addr", w.HTTPSAddr}} {
		if f.addr != "" {
			// Port 0 picks a free one, as listen does (tests).
			if err := hostPort(f.addr, true); err != nil {
				ps.add(f.key, "%v", err)
			}
		}
	}
	for i, d := range w.Domains {
		h, err := NormalizeHost(d)
		if err != nil || strings.HasPrefix(h, "*.") {
			ps.add("web.domains", "%q is not a domain (e.g. \"tunnel.example.com\"; a subdomain is taken under it)", d)
			continue
		}
		w.Domains[i] = h
	}
	if (w.CertFile == "") != (w.KeyFile == "") {
		ps.add("web", "set both cert_file and key_file, or neither")
	} else if w.CertFile != "" {
		checkFile(ps, "web.cert_file", w.CertFile)
		checkFile(ps, "web.key_file", w.KeyFile)
	}
	if w.ACMEEmail != "" {
		if w.HTTPSAddr == "" {
			ps.add("web.acme_email", "needs web.https_addr: the CA's tls-alpn-01 challenge is answered there (port 443 for a public CA)")
		}
		if !strings.Contains(w.ACMEEmail, "@") {
			ps.add("web.acme_email", "%q is not an email address (the CA writes to it about the certificates)", w.ACMEEmail)
		}
		if w.ACMEDirectory != "" && !strings.HasPrefix(w.ACMEDirectory, "https://") {
			ps.add("web.acme_directory", "%q is not an https URL", w.ACMEDirectory)
		}
		if w.ACMECAFile != "" {
			checkCAFile(ps, "web.acme_ca_file", w.ACMECAFile)
		}
	}
	checkRange(ps, "web.header_timeout", w.HeaderTimeout, 100*time.Millisecond, 5*time.Minute, "")
	checkRange(ps, "web.idle_timeout", w.IdleTimeout, time.Second, time.Hour, "")
	if w.MaxHeaderBytes < 1<<10 || w.MaxHeaderBytes > 1<<20 {
		ps.add("web.max_header_bytes", "%s is out of range (1KiB to 1MiB)", w.MaxHeaderBytes)
	}
	c.Proxies = c.Proxies[:0]
	for _, s := range c.TrustedProxies {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			a, aerr := netip.ParseAddr(strings.TrimSpace(s))
			if aerr != nil {
				ps.add("trusted_proxies", "%q is not an address or CIDR (e.g. \"10.0.0.0/8\")", s)
				continue
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		c.Proxies = append(c.Proxies, p.Masked())
	}
}

// NormalizeHost is a host name as routing compares it: lower case,
// without a port or a trailing dot. A leading "*." makes a wildcard. It
// refuses what is not a DNS name.
func NormalizeHost(s string) (string, error) {
	h := strings.ToLower(strings.TrimSpace(s))
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	h = strings.TrimSuffix(h, ".")
	labels := strings.Split(h, ".")
	if len(h) == 0 || len(h) > 253 || len(labels) < 2 {
		return "", fmt.Errorf("%q is not a host name with a domain", s)
	}
	for i, l := range labels {
		if i == 0 && l == "*" {
			continue
		}
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return "", fmt.Errorf("%q is not a host name", s)
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
				return "", fmt.Errorf("%q is not a host name (letters, digits, '-' and dots)", s)
			}
		}
	}
	return h, nil
}

// HostMatches reports whether host (normalized, possibly a wildcard
// itself) is within pattern: the same name, or under pattern's domain
// when pattern is "*.domain".
func HostMatches(pattern, host string) bool {
	if d, ok := strings.CutPrefix(pattern, "*."); ok {
		return strings.HasSuffix(host, "."+d)
	}
	return host == pattern
}

// Tunnel types.
const (
	TypeTCP   = "tcp"
	TypeHTTP  = "http"
	TypeHTTPS = "https"
)

// maxWebList bounds a web tunnel's host names, locations and users.
const maxWebList = 16

// validateWebTunnel checks the web keys of tunnel key (name) t.
func validateWebTunnel(ps *problems, key string, t *Tunnel) {
	web := t.Type == TypeHTTP || t.Type == TypeHTTPS
	if !web {
		for _, f := range []struct {
			name string
			set  bool
		}{{"subdomain", t.Subdomain != ""}, {"hostnames", len(t.Hostnames) > 0}, {"locations", len(t.Locations) > 0},
			{"host_header", t.HostHeader != ""}, {"basic_auth", len(t.BasicAuth) > 0}, {"tls_termination", t.TLSTermination != ""},
			{"forwarded_headers", t.ForwardedHeaders != nil}} {
			if f.set {
				ps.add(key+"."+f.name, "is for type = \"http\" or \"https\" tunnels")
			}
		}
	} else {
		if t.RemotePort != 0 {
			ps.add(key+".remote_port", "is for tcp tunnels: an %s tunnel is reached by its host names on the server's shared port", t.Type)
		}
		if t.Subdomain == "" && len(t.Hostnames) == 0 {
			ps.add(key, "an %s tunnel needs subdomain = \"NAME\" (under the server's domains) or hostnames = [\"app.example.org\"]", t.Type)
		}
		if t.Subdomain != "" {
			if _, err := NormalizeHost(t.Subdomain + ".x.example"); err != nil || strings.Contains(t.Subdomain, ".") && strings.HasPrefix(t.Subdomain, "*") {
				ps.add(key+".subdomain", "%q is not a DNS label (letters, digits, '-')", t.Subdomain)
			}
		}
		for i, h := range t.Hostnames {
			n, err := NormalizeHost(h)
			if err != nil {
				ps.add(key+".hostnames", "%v", err)
				continue
			}
			t.Hostnames[i] = n
		}
	}
	for _, f := range []struct {
		name string
		n    int
	}{{"hostnames", len(t.Hostnames)}, {"locations", len(t.Locations)}, {"basic_auth", len(t.BasicAuth)}} {
		if f.n > maxWebList {
			// The hello that carries them must fit a frame.
			ps.add(key+"."+f.name, "%d entries; at most %d", f.n, maxWebList)
		}
	}
	if t.Type == TypeHTTPS {
		for _, f := range []struct {
			name string
			set  bool
		}{{"locations", len(t.Locations) > 0}, {"host_header", t.HostHeader != ""}, {"basic_auth", len(t.BasicAuth) > 0}, {"forwarded_headers", t.ForwardedHeaders != nil}} {
			if f.set && t.TLSTermination != "server" {
				ps.add(key+"."+f.name, "needs tls_termination = \"server\": without it the server passes TLS through and never sees the requests")
			}
		}
	}
	switch t.TLSTermination {
	case "", "server":
	default:
		ps.add(key+".tls_termination", "%q is not a mode (\"server\", or leave it out to pass TLS through to the local service)", t.TLSTermination)
	}
	if t.TLSTermination != "" && t.Type != TypeHTTPS {
		ps.add(key+".tls_termination", "is for type = \"https\" tunnels")
	}
	for _, l := range t.Locations {
		if !strings.HasPrefix(l, "/") {
			ps.add(key+".locations", "%q is not a path prefix (it starts with /)", l)
		}
	}
	for _, a := range t.BasicAuth {
		user, hash, ok := strings.Cut(a, ":")
		if !ok || user == "" {
			ps.add(key+".basic_auth", "entries are \"user:BCRYPT-HASH\" (make one with `htpasswd -nbB user password`)")
			continue
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			ps.add(key+".basic_auth", "the hash for %q is not a bcrypt hash (make one with `htpasswd -nbB user password`)", user)
		}
	}
	switch t.ProxyProtocol {
	case "", "v1", "v2":
	default:
		ps.add(key+".proxy_protocol", "%q is not a version (\"v1\" or \"v2\")", t.ProxyProtocol)
	}
}
