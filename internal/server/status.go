package server

// What the admin endpoint shows and does: every session with its tunnels
// and their counts, and the operator's actions on them (kick a session,
// close one connection, drain a tunnel). Counts are kept per client and
// tunnel across sessions, so a tunnel's totals survive its client's
// reconnects; bytes of a connection still open are read from its join as
// it runs.

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tunnel-dev/tunnel/internal/admin"
	"github.com/tunnel-dev/tunnel/internal/proxy"
)

// errClosedByOperator ends a connection the admin endpoint closed.
var errClosedByOperator = errors.New("closed by the operator")

// tunnelStats counts one tunnel of one client, across its sessions.
type tunnelStats struct {
	client, name string

	mu   sync.Mutex
	live map[uint64]*liveConn
	// Of the connections that ended: their bytes, and how many there
	// were (with the live ones: every connection the tunnel carried).
	ended          uint64
	endIn, endOut  uint64
	refused        uint64    // at a connection limit or while away past resume_hold
	dialFailed     uint64    // the client could not reach the local service
	idleSince      time.Time // when the last listener and connection went; zero while in use
	listenersInUse int
}

// liveConn is one open public connection.
type liveConn struct {
	id    uint64
	ss    *session
	peer  string
	since time.Time
	pair  atomic.Pointer[proxy.Pair] // set once the join runs
}

func (lc *liveConn) moved() proxy.Stats {
	if p := lc.pair.Load(); p != nil {
		return p.Moved()
	}
	return proxy.Stats{}
}

// statsFor returns the counts of client's tunnel, made on first use, and
// counts a listener as using them (release with unuse).
func (s *Server) statsFor(client, name string) *tunnelStats {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	key := client + "\x00" + name
	st := s.stats[key]
	if st == nil {
		st = &tunnelStats{client: client, name: name, live: map[uint64]*liveConn{}}
		s.stats[key] = st
	}
	st.mu.Lock()
	st.listenersInUse++
	st.idleSince = time.Time{}
	st.mu.Unlock()
	return st
}

// unuse is a listener letting go of st.
func (st *tunnelStats) unuse() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.listenersInUse--
	if st.listenersInUse == 0 && len(st.live) == 0 {
		st.idleSince = time.Now()
	}
}

// statsIdleFor is how long a tunnel's counts outlive its last listener
// and connection: a client that reconnects within it keeps its totals
// (and its metrics series); one that is gone for longer does not cost
// the server memory for ever.
const statsIdleFor = time.Hour

// sweepStats forgets the counts of tunnels unused for statsIdleFor.
func (s *Server) sweepStats(now time.Time) {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	for key, st := range s.stats {
		st.mu.Lock()
		idle := !st.idleSince.IsZero() && now.Sub(st.idleSince) > statsIdleFor
		st.mu.Unlock()
		if idle {
			delete(s.stats, key)
		}
	}
}

// open records a public connection as live.
func (st *tunnelStats) open(lc *liveConn) {
	st.mu.Lock()
	st.live[lc.id] = lc
	st.idleSince = time.Time{}
	st.mu.Unlock()
}

// close moves a connection's final counts from live to ended.
func (st *tunnelStats) close(lc *liveConn, final proxy.Stats) {
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.live, lc.id)
	st.ended++
	st.endIn += uint64(final.AToB)
	st.endOut += uint64(final.BToA)
	if st.listenersInUse == 0 && len(st.live) == 0 {
		st.idleSince = time.Now()
	}
}

func (st *tunnelStats) noteRefused()    { st.mu.Lock(); st.refused++; st.mu.Unlock() }
func (st *tunnelStats) noteDialFailed() { st.mu.Lock(); st.dialFailed++; st.mu.Unlock() }

// tunnelCounts is a consistent reading of a tunnelStats.
type tunnelCounts struct {
	active, total       uint64
	in, out             uint64
	refused, dialFailed uint64
}

// counts reads st; with ss set, active counts only that session's.
func (st *tunnelStats) counts(ss *session) tunnelCounts {
	st.mu.Lock()
	defer st.mu.Unlock()
	c := tunnelCounts{total: st.ended, in: st.endIn, out: st.endOut, refused: st.refused, dialFailed: st.dialFailed}
	for _, lc := range st.live {
		m := lc.moved()
		c.total++
		c.in += uint64(m.AToB)
		c.out += uint64(m.BToA)
		if ss == nil || lc.ss == ss {
			c.active++
		}
	}
	return c
}

// Status is what GET /v1/status answers, and `tunneld status` shows.
type Status struct {
	Version  string          `json:"version"`
	Started  time.Time       `json:"started"`
	Listen   string          `json:"listen"`
	Sessions []SessionStatus `json:"sessions"`
}

// SessionStatus is one client's session.
type SessionStatus struct {
	ID     string    `json:"id"`
	Client string    `json:"client"`
	Remote string    `json:"remote"` // the client's address; its last one while away
	Since  time.Time `json:"since"`
	// State is "up", or "away" while a session lost to the network
	// waits for its client to resume it.
	State string `json:"state"`
	// RTTMillis is the session socket's smoothed round trip, as TCP
	// measures it.
	RTTMillis   float64        `json:"rtt_ms"`
	Connections uint64         `json:"connections"`
	BytesIn     uint64         `json:"bytes_in"`  // from the public, to the client's services
	BytesOut    uint64         `json:"bytes_out"` // from the services, to the public
	Tunnels     []TunnelStatus `json:"tunnels"`
	Resume      *ResumeStatus  `json:"resume,omitempty"`
}

// TunnelStatus is one tunnel of a session. Connections counts the open
// ones; the totals and bytes are the tunnel's since tunneld started (or
// since it was unused for an hour), across its client's sessions.
type TunnelStatus struct {
	Name             string `json:"name"`
	Public           string `json:"public,omitempty"`
	State            string `json:"state"` // "up", "draining", "pending"
	Pending          string `json:"pending,omitempty"`
	Connections      uint64 `json:"connections"`
	ConnectionsTotal uint64 `json:"connections_total"`
	BytesIn          uint64 `json:"bytes_in"`
	BytesOut         uint64 `json:"bytes_out"`
	Refused          uint64 `json:"refused"`
	DialFailed       uint64 `json:"dial_failed"`
}

// ResumeStatus is a resumable session's state.
type ResumeStatus struct {
	Window    string     `json:"window"`
	AwaySince *time.Time `json:"away_since,omitempty"`
	Held      int        `json:"held,omitempty"` // connections kept for the client while away
}

// allSessions lists the live sessions, by client name.
func (s *Server) allSessions() []*session {
	s.mu.Lock()
	all := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		all = append(all, ss)
	}
	s.mu.Unlock()
	sort.Slice(all, func(i, j int) bool { return all[i].client < all[j].client })
	return all
}

// Status reports every session, tunnel and count.
func (s *Server) Status(version string) Status {
	st := Status{Version: version, Started: s.started, Listen: s.ln.Addr().String(), Sessions: []SessionStatus{}}
	for _, ss := range s.allSessions() {
		st.Sessions = append(st.Sessions, ss.status())
	}
	return st
}

func (ss *session) status() SessionStatus {
	ss.mu.Lock()
	car, remote := ss.car, ss.lastRemote
	ss.mu.Unlock()
	out := SessionStatus{ID: ss.id, Client: ss.client, Remote: remote, Since: ss.since, State: "up",
		BytesIn: ss.endIn.Load(), BytesOut: ss.endOut.Load(), Tunnels: []TunnelStatus{}}
	if car != nil {
		out.RTTMillis = float64(car.ys.RTT().Microseconds()) / 1000
	} else {
		out.State = "away"
	}
	if r := ss.res; r != nil {
		out.Resume = r.status()
	}
	for _, pl := range ss.publicListeners() {
		c := pl.st.counts(ss)
		state := "up"
		if pl.draining.Load() {
			state = "draining"
		}
		out.Tunnels = append(out.Tunnels, TunnelStatus{Name: pl.name, Public: ss.srv.publicAddr(pl.port), State: state,
			Connections: c.active, ConnectionsTotal: c.total, BytesIn: c.in, BytesOut: c.out, Refused: c.refused, DialFailed: c.dialFailed})
		out.Connections += c.active
		for _, m := range pl.st.liveOf(ss) {
			out.BytesIn += uint64(m.AToB)
			out.BytesOut += uint64(m.BToA)
		}
	}
	for name, why := range ss.pendingReasons() {
		out.Tunnels = append(out.Tunnels, TunnelStatus{Name: name, State: "pending", Pending: why})
	}
	sort.Slice(out.Tunnels, func(i, j int) bool { return out.Tunnels[i].Name < out.Tunnels[j].Name })
	return out
}

// liveOf is what ss's open connections of the tunnel have moved.
func (st *tunnelStats) liveOf(ss *session) []proxy.Stats {
	st.mu.Lock()
	defer st.mu.Unlock()
	var out []proxy.Stats
	for _, lc := range st.live {
		if lc.ss == ss {
			out = append(out, lc.moved())
		}
	}
	return out
}

func (r *resumable) status() *ResumeStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := &ResumeStatus{Window: r.window.String()}
	if r.away != nil {
		since := r.since
		out.AwaySince = &since
		out.Held = len(r.conns)
	}
	return out
}

// findSession is the session of client name, or with id name.
func (s *Server) findSession(name string) (*session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss := s.sessions[name]; ss != nil {
		return ss, nil
	}
	for _, ss := range s.sessions {
		if ss.id == name {
			return ss, nil
		}
	}
	return nil, admin.NotFound("no session of a client named %q, nor with that id", name)
}

// Kick ends a client's session, telling the client why; the client
// reconnects (unless its access was removed).
func (s *Server) Kick(name, reason string) (*SessionStatus, error) {
	ss, err := s.findSession(name)
	if err != nil {
		return nil, err
	}
	if reason == "" {
		reason = "no reason given"
	}
	st := ss.status()
	ss.log.Warn("session kicked by the operator", "reason", reason)
	ss.shutdown("kicked by the server's operator: " + clip(reason))
	return &st, nil
}

// CloseConn resets one public connection, by its id (the conn of the
// logs).
func (s *Server) CloseConn(id uint64) error {
	s.statsMu.Lock()
	all := make([]*tunnelStats, 0, len(s.stats))
	for _, st := range s.stats {
		all = append(all, st)
	}
	s.statsMu.Unlock()
	for _, st := range all {
		st.mu.Lock()
		lc := st.live[id]
		st.mu.Unlock()
		if lc == nil {
			continue
		}
		p := lc.pair.Load()
		if p == nil {
			return &admin.Error{Status: http.StatusConflict, Msg: fmt.Sprintf("connection %d is still being set up; try again", id)}
		}
		p.Abort(errClosedByOperator)
		return nil
	}
	return admin.NotFound("no open connection with id %d", id)
}

// Drain stops a tunnel taking new connections and lets its open ones
// finish: its public listener closes (new connections are refused by
// the kernel), the port stays the client's until its session ends.
func (s *Server) Drain(name, tunnel string) (*TunnelStatus, error) {
	ss, err := s.findSession(name)
	if err != nil {
		return nil, err
	}
	for _, pl := range ss.publicListeners() {
		if pl.name != tunnel {
			continue
		}
		if !pl.draining.Swap(true) {
			pl.ln.Close()
			ss.log.Warn("tunnel draining: new connections refused, open ones carry on", "tunnel", tunnel)
		}
		c := pl.st.counts(ss)
		return &TunnelStatus{Name: pl.name, Public: s.publicAddr(pl.port), State: "draining", Connections: c.active,
			ConnectionsTotal: c.total, BytesIn: c.in, BytesOut: c.out}, nil
	}
	return nil, admin.NotFound("client %q has no tunnel %q up", ss.client, tunnel)
}

// ConnStatus is one open public connection.
type ConnStatus struct {
	ID       uint64    `json:"id"`
	Client   string    `json:"client"`
	Tunnel   string    `json:"tunnel"`
	Peer     string    `json:"peer"`
	Since    time.Time `json:"since"`
	BytesIn  uint64    `json:"bytes_in"`
	BytesOut uint64    `json:"bytes_out"`
}

// Connections lists the open public connections, of one client (and one
// tunnel of it) when those are given, oldest first.
func (s *Server) Connections(client, tunnel string) []ConnStatus {
	s.statsMu.Lock()
	all := make([]*tunnelStats, 0, len(s.stats))
	for _, st := range s.stats {
		if (client == "" || st.client == client) && (tunnel == "" || st.name == tunnel) {
			all = append(all, st)
		}
	}
	s.statsMu.Unlock()
	out := []ConnStatus{}
	for _, st := range all {
		st.mu.Lock()
		for _, lc := range st.live {
			m := lc.moved()
			out = append(out, ConnStatus{ID: lc.id, Client: st.client, Tunnel: st.name, Peer: lc.peer, Since: lc.since,
				BytesIn: uint64(m.AToB), BytesOut: uint64(m.BToA)})
		}
		st.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// parseConnID reads a connection id from a path.
func parseConnID(s string) (uint64, error) {
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, admin.BadRequest("%q is not a connection id (the conn=N of the logs)", s)
	}
	return id, nil
}

// ServeAdmin registers the server's admin API on a: status, the actions, and
// the probes.
func (s *Server) ServeAdmin(a *admin.Server, version string) {
	a.Handle("GET /v1/status", func(*http.Request) (any, error) { return s.Status(version), nil })
	a.Handle("POST /v1/sessions/{name}/kick", func(r *http.Request) (any, error) {
		var body struct {
			Reason string `json:"reason"`
		}
		if err := admin.Decode(r, &body); err != nil {
			return nil, err
		}
		return s.Kick(r.PathValue("name"), body.Reason)
	})
	a.Handle("GET /v1/connections", func(r *http.Request) (any, error) {
		return s.Connections(r.URL.Query().Get("client"), r.URL.Query().Get("tunnel")), nil
	})
	a.Handle("POST /v1/connections/{id}/close", func(r *http.Request) (any, error) {
		id, err := parseConnID(r.PathValue("id"))
		if err != nil {
			return nil, err
		}
		return map[string]uint64{"closed": id}, s.CloseConn(id)
	})
	a.Handle("POST /v1/sessions/{name}/tunnels/{tunnel}/drain", func(r *http.Request) (any, error) {
		return s.Drain(r.PathValue("name"), r.PathValue("tunnel"))
	})
	a.Probes(func() error { s.Sessions(); return nil }, func() error {
		if s.ln == nil {
			return errors.New("not listening for sessions yet")
		}
		return nil
	})
}
