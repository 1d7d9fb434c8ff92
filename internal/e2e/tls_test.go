package e2e

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/client"
	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/testcert"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// selfSigned writes a certificate for 127.0.0.1 (its own CA) and its key.
func selfSigned(t *testing.T, dir, name string) (certFile, keyFile string) {
	return testcert.New(t, name).Write(t, dir, name)
}

// A TLS session carries traffic; a client that does not trust the server's
// certificate, or does not speak TLS, is refused with a message that says
// so on both sides, and the working client is not disturbed.
func TestTLSSession(t *testing.T) {
	tt.CheckLeaks(t)
	dir := t.TempDir()
	cert, key := selfSigned(t, dir, "server")
	otherCA, _ := selfSigned(t, dir, "other")
	echo := tt.NewEcho(t)
	srv := tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) {
		c.TLS = config.ServerTLS{CertFile: cert, KeyFile: key}
	}))
	addr := srv.Addr().String()
	tunnels := func() map[string]*config.Tunnel { return map[string]*config.Tunnel{"echo": {Local: echo.Addr()}} }
	cl := tt.StartClient(t, tt.ClientConfig(t, addr, tunnels(), func(c *config.Client) {
		c.TLS = config.ClientTLS{Enabled: true, CAFile: cert}
	}))
	pub := cl.WaitUp(t, 5*time.Second)["echo"]
	open := tt.Dial(t, pub)
	if err := tt.Ping(open, "over tls", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := tt.RoundTrip(tt.Dial(t, pub), 8<<20); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()

	untrusting := tt.StartClient(t, tt.ClientConfig(t, addr, tunnels(), func(c *config.Client) {
		c.Name = "untrusting"
		c.TLS = config.ClientTLS{Enabled: true, CAFile: otherCA}
	}))
	// A certificate that does not verify is a config problem: the client
	// stops at once (exit 77 for the binary) and says what to fix.
	err := untrusting.Wait(t, 5*time.Second)
	var perm *client.PermanentError
	if !errors.As(err, &perm) || perm.Code != "tls" || !strings.Contains(err.Error(), "certificate signed by unknown authority") ||
		!strings.Contains(err.Error(), "ca_file") {
		t.Fatalf("untrusting client: %v", err)
	}
	if untrusting.Logs.Contains("reconnecting") {
		t.Error("a client that cannot verify the server's certificate retried")
	}
	srv.Logs.WaitFor(t, 5*time.Second, "session refused", "tls handshake", "check ca_file")

	plain := tt.StartClient(t, tt.ClientConfig(t, addr, tunnels(), func(c *config.Client) { c.Name = "plain" }))
	plain.Logs.WaitFor(t, 5*time.Second, "reconnecting", "agree on TLS")
	srv.Logs.WaitFor(t, 5*time.Second, "session refused", "first record does not look like a TLS handshake", "set enabled = true")

	if err := tt.Ping(open, "still over tls", 5*time.Second); err != nil {
		t.Fatalf("open connection after refused clients: %v", err)
	}
	if s := cl.Status(); s.Sessions != 1 || !s.Connected {
		t.Errorf("working client disturbed: %+v", s)
	}
	untrusting.Stop(t)
	plain.Stop(t)
}
