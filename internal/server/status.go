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
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tunnel-dev/tunnel/internal/admin"
	"github.com/tunnel-dev/tunnel/internal/proxy"
)

// errClosedByOperator ends a connection the admin endpoint closed.
var errClosedByOperator = errors.New("closed by the operator")

// tunnelStats counts one tunnel of one client, across its sessions: its
// connections (a Tally whose holders are the tunnel's listeners) and its
// refusals.
type tunnelStats struct {
	client, name string
	proxy.Tally
	refused    atomic.Uint64 // at a connection limit, or while away past resume_hold
	dialFailed atomic.Uint64 // the client could not reach the local service
	// requests counts the HTTP requests passed to the service, for a
	// tunnel whose requests tunneld reads (web: http, or https
	// terminated here).
	requests atomic.Uint64
	web      atomic.Bool
}

// statsFor returns the counts of client's tunnel, made on first use, and
// holds them for a listener (Release when it is gone).
func (s *Server) statsFor(client, name string) *tunnelStats {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	key := client + "\x00" + name
	st := s.stats[key]
	if st == nil {
		st = &tunnelStats{client: client, name: name}
		s.stats[key] = st
	}
	st.Hold()
	return st
}

// statsIdleFor is how long a tunnel's counts outlive its last listener
// and connection: a client that reconnects within it keeps its totals
// (and its metrics series); one that is gone for longer does not cost
// the server memory for ever.
const statsIdleFor = time.Hour

// sweepStats forgets the counts of tunnels idle for statsIdleFor.
func (s *Server) sweepStats(now time.Time) {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	for key, st := range s.stats {
		if st.IdleFor(now, statsIdleFor) {
			delete(s.stats, key)
		}
	}
}

// allStats lists the tunnels counted, of one client and tunnel when
// those are given.
func (s *Server) allStats(client, tunnel string) []*tunnelStats {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	all := make([]*tunnelStats, 0, len(s.stats))
	for _, st := range s.stats {
		if (client == "" || st.client == client) && (tunnel == "" || st.name == tunnel) {
			all = append(all, st)
		}
	}
	return all
}

// Status is what GET /v1/status answers, and `tunneld status` shows.
type Status struct {
	Version  string          `json:"version"`
	Started  time.Time       `json:"started"`
	Listen   string          `json:"listen"`
	Sessions []SessionStatus `json:"sessions"`
	Bans     []BanStatus     `json:"bans,omitempty"`
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
	// Requests is set for tunnels whose HTTP requests tunneld reads
	// (http, and https terminated here): those passed to the service.
	Requests *uint64 `json:"requests,omitempty"`
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
	st.Bans = s.Bans()
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
		c := pl.st.Read(ss)
		out.Tunnels = append(out.Tunnels, pl.statusOf(c))
		out.Connections += c.Open
		out.BytesIn += c.OwnAToB
		out.BytesOut += c.OwnBToA
	}
	for name, why := range ss.pendingReasons() {
		out.Tunnels = append(out.Tunnels, TunnelStatus{Name: name, State: "pending", Pending: why})
	}
	sort.Slice(out.Tunnels, func(i, j int) bool { return out.Tunnels[i].Name < out.Tunnels[j].Name })
	return out
}

// status is the tunnel as ss's, with its counts.
func (pl *publicListener) status(ss *session) TunnelStatus { return pl.statusOf(pl.st.Read(ss)) }

// statusOf is the tunnel with counts c, read of its tally.
func (pl *publicListener) statusOf(c proxy.Counts) TunnelStatus {
	state := "up"
	if pl.draining.Load() {
		state = "draining"
	}
	ts := TunnelStatus{Name: pl.name, Public: pl.public, State: state, Connections: c.Open, ConnectionsTotal: c.Total,
		BytesIn: c.AToB, BytesOut: c.BToA, Refused: pl.st.refused.Load(), DialFailed: pl.st.dialFailed.Load()}
	if pl.st.web.Load() {
		n := pl.st.requests.Load()
		ts.Requests = &n
	}
	return ts
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

// StatusLine is the live state in a few words, for systemd's STATUS=.
func (s *Server) StatusLine() string {
	sessions, tunnels, away := 0, 0, 0
	var conns int64
	for _, ss := range s.allSessions() {
		sessions++
		if ss.carrier() == nil {
			away++
		}
		tunnels += len(ss.publicListeners())
		conns += ss.conns.Load()
	}
	line := fmt.Sprintf("%s, %s, %s", count(sessions, "session"), count(tunnels, "tunnel"), count(int(conns), "connection"))
	if away > 0 {
		line += fmt.Sprintf(" (%d sessions away, held for a resume)", away)
	}
	return line
}

// count is "1 tunnel", "2 tunnels".
func count(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
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
// reconnects unless its access was removed or ban (> 0) keeps it out for
// that long. A ban needs no session.
func (s *Server) Kick(name, reason string, ban time.Duration) (*SessionStatus, error) {
	if reason == "" {
		reason = "no reason given"
	}
	ss, err := s.findSession(name)
	if ban > 0 {
		client := name
		if ss != nil {
			client = ss.client
		}
		if err := s.Ban(client, ban, reason); err != nil {
			return nil, err
		}
		if ss == nil {
			return &SessionStatus{Client: client}, nil
		}
	}
	if err != nil {
		return nil, err
	}
	st := ss.status()
	ss.log.Warn("session kicked by the operator", "reason", reason)
	ss.shutdown(EndKicked, "kicked by the server's operator: "+clip(reason))
	return &st, nil
}

// CloseConn resets one public connection, by its id (the conn of the
// logs).
func (s *Server) CloseConn(id uint64) error {
	for _, st := range s.allStats("", "") {
		l := st.Find(id)
		if l == nil {
			continue
		}
		if !l.Abort(errClosedByOperator) {
			return &admin.Error{Status: http.StatusConflict, Msg: fmt.Sprintf("connection %d is still being set up; try again", id)}
		}
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
			pl.closeListener()
			ss.log.Warn("tunnel draining: new connections refused, open ones carry on", "tunnel", tunnel)
		}
		st := pl.status(ss)
		return &st, nil
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
	out := []ConnStatus{}
	for _, st := range s.allStats(client, tunnel) {
		st.Each(func(l *proxy.Live) {
			m := l.Moved()
			out = append(out, ConnStatus{ID: l.ID, Client: st.client, Tunnel: st.name, Peer: l.Peer, Since: l.Since,
				BytesIn: uint64(m.AToB), BytesOut: uint64(m.BToA)})
		})
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
			// Ban, a duration ("10m"), keeps the client out that long.
			Ban string `json:"ban"`
		}
		if err := admin.Decode(r, &body); err != nil {
			return nil, err
		}
		var ban time.Duration
		if body.Ban != "" {
			d, err := time.ParseDuration(body.Ban)
			if err != nil || d <= 0 {
				return nil, admin.BadRequest("ban %q is not a duration (e.g. \"10m\")", body.Ban)
			}
			ban = d
		}
		return s.Kick(r.PathValue("name"), body.Reason, ban)
	})
	a.Handle("POST /v1/bans/{name}/lift", func(r *http.Request) (any, error) {
		if !s.Unban(r.PathValue("name")) {
			return nil, admin.NotFound("client %q is not banned", r.PathValue("name"))
		}
		return map[string]string{"lifted": r.PathValue("name")}, nil
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
	a.HandleHTTP("GET /metrics", promhttp.HandlerFor(s.met.reg, promhttp.HandlerOpts{}))
	a.Probes(func() error { s.Sessions(); return nil }, func() error {
		if s.ln == nil {
			return errors.New("not listening for sessions yet")
		}
		return nil
	})
}
