package config

import (
	"crypto/tls"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// Server is tunneld's configuration (tunneld.toml).
type Server struct {
	// Listen is the address tunnelc sessions connect to.
	Listen string `toml:"listen"`
	// Token authenticates clients. Empty: tunneld generates one at start.
	// TUNNEL_TOKEN in the environment overrides the file.
	Token string `toml:"token"`
	// BindAddr is the address public listeners bind to.
	BindAddr string `toml:"bind_addr"`
	// PublicHost is the host name reported to clients in their public
	// addresses. Empty: the host of Listen, or 127.0.0.1 when that is a
	// wildcard address.
	PublicHost string `toml:"public_host"`
	// AllowPorts lists the public ports clients may ask for ("8000-8100", "2222").
	AllowPorts []string `toml:"allow_ports"`
	// HandshakeTimeout bounds every handshake read (TLS, hello, stream header).
	HandshakeTimeout Duration `toml:"handshake_timeout"`
	// MaxTunnelsPerClient bounds how many public listeners one session may hold.
	MaxTunnelsPerClient int `toml:"max_tunnels_per_client"`
	// MaxConnectionsPerClient and MaxConnectionsPerTunnel bound concurrent
	// public connections (0: no limit); [[clients]] may set their own.
	MaxConnectionsPerClient int `toml:"max_connections_per_client"`
	MaxConnectionsPerTunnel int `toml:"max_connections_per_tunnel"`
	// Clients gives each client its own credentials and allowance. Empty:
	// Token is shared by all clients, whose names are self-declared.
	Clients []ClientEntry `toml:"clients"`
	// HandshakeLimit bounds the session handshakes in progress at once;
	// HandshakeLimitPerAddress the ones from one source address.
	// Connections past either are closed at accept, costing nothing more.
	HandshakeLimit           int `toml:"handshake_limit"`
	HandshakeLimitPerAddress int `toml:"handshake_limit_per_address"`
	// FailedHandshakesPerMinute is how many failed handshakes one source
	// address may have per minute (a token bucket of that size); past it
	// its connections are closed at accept until the bucket refills.
	FailedHandshakesPerMinute int `toml:"failed_handshakes_per_minute"`
	// StateDir keeps what must survive a restart: the automatic TLS
	// certificate and the port leases. Empty: $STATE_DIRECTORY when
	// systemd sets it, else nothing is kept (the certificate is new at
	// every start).
	StateDir string `toml:"state_dir"`
	// PortLease is how long a port the server picked (remote_port = 0)
	// stays reserved for its client and tunnel after the tunnel went down.
	// 0 turns leases off.
	PortLease Duration `toml:"port_lease"`
	// ResumeWindow is how long a session lost to the network is held for
	// its client to resume it, with every connection it carried and its
	// public ports; the client's own resume_window can shorten it. 0 turns
	// resumption off.
	ResumeWindow Duration `toml:"resume_window"`
	// ResumeHold bounds the new public connections held per tunnel while
	// its client is away; past it they are reset.
	ResumeHold int `toml:"resume_hold"`

	Log       Log             `toml:"log"`
	TLS       ServerTLS       `toml:"tls"`
	KeepAlive ServerKeepAlive `toml:"keepalive"`
	Window    Window          `toml:"window"`
	Admin     Admin           `toml:"admin"`
	Web       Web             `toml:"web"`
	// TrustedProxies are the addresses (CIDRs) whose PROXY headers the
	// public and shared listeners accept: a load balancer in front of
	// tunneld. Anyone else's PROXY header is refused.
	TrustedProxies []string `toml:"trusted_proxies"`

	// File is where the config came from ("(defaults)" when none).
	File string `toml:"-"`
	// Ports is AllowPorts parsed by Validate.
	Ports []PortRange `toml:"-"`
	// Proxies is TrustedProxies parsed by Validate.
	Proxies []netip.Prefix `toml:"-"`
}

// ServerKeepAlive holds the liveness settings of tunneld's two legs.
type ServerKeepAlive struct {
	Session Session   `toml:"session"`
	Public  KeepAlive `toml:"public"`
}

// PortRange is an inclusive range of TCP ports.
type PortRange struct{ Lo, Hi int }

// Contains reports whether p is in r.
func (r PortRange) Contains(p int) bool { return p >= r.Lo && p <= r.Hi }

func (r PortRange) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(r.Lo)
	}
	return fmt.Sprintf("%d-%d", r.Lo, r.Hi)
}

// DefaultServer returns the embedded defaults: what `tunneld serve` runs
// with no config file.
func DefaultServer() *Server {
	return &Server{
		Listen:              "0.0.0.0:7835",
		BindAddr:            "0.0.0.0",
		AllowPorts:          []string{"1024-65535"},
		HandshakeTimeout:    Duration(10 * time.Second),
		MaxTunnelsPerClient: 64,
		PortLease:           Duration(24 * time.Hour),
		ResumeWindow:        Duration(DefaultResumeWindow),
		ResumeHold:          64,
		HandshakeLimit:      1024,
		// Enough for a NAT full of clients reconnecting at once.
		HandshakeLimitPerAddress:  64,
		FailedHandshakesPerMinute: 30,
		Log:                       Log{Level: "info", Format: "text"},
		KeepAlive:                 ServerKeepAlive{Session: DefaultSession, Public: DefaultLeg},
		Window:                    DefaultWindow,
		Web:                       DefaultWeb,
		File:                      "(defaults)",
	}
}

// LoadServer reads and validates tunneld's config; path "" means the
// embedded defaults. The TUNNEL_TOKEN environment variable overrides token.
func LoadServer(path string) (*Server, error) {
	if path == "" {
		c := DefaultServer()
		c.applyEnv()
		return c, c.Validate(nil)
	}
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return ParseServer(path, data)
}

// ParseServer decodes and validates tunneld.toml content; file names it in errors.
func ParseServer(file string, data []byte) (*Server, error) {
	c := DefaultServer()
	c.File = file
	lines, err := decode(file, data, c)
	if err != nil {
		return nil, err
	}
	c.applyEnv()
	if err := c.Validate(lines); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Server) applyEnv() {
	if t := os.Getenv("TUNNEL_TOKEN"); t != "" {
		c.Token = t
	}
	if c.StateDir == "" {
		// systemd's StateDirectory= (see configs/tunneld.service).
		c.StateDir = os.Getenv("STATE_DIRECTORY")
	}
	c.Admin.applyEnv()
}

// Validate checks c and parses AllowPorts. lines maps keys to file lines
// for the messages (nil is fine).
func (c *Server) Validate(lines map[string]int) error {
	ps := &problems{file: c.File, lines: lines}
	if err := hostPort(c.Listen, true); err != nil {
		ps.add("listen", "%v", err)
	}
	if c.Token != "" {
		if bits := tokenBits(c.Token); len(c.Token) < minTokenLen || bits < minTokenBits {
			ps.add("token", "is too weak to expose to the internet (%d characters, about %.0f bits; want at least %d characters and %d bits): "+
				"leave it empty and tunneld generates a strong one, or use e.g. `openssl rand -hex 16`", len(c.Token), bits, minTokenLen, minTokenBits)
		}
	}
	if c.BindAddr == "" || net.ParseIP(c.BindAddr) == nil {
		ps.add("bind_addr", "%q is not an IP address (e.g. \"0.0.0.0\")", c.BindAddr)
	}
	c.Ports = c.Ports[:0]
	if len(c.AllowPorts) == 0 {
		ps.add("allow_ports", "is empty: no client could open a tunnel (e.g. [\"1024-65535\"])")
	}
	for _, s := range c.AllowPorts {
		r, err := parseRange(s)
		if err != nil {
			ps.add("allow_ports", "%v", err)
			continue
		}
		c.Ports = append(c.Ports, r)
	}
	checkRange(ps, "handshake_timeout", c.HandshakeTimeout, 100*time.Millisecond, 5*time.Minute, "")
	if c.MaxTunnelsPerClient < 1 || c.MaxTunnelsPerClient > MaxTunnels {
		// A client's hello and the server's welcome must fit a frame.
		ps.add("max_tunnels_per_client", "%d is out of range (1..%d)", c.MaxTunnelsPerClient, MaxTunnels)
	}
	if c.HandshakeLimit < 1 || c.HandshakeLimit > 1<<20 {
		ps.add("handshake_limit", "%d is out of range (1..1048576)", c.HandshakeLimit)
	}
	if c.HandshakeLimitPerAddress < 1 || c.HandshakeLimitPerAddress > c.HandshakeLimit {
		ps.add("handshake_limit_per_address", "%d is out of range (1..handshake_limit, %d)", c.HandshakeLimitPerAddress, c.HandshakeLimit)
	}
	if c.FailedHandshakesPerMinute < 1 || c.FailedHandshakesPerMinute > 1<<20 {
		ps.add("failed_handshakes_per_minute", "%d is out of range (1..1048576)", c.FailedHandshakesPerMinute)
	}
	if c.PortLease < 0 || c.PortLease > Duration(365*24*time.Hour) {
		ps.add("port_lease", "%s is out of range (0 turns leases off; at most 8760h, a year)", c.PortLease.D())
	}
	checkResumeWindow(ps, c.ResumeWindow)
	if c.ResumeHold < 0 || c.ResumeHold > 1<<16 {
		ps.add("resume_hold", "%d is out of range (0, which resets new connections while the client is away, to 65536)", c.ResumeHold)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		ps.add("tls", "set both cert_file and key_file, or neither (tunneld then makes its own certificate in state_dir)")
	} else if c.TLS.CertFile != "" {
		// What serve would load: check finds it too, not serve alone.
		certOK, keyOK := checkFile(ps, "tls.cert_file", c.TLS.CertFile), checkFile(ps, "tls.key_file", c.TLS.KeyFile)
		if certOK && keyOK {
			if _, err := tls.LoadX509KeyPair(c.TLS.CertFile, c.TLS.KeyFile); err != nil {
				ps.add("tls.cert_file", "%s and key_file %s do not load as a certificate and its key: %v", c.TLS.CertFile, c.TLS.KeyFile, err)
			}
		}
	}
	if c.TLS.ClientCAFile != "" {
		checkCAFile(ps, "tls.client_ca_file", c.TLS.ClientCAFile)
	}
	checkConnLimit(ps, "max_connections_per_client", c.MaxConnectionsPerClient)
	checkConnLimit(ps, "max_connections_per_tunnel", c.MaxConnectionsPerTunnel)
	c.validateClients(ps)
	checkLog(ps, c.Log)
	checkSession(ps, c.KeepAlive.Session)
	checkWindow(ps, c.Window)
	checkKeepAlive(ps, "keepalive.public", c.KeepAlive.Public)
	checkAdmin(ps, c.Admin)
	c.validateWeb(ps)
	return ps.err()
}

// A token must be long and varied enough that guessing it online is
// hopeless: 16 characters and about 64 bits by a crude estimate (length
// times log2 of the distinct characters used). A generated token is 32 hex
// digits, 128 bits.
const (
	minTokenLen  = 16
	minTokenBits = 64
)

// tokenBits estimates a token's strength: its length times log2 of the
// number of distinct characters in it. Crude, and generous to random
// tokens, but it refuses "aaaaaaaaaaaaaaaa" and "change-me-please".
func tokenBits(t string) float64 {
	distinct := map[rune]bool{}
	n := 0
	for _, r := range t {
		distinct[r] = true
		n++
	}
	if len(distinct) < 2 {
		return 0
	}
	return float64(n) * math.Log2(float64(len(distinct)))
}

func parseRange(s string) (PortRange, error) {
	lo, hi, isRange := strings.Cut(strings.TrimSpace(s), "-")
	a, err1 := strconv.Atoi(strings.TrimSpace(lo))
	b := a
	var err2 error
	if isRange {
		b, err2 = strconv.Atoi(strings.TrimSpace(hi))
	}
	if err1 != nil || err2 != nil || a < 1 || b > 65535 || a > b {
		return PortRange{}, fmt.Errorf("%q is not a port or range (want \"8000\" or \"8000-8100\", within 1..65535)", s)
	}
	return PortRange{a, b}, nil
}

// PortAllowed reports whether clients may ask for port p.
func (c *Server) PortAllowed(p int) bool { return InRanges(c.Ports, p) }

// InRanges reports whether p is in one of rs.
func InRanges(rs []PortRange, p int) bool {
	for _, r := range rs {
		if r.Contains(p) {
			return true
		}
	}
	return false
}

// AdvertisedHost is the host name put in the public addresses reported to clients.
func (c *Server) AdvertisedHost() string {
	if c.PublicHost != "" {
		return c.PublicHost
	}
	if ip := net.ParseIP(c.BindAddr); ip != nil && !ip.IsUnspecified() {
		return c.BindAddr
	}
	host, _, _ := net.SplitHostPort(c.Listen)
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		return host
	}
	return "127.0.0.1"
}
