package e2e

import (
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/server"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// freeRange returns n consecutive ports that are free right now, below
// the kernel's ephemeral range (32768 and up by default): ports there come
// and go with every outgoing connection of the suite, and a test that
// opened thousands leaves few runs of free ones.
func freeRange(t *testing.T, n int) (lo int) {
	t.Helper()
	for range 200 {
		base := 10000 + mrand.IntN(32768-10000-n)
		var held []net.Listener
		for p := base; p < base+n; p++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				break
			}
			held = append(held, l)
		}
		for _, l := range held {
			l.Close()
		}
		if len(held) == n {
			return base
		}
	}
	t.Fatal("no free port range")
	return 0
}

// A port the server picked (remote_port = 0) stays with its tunnel: a new
// tunnelc process (which remembers nothing) gets it back, and so does a
// client of a restarted tunneld that keeps its state directory. Before, the
// port lived only in the client's memory and moved on a client restart.
func TestPickedPortStaysWithItsTunnel(t *testing.T) {
	echo := tt.NewEcho(t)
	state := t.TempDir()
	lo := freeRange(t, 50)
	scfg := func(c *config.Server) {
		c.StateDir = state
		c.AllowPorts = []string{fmt.Sprintf("%d-%d", lo, lo+49)}
	}
	srv := tt.StartServer(t, tt.ServerConfig(t, scfg))
	addr := srv.Addr().String()
	tunnels := func() map[string]*config.Tunnel { return map[string]*config.Tunnel{"web": {Local: echo.Addr()}} }
	start := func() *tt.Client { return tt.StartClient(t, tt.ClientConfig(t, addr, tunnels(), nil)) }

	cl := start()
	pub := cl.WaitUp(t, hangBound)["web"]
	if err := cl.Stop(t); err != nil {
		t.Fatal(err)
	}
	for i := range 3 { // a fresh client process each time
		cl = start()
		if got := cl.WaitUp(t, hangBound)["web"]; got != pub {
			t.Fatalf("client restart %d: public address %s, want %s", i, got, pub)
		}
		if err := cl.Stop(t); err != nil {
			t.Fatal(err)
		}
	}

	// tunneld restarts with its state directory; the client too.
	srv.Stop(t)
	data, err := os.ReadFile(filepath.Join(state, "port-leases.json"))
	if err != nil || !strings.Contains(string(data), `"tunnel": "web"`) {
		t.Fatalf("lease file: %v\n%s", err, data)
	}
	tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) { scfg(c); c.Listen = addr }))
	cl = start()
	if got := cl.WaitUp(t, hangBound)["web"]; got != pub {
		t.Fatalf("after a server restart: public address %s, want %s", got, pub)
	}
	if err := tt.RoundTrip(tt.Dial(t, pub), 1<<20); err != nil {
		t.Fatal(err)
	}
}

// Another client does not get a leased port while any other is free; when
// none is, it gets it and the server says so. An expired lease is no
// obstacle.
func TestLeasedPortGoesElsewhereFirst(t *testing.T) {
	echo := tt.NewEcho(t)
	lo := freeRange(t, 2)
	srv := tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) {
		c.AllowPorts = []string{fmt.Sprintf("%d-%d", lo, lo+1)}
		c.PortLease = config.Duration(time.Hour)
	}))
	addr := srv.Addr().String()
	client := func(name string) *tt.Client {
		return tt.StartClient(t, tt.ClientConfig(t, addr, map[string]*config.Tunnel{"web": {Local: echo.Addr()}},
			func(c *config.Client) { c.Name = name }))
	}
	a := client("a")
	pa := a.WaitUp(t, hangBound)["web"]
	if err := a.Stop(t); err != nil {
		t.Fatal(err)
	}
	// a's port is free but leased: b gets the other one, every time.
	for range 5 {
		b := client("b")
		if got := b.WaitUp(t, hangBound)["web"]; got == pa {
			t.Fatalf("b got %s, leased to a, while another port was free", got)
		}
		if err := b.Stop(t); err != nil {
			t.Fatal(err)
		}
	}
	// b now leases the other port; c finds nothing unleased and gets one
	// of them, with a warning naming the lease it overrides.
	c := client("c")
	if got := c.WaitUp(t, hangBound)["web"]; got == "" {
		t.Fatal("c got no port")
	}
	srv.Logs.WaitFor(t, time.Second, "giving a port leased to another client", "client=c", "leased_to=")
}

// A lease runs out: with port_lease short, the port is anyone's again.
func TestPortLeaseExpires(t *testing.T) {
	echo := tt.NewEcho(t)
	lo := freeRange(t, 1)
	srv := tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) {
		c.AllowPorts = []string{fmt.Sprint(lo)}
		c.PortLease = config.Duration(200 * time.Millisecond)
	}))
	addr := srv.Addr().String()
	client := func(name string) *tt.Client {
		return tt.StartClient(t, tt.ClientConfig(t, addr, map[string]*config.Tunnel{"web": {Local: echo.Addr()}},
			func(c *config.Client) { c.Name = name }))
	}
	a := client("a")
	a.WaitUp(t, hangBound)
	if err := a.Stop(t); err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond) // past the lease
	b := client("b")
	if got := b.WaitUp(t, hangBound)["web"]; got != fmt.Sprintf("127.0.0.1:%d", lo) {
		t.Fatalf("b got %q", got)
	}
	if srv.Logs.Contains("giving a port leased to another client") {
		t.Error("an expired lease was treated as live")
	}
}

// A state directory tunneld cannot use is a clear error at start, naming
// the key, not a surprise at the first lease.
func TestBadStateDirIsReportedAtStart(t *testing.T) {
	f := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := tt.ServerConfig(t, func(c *config.Server) { c.StateDir = filepath.Join(f, "state") })
	_, err := server.New(cfg, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "state_dir") || !strings.Contains(err.Error(), cfg.File) {
		t.Fatalf("server.New with an unusable state_dir: %v", err)
	}
	t.Log(err)
}
