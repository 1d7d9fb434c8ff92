package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/tunnel-dev/tunnel/internal/protocol"
	"testing"
	"time"
)

func TestExampleConfigsParse(t *testing.T) {
	t.Setenv("TUNNEL_TOKEN", "")
	s, err := LoadServer("../../configs/tunneld.toml")
	if err != nil {
		t.Fatal(err)
	}
	// The example documents the defaults: it must decode to exactly them.
	d := DefaultServer()
	if err := d.Validate(nil); err != nil {
		t.Fatal(err)
	}
	d.File = s.File
	if got, want := s.KeepAlive, d.KeepAlive; got != want {
		t.Errorf("example keepalive %+v != defaults %+v", got, want)
	}
	if s.Listen != d.Listen || s.BindAddr != d.BindAddr || s.HandshakeTimeout != d.HandshakeTimeout {
		t.Errorf("example differs from defaults: %+v", s)
	}

	c, err := LoadClient("../../configs/tunnel.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Tunnels) != 2 || c.Tunnels["ssh"].Type != "tcp" || c.Tunnels["web"].RemotePort != 18080 {
		t.Errorf("tunnels = %+v", c.Tunnels)
	}
	if c.KeepAlive != DefaultClient().KeepAlive {
		t.Errorf("client keepalive %+v != defaults", c.KeepAlive)
	}
}

func TestDefaultsMatchDesign(t *testing.T) {
	s := DefaultServer()
	ks := s.KeepAlive.Session
	if ks.Idle.D() != 15*time.Second || ks.Interval.D() != 5*time.Second || ks.Count != 3 ||
		ks.UserTimeout.D() != 30*time.Second || ks.HeartbeatInterval.D() != 10*time.Second {
		t.Errorf("session defaults %+v", ks)
	}
	if got := ks.Sock().Bound(); got != 30*time.Second {
		t.Errorf("session bound %s, want 30s", got)
	}
	if got := s.KeepAlive.Public.Sock().Bound(); got != 60*time.Second {
		t.Errorf("public bound %s", got)
	}
}

func TestUnknownKeyNamesLine(t *testing.T) {
	data := "server = \"127.0.0.1:1\"\ntoken = \"x\"\n\n[tunnels.web]\nlocal = \"127.0.0.1:80\"\nremot_port = 8080\n\n[keepalive.session]\nidel = \"5s\"\n"
	_, err := ParseClient("t.toml", []byte(data))
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"t.toml:6: tunnels.web.remot_port: unknown key", "t.toml:9: keepalive.session.idel: unknown key"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestValidationReportsAllProblemsWithLines(t *testing.T) {
	t.Setenv("TUNNEL_TOKEN", "")
	data := `server = "nohost"
token = ""

[keepalive.session]
idle = "500ms"
count = 0

[tunnels.web]
type = "udp"
local = "127.0.0.1"
remote_port = 70000
`
	_, err := ParseClient("bad.toml", []byte(data))
	if err == nil {
		t.Fatal("no error")
	}
	var n int
	for _, want := range []string{
		"bad.toml:1: server:",
		"bad.toml:2: token: is empty",
		"bad.toml:5: keepalive.session.idle: 500ms is below",
		"bad.toml:6: keepalive.session.count: 0 is out of range",
		"bad.toml:9: tunnels.web.type: \"udp\" is not a tunnel type",
		"bad.toml:10: tunnels.web.local:",
		"bad.toml:11: tunnels.web.remote_port: 70000 is out of range",
	} {
		n++
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	var p Problem
	if !errors.As(err, &p) {
		t.Errorf("error is not a Problem: %T", err)
	}
}

func TestSyntaxErrorNamesFileAndLine(t *testing.T) {
	_, err := ParseServer("s.toml", []byte("listen = \"0.0.0.0:1\"\nallow_ports = [\"1-2\"\n"))
	if err == nil || !strings.HasPrefix(err.Error(), "s.toml:") {
		t.Fatalf("err = %v", err)
	}
	_, err = ParseServer("s.toml", []byte("listen = \"0.0.0.0:1\"\n\n[log]\nlevel = 3\n"))
	if err == nil || !strings.Contains(err.Error(), "s.toml:4") {
		t.Fatalf("type error without line: %v", err)
	}
	_, err = ParseServer("s.toml", []byte("[keepalive.session]\nidle = \"fast\"\n"))
	if err == nil || !strings.Contains(err.Error(), "s.toml:2") || !strings.Contains(err.Error(), "not a duration") {
		t.Fatalf("bad duration: %v", err)
	}
}

func TestServerValidation(t *testing.T) {
	data := `listen = ":x"
bind_addr = "example.com"
allow_ports = ["9000-8000", "22"]
[tls]
cert_file = "a.pem"
[keepalive.session]
user_timeout = "5m"
`
	_, err := ParseServer("s.toml", []byte(data))
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"s.toml:1: listen", "s.toml:2: bind_addr", "s.toml:3: allow_ports: \"9000-8000\"",
		"s.toml:4: tls: set both", "s.toml:7: keepalive.session.user_timeout: 5m0s is more than twice"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestPortsAndEnvToken(t *testing.T) {
	t.Setenv("TUNNEL_TOKEN", "from-env-7c1d93aa0f5e42b8")
	s, err := ParseServer("s.toml", []byte("token = \"file\"\nallow_ports = [\"2222\", \"8000-8100\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Token != "from-env-7c1d93aa0f5e42b8" {
		t.Errorf("token %q", s.Token)
	}
	for p, want := range map[int]bool{2222: true, 2223: false, 8000: true, 8100: true, 8101: false} {
		if s.PortAllowed(p) != want {
			t.Errorf("PortAllowed(%d) = %v", p, !want)
		}
	}
}

func TestKeyLines(t *testing.T) {
	l := keyLines([]byte("a = 1\n[x.\"y.z\"]\nb = \"\"\"\nq = 2\n\"\"\"\nc = 3 # c\n[[arr]]\nd = 1\n"))
	want := map[string]int{"a": 1, "x.y.z": 2, "x.y.z.b": 3, "x.y.z.c": 6, "arr": 7, "arr.d": 8}
	for k, v := range want {
		if l[k] != v {
			t.Errorf("%s at %d, want %d (all: %v)", k, l[k], v, l)
		}
	}
	if _, ok := l["x.y.z.q"]; ok {
		t.Error("key inside a multi-line string was indexed")
	}
}

// Absurd values are refused with the key and the range, not taken: a
// handshake_timeout of 2562047h passed before.
func TestRangesNameKeyAndBounds(t *testing.T) {
	t.Setenv("TUNNEL_TOKEN", "")
	t.Setenv("STATE_DIRECTORY", "")
	srv := "token = \"0123456789abcdefgh\"\nhandshake_timeout = \"2562047h\"\nmax_tunnels_per_client = 100000\nport_lease = \"-1s\"\nresume_window = \"11m\"\nresume_hold = -1\n" +
		"[keepalive.session]\nuser_timeout = \"2562047h\"\nheartbeat_interval = \"24h\"\n[keepalive.public]\nidle = \"100000s\"\n"
	_, err := ParseServer("s.toml", []byte(srv))
	for _, want := range []string{
		"s.toml:2: handshake_timeout: 2562047h0m0s is out of range (100ms..5m0s)",
		"s.toml:3: max_tunnels_per_client: 100000 is out of range (1..256)",
		"s.toml:4: port_lease: -1s is out of range",
		"s.toml:5: resume_window: 11m0s is out of range (0, which turns resumption off, to 10m0s)",
		"s.toml:6: resume_hold: -1 is out of range",
		"keepalive.session.user_timeout: 2562047h0m0s is out of range (0s..1h0m0s",
		"keepalive.session.heartbeat_interval: 24h0m0s is too large",
		"keepalive.public.idle: 27h46m40s is more than the kernel accepts",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("server error %v\nlacks %q", err, want)
		}
	}
	cli := "server = \"h:1\"\ntoken = \"x\"\ndial_timeout = \"100h\"\nresume_window = \"-1s\"\n[reconnect]\nmax_delay = \"1000h\"\n[tunnels.a]\nlocal = \"127.0.0.1:1\"\n"
	_, err = ParseClient("c.toml", []byte(cli))
	for _, want := range []string{"c.toml:3: dial_timeout: 100h0m0s is out of range", "c.toml:6: reconnect.max_delay: 1000h0m0s is out of range",
		"c.toml:4: resume_window: -1s is out of range"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("client error %v\nlacks %q", err, want)
		}
	}
}

// Files a config names are checked when it is loaded (by check and by
// serve alike): a missing or unparsable one names its key.
func TestConfigFilesExistAndParse(t *testing.T) {
	t.Setenv("TUNNEL_TOKEN", "")
	dir := t.TempDir()
	junk := dir + "/junk.pem"
	if err := os.WriteFile(junk, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := fmt.Sprintf("token = \"0123456789abcdefgh\"\n[tls]\ncert_file = %q\nkey_file = %q\n", dir+"/missing.pem", junk)
	_, err := ParseServer("s.toml", []byte(srv))
	if err == nil || !strings.Contains(err.Error(), "s.toml:3: tls.cert_file:") || !strings.Contains(err.Error(), "missing.pem: no such file") {
		t.Errorf("missing cert_file: %v", err)
	}
	srv = fmt.Sprintf("token = \"0123456789abcdefgh\"\n[tls]\ncert_file = %q\nkey_file = %q\n", junk, junk)
	if _, err := ParseServer("s.toml", []byte(srv)); err == nil || !strings.Contains(err.Error(), "do not load as a certificate") {
		t.Errorf("junk cert_file: %v", err)
	}
	cli := fmt.Sprintf("server = \"h:1\"\ntoken = \"x\"\n[tls]\nenabled = true\nca_file = %q\n[tunnels.a]\nlocal = \"127.0.0.1:1\"\n", junk)
	if _, err := ParseClient("c.toml", []byte(cli)); err == nil || !strings.Contains(err.Error(), "c.toml:5: tls.ca_file:") || !strings.Contains(err.Error(), "holds no PEM certificate") {
		t.Errorf("junk ca_file: %v", err)
	}
}

// FuzzParseServer and FuzzParseClient: any bytes as a config file give a
// config or an error, never a panic; a config that parses validates again
// unchanged.
func FuzzParseServer(f *testing.F) {
	if data, err := os.ReadFile("../../configs/tunneld.toml"); err == nil {
		f.Add(data)
	}
	f.Add([]byte("listen = \"127.0.0.1:7835\"\ntoken = \"0123456789abcdef\"\nallow_ports = [\"1-2\", \"65535\"]\n"))
	f.Add([]byte("[keepalive.session]\nidle = \"1h\"\n[[x]]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseServer("f.toml", data)
		if err != nil {
			return
		}
		if err := c.Validate(nil); err != nil {
			t.Fatalf("a parsed config does not validate again: %v", err)
		}
	})
}

func FuzzParseClient(f *testing.F) {
	if data, err := os.ReadFile("../../configs/tunnel.toml"); err == nil {
		f.Add(data)
	}
	f.Add([]byte("server = \"h:1\"\ntoken = \"t\"\n[tunnels.a]\nlocal = \"127.0.0.1:1\"\nremote_port = 0\n"))
	f.Add([]byte("server = \"[::1]:1\"\n[tunnels.\"a.b\"]\nlocal = \"x:65536\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseClient("f.toml", data)
		if err != nil {
			return
		}
		if err := c.Validate(nil); err != nil {
			t.Fatalf("a parsed config does not validate again: %v", err)
		}
	})
}

// A server token that could be guessed online is refused by check and
// serve alike, saying how to get a strong one.
func TestWeakServerTokenIsRefused(t *testing.T) {
	t.Setenv("TUNNEL_TOKEN", "")
	for _, tok := range []string{"x", "change-me", "aaaaaaaaaaaaaaaaaaaaaaaa", "change-me-please"} {
		_, err := ParseServer("s.toml", []byte(fmt.Sprintf("token = %q\n", tok)))
		if err == nil || !strings.Contains(err.Error(), "s.toml:1: token: is too weak") {
			t.Errorf("token %q: %v", tok, err)
		}
	}
	for _, tok := range []string{"", "5f3a9c07e1b24d6811aa20c3", "correct horse battery staple"} {
		if _, err := ParseServer("s.toml", []byte(fmt.Sprintf("token = %q\n", tok))); err != nil {
			t.Errorf("token %q refused: %v", tok, err)
		}
	}
}

// A client with more tunnels than one hello can carry is a config error,
// not a client that cannot send its hello and retries forever.
func TestTooManyTunnels(t *testing.T) {
	t.Setenv("TUNNEL_TOKEN", "")
	var b strings.Builder
	b.WriteString("server = \"h:1\"\ntoken = \"t\"\n")
	for i := range MaxTunnels + 1 {
		fmt.Fprintf(&b, "[tunnels.%s%03d]\nlocal = \"127.0.0.1:1\"\n", strings.Repeat("n", 60), i)
	}
	if _, err := ParseClient("c.toml", []byte(b.String())); err == nil || !strings.Contains(err.Error(), "257 tunnels; one client may have at most 256") {
		t.Fatalf("error %v", err)
	}
	// The most a client may have fits in one hello.
	c := DefaultClient()
	c.Tunnels = map[string]*Tunnel{}
	for i := range MaxTunnels {
		c.Tunnels[fmt.Sprintf("%s%03d", strings.Repeat("n", 61), i)] = &Tunnel{Type: "tcp", Local: "127.0.0.1:1", RemotePort: 65535}
	}
	var reqs []protocol.TunnelRequest
	for name, tn := range c.Tunnels {
		reqs = append(reqs, protocol.TunnelRequest{Name: name, Type: tn.Type, RemotePort: tn.RemotePort, PreferPort: 65535})
	}
	hello := protocol.Control{Type: protocol.TypeHello, Hello: &protocol.Hello{Version: protocol.Version, Client: strings.Repeat("c", 64),
		Token: strings.Repeat("t", 256), Tunnels: reqs}}
	if _, err := protocol.AppendFrame(nil, hello); err != nil {
		t.Fatalf("the largest hello a valid config makes: %v", err)
	}
}

// TLS is on unless a config says tls = "off"; [tls] tunes it, and every
// mistake in it names the file, the line and the key.
func TestTLSForms(t *testing.T) {
	t.Setenv("TUNNEL_TOKEN", "")
	const head = "server = \"127.0.0.1:1\"\ntoken = \"x\"\n[tunnels.web]\nlocal = \"127.0.0.1:80\"\n"
	fp := "sha256:" + strings.Repeat("0a", 32)
	for _, tc := range []struct {
		name, data string
		want       ClientTLS
		errs       []string
	}{
		{"default", head, ClientTLS{}, nil},
		{"off", "tls = \"off\"\n" + head, ClientTLS{Off: true}, nil},
		{"older spelling of off", head + "[tls]\nenabled = false\n", ClientTLS{Off: true}, nil},
		{"pin in openssl's form", head + "[tls]\nfingerprint = \"SHA256:" + strings.ToUpper(strings.Repeat("0a:", 31)) + "0A\"\n", ClientTLS{Fingerprint: fp}, nil},
		{"inline table", "tls = { fingerprint = \"" + fp + "\" }\n" + head, ClientTLS{Fingerprint: fp}, nil},
		{"misspelt off", "tls = \"of\"\n" + head, ClientTLS{}, []string{"c.toml:1: tls:", `"off"`}},
		{"unknown key", head + "[tls]\nfingerprnt = \"x\"\n", ClientTLS{}, []string{"c.toml:5: tls:", "unknown key tls.fingerprnt"}},
		{"wrong type", head + "[tls]\nca_file = 3\n", ClientTLS{}, []string{"c.toml:5: tls:", "tls.ca_file: want a string"}},
		{"bad fingerprint", head + "[tls]\nfingerprint = \"md5:00\"\n", ClientTLS{}, []string{"tls.fingerprint", "sha256:"}},
		{"two ways to trust", head + "[tls]\nfingerprint = \"" + fp + "\"\ninsecure_skip_verify = true\n", ClientTLS{}, []string{"set only one of"}},
		{"options with tls off", head + "[tls]\nenabled = false\nca_file = \"/x\"\n", ClientTLS{}, []string{"TLS options are set"}},
		{"half a client certificate", head + "[tls]\ncert_file = \"/x\"\n", ClientTLS{}, []string{"set both cert_file and key_file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseClient("c.toml", []byte(tc.data))
			if len(tc.errs) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if c.TLS != tc.want {
					t.Errorf("tls %+v, want %+v", c.TLS, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.errs {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
		})
	}
	s, err := ParseServer("s.toml", []byte("tls = \"off\"\n"))
	if err != nil || s.TLS.Enabled() {
		t.Fatalf("server tls = off: %+v, %v", s, err)
	}
	if _, err := ParseServer("s.toml", []byte("listen = \"0.0.0.0:1\"\n[tls]\nclient_ca_file = \"/nonexistent/ca.pem\"\n")); err == nil ||
		!strings.Contains(err.Error(), "s.toml:3: tls.client_ca_file") {
		t.Errorf("missing client CA file: %v", err)
	}
	if s, err := ParseServer("s.toml", nil); err != nil || !s.TLS.Auto() {
		t.Errorf("default server TLS is not the automatic certificate: %+v, %v", s.TLS, err)
	}
}

// [[clients]]: each entry's token from one place, strong and its own; its
// ports within the server's; every mistake on its own line, and no message
// ever holds a token.
func TestClientEntries(t *testing.T) {
	t.Setenv("TUNNEL_TOKEN", "")
	dir := t.TempDir()
	good := "f3a9c07e1b24d685f3a9c07e"
	file := filepath.Join(dir, "tok")
	if err := os.WriteFile(file, []byte(good+"x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CAROL_TOKEN", good+"y")
	ok := fmt.Sprintf(`allow_ports = ["20000-29999"]
[[clients]]
name = "alice"
token = %q
allow_ports = ["20000-20009"]
max_tunnels = 2
[[clients]]
name = "bob"
token_file = %q
[[clients]]
name = "carol"
token_env = "CAROL_TOKEN"
max_connections_per_tunnel = 10
`, good, file)
	s, err := ParseServer("s.toml", []byte(ok))
	if err != nil {
		t.Fatal(err)
	}
	alice, bob, carol := s.Client("alice"), s.Client("bob"), s.Client("carol")
	if !alice.TokenMatches(good) || alice.TokenMatches(good+"x") || !bob.TokenMatches(good+"x") || !carol.TokenMatches(good+"y") {
		t.Error("tokens do not match their clients")
	}
	if fmt.Sprint(alice.Ports) != "[20000-20009]" || fmt.Sprint(bob.Ports) != "[20000-29999]" || alice.MaxTunnels != 2 || bob.MaxTunnels != 64 ||
		carol.MaxConnectionsPerTunnel != 10 {
		t.Errorf("allowances: %+v %+v %+v", alice, bob, carol)
	}

	weak := "aaaaaaaaaaaaaaaaaaab"
	bad := fmt.Sprintf(`token = %q
allow_ports = ["20000-29999"]
[[clients]]
name = "alice"
token = %q
[[clients]]
name = "alice"
token = %q
allow_ports = ["80"]
[[clients]]
name = "dave"
token = %q
token_env = "X"
[[clients]]
name = "erin"
`, good, weak, good, good)
	_, err = ParseServer("s.toml", []byte(bad))
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		"s.toml:1: token: is set together with [[clients]]",
		"s.toml:5: clients[0].token: (alice) the token from token is too weak",
		"s.toml:7: clients[1].name: \"alice\" is used by two",
		"s.toml:9: clients[1].allow_ports: 80 is not within the server's allow_ports",
		"s.toml:10: clients[2]: (dave) set only one of token",
		"s.toml:14: clients[3]: (erin) has no token",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), weak) || strings.Contains(err.Error(), good) {
		t.Errorf("a config error shows a token:\n%v", err)
	}
	dup := fmt.Sprintf("[[clients]]\nname = \"a\"\ntoken = %q\n[[clients]]\nname = \"b\"\ntoken = %q\n", good, good)
	if _, err := ParseServer("s.toml", []byte(dup)); err == nil || !strings.Contains(err.Error(), `s.toml:6: clients[1].token: (b) has the same token as client "a"`) {
		t.Errorf("shared token between clients: %v", err)
	}
}

// [window] takes sizes with binary units; a size that is not one, or out
// of range, is refused naming the file, line and key.
func TestWindowSizes(t *testing.T) {
	t.Setenv("TUNNEL_TOKEN", "")
	t.Setenv("STATE_DIRECTORY", "")
	c, err := ParseServer("s.toml", []byte("token = \"0123456789abcdefgh\"\n[window]\nstream_max = \"32MiB\"\nsession_budget = \"1GiB\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Window.StreamMax != 32<<20 || c.Window.SessionBudget != 1<<30 {
		t.Errorf("window %+v", c.Window)
	}
	d, err := ParseServer("s.toml", []byte("token = \"0123456789abcdefgh\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if d.Window != DefaultWindow {
		t.Errorf("default window %+v, want %+v", d.Window, DefaultWindow)
	}
	_, err = ParseServer("s.toml", []byte("token = \"0123456789abcdefgh\"\n[window]\nstream_max = \"lots\"\n"))
	if err == nil || !strings.Contains(err.Error(), "s.toml:3") || !strings.Contains(err.Error(), "not a size") {
		t.Errorf("bad size: %v", err)
	}
	cli := "server = \"h:1\"\ntoken = \"x\"\n[window]\nstream_max = \"1MiB\"\nsession_budget = \"100GiB\"\n[tunnels.a]\nlocal = \"127.0.0.1:1\"\n"
	_, err = ParseClient("c.toml", []byte(cli))
	for _, want := range []string{"c.toml:4: window.stream_max: 1MiB is out of range (4MiB", "c.toml:5: window.session_budget: 100GiB is out of range"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("client error %v\nlacks %q", err, want)
		}
	}
}

func TestAdminEndpoint(t *testing.T) {
	t.Setenv("TUNNEL_TOKEN", "")
	t.Setenv("TUNNEL_ADMIN_TOKEN", "")
	t.Setenv("STATE_DIRECTORY", "")
	base := "token = \"0123456789abcdefgh\"\n"
	for _, c := range []struct{ admin, want string }{
		{"", ""},
		{"[admin]\nsocket = \"/run/tunneld/admin.sock\"\n", ""},
		{"[admin]\naddress = \"127.0.0.1:7001\"\n", ""},
		{"[admin]\naddress = \"[::1]:7001\"\n", ""},
		{"[admin]\naddress = \"0.0.0.0:7001\"\ntoken = \"5f0c1e8a9b7d4c2e6a1f\"\n", ""},
		{"[admin]\nsocket = \"admin.sock\"\n", "s.toml:3: admin.socket: \"admin.sock\" is not an absolute path"},
		{"[admin]\nsocket = \"/a\"\naddress = \"127.0.0.1:1\"\n", "s.toml:2: admin: set socket or address, not both"},
		{"[admin]\naddress = \"0.0.0.0:7001\"\n", "s.toml:3: admin.address: 0.0.0.0:7001 is not a loopback address, and admin.token is empty"},
		{"[admin]\naddress = \"localhost:7001\"\n", "s.toml:3: admin.address: \"localhost:7001\": the host must be an IP address"},
		{"[admin]\naddress = \"127.0.0.1\"\n", "s.toml:3: admin.address: \"127.0.0.1\" has no port"},
		{"[admin]\naddress = \"127.0.0.1:7001\"\ntoken = \"secret\"\n", "s.toml:4: admin.token: is too weak"},
		{"[admin]\nsocket = \"/run/tunneld/admin.sock\"\npprof = true\n", ""},
		{"[admin]\nsocket = \"/run/tunneld/admin.sock\"\npprof = \"yes\"\n", "pprof"},
	} {
		cfg, err := ParseServer("s.toml", []byte(base+c.admin))
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%q: %v", c.admin, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%q: error %v, want %q", c.admin, err, c.want)
		case c.want == "" && cfg.Admin.Enabled() != (c.admin != ""):
			t.Errorf("%q: Enabled() = %v", c.admin, cfg.Admin.Enabled())
		case c.want == "" && cfg.Admin.Pprof != strings.Contains(c.admin, "pprof"):
			t.Errorf("%q: Pprof = %v", c.admin, cfg.Admin.Pprof)
		}
	}
	t.Setenv("TUNNEL_ADMIN_TOKEN", "from-env-7c1d93aa0f5e42b8")
	cli := "server = \"h:1\"\ntoken = \"x\"\n[tunnels.a]\nlocal = \"127.0.0.1:1\"\n[admin]\naddress = \"0.0.0.0:7002\"\n"
	c, err := ParseClient("c.toml", []byte(cli))
	if err != nil || c.Admin.Token != "from-env-7c1d93aa0f5e42b8" {
		t.Fatalf("client admin with the token from the environment: %v, %+v", err, c)
	}
}

func TestWebTunnelKeys(t *testing.T) {
	t.Setenv("TUNNEL_TOKEN", "")
	base := "server = \"h:1\"\ntoken = \"x\"\n"
	for _, c := range []struct{ tunnel, want string }{
		{"[tunnels.w]\ntype = \"http\"\nlocal = \"127.0.0.1:1\"\nsubdomain = \"app\"\n", ""},
		{"[tunnels.w]\ntype = \"http\"\nlocal = \"127.0.0.1:1\"\nhostnames = [\"App.Example.org.\", \"*.app.example.org\"]\nlocations = [\"/api\"]\nforwarded_headers = false\n", ""},
		{"[tunnels.w]\ntype = \"https\"\nlocal = \"127.0.0.1:1\"\nhostnames = [\"a.example.org\"]\ntls_termination = \"server\"\nlocations = [\"/x\"]\n", ""},
		{"[tunnels.w]\ntype = \"http\"\nlocal = \"127.0.0.1:1\"\n", "c.toml:3: tunnels.w: an http tunnel needs subdomain"},
		{"[tunnels.w]\ntype = \"http\"\nlocal = \"127.0.0.1:1\"\nsubdomain = \"a\"\nremote_port = 80\n", "c.toml:7: tunnels.w.remote_port: is for tcp tunnels"},
		{"[tunnels.w]\nlocal = \"127.0.0.1:1\"\nsubdomain = \"a\"\n", "c.toml:5: tunnels.w.subdomain: is for type = \"http\" or \"https\" tunnels"},
		{"[tunnels.w]\ntype = \"http\"\nlocal = \"127.0.0.1:1\"\nhostnames = [\"bad_name.org\"]\n", "c.toml:6: tunnels.w.hostnames: \"bad_name.org\" is not a host name"},
		{"[tunnels.w]\ntype = \"http\"\nlocal = \"127.0.0.1:1\"\nsubdomain = \"a\"\nlocations = [\"api\"]\n", "c.toml:7: tunnels.w.locations: \"api\" is not a path prefix"},
		{"[tunnels.w]\ntype = \"http\"\nlocal = \"127.0.0.1:1\"\nsubdomain = \"a\"\nbasic_auth = [\"ann:plain\"]\n", "c.toml:7: tunnels.w.basic_auth: the hash for \"ann\" is not a bcrypt hash"},
		{"[tunnels.w]\ntype = \"https\"\nlocal = \"127.0.0.1:1\"\nsubdomain = \"a\"\nhost_header = \"x\"\n", "c.toml:7: tunnels.w.host_header: needs tls_termination = \"server\""},
		{"[tunnels.w]\nlocal = \"127.0.0.1:1\"\nproxy_protocol = \"v3\"\n", "c.toml:5: tunnels.w.proxy_protocol: \"v3\" is not a version"},
	} {
		cfg, err := ParseClient("c.toml", []byte(base+c.tunnel))
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%q: %v", c.tunnel, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%q: error %v, want %q", c.tunnel, err, c.want)
		case c.want == "" && strings.Contains(c.tunnel, "App.Example"):
			if got := cfg.Tunnels["w"].Hostnames[0]; got != "app.example.org" || cfg.Tunnels["w"].Forwarded() {
				t.Errorf("normalized %q, forwarded %v", got, cfg.Tunnels["w"].Forwarded())
			}
		}
	}
	acme := "token = \"0123456789abcdefgh\"\n[web]\nhttp_addr = \"0.0.0.0:80\"\nacme_email = \"ops\"\nacme_directory = \"http://ca.example\"\n"
	_, err := ParseServer("s.toml", []byte(acme))
	for _, want := range []string{"s.toml:4: web.acme_email: needs web.https_addr", "s.toml:4: web.acme_email: \"ops\" is not an email address", "s.toml:5: web.acme_directory: \"http://ca.example\" is not an https URL"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("acme keys: %v\nlacks %q", err, want)
		}
	}
	srv := "token = \"0123456789abcdefgh\"\n[web]\nhttp_addr = \"0.0.0.0:80\"\ndomains = [\"Tunnel.Example.com\", \"*.bad.com\"]\n"
	if _, err := ParseServer("s.toml", []byte(srv)); err == nil || !strings.Contains(err.Error(), "s.toml:4: web.domains: \"*.bad.com\" is not a domain") {
		t.Errorf("server web: %v", err)
	}
	if _, err := ParseServer("s.toml", []byte("token = \"0123456789abcdefgh\"\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.1\", \"nope\"]\n")); err == nil ||
		!strings.Contains(err.Error(), "s.toml:2: trusted_proxies: \"nope\" is not an address or CIDR") {
		t.Errorf("trusted proxies: %v", err)
	}
	for _, c := range []struct {
		pattern, host string
		want          bool
	}{{"*.example.org", "a.example.org", true}, {"*.example.org", "a.b.example.org", true}, {"*.example.org", "example.org", false},
		{"example.org", "example.org", true}, {"*.example.org", "*.a.example.org", true}, {"*.example.org", "xexample.org", false}} {
		if HostMatches(c.pattern, c.host) != c.want {
			t.Errorf("HostMatches(%q, %q) = %v", c.pattern, c.host, !c.want)
		}
	}
}
