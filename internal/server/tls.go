package server

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/tlsconf"
)

// certSource is what a TLS handshake presents.
type certSource func(*tls.ClientHelloInfo) (*tls.Certificate, error)

// certificate is the session listener's GetCertificate: the current
// source, which a reload may replace.
func (s *Server) certificate(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return (*s.certs.Load())(h)
}

// serverTLS loads what the session listener's TLS presents (nil when
// off) and returns it with the CAs client certificates must chain to
// (nil: none asked for) and the fingerprint of the certificate.
func serverTLS(cfg *config.Server, log *slog.Logger) (*certSource, *x509.CertPool, string, error) {
	if !cfg.TLS.Enabled() {
		return nil, nil, "", nil
	}
	var clientCAs *x509.CertPool
	if cfg.TLS.ClientCAFile != "" {
		pool, err := tlsconf.LoadCAs(cfg.TLS.ClientCAFile)
		if err != nil {
			return nil, nil, "", fmt.Errorf("%s: tls.client_ca_file: %w", cfg.File, err)
		}
		clientCAs = pool
	}
	if !cfg.TLS.Auto() {
		fc, err := tlsconf.NewFileCert(cfg.TLS.CertFile, cfg.TLS.KeyFile, func(err error) {
			log.Error("TLS certificate reload failed", "err", err)
		})
		if err != nil {
			return nil, nil, "", fmt.Errorf("%s: [tls]: %w", cfg.File, err)
		}
		fp := tlsconf.Fingerprint(fc.Current().Certificate[0])
		log.Info("TLS certificate", "cert_file", cfg.TLS.CertFile, "fingerprint", fp, "client_certificates", clientCAs != nil)
		src := certSource(fc.Get)
		return &src, clientCAs, fp, nil
	}
	cert, created, err := AutoCert(cfg)
	if err != nil {
		return nil, nil, "", err
	}
	fp := tlsconf.Fingerprint(cert.Certificate[0])
	switch {
	case cfg.StateDir == "":
		log.Warn("TLS certificate made for this run only (no state_dir): its fingerprint changes at every start, and clients that pin it must be updated; set state_dir to keep it",
			"fingerprint", fp)
	case created:
		log.Info("TLS certificate made; clients trust it by pinning its fingerprint", "cert_file", filepath.Join(cfg.StateDir, tlsconf.AutoCertFile), "fingerprint", fp)
	default:
		log.Info("TLS certificate", "cert_file", filepath.Join(cfg.StateDir, tlsconf.AutoCertFile), "fingerprint", fp, "client_certificates", clientCAs != nil)
	}
	src := certSource(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil })
	return &src, clientCAs, fp, nil
}

// AutoCert loads, or makes on first use, the automatic certificate in the
// config's state directory.
func AutoCert(cfg *config.Server) (tls.Certificate, bool, error) {
	cert, created, err := tlsconf.LoadOrCreateAuto(cfg.StateDir, []string{cfg.AdvertisedHost()})
	if err != nil {
		return tls.Certificate{}, false, fmt.Errorf("%s: TLS certificate in state_dir %s: %w", cfg.File, cfg.StateDir, err)
	}
	return cert, created, nil
}
