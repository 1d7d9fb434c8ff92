package server

// Tunnels added and removed during a session: a client whose config was
// reloaded asks for new tunnels and gives up old ones over its control
// stream, and the tunnels that did not change carry on untouched.

import (
	"errors"
	"fmt"
	"time"

	"github.com/tunnel-dev/tunnel/internal/protocol"
	"github.com/tunnel-dev/tunnel/internal/proxy"
)

// errTunnelRemoved ends the connections of a removed tunnel that
// outlived its drain.
var errTunnelRemoved = errors.New("tunnel removed by its client")

// maxDrain bounds the drain a client may ask for.
const maxDrain = time.Hour

// addTunnel registers one more tunnel of the session and tells the
// client the result.
func (ss *session) addTunnel(r protocol.TunnelRequest) {
	s := ss.srv
	s.regMu.Lock()
	seen := map[string]bool{}
	for _, pl := range ss.publicListeners() {
		seen[pl.name] = true
	}
	for name := range ss.pendingReasons() {
		seen[name] = true
	}
	res := s.registerTunnels(ss, []protocol.TunnelRequest{r}, seen, nil)[0]
	s.regMu.Unlock()
	if res.OK {
		ss.serveListener(ss.listener(res.Name))
	}
	if res.OK || res.Pending {
		ss.log.Info("tunnel added by the client", "tunnel", res.Name, "public", res.Public, "pending", res.Pending)
	}
	if err := ss.send(protocol.Control{Type: protocol.TypeTunnel, Tunnel: &res}); err != nil {
		ss.log.Debug("tunnel result not sent", "tunnel", res.Name, "err", err)
	}
	if res.Pending {
		// After the result: the tunnel coming up must not overtake it.
		ss.startPending()
	}
}

// listener is the session's listener of tunnel name, or nil.
func (ss *session) listener(name string) *publicListener {
	for _, pl := range ss.publicListeners() {
		if pl.name == name {
			return pl
		}
	}
	return nil
}

// removeTunnel gives up tunnel name: its listener closes and its port is
// free at once; its open connections may go on for drain, and are reset
// after it.
func (ss *session) removeTunnel(name string, drain time.Duration) {
	drain = min(max(drain, 0), maxDrain)
	ss.mu.Lock()
	if p := ss.pending[name]; p != nil {
		if p.timer != nil {
			p.timer.Stop()
		}
		delete(ss.pending, name)
		ss.mu.Unlock()
		ss.log.Info("pending tunnel removed by the client", "tunnel", name)
		return
	}
	var pl *publicListener
	for i, l := range ss.listeners {
		if l.name == name {
			pl = l
			ss.listeners = append(ss.listeners[:i:i], ss.listeners[i+1:]...)
			break
		}
	}
	ss.mu.Unlock()
	if pl == nil {
		ss.log.Debug("client removed a tunnel it does not have", "tunnel", clip(name))
		return
	}
	pl.close()
	s := ss.srv
	if pl.web == nil {
		s.mu.Lock()
		if s.ports[pl.port] == ss {
			delete(s.ports, pl.port)
		}
		s.mu.Unlock()
		s.freed(ss, []int{pl.port})
	}
	open := pl.conns.Load()
	ss.log.Info("tunnel removed by the client", "tunnel", name, "public", pl.public, "open_connections", open, "drain", drain)
	if open == 0 {
		pl.st.Release()
		return
	}
	ok := ss.parts.Go(func() {
		defer pl.st.Release()
		t := time.NewTimer(drain)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ss.ctx.Done():
			return
		}
		n := 0
		pl.st.Each(func(l *proxy.Live) {
			if l.Owner == ss && l.Abort(fmt.Errorf("%w after a drain of %s", errTunnelRemoved, drain)) {
				n++
			}
		})
		if n > 0 {
			ss.log.Info("removed tunnel's drain over: its open connections reset", "tunnel", name, "reset", n)
		}
	})
	if !ok {
		pl.st.Release()
	}
}
