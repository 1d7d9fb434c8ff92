package config

import (
	"crypto/tls"
	"os"
	"regexp"
	"sort"
	"time"

	"github.com/tunnel-dev/tunnel/internal/tlsconf"
)

// Client is tunnelc's configuration (tunnel.toml).
type Client struct {
	// Server is tunneld's session address, host:port.
	Server string `toml:"server"`
	// Token must match the server's. TUNNEL_TOKEN overrides it.
	Token string `toml:"token"`
	// Name identifies this client to the server; a new session under the
	// same name takes over the ports of an older one. Default: host name.
	Name string `toml:"name"`
	// DialTimeout bounds each dial of a local service.
	DialTimeout Duration `toml:"dial_timeout"`
	// HandshakeTimeout bounds the session handshake and each stream header read.
	HandshakeTimeout Duration `toml:"handshake_timeout"`
	// ResumeWindow is how long open connections are kept through a lost
	// session for it to be resumed; the server's can shorten it. 0 turns
	// resumption off.
	ResumeWindow Duration `toml:"resume_window"`
	// DrainTimeout is how long the open connections of a tunnel removed by
	// a reload may go on before they are reset.
	DrainTimeout Duration `toml:"drain_timeout"`

	Log       Log                `toml:"log"`
	TLS       ClientTLS          `toml:"tls"`
	KeepAlive ClientKeepAlive    `toml:"keepalive"`
	Reconnect Reconnect          `toml:"reconnect"`
	Window    Window             `toml:"window"`
	Tunnels   map[string]*Tunnel `toml:"tunnels"`
	Admin     Admin              `toml:"admin"`

	File string `toml:"-"`
}

// ClientKeepAlive holds the liveness settings of tunnelc's two legs.
type ClientKeepAlive struct {
	Session Session   `toml:"session"`
	Local   KeepAlive `toml:"local"`
}

// Reconnect is the backoff between session attempts: exponential from
// MinDelay to MaxDelay with full jitter, reset after a minute of health.
type Reconnect struct {
	MinDelay Duration `toml:"min_delay"`
	MaxDelay Duration `toml:"max_delay"`
}

// Tunnel is one forwarded service ([tunnels.NAME]).
type Tunnel struct {
	Type       string `toml:"type"` // tcp, http or https
	Local      string `toml:"local"`
	RemotePort int    `toml:"remote_port"` // tcp

	// http and https: the names the tunnel is reached by on the server's
	// shared port, a subdomain of its domains or full host names
	// ("*.app.example.org" for every name under it).
	Subdomain string   `toml:"subdomain"`
	Hostnames []string `toml:"hostnames"`
	// http (and https terminated at the server): the path prefixes this
	// tunnel serves of its names (all when empty; the longest match wins
	// across tunnels); the Host header the local service gets (as sent
	// when empty); X-Forwarded-For/-Proto/-Host and Forwarded added
	// (default true); users allowed in, "user:BCRYPT-HASH".
	Locations        []string `toml:"locations"`
	HostHeader       string   `toml:"host_header"`
	ForwardedHeaders *bool    `toml:"forwarded_headers"`
	BasicAuth        []string `toml:"basic_auth"`
	// https: "server" terminates TLS at tunneld with [web] cert_file and
	// routes the requests as http; empty passes TLS through.
	TLSTermination string `toml:"tls_termination"`
	// ProxyProtocol, "v1" or "v2", makes tunnelc send the local service a
	// PROXY header with the public client's address.
	ProxyProtocol string `toml:"proxy_protocol"`
}

// Forwarded reports whether the tunnel adds the X-Forwarded headers.
func (t *Tunnel) Forwarded() bool { return t.ForwardedHeaders == nil || *t.ForwardedHeaders }

// DefaultClient returns the defaults a tunnel.toml is decoded over.
func DefaultClient() *Client {
	name, _ := os.Hostname()
	if name == "" {
		name = "tunnelc"
	}
	return &Client{
		Name:             name,
		DialTimeout:      Duration(5 * time.Second),
		HandshakeTimeout: Duration(10 * time.Second),
		ResumeWindow:     Duration(DefaultResumeWindow),
		DrainTimeout:     Duration(30 * time.Second),
		Log:              Log{Level: "info", Format: "text"},
		KeepAlive:        ClientKeepAlive{Session: DefaultSession, Local: DefaultLeg},
		Reconnect:        Reconnect{MinDelay: Duration(250 * time.Millisecond), MaxDelay: Duration(30 * time.Second)},
		Window:           DefaultWindow,
	}
}

// LoadClient reads and validates tunnelc's config.
func LoadClient(path string) (*Client, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return ParseClient(path, data)
}

// ParseClient decodes and validates tunnel.toml content; file names it in errors.
func ParseClient(file string, data []byte) (*Client, error) {
	c := DefaultClient()
	c.File = file
	lines, err := decode(file, data, c)
	if err != nil {
		return nil, err
	}
	if t := os.Getenv("TUNNEL_TOKEN"); t != "" {
		c.Token = t
	}
	c.Admin.applyEnv()
	for _, t := range c.Tunnels {
		if t.Type == "" {
			t.Type = "tcp"
		}
	}
	if err := c.Validate(lines); err != nil {
		return nil, err
	}
	return c, nil
}

// MaxTunnels is the most tunnels one client may have: its hello, with
// names of up to 64 characters, then fits in a protocol frame.
const MaxTunnels = 256

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// ValidName reports whether s is a valid client or tunnel name: letters,
// digits, '.', '_', '-', at most 64 bytes. tunneld checks what a hello
// asks for with it too.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// Validate checks c; lines maps keys to file lines for the messages.
func (c *Client) Validate(lines map[string]int) error {
	ps := &problems{file: c.File, lines: lines}
	if err := hostPort(c.Server, false); err != nil {
		ps.add("server", "%v", err)
	}
	if c.Token == "" {
		ps.add("token", "is empty: copy the token tunneld printed at start (or set TUNNEL_TOKEN)")
	}
	if !nameRE.MatchString(c.Name) {
		ps.add("name", "%q is not a valid client name (letters, digits, '.', '_', '-'; at most 64)", c.Name)
	}
	checkRange(ps, "dial_timeout", c.DialTimeout, 10*time.Millisecond, 5*time.Minute, "")
	checkRange(ps, "handshake_timeout", c.HandshakeTimeout, 100*time.Millisecond, 5*time.Minute, "")
	checkRange(ps, "reconnect.min_delay", c.Reconnect.MinDelay, 10*time.Millisecond, time.Hour, "")
	checkResumeWindow(ps, c.ResumeWindow)
	checkRange(ps, "drain_timeout", c.DrainTimeout, 0, time.Hour, "; 0 resets a removed tunnel's connections at once")
	checkRange(ps, "reconnect.max_delay", c.Reconnect.MaxDelay, 10*time.Millisecond, time.Hour, "")
	if c.Reconnect.MaxDelay < c.Reconnect.MinDelay {
		ps.add("reconnect", "need min_delay <= max_delay (have %s, %s)", c.Reconnect.MinDelay.D(), c.Reconnect.MaxDelay.D())
	}
	checkClientTLS(ps, &c.TLS)
	checkLog(ps, c.Log)
	checkSession(ps, c.KeepAlive.Session)
	checkKeepAlive(ps, "keepalive.local", c.KeepAlive.Local)
	checkWindow(ps, c.Window)
	checkAdmin(ps, c.Admin)
	if len(c.Tunnels) == 0 {
		ps.add("tunnels", "no tunnels: add at least one [tunnels.NAME] table with local and remote_port")
	}
	if len(c.Tunnels) > MaxTunnels {
		// The hello that asks for them must fit in one protocol frame.
		ps.add("tunnels", "%d tunnels; one client may have at most %d (run more clients)", len(c.Tunnels), MaxTunnels)
	}
	for _, name := range c.TunnelNames() {
		t := c.Tunnels[name]
		key := "tunnels." + name
		if !nameRE.MatchString(name) {
			ps.add(key, "%q is not a valid tunnel name (letters, digits, '.', '_', '-'; at most 64)", name)
		}
		if t.Type != TypeTCP && t.Type != TypeHTTP && t.Type != TypeHTTPS {
			ps.add(key+".type", "%q is not a tunnel type (\"tcp\", \"http\" or \"https\")", t.Type)
		}
		validateWebTunnel(ps, key, t)
		if err := hostPort(t.Local, false); err != nil {
			ps.add(key+".local", "%v", err)
		}
		if t.RemotePort < 0 || t.RemotePort > 65535 {
			ps.add(key+".remote_port", "%d is out of range (0 lets the server pick; else 1..65535)", t.RemotePort)
		}
	}
	return ps.err()
}

// TunnelNames returns the tunnel names in a stable order.
func (c *Client) TunnelNames() []string {
	names := make([]string, 0, len(c.Tunnels))
	for n := range c.Tunnels {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func checkClientTLS(ps *problems, t *ClientTLS) {
	if t.Off {
		if t.CAFile != "" || t.ServerName != "" || t.Fingerprint != "" || t.InsecureSkipVerify || t.CertFile != "" || t.KeyFile != "" {
			ps.add("tls.enabled", "TLS options are set but enabled = false")
		}
		return
	}
	if t.Fingerprint != "" {
		fp, err := tlsconf.ParseFingerprint(t.Fingerprint)
		if err != nil {
			ps.add("tls.fingerprint", "%v", err)
		} else {
			t.Fingerprint = fp
		}
	}
	set := 0
	for _, b := range []bool{t.CAFile != "", t.Fingerprint != "", t.InsecureSkipVerify} {
		if b {
			set++
		}
	}
	if set > 1 {
		ps.add("tls", "set only one of ca_file, fingerprint and insecure_skip_verify: each replaces the others' way of trusting the server")
	}
	if t.CAFile != "" {
		checkCAFile(ps, "tls.ca_file", t.CAFile)
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		ps.add("tls", "set both cert_file and key_file (a client certificate for a server that asks for one), or neither")
	} else if t.CertFile != "" && checkFile(ps, "tls.cert_file", t.CertFile) && checkFile(ps, "tls.key_file", t.KeyFile) {
		if _, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile); err != nil {
			ps.add("tls.cert_file", "%s and key_file %s do not load as a certificate and its key: %v", t.CertFile, t.KeyFile, err)
		}
	}
}
