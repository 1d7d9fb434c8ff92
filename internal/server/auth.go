package server

import (
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
	cfg := s.cfg
	var cert *x509.Certificate
	if s.clientCAs != nil {
		leaf, err := tlsconf.VerifyClient(chain, s.clientCAs)
		if err != nil {
			return nil, &authError{protocol.CodeAuth, fmt.Sprintf(
				"this client's certificate is not one the server trusts (%v): ask the server's operator for a certificate signed by its tls.client_ca_file, and set cert_file and key_file under [tls]", err)}
		}
		cert = leaf
	}
	if len(cfg.Clients) == 0 {
		if !tokenOK(hello.Token, cfg.Token) {
			return nil, &authError{protocol.CodeAuth, wrongToken}
		}
		if hello.Client == "" || len(hello.Client) > 64 {
			return nil, &authError{protocol.CodeBadRequest, "client name must be 1 to 64 characters"}
		}
		id := &identity{name: hello.Client, ports: cfg.Ports, maxTunnels: cfg.MaxTunnelsPerClient,
			maxConns: cfg.MaxConnectionsPerClient, maxConnsPerTunnel: cfg.MaxConnectionsPerTunnel}
		if cert != nil && cert.Subject.CommonName != hello.Client {
			// The certificate names the client; what it says does not.
			id.name, id.declared = cert.Subject.CommonName, hello.Client
		}
		return id, nil
	}
	var e *config.ClientEntry
	if cert != nil {
		e = cfg.Client(cert.Subject.CommonName)
		if e == nil {
			return nil, &authError{protocol.CodeAuth, fmt.Sprintf("this client's certificate (common name %q) names no client of this server: ask its operator to add it to [[clients]]", clip(cert.Subject.CommonName))}
		}
		if e.HasToken() && !e.TokenMatches(hello.Token) {
			return nil, &authError{protocol.CodeAuth, wrongToken}
		}
	} else {
		// Every entry is tried, so the time taken does not tell how
		// many entries come before the matching one.
		for i := range cfg.Clients {
			if cfg.Clients[i].TokenMatches(hello.Token) && e == nil {
				e = &cfg.Clients[i]
			}
		}
		if e == nil {
			return nil, &authError{protocol.CodeAuth, wrongToken}
		}
	}
	id := &identity{name: e.Name, ports: e.Ports, maxTunnels: e.MaxTunnels,
		maxConns: e.MaxConnections, maxConnsPerTunnel: e.MaxConnectionsPerTunnel}
	if hello.Client != e.Name {
		id.declared = clip(hello.Client)
	}
	return id, nil
}
