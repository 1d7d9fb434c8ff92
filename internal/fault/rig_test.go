package fault

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

func TestMain(m *testing.M) {
	tt.SweepNamespaces()
	defer tt.RemoveBinaries() // the test wrapper exits with m.Run's code
	m.Run()
}

// ka is a keepalive setting; its bound is idle + interval*count, the time
// the README promises a dead idle peer is found within.
type ka struct {
	idle, intvl time.Duration
	count       int
}

func (k ka) bound() time.Duration { return k.idle + time.Duration(k.count)*k.intvl }

func (k ka) toml(table string) string {
	return fmt.Sprintf("[%s]\nidle = %q\ninterval = %q\ncount = %d\n", table, k.idle, k.intvl, k.count)
}

// Short settings so the suite stays fast: every bound is a few seconds.
var (
	shortKA = ka{2 * time.Second, time.Second, 3} // 5 s
	// slack covers the log line, process scheduling under -race and the
	// kernel timer's granularity (measured at most 0.1 s on this kernel).
	slack = 1500 * time.Millisecond
)

// opts shape one rig.
type opts struct {
	sessionKA   ka
	userTimeout time.Duration
	hbInterval  time.Duration // 0: heartbeat off
	hbTimeout   time.Duration
	publicKA    ka
	localKA     ka
	viaRelay    bool // the client reaches the server through a relay host
	maxDelay    time.Duration
	dialTimeout time.Duration
	extra       string // more [tunnels.X] tables for the client
	// localOnClient puts the local service next to tunnelc, on the client
	// host, so that only the session crosses the client's link.
	localOnClient bool
	// localLoopback puts it there on 127.0.0.1: the client host's own
	// address may change and the local leg does not notice.
	localLoopback bool
	// congestion, when set, is every host's TCP congestion control
	// (net.ipv4.tcp_congestion_control in its namespace), set before the
	// daemons start.
	congestion string
	// streamMax, when set, is [window] stream_max on both daemons.
	streamMax string
	// resumeWindow is resume_window on both daemons: off unless a test
	// is about resumption, so that the others see what a lost session
	// does without it.
	resumeWindow time.Duration
	// profiles gives both daemons an admin socket with Go's profiles on
	// (rig.runtime reads them).
	profiles bool
}

func defaultOpts() opts {
	return opts{
		sessionKA:   shortKA,
		userTimeout: 5 * time.Second,
		hbInterval:  time.Second,
		hbTimeout:   2 * time.Second,
		publicKA:    shortKA,
		localKA:     shortKA,
		maxDelay:    time.Second,
		dialTimeout: 2 * time.Second,
	}
}

func (o opts) hbBound() time.Duration { return o.hbInterval + o.hbTimeout }

// rig is the four-host lab with tunneld on "server", tunnelc on "client",
// an echo service on "local", and public connections from "public".
type rig struct {
	t                       testing.TB
	o                       opts
	lab                     *tt.Lab
	pub, srv, cli, loc, rel *tt.Host
	relay                   *tt.Relay
	echo                    *tt.Echo
	dir, bin                string
	server, client          *tt.Proc
	localAddr               string // the echo service's, as tunnelc dials it
	fixed                   string // public address of tunnel "fixed"
	picked                  string // public address of tunnel "picked" (remote_port = 0)
}

const (
	sessionPort = 7835
	fixedPort   = 18080
	echoPort    = 9000
)

func newRig(t testing.TB, o opts) *rig {
	t.Helper()
	r := &rig{t: t, o: o, bin: tt.Binaries(t), dir: t.TempDir()}
	names := []string{"public", "server", "client", "local"}
	if o.viaRelay {
		names = append(names, "relay")
	}
	r.lab = tt.NewLab(t, names...)
	r.pub, r.srv, r.cli, r.loc = r.lab.Host("public"), r.lab.Host("server"), r.lab.Host("client"), r.lab.Host("local")
	if o.congestion != "" {
		for _, name := range names {
			h := r.lab.Host(name)
			if out, err := exec.Command("ip", "netns", "exec", h.NS, "sysctl", "-qw", "net.ipv4.tcp_congestion_control="+o.congestion).CombinedOutput(); err != nil {
				t.Fatalf("congestion control %s on %s: %v: %s", o.congestion, name, err, out)
			}
		}
	}
	if o.localOnClient || o.localLoopback {
		r.loc = r.cli
	}
	r.localAddr = r.loc.Addr(echoPort)
	if o.localLoopback {
		r.echo = tt.NewEchoOn(t, r.loc.ListenLoopback(t, echoPort))
		r.localAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(echoPort))
	} else {
		r.echo = tt.NewEchoOn(t, r.loc.Listen(t, echoPort))
	}
	serverAddr := r.srv.Addr(sessionPort)
	if o.viaRelay {
		r.rel = r.lab.Host("relay")
		r.relay = tt.NewRelay(t, r.rel.Listen(t, sessionPort), serverAddr, r.rel.Dial)
		serverAddr = r.relay.Addr()
	}
	r.writeConfigs(serverAddr)
	r.startServer()
	r.startClient()
	return r
}

func (r *rig) session() string {
	o := r.o
	return r.o.sessionKA.toml("keepalive.session") + fmt.Sprintf("user_timeout = %q\nheartbeat_interval = %q\nheartbeat_timeout = %q\n",
		o.userTimeout, o.hbInterval, max(o.hbTimeout, 100*time.Millisecond))
}

func (r *rig) writeConfigs(serverAddr string) {
	cert, key := tt.CertFiles(r.t)
	server := fmt.Sprintf(`listen = %q
token = %q
bind_addr = %q
allow_ports = ["1024-65535"]
handshake_timeout = "3s"
resume_window = %q
tls = { cert_file = %q, key_file = %q }

[log]
level = "debug"

`, r.srv.Addr(sessionPort), tt.Token, r.srv.IP, r.o.resumeWindow, cert, key) + r.session() + "\n" + r.o.publicKA.toml("keepalive.public")
	client := fmt.Sprintf(`server = %q
token = %q
name = "faulty"
tls = { fingerprint = %q }
dial_timeout = %q
handshake_timeout = "3s"
resume_window = %q

[log]
level = "debug"

[reconnect]
min_delay = "100ms"
max_delay = %q

[tunnels.fixed]
local = %q
remote_port = %d

[tunnels.picked]
local = %q
remote_port = 0

`, serverAddr, tt.Token, tt.Fingerprint(), r.o.dialTimeout, r.o.resumeWindow, r.o.maxDelay, r.localAddr, fixedPort, r.localAddr) +
		r.session() + "\n" + r.o.localKA.toml("keepalive.local") + "\n" + r.o.extra
	if r.o.streamMax != "" {
		w := fmt.Sprintf("\n[window]\nstream_max = %q\n", r.o.streamMax)
		server += w
		client += w
	}
	if r.o.profiles {
		server += fmt.Sprintf("\n[admin]\nsocket = %q\npprof = true\n", r.adminSocket("tunneld"))
		client += fmt.Sprintf("\n[admin]\nsocket = %q\npprof = true\n", r.adminSocket("tunnelc"))
	}
	for name, content := range map[string]string{"tunneld.toml": server, "tunnel.toml": client} {
		if err := os.WriteFile(filepath.Join(r.dir, name), []byte(content), 0o600); err != nil {
			r.t.Fatal(err)
		}
	}
}

func (r *rig) adminSocket(daemon string) string { return filepath.Join(r.dir, daemon+".sock") }

var (
	heapAllocRe  = regexp.MustCompile(`(?m)^# HeapAlloc = (\d+)$`)
	goroutinesRe = regexp.MustCompile(`^goroutine profile: total (\d+)`)
)

// runtime reads a daemon's live heap right after a collection it asks for,
// and its goroutines, from its profiles (opts.profiles). Unlike RSS, which
// follows the collector's pacing and, under the race detector, shadow
// memory, both only grow when something is kept that should not be.
func (r *rig) runtime(daemon string) (heap, goroutines int64) {
	r.t.Helper()
	hc := tt.UnixHTTP(r.t, r.adminSocket(daemon))
	defer hc.CloseIdleConnections()
	num := func(path string, re *regexp.Regexp) int64 {
		code, body := tt.GetText(r.t, hc, "http://"+daemon+path)
		m := re.FindStringSubmatch(body)
		if code != 200 || m == nil {
			r.t.Fatalf("%s %s: %d %.200q", daemon, path, code, body)
		}
		n, _ := strconv.ParseInt(m[1], 10, 64)
		return n
	}
	// Twice: the first collection only moves what sync.Pools hold (copy
	// buffers of 256 KiB) to their victim caches; the second frees it.
	num("/debug/pprof/heap?gc=1&debug=1", heapAllocRe)
	return num("/debug/pprof/heap?gc=1&debug=1", heapAllocRe), num("/debug/pprof/goroutine?debug=1", goroutinesRe)
}

func (r *rig) startServer() {
	r.t.Helper()
	r.server = tt.Start(r.t, r.srv.Command(filepath.Join(r.bin, "tunneld"), "serve", "-c", filepath.Join(r.dir, "tunneld.toml")))
	r.server.WaitOutput(r.t, 10*time.Second, `listening for sessions`)
}

var publicRe = regexp.MustCompile(`"tunnel ready".* tunnel=(\w+) public=(\S+)`)

func (r *rig) startClient() {
	r.t.Helper()
	mark := 0
	r.client = tt.Start(r.t, r.cli.Command(filepath.Join(r.bin, "tunnelc"), "up", "-c", filepath.Join(r.dir, "tunnel.toml")))
	r.waitUp(mark, 10*time.Second)
}

// waitUp waits for a session up after mark and records the public addresses.
func (r *rig) waitUp(mark int, timeout time.Duration) tt.Line {
	r.t.Helper()
	l := r.client.WaitLine(r.t, mark, timeout, `msg="session up"`)
	out := r.client.Output()[mark:]
	for _, m := range publicRe.FindAllStringSubmatch(out, -1) {
		switch m[1] {
		case "fixed":
			r.fixed = m[2]
		case "picked":
			r.picked = m[2]
		}
	}
	if r.fixed != r.srv.Addr(fixedPort) {
		r.t.Fatalf("tunnel fixed on %q, want %s", r.fixed, r.srv.Addr(fixedPort))
	}
	return l
}

// dialPublic connects from the public host to a public address.
func (r *rig) dialPublic(addr string) *netConn {
	r.t.Helper()
	c, err := r.pub.Dial(addr)
	if err != nil {
		r.t.Fatalf("public dial %s: %v", addr, err)
	}
	r.t.Cleanup(func() { c.Close() })
	return &netConn{c}
}

// works checks that both tunnels carry a fresh connection byte for byte.
func (r *rig) works(what string) {
	r.t.Helper()
	for _, addr := range []string{r.fixed, r.picked} {
		c, err := r.pub.Dial(addr)
		if err != nil {
			r.t.Fatalf("%s: dial %s: %v", what, addr, err)
		}
		err = tt.RoundTrip(c, 1<<20)
		c.Close()
		if err != nil {
			r.t.Fatalf("%s: round trip through %s: %v", what, addr, err)
		}
	}
}

// sessionKept fails if either daemon logged a lost session after the marks.
func (r *rig) sessionKept(serverMark, clientMark int) {
	r.t.Helper()
	r.server.NoLine(r.t, serverMark, 0, `msg="session lost"`)
	r.client.NoLine(r.t, clientMark, 0, `msg="session lost"`)
}

// within fails unless d is at most bound.
// cut black-holes the path between a and b and returns when the command
// began and when it returned: the path died in between. A bound on how
// soon something is noticed counts from the end (a loaded machine can
// take a while to run ip), a floor from the start.
func (r *rig) cut(a, b *tt.Host) (from, to time.Time) {
	r.t.Helper()
	from = time.Now()
	r.lab.Cut(a, b)
	to = time.Now()
	if d := to.Sub(from); d > 100*time.Millisecond {
		r.t.Logf("the cut took %s to put in place", d.Round(time.Millisecond))
	}
	return from, to
}

func within(t *testing.T, what string, d, bound time.Duration) {
	t.Helper()
	t.Logf("%s: %s (bound %s)", what, d.Round(10*time.Millisecond), bound)
	if d > bound {
		t.Errorf("%s took %s, over its bound %s", what, d.Round(10*time.Millisecond), bound)
	}
}

// listeners counts the listening sockets of pid.
func listeners(t *testing.T, pid int) int {
	t.Helper()
	socks, err := tt.Sockets(pid)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range socks {
		if !s.Peer.IsValid() {
			n++
		}
	}
	return n
}

func contains(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// netConn is a public connection under test.
type netConn struct{ *net.TCPConn }

// ends waits up to limit for the connection to end (EOF or error) and
// returns how long that took from start and the error (io.EOF for a FIN).
// ok is false if it was still open at the limit.
func (c *netConn) ends(start time.Time, limit time.Duration) (time.Duration, error, bool) {
	_ = c.SetReadDeadline(start.Add(limit))
	buf := make([]byte, 64<<10)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return time.Since(start), err, false
		}
		return time.Since(start), err, true
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("not a number: %q", s)
	}
	return n
}
