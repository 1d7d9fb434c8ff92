//go:build linux

package tunneltest

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/client"
	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/server"
	"github.com/tunnel-dev/tunnel/internal/tlsconf"
)

// Token is the shared secret of harness servers and clients.
const Token = "test-token-5f3a9c07e1b24d68"

// ServerConfig is a validated server config for 127.0.0.1 with a free
// session port; edit runs before validation.
func ServerConfig(t testing.TB, edit func(*config.Server)) *config.Server {
	t.Helper()
	c := config.DefaultServer()
	c.File = "test-tunneld.toml"
	c.Listen = "127.0.0.1:0"
	c.BindAddr = "127.0.0.1"
	c.Token = Token
	c.HandshakeTimeout = config.Duration(3 * time.Second)
	c.TLS.CertFile, c.TLS.KeyFile = CertFiles(t)
	// Every test client comes from 127.0.0.1: the per-address limits
	// would turn the suite's own refused handshakes into refusals at
	// accept. Tests of those limits set them.
	c.HandshakeLimitPerAddress = c.HandshakeLimit
	c.FailedHandshakesPerMinute = 1 << 20
	if edit != nil {
		edit(c)
	}
	if err := c.Validate(nil); err != nil {
		t.Fatal(err)
	}
	return c
}

// The harness's TLS certificate: one per test process, as making one per
// test would cost every test a key generation for nothing.
var harnessCert = sync.OnceValues(func() ([]byte, []byte) {
	certPEM, keyPEM, err := tlsconf.NewSelfSigned([]string{"127.0.0.1"})
	if err != nil {
		panic(err)
	}
	return certPEM, keyPEM
})

// CertFiles writes the harness certificate and key into a temporary
// directory of t: the files harness servers present.
func CertFiles(t testing.TB) (certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM := harnessCert()
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// Fingerprint is the harness certificate's, which harness clients pin.
func Fingerprint() string {
	certPEM, _ := harnessCert()
	b, _ := pem.Decode(certPEM)
	return tlsconf.Fingerprint(b.Bytes)
}

// DialSession connects to a harness server's session port and completes
// TLS as a harness client would, for tests that then speak the session
// protocol by hand.
func DialSession(addr string) (net.Conn, error) {
	d := tls.Dialer{Config: tlsconf.Client{Fingerprint: Fingerprint()}.Config()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return d.DialContext(ctx, "tcp", addr)
}

// Plain turns TLS off in a harness server or client config, for tests
// that speak the session protocol by hand or attack the layer under TLS.
func Plain[T *config.Server | *config.Client](c T) {
	switch c := any(c).(type) {
	case *config.Server:
		c.TLS = config.ServerTLS{Off: true}
	case *config.Client:
		c.TLS = config.ClientTLS{Off: true}
	}
}

// Server is an in-process tunneld.
type Server struct {
	*server.Server
	Logs   *Logs
	cancel context.CancelFunc
	done   chan error
}

// StartServer starts tunneld; it stops at cleanup.
func StartServer(t testing.TB, cfg *config.Server) *Server {
	t.Helper()
	logs, log := NewLogs(t)
	srv, err := server.New(cfg, log.With("side", "server"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := srv.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	s := &Server{Server: srv, Logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- srv.Serve(ctx) }()
	t.Cleanup(func() { s.Stop(t) })
	return s
}

// Stop shuts the server down and waits for it; it may be called twice.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.cancel()
	select {
	case err, ok := <-s.done:
		if ok && err != nil {
			t.Errorf("server: %v", err)
		}
		if ok {
			close(s.done)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("server did not stop within 10s\n%s", stacks())
	}
}

// ClientConfig is a validated client config for server addr; edit runs
// before validation.
func ClientConfig(t testing.TB, addr string, tunnels map[string]*config.Tunnel, edit func(*config.Client)) *config.Client {
	t.Helper()
	c := config.DefaultClient()
	c.File = "test-tunnel.toml"
	c.Server = addr
	c.Token = Token
	c.Name = "test-client"
	c.TLS.Fingerprint = Fingerprint()
	c.HandshakeTimeout = config.Duration(3 * time.Second)
	c.Reconnect = config.Reconnect{MinDelay: config.Duration(50 * time.Millisecond), MaxDelay: config.Duration(500 * time.Millisecond)}
	c.Tunnels = tunnels
	for _, tn := range tunnels {
		if tn.Type == "" {
			tn.Type = "tcp"
		}
	}
	if edit != nil {
		edit(c)
	}
	if err := c.Validate(nil); err != nil {
		t.Fatal(err)
	}
	return c
}

// Client is an in-process tunnelc.
type Client struct {
	*client.Client
	Logs   *Logs
	cancel context.CancelFunc
	done   chan error
	err    error
}

// StartClient starts tunnelc; it stops at cleanup.
func StartClient(t testing.TB, cfg *config.Client) *Client {
	t.Helper()
	logs, log := NewLogs(t)
	cl, err := client.New(cfg, log.With("side", "client"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{Client: cl, Logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { c.done <- cl.Run(ctx) }()
	t.Cleanup(func() { c.Stop(t) })
	return c
}

// Stop cancels the client and returns what Run returned.
func (c *Client) Stop(t testing.TB) error {
	t.Helper()
	c.cancel()
	return c.Wait(t, 10*time.Second)
}

// Wait waits for Run to return (for a permanent error) and returns its error.
func (c *Client) Wait(t testing.TB, d time.Duration) error {
	t.Helper()
	select {
	case err, ok := <-c.done:
		if ok {
			close(c.done)
			c.err = err
		}
		return c.err
	case <-time.After(d):
		t.Fatalf("client did not return within %s\n%s", d, stacks())
		return nil
	}
}

// WaitUp waits for the client's session to be up and returns its public
// addresses by tunnel.
func (c *Client) WaitUp(t testing.TB, timeout time.Duration) map[string]string {
	t.Helper()
	Eventually(t, timeout, "the client's session", func() bool { return c.Status().Connected })
	return c.Status().Public
}

// stacks returns a summary of all goroutines, for diagnosing a hang.
func stacks() string {
	buf := make([]byte, 4<<20)
	return string(buf[:runtime.Stack(buf, true)])
}
