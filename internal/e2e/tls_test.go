package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/config"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// selfSigned writes a certificate for 127.0.0.1 (its own CA) and its key.
func selfSigned(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
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
	untrusting.Logs.WaitFor(t, 5*time.Second, "reconnecting", "tls handshake", "certificate signed by unknown authority")
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
