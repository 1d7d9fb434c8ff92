package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/protocol"
	"github.com/tunnel-dev/tunnel/internal/testcert"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

var (
	aliceToken = tt.Secret("alice-token-8d1f0c6b2e7a4935")
	bobToken   = tt.Secret("bob-token-3c9e51a7f02d84b6")
)

func readGreeting(t *testing.T, addr string) (string, error) {
	t.Helper()
	c := tt.Dial(t, addr)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// Each client has its own token, and its name is what the token says, not
// what the client says: a client with a valid token of its own that claims
// another's name neither takes over that client's ports nor learns who
// holds them, and the victim's public connections all reach the victim.
func TestPerClientCredentials(t *testing.T) {
	tt.CheckLeaks(t)
	aliceSvc := tt.NewService(t, tt.Greeter("alice's service"))
	bobSvc := tt.NewService(t, tt.Greeter("bob's service"))
	alicePort, bobPort := tt.FreePort(t), tt.FreePort(t)
	tokenFile := filepath.Join(t.TempDir(), "bob.token")
	if err := os.WriteFile(tokenFile, []byte(bobToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) {
		c.Token = ""
		c.Clients = []config.ClientEntry{
			{Name: "alice", Token: aliceToken, AllowPorts: []string{strconv.Itoa(alicePort)}, MaxTunnels: 1},
			{Name: "bob", TokenFile: tokenFile},
		}
	}))
	addr := srv.Addr().String()
	alice := tt.StartClient(t, tt.ClientConfig(t, addr, map[string]*config.Tunnel{"web": {Local: aliceSvc.Addr(), RemotePort: alicePort}},
		func(c *config.Client) { c.Name = "laptop"; c.Token = aliceToken }))
	alicePub := alice.WaitUp(t, 5*time.Second)["web"]
	srv.Logs.WaitFor(t, time.Second, "session up", "client=alice", "declared_name=laptop")
	alice.Logs.WaitFor(t, time.Second, "session up", "authenticated_as=alice")

	// Bob, with his own valid token, says he is alice and asks for her
	// port: he is bob, and her port is held.
	bob := tt.StartClient(t, tt.ClientConfig(t, addr, map[string]*config.Tunnel{
		"steal": {Local: bobSvc.Addr(), RemotePort: alicePort},
		"own":   {Local: bobSvc.Addr(), RemotePort: bobPort},
	}, func(c *config.Client) { c.Name = "alice"; c.Token = bobToken }))
	bobPub := bob.WaitUp(t, 5*time.Second)
	if _, ok := bobPub["steal"]; ok {
		t.Fatal("bob got alice's port")
	}
	why := bob.Status().Pending["steal"]
	if !strings.Contains(why, "held by another client") || strings.Contains(why, "alice") {
		t.Errorf("bob's view of alice's port: %q (must not name the holder)", why)
	}
	srv.Logs.WaitFor(t, time.Second, "tunnel refused for now", "client=bob", "declared_name=alice", "holder=alice")
	if s := alice.Status(); s.Sessions != 1 || !s.Connected {
		t.Fatalf("alice was taken over: %+v", s)
	}
	for i := range 50 {
		if got, err := readGreeting(t, alicePub); got != "alice's service" {
			t.Fatalf("connection %d to alice's port reached %q (%v)", i, got, err)
		}
	}
	if got, _ := readGreeting(t, bobPub["own"]); got != "bob's service" {
		t.Fatalf("bob's own tunnel: %q", got)
	}

	// The same authenticated client reconnecting takes over its ports.
	alice2 := tt.StartClient(t, tt.ClientConfig(t, addr, map[string]*config.Tunnel{"web": {Local: aliceSvc.Addr(), RemotePort: alicePort}},
		func(c *config.Client) { c.Name = "alice"; c.Token = aliceToken }))
	tt.Eventually(t, 5*time.Second, "alice's second session up with her port", func() bool { return alice2.Status().Public["web"] == alicePub })
	srv.Logs.WaitFor(t, time.Second, "taking over from older session of the same client", "client=alice")
	// Bob waited for that port: a takeover is not a release, and he still waits.
	if why := bob.Status().Pending["steal"]; why == "" {
		t.Errorf("bob's tunnel on alice's port left pending during her takeover: %+v", bob.Status())
	}
	alice.Stop(t)

	// A wrong token is refused whoever it claims to be.
	wrong := tt.StartClient(t, tt.ClientConfig(t, addr, map[string]*config.Tunnel{"web": {Local: aliceSvc.Addr()}},
		func(c *config.Client) { c.Name = "alice"; c.Token = tt.Secret("not-a-token-of-anyone-4f2a") }))
	if err := wrong.Wait(t, 5*time.Second); err == nil || !strings.Contains(err.Error(), "wrong token") || !strings.Contains(err.Error(), "[auth]") {
		t.Errorf("wrong token: %v", err)
	}
	if s := alice2.Status(); s.Sessions != 1 || !s.Connected {
		t.Errorf("alice disturbed by a wrong token claiming her name: %+v", s)
	}
	for i := range 20 {
		if got, err := readGreeting(t, alicePub); got != "alice's service" {
			t.Fatalf("connection %d to alice's port after the attempts reached %q (%v)", i, got, err)
		}
	}

	bob.Stop(t)
	alice2.Stop(t)

	// Alice's allowance is hers: bob's port is outside her range, and a
	// second tunnel is one more than she may have. Both are config
	// mistakes: the client stops and says so.
	for _, tc := range []struct {
		tunnels map[string]*config.Tunnel
		want    string
	}{
		{map[string]*config.Tunnel{"web": {Local: aliceSvc.Addr(), RemotePort: bobPort + 1}}, "outside the ports this client may use"},
		{map[string]*config.Tunnel{"web": {Local: aliceSvc.Addr(), RemotePort: alicePort}, "x-extra": {Local: aliceSvc.Addr()}}, "the most this client may have"},
	} {
		c := tt.StartClient(t, tt.ClientConfig(t, addr, tc.tunnels, func(c *config.Client) { c.Name = "alice"; c.Token = aliceToken }))
		if err := c.Wait(t, 5*time.Second); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("alice past her allowance: %v, want %q", err, tc.want)
		}
	}
}

// A tunnel at max_connections_per_tunnel, or a client at max_connections,
// has further public connections closed at once; the open ones are
// untouched and a slot freed is usable again.
func TestConnectionLimits(t *testing.T) {
	tt.CheckLeaks(t)
	echo := tt.NewEcho(t)
	srv := tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) {
		c.Token = ""
		c.Clients = []config.ClientEntry{{Name: "limited", Token: aliceToken, MaxConnections: 5, MaxConnectionsPerTunnel: 3}}
	}))
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{
		"a": {Local: echo.Addr()}, "b": {Local: echo.Addr()},
	}, func(c *config.Client) { c.Token = aliceToken }))
	pub := cl.WaitUp(t, 5*time.Second)
	open := func(tunnel string) net.Conn {
		c := tt.Dial(t, pub[tunnel])
		if err := tt.Ping(c, "hi", 5*time.Second); err != nil {
			t.Fatalf("connection to %s: %v", tunnel, err)
		}
		return c
	}
	refused := func(tunnel string) {
		t.Helper()
		c, err := net.Dial("tcp", pub[tunnel])
		if errors.Is(err, syscall.ECONNRESET) {
			return // the reset came before this dial was scheduled to see its connect
		}
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write([]byte("x"))
		if n, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("connection past the limit to %s: read %d, %v; want it closed", tunnel, n, err)
		}
	}
	var conns []net.Conn
	for range 3 {
		conns = append(conns, open("a"))
	}
	refused("a")
	srv.Logs.WaitFor(t, time.Second, "public connections refused", "tunnel=a", "limit=max_connections_per_tunnel", "max=3")
	conns = append(conns, open("b"), open("b"))
	refused("b") // the client's 5 are used
	for i, c := range conns {
		if err := tt.Ping(c, fmt.Sprint("still ", i), 5*time.Second); err != nil {
			t.Fatalf("open connection %d after refusals: %v", i, err)
		}
	}
	conns[0].Close()
	tt.Eventually(t, 5*time.Second, "a freed slot", func() bool {
		c, err := net.Dial("tcp", pub["a"])
		if err != nil {
			return false
		}
		defer c.Close()
		return tt.Ping(c, "again", 2*time.Second) == nil
	})
	for _, c := range conns[1:] {
		c.Close()
	}
}

// With client_ca_file, a client certificate is mandatory and its common
// name is the client: a client with no certificate does not get past TLS,
// and one with a certificate for a name the server does not know is
// refused.
func TestMutualTLS(t *testing.T) {
	tt.CheckLeaks(t)
	dir := t.TempDir()
	ca := testcert.New(t, "clients-ca")
	caFile, _ := ca.Write(t, dir, "ca")
	carolCert, carolKey := ca.Issue(t, "carol").Write(t, dir, "carol")
	malloryCert, malloryKey := ca.Issue(t, "mallory").Write(t, dir, "mallory")
	echo := tt.NewEcho(t)
	srv := tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) {
		c.Token = ""
		c.TLS.ClientCAFile = caFile
		c.Clients = []config.ClientEntry{{Name: "carol"}} // the certificate alone
	}))
	addr := srv.Addr().String()
	tunnels := map[string]*config.Tunnel{"echo": {Local: echo.Addr()}}
	carol := tt.StartClient(t, tt.ClientConfig(t, addr, tunnels, func(c *config.Client) {
		c.Name, c.Token = "whoever", "unused-by-this-server"
		c.TLS.CertFile, c.TLS.KeyFile = carolCert, carolKey
	}))
	if err := tt.RoundTrip(tt.Dial(t, carol.WaitUp(t, 5*time.Second)["echo"]), 1<<20); err != nil {
		t.Fatal(err)
	}
	srv.Logs.WaitFor(t, time.Second, "session up", "client=carol")

	// Without a certificate: the client stops and says what it lacks.
	nocert := tt.StartClient(t, tt.ClientConfig(t, addr, tunnels, func(c *config.Client) { c.Name = "nocert" }))
	if msg := refusedTLS(t, nocert); !strings.Contains(msg, "requires a client certificate") || !strings.Contains(msg, "cert_file") {
		t.Errorf("client without a certificate: %s", msg)
	}
	srv.Logs.WaitFor(t, 5*time.Second, "session refused", "tls handshake")

	// With one from another CA, claiming carol's name: refused in words,
	// and the client stops (exit 77 for the binary).
	stranger := testcert.New(t, "other-ca").Issue(t, "carol")
	strangerCert, strangerKey := stranger.Write(t, dir, "stranger")
	untrusted := tt.StartClient(t, tt.ClientConfig(t, addr, tunnels, func(c *config.Client) {
		c.Name = "untrusted"
		c.TLS.CertFile, c.TLS.KeyFile = strangerCert, strangerKey
	}))
	if err := untrusted.Wait(t, 5*time.Second); err == nil || !strings.Contains(err.Error(), "certificate is not one the server trusts") ||
		!strings.Contains(err.Error(), "["+protocol.CodeAuth+"]") {
		t.Errorf("certificate from another CA: %v", err)
	}
	srv.Logs.WaitFor(t, 5*time.Second, "session refused", "code=auth", "not one the server trusts")

	mallory := tt.StartClient(t, tt.ClientConfig(t, addr, tunnels, func(c *config.Client) {
		c.Name = "carol"
		c.TLS.CertFile, c.TLS.KeyFile = malloryCert, malloryKey
	}))
	err := mallory.Wait(t, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), `common name "mallory"`) || !strings.Contains(err.Error(), "["+protocol.CodeAuth+"]") {
		t.Errorf("unknown certificate: %v", err)
	}
	if s := carol.Status(); s.Sessions != 1 || !s.Connected {
		t.Errorf("carol disturbed: %+v", s)
	}
}
