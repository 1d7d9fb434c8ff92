package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/client"
	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/protocol"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// setup starts an echo service, a server and a client with one tunnel
// "echo" to it, and returns the public address.
func setup(t *testing.T, editS func(*config.Server), editC func(*config.Client)) (*tt.Echo, *tt.Server, *tt.Client, string) {
	t.Helper()
	echo := tt.NewEcho(t)
	srv := tt.StartServer(t, tt.ServerConfig(t, editS))
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(),
		map[string]*config.Tunnel{"echo": {Local: echo.Addr()}}, editC))
	pub := cl.WaitUp(t, 5*time.Second)["echo"]
	if pub == "" {
		t.Fatal("no public address for tunnel echo")
	}
	return echo, srv, cl, pub
}

func TestConcurrentBulkIntegrity(t *testing.T) {
	tt.CheckLeaks(t)
	const conns, size = 32, 16 << 20
	_, _, _, pub := setup(t, nil, nil)
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", pub)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if err := tt.RoundTrip(c, size); err != nil {
				errs <- fmt.Errorf("conn %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestHalfClose(t *testing.T) {
	tt.CheckLeaks(t)
	_, _, _, pub := setup(t, nil, nil)
	// A request, then CloseWrite; the whole response must still arrive.
	c := tt.Dial(t, pub)
	req := strings.Repeat("request line\n", 100_000) // 1.3 MB, more than every window on the path
	go func() {
		io.WriteString(c, req)
		c.CloseWrite()
	}()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read after CloseWrite: %v", err)
	}
	if string(got) != req {
		t.Fatalf("got %d bytes back, want %d", len(got), len(req))
	}
}

func TestThousandIdleConnections(t *testing.T) {
	const n = 1000
	echo, _, _, pub := setup(t, nil, nil)
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("tcp", pub)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		defer c.Close()
		conns[i] = c
	}
	for i, c := range conns {
		if err := tt.Ping(c, "first", 10*time.Second); err != nil {
			t.Fatalf("conn %d: %v", i, err)
		}
	}
	if got := echo.Active(); got != n {
		t.Fatalf("echo service holds %d connections, want %d", got, n)
	}
	time.Sleep(time.Second) // idle
	var wg sync.WaitGroup
	var failed sync.Map
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := tt.Ping(c, fmt.Sprintf("again %d", i), 10*time.Second); err != nil {
				failed.Store(i, err)
			}
		}()
	}
	wg.Wait()
	failed.Range(func(k, v any) bool {
		t.Errorf("conn %v after idle: %v", k, v)
		return true
	})
}

func TestLocalServiceDown(t *testing.T) {
	tt.CheckLeaks(t)
	echo := tt.NewEcho(t)
	dead := tt.RefusingAddr(t)
	srv := tt.StartServer(t, tt.ServerConfig(t, nil))
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{
		"echo": {Local: echo.Addr()},
		"dead": {Local: dead},
	}, nil))
	pub := cl.WaitUp(t, 5*time.Second)

	good := tt.Dial(t, pub["echo"])
	if err := tt.Ping(good, "before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := tt.DialEnded(t, pub["dead"])
	// A reset, not a clean EOF that could pass for an empty reply.
	if errors.Is(err, io.EOF) {
		t.Errorf("got a clean EOF; want a reset")
	}
	t.Logf("public connection closed after %s: %v", time.Since(start).Round(time.Millisecond), err)
	srv.Logs.WaitFor(t, 2*time.Second, "client could not reach the local service", "tunnel=dead", "connection refused")
	cl.Logs.WaitFor(t, 2*time.Second, "local service unreachable", "tunnel=dead", "conn=")
	// The other tunnel, and its open connection, keep working.
	if err := tt.Ping(good, "after", 5*time.Second); err != nil {
		t.Fatalf("open connection on the other tunnel: %v", err)
	}
	if err := tt.RoundTrip(tt.Dial(t, pub["echo"]), 1<<20); err != nil {
		t.Fatalf("new connection on the other tunnel: %v", err)
	}
}

func TestServerRestartClientReturnsToSamePort(t *testing.T) {
	echo := tt.NewEcho(t)
	cfg := tt.ServerConfig(t, nil)
	srv := tt.StartServer(t, cfg)
	addr := srv.Addr().String()
	cl := tt.StartClient(t, tt.ClientConfig(t, addr, map[string]*config.Tunnel{"echo": {Local: echo.Addr()}},
		func(c *config.Client) { c.Reconnect.MaxDelay = config.Duration(time.Second) }))
	pub := cl.WaitUp(t, 5*time.Second)["echo"]
	open := tt.Dial(t, pub)
	if err := tt.Ping(open, "x", 5*time.Second); err != nil {
		t.Fatal(err)
	}

	srv.Stop(t)
	// The public connection of the stopped server ends; it does not hang.
	_ = open.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := open.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("public connection after server stop: %v", err)
	}
	tt.Eventually(t, 5*time.Second, "the client to notice", func() bool { return !cl.Status().Connected })
	time.Sleep(500 * time.Millisecond) // down for a while: the client backs off

	cfg2 := tt.ServerConfig(t, func(c *config.Server) { c.Listen = addr })
	back := time.Now()
	tt.StartServer(t, cfg2)
	tt.Eventually(t, 3*time.Second, "the tunnel back on the same port", func() bool {
		c, err := net.DialTimeout("tcp", pub, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		return tt.Ping(c, "back", time.Second) == nil
	})
	t.Logf("tunnel served again %s after the server came back", time.Since(back).Round(time.Millisecond))
	if got := cl.Status().Public["echo"]; got != pub {
		t.Errorf("public address after restart %s, want %s", got, pub)
	}
	cl.Logs.WaitFor(t, time.Second, "reconnecting", "attempt=")
}

func TestClientRestartTakesPortBack(t *testing.T) {
	echo := tt.NewEcho(t)
	srv := tt.StartServer(t, tt.ServerConfig(t, nil))
	tunnels := func() map[string]*config.Tunnel { return map[string]*config.Tunnel{"echo": {Local: echo.Addr()}} }
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), tunnels(), nil))
	pub := cl.WaitUp(t, 5*time.Second)["echo"]
	_, port, _ := net.SplitHostPort(pub)

	// A clean restart: the old client says goodbye, the new one binds the same port.
	if err := cl.Stop(t); err != nil {
		t.Fatal(err)
	}
	fixed := tunnels()
	fixed["echo"].RemotePort = atoi(t, port)
	cl2 := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), fixed, nil))
	if got := cl2.WaitUp(t, 5*time.Second)["echo"]; got != pub {
		t.Fatalf("restarted client got %s, want %s", got, pub)
	}
	if err := tt.RoundTrip(tt.Dial(t, pub), 1<<20); err != nil {
		t.Fatal(err)
	}
}

func TestStaleSessionIsTakenOver(t *testing.T) {
	echo := tt.NewEcho(t)
	srv := tt.StartServer(t, tt.ServerConfig(t, nil))
	// A client that registered port P and then went silent (its path died
	// and the server has not noticed yet): a raw session that never answers.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	stale := rawSession(t, srv.Addr().String(), 1, tt.Token, "same-name", port)
	if !stale.welcome.Tunnels[0].OK {
		t.Fatalf("stale session was refused: %+v", stale.welcome)
	}
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(),
		map[string]*config.Tunnel{"echo": {Local: echo.Addr(), RemotePort: port}},
		func(c *config.Client) { c.Name = "same-name" }))
	pub := cl.WaitUp(t, 5*time.Second)["echo"]
	if err := tt.RoundTrip(tt.Dial(t, pub), 1<<20); err != nil {
		t.Fatal(err)
	}
	srv.Logs.WaitFor(t, time.Second, "taking over from older session", "old_session="+stale.welcome.Session)
	tt.Eventually(t, 5*time.Second, "the stale session to be closed", stale.ys.IsClosed)
}

func TestRefusals(t *testing.T) {
	echo := tt.NewEcho(t)
	srv := tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) { c.AllowPorts = []string{"20000-60000"} }))
	addr := srv.Addr().String()

	// A healthy client whose session must not be disturbed by the others.
	good := tt.StartClient(t, tt.ClientConfig(t, addr, map[string]*config.Tunnel{"echo": {Local: echo.Addr()}},
		func(c *config.Client) { c.Name = "good" }))
	goodPub := good.WaitUp(t, 5*time.Second)["echo"]
	held := atoi(t, portOf(goodPub))
	goodConn := tt.Dial(t, goodPub)
	if err := tt.Ping(goodConn, "hi", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	goodSession := good.Status().Session

	t.Run("wrong token", func(t *testing.T) {
		cl := tt.StartClient(t, tt.ClientConfig(t, addr, map[string]*config.Tunnel{"e": {Local: echo.Addr()}},
			func(c *config.Client) { c.Name = "badtoken"; c.Token = tt.Secret("nope-wrong-token-77") }))
		err := cl.Wait(t, 5*time.Second)
		var perm *client.PermanentError
		if !errors.As(err, &perm) || perm.Code != "auth" || !strings.Contains(err.Error(), "wrong token") {
			t.Fatalf("client error %v", err)
		}
		srv.Logs.WaitFor(t, time.Second, "session refused", "client=badtoken", "code=auth")
	})
	t.Run("version mismatch", func(t *testing.T) {
		r := rawSession(t, addr, 99, tt.Token, "future", 0)
		if r.err == nil || r.err.Code != "version" || !strings.Contains(r.err.Message, "client speaks 99, server speaks 1") {
			t.Fatalf("reply %+v", r.err)
		}
		srv.Logs.WaitFor(t, time.Second, "session refused", "client=future", "code=version")
	})
	t.Run("a 60 KB client name", func(t *testing.T) {
		long := strings.Repeat("x", 60<<10)
		r := rawSession(t, addr, protocol.Version, "nope", long, 0)
		if r.err == nil || r.err.Code != "auth" {
			t.Fatalf("reply %+v", r.err)
		}
		srv.Logs.WaitFor(t, time.Second, "session refused", "code=auth", "(61440 bytes)")
		for _, l := range strings.Split(srv.Logs.String(), "\n") {
			if len(l) > 4<<10 {
				t.Fatalf("a log line of %d bytes: an unauthenticated peer's field was logged whole", len(l))
			}
		}
	})
	t.Run("more tunnels than a welcome can answer", func(t *testing.T) {
		hello := &protocol.Hello{Version: protocol.Version, Client: "greedy", Token: tt.Token}
		for i := range 800 { // as many as fit in one frame
			hello.Tunnels = append(hello.Tunnels, protocol.TunnelRequest{Name: fmt.Sprintf("t%03d", i), Type: "tcp"})
		}
		r := rawControl(t, addr, protocol.Control{Type: protocol.TypeHello, Hello: hello})
		if r.err == nil || r.err.Code != "bad_request" || !strings.Contains(r.err.Message, "800 tunnels in one hello") ||
			!strings.Contains(r.err.Message, "max_tunnels_per_client (64)") {
			t.Fatalf("reply %+v", r.err)
		}
	})
	t.Run("half a hello", func(t *testing.T) {
		for _, c := range []struct {
			msg  protocol.Control
			want string
		}{
			{protocol.Control{Type: protocol.TypeHello}, "hello message without a body"},
			{protocol.Control{Type: protocol.TypeGoodbye}, `expected hello, got "goodbye"`},
		} {
			r := rawControl(t, addr, c.msg)
			if r.err == nil || r.err.Code != "bad_request" || !strings.Contains(r.err.Message, c.want) {
				t.Errorf("reply to %+v: %+v, want %q", c.msg, r.err, c.want)
			}
		}
	})
	t.Run("port outside allowed ranges", func(t *testing.T) {
		cl := tt.StartClient(t, tt.ClientConfig(t, addr, map[string]*config.Tunnel{"low": {Local: echo.Addr(), RemotePort: 1500}},
			func(c *config.Client) { c.Name = "lowport" }))
		err := cl.Wait(t, 5*time.Second)
		if err == nil || !strings.Contains(err.Error(), "port 1500 is outside the ports this client may use, [20000-60000]") ||
			!strings.Contains(err.Error(), "[tunnels.low]") {
			t.Fatalf("client error %v", err)
		}
		srv.Logs.WaitFor(t, time.Second, "tunnel refused", "client=lowport", "code=port_not_allowed")
	})
	t.Run("port held by another client", func(t *testing.T) {
		cl := tt.StartClient(t, tt.ClientConfig(t, addr, map[string]*config.Tunnel{
			"thief": {Local: echo.Addr(), RemotePort: held},
			"ok":    {Local: echo.Addr()},
		}, func(c *config.Client) { c.Name = "other" }))
		pub := cl.WaitUp(t, 5*time.Second)
		if _, ok := pub["thief"]; ok {
			t.Fatal("tunnel on a held port came up")
		}
		cl.Logs.WaitFor(t, time.Second, "tunnel refused for now; the server keeps trying", "tunnel=thief", "code=port_in_use", "held by another client")
		srv.Logs.WaitFor(t, time.Second, "tunnel refused for now", "client=other", "holder=good")
		srv.Logs.WaitFor(t, time.Second, "tunnel refused for now", "client=other", "code=port_in_use")
		if why := cl.Status().Pending["thief"]; !strings.Contains(why, "held by another client") || strings.Contains(why, "good") {
			t.Errorf("status of the refused tunnel: pending %q", why)
		}
		// Its other tunnel works.
		if err := tt.Ping(tt.Dial(t, pub["ok"]), "ok", 5*time.Second); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("garbage on the session port", func(t *testing.T) {
		c := tt.Dial(t, addr)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); isTimeout(err) {
			t.Fatal("server kept a garbage connection open")
		}
		srv.Logs.WaitFor(t, time.Second, "session refused", "does not speak TLS")
	})

	// Nothing above disturbed the good client.
	if s := good.Status(); !s.Connected || s.Session != goodSession || s.Sessions != 1 {
		t.Errorf("good client status %+v, want its first session %s", s, goodSession)
	}
	if err := tt.Ping(goodConn, "still", 5*time.Second); err != nil {
		t.Errorf("good client's open connection: %v", err)
	}
}

func TestShutdownLeavesNothing(t *testing.T) {
	tt.CheckLeaks(t)
	echo, srv, cl, pub := setup(t, nil, nil)
	// Open connections, idle and busy, at shutdown.
	idle := tt.Dial(t, pub)
	if err := tt.Ping(idle, "x", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	busy := tt.Dial(t, pub)
	go io.Copy(busy, zeros{})
	go io.Copy(io.Discard, busy)
	tt.Eventually(t, 5*time.Second, "two local connections", func() bool { return echo.Active() == 2 })
	start := time.Now()
	srv.Stop(t)
	// With bulk in flight the client still hears why (the server leaves the
	// close to it after the goodbye; see protocol.Goodbye).
	cl.Logs.WaitFor(t, 5*time.Second, "session closed by server", "server shutting down")
	if err := cl.Stop(t); err != nil {
		t.Fatal(err)
	}
	t.Logf("server and client stopped in %s", time.Since(start).Round(time.Millisecond))
	tt.Eventually(t, 5*time.Second, "local connections to close", func() bool { return echo.Active() == 0 })
	srv.Logs.WaitFor(t, time.Second, "session closed", "server shutting down")
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func portOf(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

func atoi(t *testing.T, s string) int {
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// One public client that stops reading fills its own stream's window and no
// more: 100 other connections of the same session keep moving.
func TestSlowReaderDoesNotStallOthers(t *testing.T) {
	_, _, _, pub := setup(t, nil, nil)
	stuck := tt.Dial(t, pub)
	// Send far more than every buffer on the way holds; never read the echo.
	go func() {
		buf := make([]byte, 256<<10)
		for {
			if _, err := stuck.Write(buf); err != nil {
				return
			}
		}
	}()
	// Until the echo has backed up into the tunnel and the writer waits.
	tt.WaitBlocked(t, 30*time.Second, "TestSlowReaderDoesNotStallOthers.func1")
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := tt.Dial(t, pub)
			_ = c.SetDeadline(time.Now().Add(30 * time.Second)) // hang detection only
			if err := tt.RoundTrip(c, 256<<10); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	stuck.Close()
}
