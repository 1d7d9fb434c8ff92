package server

import (
	"math/rand/v2"
	"time"

	"github.com/tunnel-dev/tunnel/internal/protocol"
)

// A tunnel refused for a reason that can pass (its port is held by another
// client or another program, a bind failed) is not given up: the session
// keeps it pending and tries again, at once when a session of ours frees a
// port and otherwise with backoff, for as long as the session lives. The
// client is told with a TypeTunnel message when it comes up.

const (
	retryMin = 250 * time.Millisecond
	retryMax = 5 * time.Second
)

// pendingTunnel is one tunnel waiting for its port. Its fields are guarded
// by the session's mu; attempts run under the server's regMu.
type pendingTunnel struct {
	req     protocol.TunnelRequest
	code    string // why the last attempt failed
	err     string
	attempt int
	since   time.Time
	timer   *time.Timer // the next attempt; nil until startPending
}

// transient reports whether a refusal with code can pass by itself.
func transient(code string) bool {
	return code == protocol.CodePortInUse || code == protocol.CodeBindFailed || code == protocol.CodeHostInUse
}

// addPending records r as pending unless the session is closed. The caller
// holds regMu (registration).
func (ss *session) addPending(r protocol.TunnelRequest, code, err string) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closed {
		return false
	}
	if ss.pending == nil {
		ss.pending = map[string]*pendingTunnel{}
	}
	ss.pending[r.Name] = &pendingTunnel{req: r, code: code, err: err, since: time.Now()}
	return true
}

// startPending arms the first attempt of every pending tunnel not yet
// armed; it runs once the client has its welcome (or the result of a
// tunnel it added), so a TypeTunnel never overtakes it.
func (ss *session) startPending() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closed {
		return
	}
	for name, p := range ss.pending {
		if p.timer == nil {
			p.timer = time.AfterFunc(backoff(0), func() { ss.retry(name) })
		}
	}
}

// portsFreed makes every pending tunnel that waits for one of ports try
// again now, and the ones that take any port (remote_port = 0, whose
// range was full) too.
func (ss *session) portsFreed(ports []int) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closed {
		return
	}
	for _, p := range ss.pending {
		if p.timer == nil {
			continue // not started; its first attempt comes soon anyway
		}
		for _, port := range ports {
			if p.req.RemotePort == port || p.req.RemotePort == 0 {
				p.timer.Reset(0)
				break
			}
		}
	}
}

// enter counts a running attempt as a part of the session, unless the
// session is closed: no attempt outlives its session.
func (ss *session) enter() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return !ss.closed && ss.parts.enter()
}

// retry makes one attempt to bind a pending tunnel.
func (ss *session) retry(name string) {
	if !ss.enter() {
		return
	}
	defer ss.parts.leave()
	public, ok := ss.attempt(name)
	if !ok {
		return
	}
	// Told outside regMu: a client slow to read must not hold every
	// other registration for the write's deadline.
	if err := ss.send(protocol.Control{Type: protocol.TypeTunnel,
		Tunnel: &protocol.TunnelResult{Name: name, OK: true, Public: public}}); err != nil {
		ss.log.Debug("tunnel up, but the client was not told", "tunnel", name, "err", err)
	}
}

// attempt binds the pending tunnel name once, under regMu. ok reports that
// it came up, with its public address.
func (ss *session) attempt(name string) (public string, ok bool) {
	s := ss.srv
	s.regMu.Lock()
	defer s.regMu.Unlock()

	ss.mu.Lock()
	p := ss.pending[name]
	ss.mu.Unlock()
	if p == nil {
		return "", false
	}
	pl, code, err := s.bind(ss, p.req)
	if err == nil && !ss.addListenerAndServe(pl, name) {
		pl.close()
		s.freePort(ss, pl.port)
		return "", false // the session closed meanwhile
	}
	if err != nil {
		ss.mu.Lock()
		defer ss.mu.Unlock()
		if ss.closed {
			return "", false
		}
		p.attempt++
		log := ss.log.With("tunnel", name, "code", code, "err", err, "attempt", p.attempt)
		switch {
		case !transient(code):
			// The cause changed into one that does not pass (the
			// server's allowed ports, say): stop and say so.
			delete(ss.pending, name)
			log.Warn("tunnel refused; no more retries")
			return "", false
		case code != p.code || err.Error() != p.err:
			log.Info("tunnel still refused; retrying")
		default:
			// Each retry at debug: a port held for hours must not flood
			// the log; the first refusal was a warning.
			log.Debug("tunnel still refused; retrying")
		}
		p.code, p.err = code, err.Error()
		p.timer.Reset(backoff(p.attempt))
		return "", false
	}
	ss.log.Info("tunnel up", "tunnel", name, "public", pl.public,
		"after", time.Since(p.since).Round(time.Millisecond), "attempts", p.attempt+1)
	return pl.public, true
}

// addListenerAndServe records pl as the listener of the pending tunnel
// name and starts its accept loop, unless the session is closed.
func (ss *session) addListenerAndServe(pl *publicListener, name string) bool {
	ss.mu.Lock()
	if ss.closed {
		ss.mu.Unlock()
		return false
	}
	ss.listeners = append(ss.listeners, pl)
	if p := ss.pending[name]; p != nil {
		p.timer.Stop()
		delete(ss.pending, name)
	}
	// Under mu with closed false: end has not snapshotted the listeners
	// yet, so it will close this one, and the parts are not waited for
	// yet (that follows end), so its accept loop starts.
	ss.serveListener(pl)
	ss.mu.Unlock()
	return true
}

// freePort forgets port if ss holds it.
func (s *Server) freePort(ss *session, port int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ports[port] == ss {
		delete(s.ports, port)
	}
}

// pendingReasons lists the tunnels of the session that wait for their
// port, with the reason.
func (ss *session) pendingReasons() map[string]string {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out := make(map[string]string, len(ss.pending))
	for name, p := range ss.pending {
		out[name] = p.err
	}
	return out
}

// backoff is the wait before attempt n+1: exponential from retryMin to
// retryMax, with jitter so that sessions waiting for one port do not
// retry in step.
func backoff(n int) time.Duration {
	d := retryMax
	if n < 8 {
		d = min(retryMax, retryMin<<n)
	}
	return d/2 + rand.N(d/2+1)
}
