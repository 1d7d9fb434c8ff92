package server

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"fmt"

	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/protocol"
	"github.com/tunnel-dev/tunnel/internal/tlsconf"
)

// identity is who a session authenticated as, and what it may do.
type identity struct {
	// name is the client's identity: its [[clients]] entry's name, or
	// its certificate's common name, or (shared token) what it says.
	name string
	// declared is what the client calls itself, when that differs.
	declared string

	ports             []config.PortRange
	maxTunnels        int
	maxConns          int // concurrent public connections, 0: no limit
	maxConnsPerTunnel int
	// hostnames are the names its web tunnels may take (patterns); empty:
	// any under the server's [web] domains.
	hostnames []string

	// What the session presented, to check again on a reload: the name
	// it said, its token's SHA-256 (never the token) and its certificate
	// chain.
	said  string
	token [sha256.Size]byte
	chain []*x509.Certificate
}

func (id *identity) portAllowed(p int) bool { return config.InRanges(id.ports, p) }

// authError refuses a hello; msg goes to the peer, so it says what to fix
// and never what a credential was or whom the server knows.
type authError struct{ code, msg string }

func (e *authError) Error() string { return e.msg }

const wrongToken = "wrong token: set token in tunnel.toml (or TUNNEL_TOKEN) to the one the server's operator gave this client"

// authenticate decides who hello (with the peer's verified certificate,
// when the server asks for one) comes from.
func (s *Server) authenticate(hello *protocol.Hello, chain []*x509.Certificate) (*identity, error) {
	return s.authorize(s.config(), s.clientCAs.Load(), hello.Client, sha256.Sum256([]byte(hello.Token)), chain)
}

// reauthorize checks a live session's credentials against a reloaded
// config: its identity under cfg, or why it no longer holds.
func (s *Server) reauthorize(cfg *config.Server, cas *x509.CertPool, id *identity) (*identity, error) {
	return s.authorize(cfg, cas, id.said, id.token, id.chain)
}

// authorize decides who presented said, a token with SHA-256 token and
// chain is under cfg, trusting client certificates signed by cas.
func (s *Server) authorize(cfg *config.Server, cas *x509.CertPool, said string, token [sha256.Size]byte, chain []*x509.Certificate) (*identity, error) {
	var cert *x509.Certificate
	if cas != nil {
		leaf, err := tlsconf.VerifyClient(chain, cas)
		if err != nil {
			return nil, &authError{protocol.CodeAuth, fmt.Sprintf(
				"this client's certificate is not one the server trusts (%v): ask the server's operator for a certificate signed by its tls.client_ca_file, and set cert_file and key_file under [tls]", err)}
		}
		cert = leaf
	}
	presented := func(id *identity) *identity {
		id.said, id.token, id.chain = said, token, chain
		return id
	}
	if len(cfg.Clients) == 0 {
		want := sha256.Sum256([]byte(cfg.Token))
		if subtle.ConstantTimeCompare(token[:], want[:]) != 1 {
			return nil, &authError{protocol.CodeAuth, wrongToken}
		}
		if said == "" || len(said) > 64 {
			return nil, &authError{protocol.CodeBadRequest, "client name must be 1 to 64 characters"}
		}
		id := &identity{name: said, ports: cfg.Ports, maxTunnels: cfg.MaxTunnelsPerClient,
			maxConns: cfg.MaxConnectionsPerClient, maxConnsPerTunnel: cfg.MaxConnectionsPerTunnel}
		if cert != nil && cert.Subject.CommonName != said {
			// The certificate names the client; what it says does not.
			id.name, id.declared = cert.Subject.CommonName, said
		}
		return presented(id), nil
	}
	var e *config.ClientEntry
	if cert != nil {
		e = cfg.Client(cert.Subject.CommonName)
		if e == nil {
			return nil, &authError{protocol.CodeAuth, fmt.Sprintf("this client's certificate (common name %q) names no client of this server: ask its operator to add it to [[clients]]", clip(cert.Subject.CommonName))}
		}
		if e.HasToken() && !e.HashMatches(token) {
			return nil, &authError{protocol.CodeAuth, wrongToken}
		}
	} else {
		// Every entry is tried, so the time taken does not tell how
		// many entries come before the matching one.
		for i := range cfg.Clients {
			if cfg.Clients[i].HashMatches(token) && e == nil {
				e = &cfg.Clients[i]
			}
		}
		if e == nil {
			return nil, &authError{protocol.CodeAuth, wrongToken}
		}
	}
	id := &identity{name: e.Name, ports: e.Ports, maxTunnels: e.MaxTunnels,
		maxConns: e.MaxConnections, maxConnsPerTunnel: e.MaxConnectionsPerTunnel, hostnames: e.AllowHostnames}
	if said != e.Name {
		id.declared = clip(said)
	}
	return presented(id), nil
}
