package config

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"os"
	"strings"
)

// ClientEntry is one client's credentials and allowance ([[clients]] in
// tunneld.toml). Its name is the client's identity: what a session
// authenticated with its token (or certificate) is called, whatever the
// client says its name is.
type ClientEntry struct {
	Name string `toml:"name"`
	// One of Token, TokenFile (its first line) and TokenEnv (a variable's
	// name) holds the token; only its SHA-256 is kept after loading.
	Token     string `toml:"token"`
	TokenFile string `toml:"token_file"`
	TokenEnv  string `toml:"token_env"`
	// AllowPorts narrows the server's allow_ports for this client.
	AllowPorts []string `toml:"allow_ports"`
	// AllowHostnames are the host names the client's http and https
	// tunnels may take ("app.example.org", "*.example.org" for every
	// name under it). Empty: any name under the server's [web] domains.
	AllowHostnames []string `toml:"allow_hostnames"`
	// MaxTunnels overrides max_tunnels_per_client (0: that value).
	MaxTunnels int `toml:"max_tunnels"`
	// MaxConnections bounds the client's concurrent public connections,
	// MaxConnectionsPerTunnel each tunnel's (0: the server-wide values).
	MaxConnections          int `toml:"max_connections"`
	MaxConnectionsPerTunnel int `toml:"max_connections_per_tunnel"`

	// Ports is AllowPorts parsed (the server's when empty).
	Ports []PortRange `toml:"-"`
	hash  [sha256.Size]byte
	// hasToken is false for a client that authenticates by certificate only.
	hasToken bool
}

// TokenMatches reports, in time independent of the token, whether token
// is this client's.
func (e *ClientEntry) TokenMatches(token string) bool {
	return e.HashMatches(sha256.Sum256([]byte(token)))
}

// HashMatches is TokenMatches given the token's SHA-256: a server keeps
// that of what a session presented, to check it again when its config is
// reloaded.
func (e *ClientEntry) HashMatches(h [sha256.Size]byte) bool {
	return subtle.ConstantTimeCompare(h[:], e.hash[:]) == 1 && e.hasToken
}

// HasToken reports whether the client has a token (else its certificate
// alone authenticates it).
func (e *ClientEntry) HasToken() bool { return e.hasToken }

// validateClients checks [[clients]] and loads their tokens.
func (c *Server) validateClients(ps *problems) {
	if len(c.Clients) == 0 {
		return
	}
	if c.Token != "" {
		ps.add("token", "is set together with [[clients]]: with per-client credentials every client needs its own entry (a token from TUNNEL_TOKEN counts too)")
	}
	names := map[string]bool{}
	hashes := map[[sha256.Size]byte]string{}
	for i := range c.Clients {
		e := &c.Clients[i]
		key := fmt.Sprintf("clients[%d]", i)
		switch {
		case !nameRE.MatchString(e.Name):
			ps.add(key+".name", "%q is not a valid client name (letters, digits, '.', '_', '-'; at most 64)", e.Name)
		case names[e.Name]:
			ps.add(key+".name", "%q is used by two [[clients]] entries", e.Name)
		}
		names[e.Name] = true
		for j, h := range e.AllowHostnames {
			n, err := NormalizeHost(h)
			if err != nil {
				ps.add(key+".allow_hostnames", "%v", err)
				continue
			}
			e.AllowHostnames[j] = n
		}
		token, src, ok := e.loadToken(ps, key)
		if !ok {
			continue
		}
		// A problem with the client's token is on its name's line when
		// the entry has no token key.
		tokenKey := key + ".name"
		for _, k := range []string{"token", "token_file", "token_env"} {
			if _, set := ps.lines[key+"."+k]; set {
				tokenKey = key + "." + k
			}
		}
		switch {
		case token == "" && src == "":
			if c.TLS.ClientCAFile == "" {
				ps.add(key, "(%s) has no token: set one of token, token_file, token_env (or require client certificates with tls.client_ca_file)", e.Name)
			}
			e.hasToken = false
		case token == "":
			ps.add(tokenKey, "(%s) %s is empty", e.Name, src)
		default:
			if bits := tokenBits(token); len(token) < minTokenLen || bits < minTokenBits {
				// Never the token itself in a message.
				ps.add(tokenKey, "(%s) the token from %s is too weak (%d characters, about %.0f bits; want at least %d characters and %d bits): use e.g. `openssl rand -hex 16`",
					e.Name, src, len(token), bits, minTokenLen, minTokenBits)
			}
			e.hash, e.hasToken = sha256.Sum256([]byte(token)), true
			if other, dup := hashes[e.hash]; dup {
				ps.add(tokenKey, "(%s) has the same token as client %q: a token must say which client it is", e.Name, other)
			}
			hashes[e.hash] = e.Name
		}
		e.Ports = e.Ports[:0]
		for _, s := range e.AllowPorts {
			r, err := parseRange(s)
			if err != nil {
				ps.add(key+".allow_ports", "%v", err)
				continue
			}
			if !c.rangeAllowed(r) {
				ps.add(key+".allow_ports", "%s is not within the server's allow_ports %v", r, c.Ports)
			}
			e.Ports = append(e.Ports, r)
		}
		if len(e.AllowPorts) == 0 {
			e.Ports = append(e.Ports, c.Ports...)
		}
		if e.MaxTunnels < 0 || e.MaxTunnels > MaxTunnels {
			ps.add(key+".max_tunnels", "%d is out of range (0 for max_tunnels_per_client; else 1..%d)", e.MaxTunnels, MaxTunnels)
		}
		if e.MaxTunnels == 0 {
			e.MaxTunnels = c.MaxTunnelsPerClient
		}
		checkConnLimit(ps, key+".max_connections", e.MaxConnections)
		checkConnLimit(ps, key+".max_connections_per_tunnel", e.MaxConnectionsPerTunnel)
		if e.MaxConnections == 0 {
			e.MaxConnections = c.MaxConnectionsPerClient
		}
		if e.MaxConnectionsPerTunnel == 0 {
			e.MaxConnectionsPerTunnel = c.MaxConnectionsPerTunnel
		}
	}
}

// loadToken returns the client's token and where it came from ("" and ""
// when none is set).
func (e *ClientEntry) loadToken(ps *problems, key string) (token, src string, ok bool) {
	set := 0
	for _, s := range []string{e.Token, e.TokenFile, e.TokenEnv} {
		if s != "" {
			set++
		}
	}
	if set > 1 {
		ps.add(key, "(%s) set only one of token, token_file and token_env", e.Name)
		return "", "", false
	}
	switch {
	case e.Token != "":
		return e.Token, "token", true
	case e.TokenFile != "":
		if !checkFile(ps, key+".token_file", e.TokenFile) {
			return "", "", false
		}
		b, err := os.ReadFile(e.TokenFile)
		if err != nil {
			ps.add(key+".token_file", "%v", err)
			return "", "", false
		}
		first, _, _ := strings.Cut(string(b), "\n")
		return strings.TrimSpace(first), "token_file " + e.TokenFile, true
	case e.TokenEnv != "":
		return strings.TrimSpace(os.Getenv(e.TokenEnv)), "environment variable " + e.TokenEnv, true
	}
	return "", "", true
}

func (c *Server) rangeAllowed(r PortRange) bool {
	for _, a := range c.Ports {
		if r.Lo >= a.Lo && r.Hi <= a.Hi {
			return true
		}
	}
	return false
}

func checkConnLimit(ps *problems, key string, n int) {
	if n < 0 || n > 1<<24 {
		ps.add(key, "%d is out of range (0 for no limit; else 1..16777216)", n)
	}
}

// Client returns the [[clients]] entry named name.
func (c *Server) Client(name string) *ClientEntry {
	for i := range c.Clients {
		if c.Clients[i].Name == name {
			return &c.Clients[i]
		}
	}
	return nil
}
