package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/config"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// pebbleVersion is the ACME test server the certificate test runs: Let's
// Encrypt's own, built from the Go module proxy.
const pebbleVersion = "github.com/letsencrypt/pebble/v2@v2.10.3"

// startPebble builds and runs pebble on two free ports of 127.0.0.1 and
// returns its directory URL, the CA its API is served with, and the root
// the certificates it issues chain to. Validation is off
// (PEBBLE_VA_ALWAYS_VALID): the test is of tunneld's ordering, caching
// and serving of certificates; challenge answers are autocert's.
func startPebble(t *testing.T) (dir, apiCA string, roots *x509.CertPool) {
	t.Helper()
	// make test builds it before the tests (PEBBLE); by hand, here.
	pebble := os.Getenv("PEBBLE")
	if pebble == "" {
		bin := t.TempDir()
		install := exec.Command("go", "install", strings.TrimSuffix(pebbleVersion, "@v2.10.3")+"/cmd/pebble@v2.10.3")
		install.Env = append(os.Environ(), "GOBIN="+bin, "GOFLAGS=-buildvcs=false")
		if out, err := install.CombinedOutput(); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("building pebble: %v\n%s", err, out)
			}
			t.Skipf("cannot build pebble (no module proxy?): %v", err)
		}
		pebble = filepath.Join(bin, "pebble")
	}
	out, err := exec.Command("go", "mod", "download", "-json", pebbleVersion).Output()
	if err != nil {
		t.Fatalf("go mod download %s: %v", pebbleVersion, err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil {
		t.Fatal(err)
	}
	api, mgmt := tt.FreePort(t), tt.FreePort(t)
	cfg := fmt.Sprintf(`{"pebble": {"listenAddress": "127.0.0.1:%d", "managementListenAddress": "127.0.0.1:%d",
		"certificate": %q, "privateKey": %q, "httpPort": %d, "tlsPort": %d, "ocspResponderURL": "",
		"externalAccountBindingRequired": false, "keyAlgorithm": "ecdsa",
		"profiles": {"default": {"description": "test", "validityPeriod": 7776000}}}}`,
		api, mgmt, filepath.Join(mod.Dir, "test/certs/localhost/cert.pem"), filepath.Join(mod.Dir, "test/certs/localhost/key.pem"),
		tt.FreePort(t), tt.FreePort(t))
	cfgFile := writeFile(t, t.TempDir(), "pebble.json", cfg)
	cmd := exec.Command(pebble, "-config", cfgFile)
	cmd.Env = append(os.Environ(), "PEBBLE_VA_ALWAYS_VALID=1", "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0")
	tt.Start(t, cmd)
	apiCA = filepath.Join(mod.Dir, "test/certs/pebble.minica.pem")
	pem, err := os.ReadFile(apiCA)
	if err != nil {
		t.Fatal(err)
	}
	apiPool := x509.NewCertPool()
	apiPool.AppendCertsFromPEM(pem)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: apiPool}}}
	defer hc.CloseIdleConnections()
	var root []byte
	tt.Eventually(t, 20*time.Second, "pebble up", func() bool {
		resp, err := hc.Get(fmt.Sprintf("https://127.0.0.1:%d/roots/0", mgmt))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		root, _ = io.ReadAll(resp.Body)
		return resp.StatusCode == 200
	})
	roots = x509.NewCertPool()
	if !roots.AppendCertsFromPEM(root) {
		t.Fatalf("pebble's root: %q", root)
	}
	return fmt.Sprintf("https://127.0.0.1:%d/dir", api), apiCA, roots
}

// An https tunnel terminated at tunneld with acme_email set gets its
// certificate from the ACME CA on first use, kept in state_dir, and
// served to visitors, who verify it against the CA's root.
func TestACMECertificates(t *testing.T) {
	dir, apiCA, roots := startPebble(t)
	tt.CheckLeaks(t)
	svc := webService(t, "auto")
	state := t.TempDir()
	srv := tt.StartServer(t, tt.ServerConfig(t, func(c *config.Server) {
		c.StateDir = state
		c.Web.HTTPSAddr = "127.0.0.1:0"
		c.Web.Domains = []string{"tunnel.test"}
		c.Web.ACMEEmail = "ops@tunnel.test"
		c.Web.ACMEDirectory = dir
		c.Web.ACMECAFile = apiCA
	}))
	cl := tt.StartClient(t, tt.ClientConfig(t, srv.Addr().String(), map[string]*config.Tunnel{
		"auto": {Type: "https", Local: strings.TrimPrefix(svc.URL, "http://"), Subdomain: "auto", TLSTermination: "server"},
	}, nil))
	cl.WaitUp(t, 5*time.Second)
	addr := srv.HTTPSAddr().String()
	for i := range 2 { // the second from the cache
		client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: roots},
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			}}}
		resp, err := client.Get("https://auto.tunnel.test/x")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		client.CloseIdleConnections()
		leaf := resp.TLS.PeerCertificates[0]
		if !strings.HasPrefix(string(b), "auto host=auto.tunnel.test path=/x") || leaf.DNSNames[0] != "auto.tunnel.test" {
			t.Errorf("request %d: %q, certificate for %v", i, b, leaf.DNSNames)
		}
	}
	if ents, err := os.ReadDir(filepath.Join(state, "acme")); err != nil || len(ents) == 0 {
		t.Errorf("nothing kept in state_dir/acme: %v", err)
	}
	// A name no terminated tunnel holds gets no certificate ordered.
	c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "other.tunnel.test", RootCAs: roots})
	if err == nil {
		c.Close()
		t.Error("a handshake for a name nobody serves succeeded")
	}
}
