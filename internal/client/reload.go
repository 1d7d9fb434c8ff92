package client

// Reload: a new config applied to a running tunnelc. Tunnels added,
// removed or moved to another remote_port are registered and given up
// over the live session, and the tunnels that did not change keep their
// ports and their open connections; a changed local address applies to
// new connections. A change to how the session is made (server, token,
// name, TLS, the session's keepalive, windows, timeouts, resume window)
// needs a new session: it is opened at once and the server hands the
// ports over from the old one as it welcomes the new, so the ports have
// no gap; the old session's connections end.

import (
	"errors"
	"reflect"
	"strings"

	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/protocol"
)

// errReconfigured ends a session a reload replaced, and its connections.
var errReconfigured = errors.New("session replaced to apply a reloaded config")

// EndReconfigured labels such a session's end in the metrics.
const EndReconfigured = "reconfigured"

// ReloadResult says what a reload did.
type ReloadResult struct {
	Added   []string `json:"added,omitempty"`
	Removed []string `json:"removed,omitempty"`
	// Moved lists the tunnels registered again for a new remote_port.
	Moved []string `json:"moved,omitempty"`
	// LocalChanged lists the tunnels whose new connections go to a new
	// local address.
	LocalChanged []string `json:"local_changed,omitempty"`
	// NewSession lists the keys whose change made a new session.
	NewSession []string `json:"new_session,omitempty"`
	// Applied lists the other keys that changed and apply as they are.
	Applied []string `json:"applied,omitempty"`
	// NeedRestart lists the keys that changed but keep their running
	// values until tunnelc restarts.
	NeedRestart []string `json:"need_restart,omitempty"`
}

// sessionKeys are what a session is made with.
var sessionKeys = map[string]bool{"server": true, "token": true, "name": true, "handshake_timeout": true, "resume_window": true,
	"tls": true, "keepalive": true, "window": true}

// Reload applies next, read from the file tunnelc runs with and
// validated. One whose TLS files do not load is refused whole.
func (c *Client) Reload(next *config.Client) (*ReloadResult, error) {
	c.reloadMu.Lock()
	defer c.reloadMu.Unlock()
	old := c.config()
	res := &ReloadResult{}
	if old.Admin != next.Admin {
		res.NeedRestart = append(res.NeedRestart, "admin")
		next.Admin = old.Admin
	}
	if old.Log.Format != next.Log.Format {
		res.NeedRestart = append(res.NeedRestart, "log.format")
		next.Log.Format = old.Log.Format
	}
	ov, nv := reflect.ValueOf(old).Elem(), reflect.ValueOf(next).Elem()
	for i := 0; i < ov.NumField(); i++ {
		key, _, _ := strings.Cut(ov.Type().Field(i).Tag.Get("toml"), ",")
		if key == "" || key == "-" || key == "tunnels" || reflect.DeepEqual(ov.Field(i).Interface(), nv.Field(i).Interface()) {
			continue
		}
		switch {
		case key == "keepalive" && old.KeepAlive.Session == next.KeepAlive.Session:
			res.Applied = append(res.Applied, "keepalive.local")
		case sessionKeys[key]:
			res.NewSession = append(res.NewSession, key)
		default:
			res.Applied = append(res.Applied, key)
		}
	}
	su := &setup{cfg: next, opts: c.options()}
	if len(res.NewSession) > 0 {
		var err error
		if su, err = c.newSetup(next, c.log); err != nil {
			return nil, err
		}
	}
	for _, name := range next.TunnelNames() {
		o, n := old.Tunnels[name], next.Tunnels[name]
		switch {
		case o == nil:
			res.Added = append(res.Added, name)
		case o.RemotePort != n.RemotePort || o.Type != n.Type || !reflect.DeepEqual(webOf(o), webOf(n)):
			res.Moved = append(res.Moved, name)
		case o.Local != n.Local:
			res.LocalChanged = append(res.LocalChanged, name)
		}
	}
	for _, name := range old.TunnelNames() {
		if next.Tunnels[name] == nil {
			res.Removed = append(res.Removed, name)
		}
	}
	c.setup.Store(su)
	c.mu.Lock()
	ss := c.cur
	for _, name := range append(res.Removed, res.Moved...) {
		delete(c.status.Public, name)
		delete(c.status.Pending, name)
	}
	c.mu.Unlock()

	args := []any{"config", next.File}
	for _, f := range []struct {
		key  string
		list []string
	}{{"added", res.Added}, {"removed", res.Removed}, {"moved", res.Moved}, {"local_changed", res.LocalChanged},
		{"new_session", res.NewSession}, {"applied", res.Applied}, {"need_restart", res.NeedRestart}} {
		if len(f.list) > 0 {
			args = append(args, f.key, strings.Join(f.list, ","))
		}
	}
	c.log.Info("config reloaded", args...)
	if len(res.NeedRestart) > 0 {
		c.log.Warn("changes that need a restart keep their running values until then", "keys", strings.Join(res.NeedRestart, ","))
	}
	switch {
	case ss == nil:
		// The next session starts from the new config; a resumed one
		// is reconciled with it (reconcile).
	case len(res.NewSession) > 0:
		ss.replace()
	default:
		ss.retune(next, res)
	}
	return res, nil
}

// retune applies a reload's tunnel changes to the live session: removals
// (and the old registration of a moved tunnel) first, then additions.
func (ss *session) retune(next *config.Client, res *ReloadResult) {
	ss.tmu.Lock()
	for _, name := range res.LocalChanged {
		if ss.tunnels[name] != nil {
			ss.tunnels[name] = next.Tunnels[name]
		}
	}
	ss.tmu.Unlock()
	for _, name := range append(append([]string(nil), res.Removed...), res.Moved...) {
		ss.removeTunnel(name, next)
	}
	for _, name := range append(append([]string(nil), res.Added...), res.Moved...) {
		ss.addTunnel(name, next)
	}
}

// reconcile brings a resumed session, whose tunnels are the ones it had
// before the outage, in line with a config reloaded meanwhile.
func (ss *session) reconcile(have []protocol.TunnelResult) {
	cfg := ss.c.config()
	had := map[string]bool{}
	for _, r := range have {
		had[r.Name] = true
		if cfg.Tunnels[r.Name] == nil {
			ss.removeTunnel(r.Name, cfg)
		}
	}
	for _, name := range cfg.TunnelNames() {
		if !had[name] {
			ss.addTunnel(name, cfg)
		}
	}
}

func (ss *session) addTunnel(name string, cfg *config.Client) {
	t := cfg.Tunnels[name]
	req := ss.c.tunnelRequest(name, t)
	if err := ss.send(protocol.Control{Type: protocol.TypeTunnelAdd, Add: &req}, ss.c.options().HandshakeTimeout); err != nil {
		ss.log.Warn("could not ask for the added tunnel; it comes up with the next session", "tunnel", name, "err", err)
		return
	}
	ss.log.Info("tunnel asked for", "tunnel", name, "remote_port", t.RemotePort, "local", t.Local)
}

func (ss *session) removeTunnel(name string, cfg *config.Client) {
	drain := cfg.DrainTimeout.D()
	ss.tmu.Lock()
	delete(ss.tunnels, name)
	ss.tmu.Unlock()
	err := ss.send(protocol.Control{Type: protocol.TypeTunnelRemove, Remove: &protocol.TunnelRemove{Name: name, DrainMs: drain.Milliseconds()}},
		ss.c.options().HandshakeTimeout)
	if err != nil {
		ss.log.Warn("could not give the removed tunnel up; it goes with this session", "tunnel", name, "err", err)
		return
	}
	ss.log.Info("tunnel removed; its open connections may finish", "tunnel", name, "drain_timeout", drain)
}

// closeHandover closes the session a reload replaced, once its successor
// is welcomed (or could not be made).
func (c *Client) closeHandover() {
	if c.handover != nil {
		c.handover.Close()
		c.handover = nil
	}
}

// webOf is what of a tunnel the server handles its requests by.
func webOf(t *config.Tunnel) []any {
	return []any{t.Subdomain, t.Hostnames, t.Locations, t.HostHeader, t.Forwarded(), t.BasicAuth, t.TLSTermination}
}
