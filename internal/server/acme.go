package server

// Automatic certificates for https tunnels terminated at tunneld: with
// [web] acme_email set, the names of such tunnels get certificates from
// an ACME CA (golang.org/x/crypto/acme/autocert), which checks control of
// a name by its tls-alpn-01 challenge on the shared HTTPS port: the
// front routes the challenge's ClientHello like any other to a tunnel
// terminated here, and the certificate source answers it. Only names a
// session holds for such a tunnel are asked for, so a visitor cannot
// make tunneld order certificates for names of its choosing.

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"path/filepath"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/tlsconf"
)

// acmeTLS is the TLS config of terminated https tunnels with automatic
// certificates.
func (s *Server) acmeTLS(cfg *config.Server) (*tls.Config, error) {
	w := cfg.Web
	// No kept-alive connections: the CA is asked rarely, and an idle
	// connection would be a goroutine outliving the server.
	tr := &http.Transport{DisableKeepAlives: true, Proxy: http.ProxyFromEnvironment,
		TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12}}
	if w.ACMECAFile != "" {
		pool, err := tlsconf.LoadCAs(w.ACMECAFile)
		if err != nil {
			return nil, fmt.Errorf("web.acme_ca_file: %w", err)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	hc := &http.Client{Timeout: time.Minute, Transport: tr}
	m := &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		Email:      w.ACMEEmail,
		HostPolicy: s.acmeHostPolicy,
		Client:     &acme.Client{DirectoryURL: w.ACMEDirectory, HTTPClient: hc, UserAgent: "tunneld"},
	}
	if cfg.StateDir != "" {
		m.Cache = autocert.DirCache(filepath.Join(cfg.StateDir, "acme"))
	} else {
		s.log.Warn("[web] acme_email without state_dir: certificates are ordered again at every start (and CAs limit how often)")
	}
	return &tls.Config{GetCertificate: m.GetCertificate, MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1", acme.ALPNProto}}, nil
}

// acmeHostPolicy allows certificates for the names https tunnels
// terminated here hold now.
func (s *Server) acmeHostPolicy(_ context.Context, host string) error {
	h, err := config.NormalizeHost(host)
	if err != nil {
		return err
	}
	if rt, _ := s.tlsRoutes.lookup(h, ""); rt != nil && rt.pl.web.opts.Terminate {
		return nil
	}
	return fmt.Errorf("acme: no https tunnel terminated here serves %s", h)
}
