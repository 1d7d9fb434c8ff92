package tlsconf

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseFingerprint(t *testing.T) {
	want := "sha256:" + strings.Repeat("0a", 32)
	for _, in := range []string{want, "SHA256:" + strings.Repeat("0A", 32), "sha256:" + strings.Repeat("0a:", 31) + "0a", " " + want + " "} {
		if got, err := ParseFingerprint(in); err != nil || got != want {
			t.Errorf("ParseFingerprint(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "sha256:", "md5:" + strings.Repeat("0a", 16), "sha256:" + strings.Repeat("0a", 31), "sha256:" + strings.Repeat("zz", 32), strings.Repeat("0a", 32)} {
		if _, err := ParseFingerprint(in); err == nil {
			t.Errorf("ParseFingerprint(%q) accepted", in)
		}
	}
}

// The automatic certificate is made once and then reused, also when two
// servers start on one state directory at the same moment.
func TestAutoCertIsMadeOnce(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	fps := make([]string, 8)
	created := make([]bool, 8)
	for i := range fps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cert, c, err := LoadOrCreateAuto(dir, []string{"127.0.0.1", "tunnel.example"})
			if err != nil {
				t.Error(err)
				return
			}
			fps[i], created[i] = Fingerprint(cert.Certificate[0]), c
		}()
	}
	wg.Wait()
	n := 0
	for i := range fps {
		if fps[i] != fps[0] {
			t.Fatalf("two certificates made: %s and %s", fps[0], fps[i])
		}
		if created[i] {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d starts say they made the certificate, want 1", n)
	}
	again, c, err := LoadOrCreateAuto(dir, nil)
	if err != nil || c || Fingerprint(again.Certificate[0]) != fps[0] {
		t.Fatalf("reload: %v, created %v", err, c)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".tls-*")); len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
	if st, err := os.Stat(filepath.Join(dir, AutoKeyFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v %v", st, err)
	}
}

// A pin admits exactly its certificate; anything else fails with both
// fingerprints, and a CA-verified failure tells the one presented.
func TestPinnedClient(t *testing.T) {
	cert := loopbackCert(t)
	fp := Fingerprint(cert.Certificate[0])
	srv := Server(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var served sync.WaitGroup
	defer served.Wait()
	defer ln.Close() // before the wait: it ends the accept loop
	served.Add(1)
	go func() {
		defer served.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := tls.Server(c, srv)
			_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
			_ = tc.Handshake()
			c.Close()
		}
	}()
	handshake := func(c Client) error {
		nc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		defer nc.Close()
		tc := tls.Client(nc, c.Config())
		_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
		return tc.Handshake()
	}
	if err := handshake(Client{Fingerprint: fp}); err != nil {
		t.Fatalf("pinned: %v", err)
	}
	other := "sha256:" + strings.Repeat("ab", 32)
	err = handshake(Client{Fingerprint: other})
	var fe *FingerprintError
	if !errors.As(err, &fe) || fe.Got != fp || fe.Want != other || Presented(err) != fp {
		t.Fatalf("mispinned: %v", err)
	}
	err = handshake(Client{ServerName: "127.0.0.1"}) // system roots do not know it
	if Presented(err) != fp {
		t.Fatalf("unverified: %v, presented %q", err, Presented(err))
	}
}

// Replaced certificate files are served from the next handshake on; a
// broken replacement keeps the old pair and is reported.
func TestFileCertReloads(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	write := func(c, k []byte) {
		if err := os.WriteFile(certFile, c, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, k, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c1, k1, _ := NewSelfSigned(nil)
	write(c1, k1)
	var reported []error
	fc, err := NewFileCert(certFile, keyFile, func(err error) { reported = append(reported, err) })
	if err != nil {
		t.Fatal(err)
	}
	first := Fingerprint(fc.Current().Certificate[0])
	c2, k2, _ := NewSelfSigned(nil)
	write(c2, k2)
	future := time.Now().Add(time.Minute)
	_ = os.Chtimes(certFile, future, future) // a new stamp even on a coarse clock
	fc.mu.Lock()
	fc.checked = time.Time{} // as if recheck had passed
	fc.mu.Unlock()
	got, _ := fc.Get(nil)
	second := Fingerprint(got.Certificate[0])
	if second == first {
		t.Fatal("the replaced certificate was not loaded")
	}
	write([]byte("garbage"), k2)
	_ = os.Chtimes(certFile, future.Add(time.Minute), future.Add(time.Minute))
	fc.mu.Lock()
	fc.checked = time.Time{}
	fc.mu.Unlock()
	got, _ = fc.Get(nil)
	if Fingerprint(got.Certificate[0]) != second || len(reported) != 1 {
		t.Fatalf("a broken replacement: serving %s, %d reports", Fingerprint(got.Certificate[0]), len(reported))
	}
}

// The server sends no session ticket: tunnelc never resumes, so a ticket
// would be work and memory per handshake for nothing. A client with a
// session cache that reads after the handshake (when TLS 1.3 tickets
// arrive) has nothing cached.
func TestServerSendsNoSessionTicket(t *testing.T) {
	cert := loopbackCert(t)
	srv := Server(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }, nil)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	done := make(chan error, 1)
	go func() {
		tc := tls.Server(a, srv)
		if err := tc.Handshake(); err != nil {
			done <- err
			return
		}
		_, err := tc.Write([]byte("x"))
		done <- err
	}()
	cache := &countingCache{ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	cfg := Client{Fingerprint: Fingerprint(cert.Certificate[0])}.Config()
	cfg.ClientSessionCache = cache
	tc := tls.Client(b, cfg)
	var one [1]byte
	if _, err := tc.Read(one[:]); err != nil { // past any ticket sent after the handshake
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if cache.puts != 0 {
		t.Errorf("the server sent %d session tickets", cache.puts)
	}
}

type countingCache struct {
	tls.ClientSessionCache
	puts int
}

func (c *countingCache) Put(key string, cs *tls.ClientSessionState) {
	if cs != nil {
		c.puts++
	}
	c.ClientSessionCache.Put(key, cs)
}

// loopbackCert is a fresh self-signed certificate for 127.0.0.1.
func loopbackCert(t *testing.T) tls.Certificate {
	t.Helper()
	certPEM, keyPEM, err := NewSelfSigned([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}
