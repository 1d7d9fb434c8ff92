package e2e

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/client"
	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/tlsconf"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// A tunneld reload: the certificate is rotated (new sessions see the new
// one, an old session carries on with its connection), a client removed
// from [[clients]] is disconnected with a reason it prints, the one that
// stays is not disturbed, a lowered limit applies to the live session,
// and a config that does not load changes nothing.
func TestServerReload(t *testing.T) {
	tt.CheckLeaks(t)
	echo := tt.NewEcho(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeCert := func() string {
		certPEM, keyPEM, err := tlsconf.NewSelfSigned([]string{"127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		return tlsconf.Fingerprint(c.Certificate[0])
	}
	oldFP := writeCert()
	base := func(c *config.Server) {
		c.Token = ""
		c.TLS.CertFile, c.TLS.KeyFile = certFile, keyFile
		c.Clients = []config.ClientEntry{{Name: "alice", Token: aliceToken}, {Name: "bob", Token: bobToken}}
	}
	cfg := tt.ServerConfig(t, base)
	srv := tt.StartServer(t, cfg)
	addr := srv.Addr().String()
	start := func(name, token, fp string) *tt.Client {
		return tt.StartClient(t, tt.ClientConfig(t, addr, map[string]*config.Tunnel{"echo": {Local: echo.Addr()}},
			func(c *config.Client) { c.Name, c.Token, c.TLS.Fingerprint = name, token, fp }))
	}
	alice, bob := start("alice", aliceToken, oldFP), start("bob", bobToken, oldFP)
	alicePub, bobPub := alice.WaitUp(t, 5*time.Second)["echo"], bob.WaitUp(t, 5*time.Second)["echo"]
	open := tt.Dial(t, alicePub)
	if err := tt.Ping(open, "before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	aliceSession := alice.Status().Session

	// bob gone, alice limited to one connection per tunnel.
	next := tt.ServerConfig(t, func(c *config.Server) {
		base(c)
		c.Listen = cfg.Listen
		c.Clients = []config.ClientEntry{{Name: "alice", Token: aliceToken, MaxConnectionsPerTunnel: 1}}
	})
	res, err := srv.Reload(next)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(res.Revoked, ",") != "bob" || !strings.Contains(strings.Join(res.Changed, ","), "clients") {
		t.Errorf("reload result %+v", res)
	}
	// bob hears why, then is refused for good.
	bob.Logs.WaitFor(t, 5*time.Second, "session closed by server", "access removed by the server's operator")
	var perm *client.PermanentError
	if err := bob.Wait(t, 10*time.Second); !errors.As(err, &perm) || perm.Code != "auth" {
		t.Errorf("bob after the reload: %v, want a refusal for the token", err)
	}
	if c, err := net.DialTimeout("tcp", bobPub, 2*time.Second); err == nil {
		c.Close()
		t.Error("bob's port still open")
	}
	// alice: the same session, its connection carries on.
	if err := tt.Ping(open, "after", 5*time.Second); err != nil {
		t.Errorf("alice's open connection: %v", err)
	}
	if st := alice.Status(); st.Session != aliceSession || st.Sessions != 1 {
		t.Errorf("alice's session changed: %+v", st)
	}
	// The limit applies to the live session: one connection is open.
	if err := tt.DialEnded(t, alicePub); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("a second connection past max_connections_per_tunnel = 1: %v, want a reset", err)
	}
	srv.Logs.WaitFor(t, 5*time.Second, "public connections refused: the client is at its connection limit", "max_connections_per_tunnel")
	// A new certificate in the same files: new sessions see it (a client
	// pinning the old one is refused, one pinning the new one welcomed),
	// the old session carries on.
	newFP := writeCert()
	if _, err := srv.Reload(next); err != nil {
		t.Fatal(err)
	}
	stale := start("alice", aliceToken, oldFP)
	var fe *client.PermanentError
	if err := stale.Wait(t, 10*time.Second); !errors.As(err, &fe) || fe.Code != "tls" || !strings.Contains(err.Error(), newFP) {
		t.Errorf("a client pinning the old certificate: %v", err)
	}
	// A config whose certificate does not load is refused whole.
	if err := os.WriteFile(filepath.Join(dir, "bad.pem"), []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	broken := *next
	broken.Clients = nil
	broken.Token = tt.Token
	broken.TLS.CertFile = filepath.Join(dir, "bad.pem")
	if _, err := srv.Reload(&broken); err == nil {
		t.Fatal("a reload with a certificate that does not load succeeded")
	}
	if err := tt.Ping(open, "still", 5*time.Second); err != nil {
		t.Errorf("alice after the refused reload: %v", err)
	}
	fresh := start("alice", aliceToken, newFP)
	fresh.WaitUp(t, 5*time.Second)
	srv.Logs.WaitFor(t, 5*time.Second, "taking over from older session of the same client")
}

// dialLoop dials addr until stop is closed and counts dials the port
// refused: a gap in its listening.
func dialLoop(addr string, stop chan struct{}) (refused func() int) {
	n := make(chan int, 1)
	go func() {
		count := 0
		for {
			select {
			case <-stop:
				n <- count
				return
			default:
			}
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if errors.Is(err, syscall.ECONNREFUSED) {
				count++
			}
			if err == nil {
				c.Close()
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	return func() int { close(stop); return <-n }
}

// listenInode is the inode of the socket listening on port (from
// /proc/net/tcp): the same inode before and after means the socket was
// never closed.
func listenInode(t *testing.T, port int) string {
	t.Helper()
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 9 && f[3] == "0A" && strings.HasSuffix(f[1], fmt.Sprintf(":%04X", port)) {
			return f[9]
		}
	}
	t.Fatalf("nothing listens on port %d", port)
	return ""
}

// A reload that changes how the session is made opens a new session at
// once, and the public port passes from the old session to the new one
// without closing: the listening socket is the same one, and a client
// dialling it all along is never refused. The same holds for a second
// tunnelc of the same name taking over.
func TestNewSessionKeepsThePortOpen(t *testing.T) {
	tt.CheckLeaks(t)
	echo := tt.NewEcho(t)
	srv := tt.StartServer(t, tt.ServerConfig(t, nil))
	port := tt.FreePort(t)
	tunnels := map[string]*config.Tunnel{"web": {Local: echo.Addr(), RemotePort: port}}
	cfg := tt.ClientConfig(t, srv.Addr().String(), tunnels, nil)
	cl := tt.StartClient(t, cfg)
	pub := cl.WaitUp(t, 5*time.Second)["web"]

	inode := listenInode(t, port)
	refused := dialLoop(pub, make(chan struct{}))
	time.Sleep(50 * time.Millisecond)
	next := tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{"web": {Local: echo.Addr(), RemotePort: port}},
		func(c *config.Client) { c.KeepAlive.Session.HeartbeatInterval = config.Duration(7 * time.Second) })
	res, err := cl.Reload(next)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(res.NewSession, ",") != "keepalive" {
		t.Errorf("reload result %+v, want a new session for keepalive", res)
	}
	tt.Eventually(t, 10*time.Second, "the new session", func() bool {
		st := cl.Status()
		return st.Connected && st.Sessions == 2
	})
	cl.Logs.WaitFor(t, time.Second, "session replaced to apply the reloaded config")
	srv.Logs.WaitFor(t, time.Second, "taking over from older session of the same client")
	time.Sleep(50 * time.Millisecond)
	stayedOpen := func(what string) {
		t.Helper()
		if n := refused(); n != 0 {
			t.Errorf("%s: %d dials refused: the port closed", what, n)
		}
		if now := listenInode(t, port); now != inode {
			t.Errorf("%s: the listening socket was replaced (inode %s -> %s): the port closed for a moment", what, inode, now)
		}
	}
	stayedOpen("a new session for a reload")
	if err := tt.Ping(tt.Dial(t, pub), "new session", 5*time.Second); err != nil {
		t.Fatal(err)
	}

	// A second tunnelc of the same name takes over, as a restarted one
	// whose old session the server has not noticed gone.
	refused = dialLoop(pub, make(chan struct{}))
	time.Sleep(50 * time.Millisecond)
	second := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{"web": {Local: echo.Addr(), RemotePort: port}}, nil))
	second.WaitUp(t, 5*time.Second)
	cl.Stop(t)
	time.Sleep(50 * time.Millisecond)
	stayedOpen("a takeover")
	if err := tt.Ping(tt.Dial(t, pub), "second client", 5*time.Second); err != nil {
		t.Fatal(err)
	}
}
