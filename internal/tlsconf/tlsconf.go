// Package tlsconf builds the TLS configurations of the session between
// tunnelc and tunneld: TLS 1.3 only, a server certificate from files
// (re-read when they change) or made once and kept in the state directory,
// and client verification by CA or by a pinned SHA-256 fingerprint, the
// SSH-like way to trust a certificate that no CA signed.
//
// It knows nothing of sessions or configs' file format; it must not weaken
// verification on its own: every opt-out is the caller's explicit choice.
package tlsconf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Fingerprint is the SHA-256 of a certificate's DER bytes, written
// "sha256:" and 64 lowercase hex digits: the same hash as
// `openssl x509 -noout -fingerprint -sha256`.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ParseFingerprint accepts "sha256:" followed by 64 hex digits, in either
// case and with or without colons between bytes (openssl's form), and
// returns the canonical form.
func ParseFingerprint(s string) (string, error) {
	algo, digits, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok || !strings.EqualFold(algo, "sha256") {
		return "", fmt.Errorf("%q is not a fingerprint (want \"sha256:\" and 64 hex digits, as `tunneld fingerprint` prints)", s)
	}
	b, err := hex.DecodeString(strings.ReplaceAll(digits, ":", ""))
	if err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("%q is not a fingerprint (want \"sha256:\" and 64 hex digits, as `tunneld fingerprint` prints)", s)
	}
	return "sha256:" + hex.EncodeToString(b), nil
}

// ErrClientCertRequired is a server asking for a client certificate of a
// client that has none.
var ErrClientCertRequired = errors.New("the server requires a client certificate")

// FingerprintError is a server certificate that does not match the pinned
// fingerprint.
type FingerprintError struct {
	Want, Got string
}

func (e *FingerprintError) Error() string {
	return fmt.Sprintf("server certificate fingerprint is %s, pinned %s", e.Got, e.Want)
}

// Server returns the server side's config presenting cert. clientCAs,
// when not nil, makes a client certificate mandatory; the caller must
// check it with VerifyClient. TLS only asks for it (naming the CAs): a
// certificate that fails inside the handshake can only be answered with
// an alert, which the client cannot tell from other failures, while a
// session can refuse it in words the client shows its operator.
func Server(cert func(*tls.ClientHelloInfo) (*tls.Certificate, error), clientCAs *x509.CertPool) *tls.Config {
	// No session tickets: tunnelc keeps one session up and never resumes
	// one (it has no session cache), so a ticket is a key derivation and
	// a record written for nothing at every handshake, and its secret
	// kept per connection: on a server a thousand sessions reconnect to
	// at once, that is work and memory in the worst moment.
	c := &tls.Config{GetCertificate: cert, MinVersion: tls.VersionTLS13, SessionTicketsDisabled: true}
	if clientCAs != nil {
		c.ClientAuth = tls.RequireAnyClientCert
		c.ClientCAs = clientCAs
	}
	return c
}

// VerifyClient checks a client's certificate chain (leaf first, as the
// peer sent it) against roots for client authentication and returns the
// leaf.
func VerifyClient(chain []*x509.Certificate, roots *x509.CertPool) (*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, errors.New("no client certificate")
	}
	opts := x509.VerifyOptions{Roots: roots, Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	for _, c := range chain[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := chain[0].Verify(opts); err != nil {
		return nil, err
	}
	return chain[0], nil
}

// Client describes how tunnelc trusts the server and who it says it is.
type Client struct {
	ServerName string
	// RootCAs replaces the system roots when set.
	RootCAs *x509.CertPool
	// Fingerprint, when set (canonical form), is the only certificate
	// trusted: names, dates and CAs are not looked at.
	Fingerprint string
	// Insecure trusts any certificate. Only by explicit choice.
	Insecure bool
	// Cert is presented when the server asks for one (mutual TLS).
	Cert *tls.Certificate
}

// Config returns the client side's config.
func (c Client) Config() *tls.Config {
	cfg := &tls.Config{ServerName: c.ServerName, RootCAs: c.RootCAs, MinVersion: tls.VersionTLS13, InsecureSkipVerify: c.Insecure}
	cert := c.Cert
	// Asked for a certificate it does not have, the client stops and says
	// so, instead of sending none and learning only that the server hung
	// up.
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		if cert == nil {
			return nil, ErrClientCertRequired
		}
		return cert, nil
	}
	if c.Fingerprint != "" {
		want := c.Fingerprint
		// The pin replaces chain verification, as an SSH host key does.
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return &FingerprintError{Want: want, Got: "(no certificate)"}
			}
			got := Fingerprint(cs.PeerCertificates[0].Raw)
			if subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
				return &FingerprintError{Want: want, Got: got}
			}
			return nil
		}
	}
	return cfg
}

// Presented returns the fingerprint of the leaf certificate a failed
// verification saw, or "" when err carries none.
func Presented(err error) string {
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) && len(cv.UnverifiedCertificates) > 0 {
		return Fingerprint(cv.UnverifiedCertificates[0].Raw)
	}
	var fe *FingerprintError
	if errors.As(err, &fe) {
		return fe.Got
	}
	return ""
}

// LoadCAs reads a PEM bundle of CA certificates.
func LoadCAs(file string) (*x509.CertPool, error) {
	pemBytes, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

// FileCert serves a certificate and key from files and reloads them when
// either file changes (a renewed certificate is used by the next
// handshake, no restart needed). A reload that fails keeps the old pair
// and reports the error once per change.
type FileCert struct {
	certFile, keyFile string
	onError           func(error)

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   string
	checked time.Time
}

// recheck bounds how often the files are stat'ed: handshakes can come by
// the thousand.
const recheck = 2 * time.Second

// NewFileCert loads the pair; onError hears of failed reloads.
func NewFileCert(certFile, keyFile string, onError func(error)) (*FileCert, error) {
	f := &FileCert{certFile: certFile, keyFile: keyFile, onError: onError}
	stamp, err := f.stampNow()
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load %s and %s: %w", certFile, keyFile, err)
	}
	f.cert, f.stamp, f.checked = &cert, stamp, time.Now()
	return f, nil
}

func (f *FileCert) stampNow() (string, error) {
	var b strings.Builder
	for _, p := range []string{f.certFile, f.keyFile} {
		st, err := os.Stat(p)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%d/%d/", st.ModTime().UnixNano(), st.Size())
	}
	return b.String(), nil
}

// Get is a tls.Config.GetCertificate.
func (f *FileCert) Get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if time.Since(f.checked) < recheck {
		return f.cert, nil
	}
	f.checked = time.Now()
	stamp, err := f.stampNow()
	if err != nil || stamp == f.stamp {
		return f.cert, nil
	}
	f.stamp = stamp
	cert, err := tls.LoadX509KeyPair(f.certFile, f.keyFile)
	if err != nil {
		if f.onError != nil {
			f.onError(fmt.Errorf("reload %s and %s (still using the previous pair): %w", f.certFile, f.keyFile, err))
		}
		return f.cert, nil
	}
	f.cert = &cert
	return f.cert, nil
}

// Current returns the pair in use.
func (f *FileCert) Current() *tls.Certificate {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cert
}

// Auto files, under the state directory.
const (
	AutoCertFile = "tls/cert.pem"
	AutoKeyFile  = "tls/key.pem"
)

// LoadOrCreateAuto returns the automatic certificate kept in dir, making
// it on first use: a P-256 key and a self-signed certificate for names,
// valid for 20 years (clients pin it; its dates are not what they check).
// dir "" makes one that lives in memory only. created says it is new.
func LoadOrCreateAuto(dir string, names []string) (cert tls.Certificate, created bool, err error) {
	if dir == "" {
		certPEM, keyPEM, err := newSelfSigned(names)
		if err != nil {
			return tls.Certificate{}, false, err
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		return cert, true, err
	}
	certPath, keyPath := filepath.Join(dir, AutoCertFile), filepath.Join(dir, AutoKeyFile)
	cert, err = tls.LoadX509KeyPair(certPath, keyPath)
	if err == nil {
		return cert, false, nil
	}
	if _, statErr := os.Stat(certPath); !errors.Is(statErr, os.ErrNotExist) {
		// A pair missing at the load and there now was renamed into
		// place whole by a server starting at the same moment: load it.
		if errors.Is(err, os.ErrNotExist) {
			if cert, err = tls.LoadX509KeyPair(certPath, keyPath); err == nil {
				return cert, false, nil
			}
		}
		// There is something, and it does not load: never overwrite
		// what clients may have pinned.
		return tls.Certificate{}, false, fmt.Errorf("automatic certificate %s and key %s do not load (fix or remove both to make a new one, which clients must then pin again): %w", certPath, keyPath, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, false, err
	}
	certPEM, keyPEM, err := newSelfSigned(names)
	if err != nil {
		return tls.Certificate{}, false, err
	}
	// Both files are written into a directory of their own, which is
	// then renamed into place: the pair appears whole or not at all, and
	// of two servers starting on one state directory the second's rename
	// fails and it loads the first's pair.
	tmp, err := os.MkdirTemp(dir, ".tls-*")
	if err != nil {
		return tls.Certificate{}, false, err
	}
	defer os.RemoveAll(tmp)
	if err := writeFile(filepath.Join(tmp, filepath.Base(keyPath)), keyPEM, 0o600); err != nil {
		return tls.Certificate{}, false, err
	}
	if err := writeFile(filepath.Join(tmp, filepath.Base(certPath)), certPEM, 0o644); err != nil {
		return tls.Certificate{}, false, err
	}
	if err := os.Chmod(tmp, 0o700); err != nil {
		return tls.Certificate{}, false, err
	}
	if err := os.Rename(tmp, filepath.Dir(certPath)); err != nil {
		if !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, os.ErrExist) {
			return tls.Certificate{}, false, err
		}
		cert, err = tls.LoadX509KeyPair(certPath, keyPath)
		return cert, false, err
	}
	cert, err = tls.LoadX509KeyPair(certPath, keyPath)
	return cert, err == nil, err
}

// NewSelfSigned makes a P-256 key and a self-signed server certificate
// for names, PEM encoded.
func NewSelfSigned(names []string) (certPEM, keyPEM []byte, err error) { return newSelfSigned(names) }

func newSelfSigned(names []string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "tunneld"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(20, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	addNames(tmpl, names)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), nil
}

// writeFile writes and syncs a new file.
func writeFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// addNames puts names into the certificate as IP or DNS names.
func addNames(tmpl *x509.Certificate, names []string) {
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			if !ip.IsUnspecified() {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			}
		} else if n != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
}
