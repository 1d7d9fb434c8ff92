package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/client"
	"github.com/tunnel-dev/tunnel/internal/config"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// idleBudget is the README's promise for an idle connection: both daemons
// together, per connection.
const idleBudget = 24 << 10

// A connection to a service that waits for the client to speak first (HTTP,
// most databases) is idle from the tunnel's point of view and must cost what
// an idle connection costs. It used to hold a goroutine and a 256 KiB copy
// buffer in tunneld from the client's dial result until the service's first
// byte: 2,000 such connections took 429 MB. Measured on the real binaries,
// live heap and stacks after a collection, from their status lines. With
// resumption on (the default) and off: a resumable connection that is
// idle keeps nothing unacknowledged, and must cost the same.
func TestSilentServiceConnectionsCostAsIdle(t *testing.T) {
	for _, resume := range []string{"30s", "0s"} {
		t.Run("resume_window="+resume, func(t *testing.T) { silentServiceCost(t, resume) })
	}
}

func silentServiceCost(t *testing.T, resumeWindow string) {
	const n = 5000
	bin := tt.Binaries(t)
	dir := t.TempDir()
	silent := tt.NewService(t, tt.Silent)
	ctrlPort, pubPort := tt.FreePort(t), tt.FreePort(t)
	cert, key := tt.CertFiles(t)
	srvConf := writeFile(t, dir, "tunneld.toml", fmt.Sprintf(
		"listen = \"127.0.0.1:%d\"\ntoken = %q\nbind_addr = \"127.0.0.1\"\nallow_ports = [\"1024-65535\"]\nresume_window = %q\n[tls]\ncert_file = %q\nkey_file = %q\n",
		ctrlPort, tt.Token, resumeWindow, cert, key))
	cliConf := writeFile(t, dir, "tunnel.toml", fmt.Sprintf(
		"server = \"127.0.0.1:%d\"\ntoken = %q\nname = \"memory\"\n[tunnels.silent]\nlocal = %q\nremote_port = %d\n[tls]\nfingerprint = %q\n",
		ctrlPort, tt.Token, silent.Addr(), pubPort, tt.Fingerprint()))
	srv := tt.Start(t, exec.Command(filepath.Join(bin, "tunneld"), "serve", "-c", srvConf))
	srv.WaitOutput(t, 10*time.Second, `listening for sessions`)
	cl := tt.Start(t, exec.Command(filepath.Join(bin, "tunnelc"), "up", "-c", cliConf))
	cl.WaitOutput(t, 10*time.Second, `msg="session up"`)

	type mem struct{ heap, stack, goroutines int }
	read := func(p *tt.Proc) mem {
		st := p.Status(t)
		num := func(k string) int {
			v, err := strconv.Atoi(st[k])
			if err != nil {
				t.Fatalf("%s status: %s=%q", p.Name, k, st[k])
			}
			return v
		}
		return mem{num("heap_bytes"), num("stack_bytes"), num("goroutines")}
	}
	s0, c0 := read(srv), read(cl)

	pub := fmt.Sprintf("127.0.0.1:%d", pubPort)
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range n {
		c, err := net.Dial("tcp", pub)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	tt.Eventually(t, 60*time.Second, "the silent service to hold every connection", func() bool { return silent.Active() == n })

	// Every connection's dial result reaches tunneld shortly after the
	// service accepted; the cost settles then.
	var s1, c1 mem
	per := func(a, b mem) float64 { return float64(b.heap+b.stack-a.heap-a.stack) / n }
	deadline := time.Now().Add(30 * time.Second)
	for {
		s1, c1 = read(srv), read(cl)
		if per(s0, s1)+per(c0, c1) <= idleBudget || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("per connection: tunneld %.1f KiB heap+stack, %.2f goroutines; tunnelc %.1f KiB, %.2f goroutines",
		per(s0, s1)/1024, float64(s1.goroutines-s0.goroutines)/n, per(c0, c1)/1024, float64(c1.goroutines-c0.goroutines)/n)
	if got := per(s0, s1) + per(c0, c1); got > idleBudget {
		t.Errorf("%d connections to a silent service cost %.1f KiB each (both daemons), over the idle budget of %d KiB",
			n, got/1024, idleBudget>>10)
	}
	for name, g := range map[string]float64{"tunneld": float64(s1.goroutines-s0.goroutines) / n, "tunnelc": float64(c1.goroutines-c0.goroutines) / n} {
		if g > 1.05 {
			t.Errorf("%s: %.2f goroutines per connection to a silent service, want at most 1", name, g)
		}
	}
}

// An idle session with two tunnels costs tunneld four goroutines: the two
// ports' accept loops and yamux's receive and send loops. Its control
// stream is watched without one (a parked reader was a fifth, about 4 KiB
// of stack per session on a server holding a thousand). When the clients
// leave, the sessions finish and every one of those goroutines ends.
func TestIdleSessionGoroutines(t *testing.T) {
	const n = 24
	bin := tt.Binaries(t)
	dir := t.TempDir()
	echo := tt.NewService(t, tt.Silent)
	ctrlPort := tt.FreePort(t)
	cert, key := tt.CertFiles(t)
	srvConf := writeFile(t, dir, "tunneld.toml", fmt.Sprintf(
		"listen = \"127.0.0.1:%d\"\ntoken = %q\nbind_addr = \"127.0.0.1\"\nallow_ports = [\"1024-65535\"]\nhandshake_limit_per_address = 1024\n[tls]\ncert_file = %q\nkey_file = %q\n",
		ctrlPort, tt.Token, cert, key))
	srv := tt.Start(t, exec.Command(filepath.Join(bin, "tunneld"), "serve", "-c", srvConf))
	srv.WaitOutput(t, 10*time.Second, `tunneld started`) // answers the status signal from here
	goroutines := func() int {
		v, err := strconv.Atoi(srv.Status(t)["goroutines"])
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	g0 := goroutines()

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	log := slog.New(slog.DiscardHandler)
	clients := make([]*client.Client, n)
	for i := range clients {
		cfg, err := config.ParseClient(fmt.Sprintf("c%d.toml", i), fmt.Appendf(nil,
			// remote_port 0: tunneld picks, so no two clients (nor
			// another test) can want the same port.
			"server = \"127.0.0.1:%d\"\ntoken = %q\nname = \"idle-%d\"\n[tls]\nfingerprint = %q\n[tunnels.a]\nlocal = %q\nremote_port = 0\n[tunnels.b]\nlocal = %q\nremote_port = 0\n",
			ctrlPort, tt.Token, i, tt.Fingerprint(), echo.Addr(), echo.Addr()))
		if err != nil {
			t.Fatal(err)
		}
		if clients[i], err = client.New(cfg, log); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func(c *client.Client) {
			defer wg.Done()
			_ = c.Run(ctx)
		}(clients[i])
	}
	tt.Eventually(t, 30*time.Second, "every client's two tunnels up", func() bool {
		for _, c := range clients {
			if st := c.Status(); st.Sessions < 1 || len(st.Public) != 2 {
				return false
			}
		}
		return true
	})
	// Handshake goroutines end shortly after the sessions are up.
	var per float64
	tt.Eventually(t, 10*time.Second, "tunneld's goroutines to settle at 4 per idle session", func() bool {
		per = float64(goroutines()-g0) / n
		return per <= 4
	})
	t.Logf("tunneld: %.2f goroutines per idle session", per)

	cancel()
	wg.Wait()
	tt.Eventually(t, 15*time.Second, "tunneld's goroutines back to where they were with no session", func() bool {
		return goroutines() <= g0
	})
}
