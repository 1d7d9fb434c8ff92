package e2e

import (
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/config"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// legWant is what one leg's socket must carry, in the kernel's units.
type legWant struct {
	idle, intvl time.Duration
	cnt         int
	ut          time.Duration // 0: TCP_USER_TIMEOUT not set
}

func checkLeg(t *testing.T, name string, s tt.Socket, w legWant) {
	t.Helper()
	t.Logf("%s: %s", name, s)
	if !s.KeepAlive || s.Idle != w.idle || s.Interval != w.intvl || s.Count != w.cnt || s.UserTimeout != w.ut {
		t.Errorf("%s: got keepalive=%v idle=%s intvl=%s cnt=%d user_timeout=%s; want idle=%s intvl=%s cnt=%d user_timeout=%s",
			name, s.KeepAlive, s.Idle, s.Interval, s.Count, s.UserTimeout, w.idle, w.intvl, w.cnt, w.ut)
	}
}

func ka(idle, intvl time.Duration, cnt int) config.KeepAlive {
	return config.KeepAlive{Idle: config.Duration(idle), Interval: config.Duration(intvl), Count: cnt}
}

// Every leg's socket carries its own keepalive settings, read back from the
// kernel. Each leg gets distinct values so a mix-up between legs shows.
func TestKeepAliveOnEveryLeg(t *testing.T) {
	echo := tt.NewEcho(t)
	public := legWant{31 * time.Second, 11 * time.Second, 4, 0}
	srvSession := legWant{17 * time.Second, 7 * time.Second, 5, 33 * time.Second}
	cliSession := legWant{19 * time.Second, 6 * time.Second, 3, 29 * time.Second}
	local := legWant{23 * time.Second, 9 * time.Second, 6, 0}

	srv := tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) {
		c.KeepAlive.Public = ka(public.idle, public.intvl, public.cnt)
		c.KeepAlive.Session.KeepAlive = ka(srvSession.idle, srvSession.intvl, srvSession.cnt)
		c.KeepAlive.Session.UserTimeout = config.Duration(srvSession.ut)
	}))
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{"echo": {Local: echo.Addr()}},
		func(c *config.Client) {
			c.KeepAlive.Session.KeepAlive = ka(cliSession.idle, cliSession.intvl, cliSession.cnt)
			c.KeepAlive.Session.UserTimeout = config.Duration(cliSession.ut)
			c.KeepAlive.Local = ka(local.idle, local.intvl, local.cnt)
		}))
	pub := cl.WaitUp(t, 5*time.Second)["echo"]
	c := tt.Dial(t, pub)
	if err := tt.Ping(c, "hello", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	socks, err := tt.Sockets(0)
	if err != nil {
		t.Fatal(err)
	}

	// The public leg: the server's accepted socket, whose peer is our dialer.
	s, err := tt.Find(socks, pub, c.LocalAddr().String())
	if err != nil {
		t.Fatalf("public socket: %v\n%v", err, socks)
	}
	checkLeg(t, "public (server side)", s, public)

	// The session: the client's dialed socket and the server's accepted one.
	sess, err := tt.Find(socks, "", srv.Addr().String())
	if err != nil {
		t.Fatalf("client session socket: %v\n%v", err, socks)
	}
	checkLeg(t, "session (client side)", sess, cliSession)
	s, err = tt.Find(socks, srv.Addr().String(), sess.Local.String())
	if err != nil {
		t.Fatalf("server session socket: %v\n%v", err, socks)
	}
	checkLeg(t, "session (server side)", s, srvSession)

	// The local leg: the client's socket to the local service.
	s, err = tt.Find(socks, "", echo.Addr())
	if err != nil {
		t.Fatalf("local socket: %v\n%v", err, socks)
	}
	checkLeg(t, "local (client side)", s, local)
}
