package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/client"
	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/testcert"
	"github.com/tunnel-dev/tunnel/internal/tlsconf"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// selfSigned writes a certificate for 127.0.0.1 (its own CA) and its key.
func selfSigned(t *testing.T, dir, name string) (certFile, keyFile string) {
	return testcert.New(t, name).Write(t, dir, name)
}

// refusedTLS waits for a client to stop with a PermanentError of code
// "tls" and returns its message.
func refusedTLS(t *testing.T, c *tt.Client) string {
	t.Helper()
	err := c.Wait(t, 5*time.Second)
	var perm *client.PermanentError
	if !errors.As(err, &perm) || perm.Code != "tls" {
		t.Fatalf("client: %v, want a permanent tls error", err)
	}
	if c.Logs.Contains("reconnecting") {
		t.Error("a client that cannot trust the server retried")
	}
	return err.Error()
}

// A session with a CA-signed certificate carries traffic; a client that
// does not trust the certificate, or does not speak TLS, is refused with a
// message that says so on both sides, and the working client is not
// disturbed.
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
		c.TLS = config.ClientTLS{CAFile: cert}
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
		c.TLS = config.ClientTLS{CAFile: otherCA}
	}))
	// A certificate that does not verify is a config problem: the client
	// stops at once (exit 77 for the binary) and says what to fix,
	// including the fingerprint to pin if the certificate is the right one.
	msg := refusedTLS(t, untrusting)
	for _, want := range []string{"certificate signed by unknown authority", "ca_file", srv.Fingerprint()} {
		if !strings.Contains(msg, want) {
			t.Errorf("untrusting client's error lacks %q: %s", want, msg)
		}
	}
	srv.Logs.WaitFor(t, 5*time.Second, "session refused", "tls handshake", "pin its fingerprint")

	plain := tt.StartClient(t, tt.ClientConfig(t, addr, tunnels(), func(c *config.Client) { c.Name = "plain"; tt.Plain(c) }))
	plain.Logs.WaitFor(t, 5*time.Second, "TLS is off")
	plain.Logs.WaitFor(t, 5*time.Second, "reconnecting", "agree on TLS")
	srv.Logs.WaitFor(t, 5*time.Second, "session refused", "does not speak TLS", `tls = \"off\"`)

	if err := tt.Ping(open, "still over tls", 5*time.Second); err != nil {
		t.Fatalf("open connection after refused clients: %v", err)
	}
	if s := cl.Status(); s.Sessions != 1 || !s.Connected {
		t.Errorf("working client disturbed: %+v", s)
	}
	untrusting.Stop(t)
	plain.Stop(t)
}

// With no certificate configured, tunneld makes one in its state
// directory and keeps it across restarts; a client trusts it by its
// pinned fingerprint, and one without the pin, or with another, is told
// the fingerprint it was shown.
func TestAutomaticCertificate(t *testing.T) {
	tt.CheckLeaks(t)
	state := t.TempDir()
	echo := tt.NewEcho(t)
	cfg := tt.ServerConfig(t, func(c *config.Server) {
		c.TLS = config.ServerTLS{}
		c.StateDir = state
	})
	srv := tt.StartServer(t, cfg)
	fp := srv.Fingerprint()
	if _, err := tlsconf.ParseFingerprint(fp); err != nil {
		t.Fatalf("fingerprint %q: %v", fp, err)
	}
	if st, err := os.Stat(filepath.Join(state, tlsconf.AutoKeyFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("automatic key: %v, %v (want mode 0600)", st, err)
	}
	srv.Logs.WaitFor(t, time.Second, "TLS certificate made", fp)
	addr := srv.Addr().String()
	tunnels := func() map[string]*config.Tunnel { return map[string]*config.Tunnel{"echo": {Local: echo.Addr()}} }
	cl := tt.StartClient(t, tt.ClientConfig(t, addr, tunnels(), func(c *config.Client) { c.TLS = config.ClientTLS{Fingerprint: fp} }))
	pub := cl.WaitUp(t, 5*time.Second)["echo"]
	if err := tt.RoundTrip(tt.Dial(t, pub), 4<<20); err != nil {
		t.Fatal(err)
	}

	// No pin and no CA: the system roots do not know the certificate.
	unpinned := tt.StartClient(t, tt.ClientConfig(t, addr, tunnels(), func(c *config.Client) {
		c.Name = "unpinned"
		c.TLS = config.ClientTLS{}
	}))
	msg := refusedTLS(t, unpinned)
	if !strings.Contains(msg, `fingerprint = "`+fp+`"`) || !strings.Contains(msg, "tunneld fingerprint") {
		t.Errorf("unpinned client is not told what to pin: %s", msg)
	}

	// A pin that does not match: someone on the path, or a new certificate.
	other := "sha256:" + strings.Repeat("ab", 32)
	mispinned := tt.StartClient(t, tt.ClientConfig(t, addr, tunnels(), func(c *config.Client) {
		c.Name = "mispinned"
		c.TLS = config.ClientTLS{Fingerprint: other}
	}))
	msg = refusedTLS(t, mispinned)
	if !strings.Contains(msg, "presented a certificate with fingerprint "+fp) || !strings.Contains(msg, "pins "+other) {
		t.Errorf("mispinned client's error does not give both fingerprints: %s", msg)
	}
	srv.Logs.WaitFor(t, 5*time.Second, "session refused", "rejected this server's certificate")

	// The explicit opt-out connects, and says at start what it gives up.
	insecure := tt.StartClient(t, tt.ClientConfig(t, addr, tunnels(), func(c *config.Client) {
		c.Name = "insecure"
		c.TLS = config.ClientTLS{InsecureSkipVerify: true}
	}))
	insecure.WaitUp(t, 5*time.Second)
	insecure.Logs.WaitFor(t, time.Second, "NOT verified", "insecure_skip_verify", "pin its fingerprint")
	insecure.Stop(t)
	unpinned.Stop(t)
	mispinned.Stop(t)
	cl.Stop(t)
	srv.Stop(t)

	// A restart presents the same certificate: pinned clients keep working.
	srv2 := tt.StartServer(t, cfg)
	if srv2.Fingerprint() != fp {
		t.Fatalf("fingerprint after restart %s, was %s", srv2.Fingerprint(), fp)
	}
	if srv2.Logs.Contains("TLS certificate made") {
		t.Error("the restarted server made a new certificate")
	}
	cl2 := tt.StartClient(t, tt.ClientConfig(t, srv2.Addr().String(), tunnels(), func(c *config.Client) { c.TLS = config.ClientTLS{Fingerprint: fp} }))
	if err := tt.RoundTrip(tt.Dial(t, cl2.WaitUp(t, 5*time.Second)["echo"]), 1<<20); err != nil {
		t.Fatal(err)
	}
}

// A damaged automatic certificate is never replaced behind the operator's
// back: clients pinned it.
func TestAutomaticCertificateDamaged(t *testing.T) {
	state := t.TempDir()
	if err := os.MkdirAll(filepath.Join(state, "tls"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(state, tlsconf.AutoCertFile), []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err := tlsconf.LoadOrCreateAuto(state, nil)
	if err == nil || !strings.Contains(err.Error(), "fix or remove both") {
		t.Fatalf("damaged automatic certificate: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(state, tlsconf.AutoCertFile)); string(b) != "not a certificate" {
		t.Error("the damaged certificate was overwritten")
	}
}

// With TLS off on purpose, both ends say so at every start.
func TestTLSOffIsWarned(t *testing.T) {
	tt.CheckLeaks(t)
	echo := tt.NewEcho(t)
	srv := tt.StartServer(t, tt.ServerConfig(t, tt.Plain[*config.Server]))
	srv.Logs.WaitFor(t, time.Second, "TLS is off", "cleartext")
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{"echo": {Local: echo.Addr()}}, tt.Plain[*config.Client]))
	cl.Logs.WaitFor(t, time.Second, "TLS is off", "cleartext")
	if err := tt.RoundTrip(tt.Dial(t, cl.WaitUp(t, 5*time.Second)["echo"]), 1<<20); err != nil {
		t.Fatal(err)
	}
	// A TLS client at a cleartext server: it keeps trying (the server may
	// be mid-upgrade) and says why.
	tlsClient := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{"echo": {Local: echo.Addr()}}, func(c *config.Client) { c.Name = "tls-client" }))
	tlsClient.Logs.WaitFor(t, 5*time.Second, "reconnecting", "tls handshake", "both sides must agree")
	srv.Logs.WaitFor(t, 5*time.Second, "session refused", "the peer speaks TLS", `tls = \"off\"`)
	tlsClient.Stop(t)
}
