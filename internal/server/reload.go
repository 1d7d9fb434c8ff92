package server

// Reload: a new config applied to a running tunneld without dropping
// what did not change. Limits, allowed ports, the token or client list,
// the TLS certificate and client CAs, public keepalive, public_host and
// the resume settings apply at once (to new handshakes, registrations and
// connections; limits and allowed ports to live sessions too). A session
// whose credentials no longer hold is ended with a reason its client
// prints. What only a restart can change (the listening socket, TLS on
// or off, the session's transport settings) keeps its running value, and
// the reload says so.

import (
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/tunnel-dev/tunnel/internal/config"
)

// ReloadResult says what a reload did.
type ReloadResult struct {
	// Changed lists the keys (top-level tables and keys of tunneld.toml)
	// that changed and were applied.
	Changed []string `json:"changed"`
	// NeedRestart lists the keys that changed but keep their running
	// values until tunneld restarts.
	NeedRestart []string `json:"need_restart,omitempty"`
	// Revoked lists the clients whose sessions were ended because their
	// credentials no longer hold.
	Revoked []string `json:"revoked,omitempty"`
	// Drained lists the tunnels ("client/tunnel") whose port is no longer
	// allowed: they take no new connections (see Drain).
	Drained []string `json:"drained,omitempty"`
}

// keepRunning copies what cfg may not change from old into cfg, and
// returns the keys that differed.
func keepRunning(old, cfg *config.Server) []string {
	var kept []string
	keep := func(key string, differs bool, restore func()) {
		if differs {
			kept = append(kept, key)
			restore()
		}
	}
	keep("listen", old.Listen != cfg.Listen, func() { cfg.Listen = old.Listen })
	keep("bind_addr", old.BindAddr != cfg.BindAddr, func() { cfg.BindAddr = old.BindAddr })
	keep("state_dir", old.StateDir != cfg.StateDir, func() { cfg.StateDir = old.StateDir })
	keep("handshake_timeout", old.HandshakeTimeout != cfg.HandshakeTimeout, func() { cfg.HandshakeTimeout = old.HandshakeTimeout })
	keep("port_lease", old.PortLease != cfg.PortLease, func() { cfg.PortLease = old.PortLease })
	keep("window", old.Window != cfg.Window, func() { cfg.Window = old.Window })
	keep("admin", old.Admin != cfg.Admin, func() { cfg.Admin = old.Admin })
	keep("keepalive.session", old.KeepAlive.Session != cfg.KeepAlive.Session, func() { cfg.KeepAlive.Session = old.KeepAlive.Session })
	keep("log.format", old.Log.Format != cfg.Log.Format, func() { cfg.Log.Format = old.Log.Format })
	keep("web (http_addr, https_addr, cert_file, key_file)", old.Web.HTTPAddr != cfg.Web.HTTPAddr || old.Web.HTTPSAddr != cfg.Web.HTTPSAddr ||
		old.Web.CertFile != cfg.Web.CertFile || old.Web.KeyFile != cfg.Web.KeyFile, func() {
		cfg.Web.HTTPAddr, cfg.Web.HTTPSAddr, cfg.Web.CertFile, cfg.Web.KeyFile = old.Web.HTTPAddr, old.Web.HTTPSAddr, old.Web.CertFile, old.Web.KeyFile
	})
	keep("tls", old.TLS.Enabled() != cfg.TLS.Enabled() || (old.TLS.ClientCAFile == "") != (cfg.TLS.ClientCAFile == ""),
		func() { cfg.TLS = old.TLS })
	return kept
}

// changedKeys lists the top-level keys (and log.level) whose values
// differ between old and cfg.
func changedKeys(old, cfg *config.Server) []string {
	var out []string
	ov, nv := reflect.ValueOf(old).Elem(), reflect.ValueOf(cfg).Elem()
	for i := 0; i < ov.NumField(); i++ {
		tag, _, _ := strings.Cut(ov.Type().Field(i).Tag.Get("toml"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		if !reflect.DeepEqual(ov.Field(i).Interface(), nv.Field(i).Interface()) {
			out = append(out, tag)
		}
	}
	return out
}

// Reload applies cfg, read from the file the server runs with and
// validated. A config that cannot apply (a certificate that does not
// load) is refused whole: nothing changes.
func (s *Server) Reload(cfg *config.Server) (*ReloadResult, error) {
	old := s.config()
	res := &ReloadResult{NeedRestart: keepRunning(old, cfg)}
	if cfg.Token == "" && len(cfg.Clients) == 0 {
		// A generated token lives as long as the process.
		cfg.Token = old.Token
	}
	certs, cas, _, err := serverTLS(cfg, s.log)
	if err != nil {
		return nil, err
	}
	res.Changed = changedKeys(old, cfg)

	s.regMu.Lock()
	s.cfg.Store(cfg)
	if certs != nil {
		s.certs.Store(certs)
	}
	s.clientCAs.Store(cas)
	s.gate.setLimits(cfg.HandshakeLimit, cfg.HandshakeLimitPerAddress, cfg.FailedHandshakesPerMinute)
	s.frontGate.setLimits(cfg.HandshakeLimit, cfg.HandshakeLimitPerAddress, frontFailuresPerMinute)
	s.regMu.Unlock()

	for _, ss := range s.allSessions() {
		id, err := s.reauthorize(cfg, cas, ss.lim())
		if err == nil && id.name != ss.client {
			err = &authError{msg: fmt.Sprintf("its credentials now name client %q", id.name)}
		}
		if err != nil {
			var ae *authError
			why := err.Error()
			if errors.As(err, &ae) {
				why = ae.msg
			}
			ss.log.Warn("session ended: its access was removed by a config reload", "why", why)
			ss.shutdown(EndRevoked, "access removed by the server's operator: "+why)
			res.Revoked = append(res.Revoked, ss.client)
			continue
		}
		ss.limp.Store(id)
		for _, pl := range ss.publicListeners() {
			if !s.stillAllowed(id, pl) && !pl.draining.Swap(true) {
				pl.closeListener()
				ss.log.Warn("tunnel draining: its port or names are no longer among those this client may use; open connections carry on",
					"tunnel", pl.name, "public", pl.public, "allow_ports", fmt.Sprint(id.ports))
				res.Drained = append(res.Drained, ss.client+"/"+pl.name)
			}
		}
	}
	args := []any{"config", cfg.File, "changed", strings.Join(res.Changed, ",")}
	if len(res.NeedRestart) > 0 {
		args = append(args, "need_restart", strings.Join(res.NeedRestart, ","))
		s.log.Warn("changes that need a restart keep their running values until then", "keys", strings.Join(res.NeedRestart, ","))
	}
	if len(res.Revoked) > 0 {
		args = append(args, "revoked", strings.Join(res.Revoked, ","))
	}
	s.log.Info("config reloaded", args...)
	return res, nil
}
