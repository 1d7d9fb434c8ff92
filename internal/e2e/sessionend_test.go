package e2e

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/config"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// hangBound is how long a test waits for something that must happen
// without any timer of ours in the way (a connection ending with its
// session). It only tells a hang from progress; the times are logged.
const hangBound = 5 * time.Second

// When a session dies, every connection that rides on it ends at once, in
// whatever state it is, on both daemons, and the client is back on a new
// session within its backoff. Before, a join with one direction done and
// the other reading a silent socket survived its session: tunnelc's
// reconnect waited for it (48 s in one report, forever here) and tunneld
// kept the connection open.
func TestSessionEndEndsEveryConnection(t *testing.T) {
	tt.CheckLeaks(t)
	silent := tt.NewService(t, tt.Silent)
	greeter := tt.NewService(t, tt.Greeter("hello\n"))
	firehose := tt.NewService(t, tt.Firehose)
	deaf := tt.NewService(t, tt.Deaf)
	echo := tt.NewEcho(t)
	// Without resumption: with it, a lost session's connections wait
	// for its resume instead (resume_test.go).
	srv := tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) { c.ResumeWindow = 0 }))
	relay := loopbackRelay(t, srv.Addr().String())
	cfg := tt.ClientConfig(t, relay.Addr(), map[string]*config.Tunnel{
		"silent":   {Local: silent.Addr()},
		"greeter":  {Local: greeter.Addr()},
		"firehose": {Local: firehose.Addr()},
		"deaf":     {Local: deaf.Addr()},
		"echo":     {Local: echo.Addr()},
	}, nil)
	cl := tt.StartClient(t, cfg)
	pub := cl.WaitUp(t, hangBound)

	type state struct {
		name string
		c    *net.TCPConn
	}
	var states []state
	add := func(name string, c *net.TCPConn) { states = append(states, state{name, c}) }

	// Both directions open and idle; the stream directions parked.
	c := tt.Dial(t, pub["echo"])
	if err := tt.Ping(c, "x", hangBound); err != nil {
		t.Fatal(err)
	}
	add("both open, parked", c)

	// tunnelc's half: the public side sent and closed its writing, the
	// local service never answers. tunnelc's local -> stream direction
	// reads a silent socket.
	c = tt.Dial(t, pub["silent"])
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	add("public half-closed, local silent", c)

	// tunneld's half: the service greeted and hung up; the public client
	// read it and stays open and silent. tunneld's public -> stream
	// direction reads a silent socket.
	c = tt.Dial(t, pub["greeter"])
	_ = c.SetReadDeadline(time.Now().Add(hangBound))
	if got, err := io.ReadAll(c); err != nil || string(got) != "hello\n" {
		t.Fatalf("greeting: %q, %v", got, err)
	}
	add("local closed, public silent", c)

	// Bulk in flight to a public client that does not read: every window
	// and socket buffer on the way fills, and tunnelc's writer waits for
	// stream window.
	c = tt.Dial(t, pub["firehose"])
	add("bulk toward a public client that does not read", c)

	// Bulk from the public client to a local service that does not read:
	// tunnelc's stream -> local direction is blocked writing.
	c = tt.Dial(t, pub["deaf"])
	go func(c *net.TCPConn) {
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}(c)
	add("bulk toward a local service that does not read", c)

	tt.Eventually(t, hangBound, "every local service to have its connection", func() bool {
		return silent.Active() == 1 && greeter.Total() == 1 && firehose.Active() == 1 && deaf.Active() == 1 && echo.Active() == 1
	})
	// Let the bulk fill what it can, so those joins are mid-copy.
	time.Sleep(300 * time.Millisecond)

	before := cl.Status().Sessions
	cut := time.Now()
	relay.Reset()

	for _, s := range states {
		// A reset is the end: the kernel moves the socket to CLOSE. A
		// read cannot tell, for a socket that has had its FIN already.
		tt.Eventually(t, hangBound, s.name+": the public connection reset", func() bool {
			st, err := tt.TCPState(s.c)
			if err != nil {
				t.Fatal(err)
			}
			return st == tt.TCPClose
		})
		s.c.Close()
	}
	t.Logf("every public connection ended %s after the session died", time.Since(cut).Round(time.Millisecond))

	tt.Eventually(t, hangBound, "the client on a new session", func() bool {
		st := cl.Status()
		return st.Connected && st.Sessions == before+1
	})
	t.Logf("client on a new session %s after the old one died (backoff at most %s)",
		time.Since(cut).Round(time.Millisecond), cfg.Reconnect.MaxDelay.D())

	// tunnelc let go of every local connection, silent ones included.
	for name, svc := range map[string]string{"silent": silent.Addr(), "firehose": firehose.Addr(), "deaf": deaf.Addr(), "echo": echo.Addr()} {
		tt.Eventually(t, hangBound, "tunnelc to close its connection to "+name, func() bool {
			return dialedTo(t, svc) == 0
		})
	}
	if err := tt.RoundTrip(tt.Dial(t, pub["echo"]), 1<<20); err != nil {
		t.Fatalf("the tunnel after the new session: %v", err)
	}
}

// dialedTo counts this process's sockets connected to addr (tunnelc's
// side of its local connections).
func dialedTo(t *testing.T, addr string) int {
	t.Helper()
	want, err := netip.ParseAddrPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	socks, err := tt.Sockets(0)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range socks {
		if s.Peer == want {
			n++
		}
	}
	return n
}

// The tunneld half of the above, as reported: public clients that read a
// greeting from a service that hung up, then stay open and silent, must
// not hold a shutdown (58 s in the report, until the clients left; the
// shipped unit's TimeoutStopSec would have killed it).
func TestServerShutdownEndsHalfClosedConnections(t *testing.T) {
	tt.CheckLeaks(t)
	greeter := tt.NewService(t, tt.Greeter("hello\n"))
	srv := tt.StartServer(t, tt.ServerConfig(t, nil))
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(),
		map[string]*config.Tunnel{"greeter": {Local: greeter.Addr()}}, nil))
	pub := cl.WaitUp(t, hangBound)["greeter"]
	var conns []*net.TCPConn
	for range 3 {
		c := tt.Dial(t, pub)
		_ = c.SetReadDeadline(time.Now().Add(hangBound))
		if got, err := io.ReadAll(c); err != nil || string(got) != "hello\n" {
			t.Fatalf("greeting: %q, %v", got, err)
		}
		conns = append(conns, c) // open and silent from here on
	}
	start := time.Now()
	srv.Stop(t)
	took := time.Since(start)
	t.Logf("tunneld stopped in %s with 3 half-closed public connections open", took.Round(time.Millisecond))
	if took > hangBound {
		t.Errorf("tunneld took %s to stop", took)
	}
	for i, c := range conns {
		tt.Eventually(t, hangBound, fmt.Sprintf("public connection %d reset", i), func() bool {
			st, err := tt.TCPState(c)
			if err != nil {
				t.Fatal(err)
			}
			return st == tt.TCPClose
		})
	}
}

// The tunnelc half, as reported: a local service that accepts and never
// answers, a public client that sends one byte and leaves
// (`printf x | nc -q0`), then tunneld restarts. tunnelc must reconnect
// within its backoff, not when the silent service finally lets go (48 s in
// the report; never, here).
func TestClientReconnectsPastSilentLocalService(t *testing.T) {
	tt.CheckLeaks(t)
	silent := tt.NewService(t, tt.Silent)
	cfg := tt.ServerConfig(t, nil)
	srv := tt.StartServer(t, cfg)
	addr := srv.Addr().String()
	cl := tt.StartClient(t, tt.ClientConfig(t, addr, map[string]*config.Tunnel{"silent": {Local: silent.Addr()}}, nil))
	pub := cl.WaitUp(t, hangBound)["silent"]
	c := tt.Dial(t, pub)
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	tt.Eventually(t, hangBound, "the byte to reach the silent service", func() bool { return silent.Total() == 1 })

	before := cl.Status().Sessions
	srv.Stop(t)
	restart := time.Now()
	tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) { c.Listen = addr }))
	tt.Eventually(t, hangBound, "the client on a session with the new server", func() bool {
		st := cl.Status()
		return st.Connected && st.Sessions == before+1
	})
	t.Logf("client back %s after the server restarted", time.Since(restart).Round(time.Millisecond))
	tt.Eventually(t, hangBound, "tunnelc to let go of the silent service", func() bool { return dialedTo(t, silent.Addr()) == 0 })
}
