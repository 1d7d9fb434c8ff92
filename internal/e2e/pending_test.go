package e2e

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/config"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// Client A holds port P; client B asks for P and Q. Q comes up, P is
// pending with the reason; when A stops, B takes P in the same session,
// and traffic flows through it. Before, the refusal was final for the life
// of B's session.
func TestRefusedTunnelComesUpWhenPortFrees(t *testing.T) {
	tt.CheckLeaks(t)
	echo := tt.NewEcho(t)
	srv := tt.StartServer(t, tt.ServerConfig(t, nil))
	addr := srv.Addr().String()
	a := tt.StartClient(t, tt.ClientConfig(t, addr, map[string]*config.Tunnel{"p": {Local: echo.Addr()}},
		func(c *config.Client) { c.Name = "a" }))
	pubP := a.WaitUp(t, hangBound)["p"]
	port := atoi(t, portOf(pubP))

	b := tt.StartClient(t, tt.ClientConfig(t, addr, map[string]*config.Tunnel{
		"p": {Local: echo.Addr(), RemotePort: port},
		"q": {Local: echo.Addr()},
	}, func(c *config.Client) { c.Name = "b" }))
	up := b.WaitUp(t, hangBound)
	if _, ok := up["p"]; ok {
		t.Fatal("b got a port a holds")
	}
	if err := tt.Ping(tt.Dial(t, up["q"]), "q", hangBound); err != nil {
		t.Fatal(err)
	}
	if why := b.Status().Pending["p"]; !strings.Contains(why, "held by another client") {
		t.Fatalf("b's status for p: pending %q", why)
	}
	session := b.Status().Session

	stop := time.Now()
	if err := a.Stop(t); err != nil {
		t.Fatal(err)
	}
	tt.Eventually(t, hangBound, "b's tunnel p to come up", func() bool { return b.Status().Public["p"] == pubP })
	t.Logf("b took port %d %s after a stopped", port, time.Since(stop).Round(time.Millisecond))
	st := b.Status()
	if st.Session != session || st.Sessions != 1 {
		t.Errorf("b's tunnel came up on session %s (%d sessions), want its first one %s", st.Session, st.Sessions, session)
	}
	if len(st.Pending) != 0 {
		t.Errorf("b still has pending tunnels: %v", st.Pending)
	}
	if err := tt.RoundTrip(tt.Dial(t, pubP), 1<<20); err != nil {
		t.Fatalf("through the tunnel that came up: %v", err)
	}
	srv.Logs.WaitFor(t, time.Second, `msg="tunnel up"`, "client=b", "tunnel=p", "attempts=")
}

// squatted starts a server and a client whose one tunnel asks for a port
// another program (the test) holds.
func squatted(t *testing.T) (srv *tt.Server, cl *tt.Client, squat net.Listener, port int) {
	t.Helper()
	echo := tt.NewEcho(t)
	srv = tt.StartServer(t, tt.ServerConfig(t, nil))
	squat, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { squat.Close() })
	port = squat.Addr().(*net.TCPAddr).Port
	cl = tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{
		"p": {Local: echo.Addr(), RemotePort: port},
	}, nil))
	tt.Eventually(t, hangBound, "the tunnel pending", func() bool { return cl.Status().Pending["p"] != "" })
	return srv, cl, squat, port
}

// A port held by another program: the tunnel stays pending, retried with
// backoff and logged once at warn (retries at debug), and comes up once
// the program lets go.
func TestRefusedTunnelComesUpWhenProgramLetsGo(t *testing.T) {
	tt.CheckLeaks(t)
	srv, cl, squat, port := squatted(t)
	if why := cl.Status().Pending["p"]; !strings.Contains(why, "in use on the server by another program") {
		t.Fatalf("status for p: pending %q", why)
	}
	if !cl.Status().Connected {
		t.Fatal("a client whose only tunnel is pending is not connected")
	}
	// A few retries happen meanwhile.
	srv.Logs.WaitFor(t, hangBound, "tunnel still refused; retrying", "attempt=3")
	freed := time.Now()
	squat.Close()
	pub := fmt.Sprintf("127.0.0.1:%d", port)
	tt.Eventually(t, 2*hangBound, "the tunnel to come up", func() bool { return cl.Status().Public["p"] == pub })
	t.Logf("tunnel up %s after the port was freed (retries at most %s apart)", time.Since(freed).Round(time.Millisecond), 5*time.Second)
	if err := tt.RoundTrip(tt.Dial(t, pub), 1<<20); err != nil {
		t.Fatal(err)
	}
	warns := 0
	for _, l := range strings.Split(srv.Logs.String(), "\n") {
		if strings.Contains(l, "level=WARN") && strings.Contains(l, "tunnel=p") {
			warns++
		}
	}
	if warns != 1 {
		t.Errorf("%d warnings for one pending tunnel, want 1 (retries log at debug)", warns)
	}
}

// A session that ends while a tunnel is pending leaves no timer or attempt
// behind (CheckLeaks), and the server forgets the tunnel.
func TestPendingTunnelEndsWithSession(t *testing.T) {
	tt.CheckLeaks(t)
	srv, cl, _, _ := squatted(t)
	if got := srv.Pending()["test-client/p"]; got == "" {
		t.Fatalf("server's pending list: %v", srv.Pending())
	}
	if err := cl.Stop(t); err != nil {
		t.Fatal(err)
	}
	tt.Eventually(t, hangBound, "the server to forget the pending tunnel", func() bool { return len(srv.Pending()) == 0 })
}
