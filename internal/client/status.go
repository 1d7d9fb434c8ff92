package client

// What tunnelc's admin endpoint shows: the session, each tunnel with its
// counts (kept per tunnel across sessions), and failed local dials by
// reason.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/tunnel-dev/tunnel/internal/admin"
	"github.com/tunnel-dev/tunnel/internal/proxy"
)

// tunnelStats counts one tunnel across sessions.
type tunnelStats struct {
	proxy.Tally
	mu         sync.Mutex
	dialFailed map[string]uint64 // by dialReason
}

// stats returns the counts of tunnel name, made on first use.
func (c *Client) stats(name string) *tunnelStats {
	c.statsMu.Lock()
	defer c.statsMu.Unlock()
	st := c.tallies[name]
	if st == nil {
		if c.tallies == nil {
			c.tallies = map[string]*tunnelStats{}
		}
		st = &tunnelStats{dialFailed: map[string]uint64{}}
		c.tallies[name] = st
	}
	return st
}

func (st *tunnelStats) noteDialFailed(err error) {
	st.mu.Lock()
	st.dialFailed[dialReason(err)]++
	st.mu.Unlock()
}

func (st *tunnelStats) failures() map[string]uint64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	out := make(map[string]uint64, len(st.dialFailed))
	for k, v := range st.dialFailed {
		out[k] = v
	}
	return out
}

// Dial failure reasons: a bounded set, for metrics labels.
const (
	DialRefused     = "refused"     // nothing listens at the local address
	DialTimeout     = "timeout"     // no answer within dial_timeout
	DialUnreachable = "unreachable" // no route to the host
	DialResolve     = "resolve"     // the host name did not resolve
	DialOther       = "other"
)

// DialReasons lists every reason dialReason gives.
var DialReasons = []string{DialRefused, DialTimeout, DialUnreachable, DialResolve, DialOther}

func dialReason(err error) string {
	var dns *net.DNSError
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return DialRefused
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return DialUnreachable
	case errors.As(err, &dns):
		return DialResolve
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return DialTimeout
	}
	return DialOther
}

// Report is what GET /v1/status answers, and `tunnelc status` shows.
type Report struct {
	Version   string    `json:"version"`
	Started   time.Time `json:"started"`
	Client    string    `json:"client"`
	Server    string    `json:"server"`
	Connected bool      `json:"connected"`
	Session   string    `json:"session,omitempty"`
	// Since is when the current session came up.
	Since *time.Time `json:"since,omitempty"`
	// RTTMillis is the session socket's smoothed round trip, as TCP
	// measures it.
	RTTMillis float64 `json:"rtt_ms"`
	// Sessions counts the sessions since start, resumed ones included;
	// Resumes the resumed ones.
	Sessions int `json:"sessions"`
	Resumes  int `json:"resumes"`
	// LastError is why the last session ended or could not start.
	LastError string         `json:"last_error,omitempty"`
	Tunnels   []TunnelReport `json:"tunnels"`
}

// TunnelReport is one configured tunnel.
type TunnelReport struct {
	Name   string `json:"name"`
	Local  string `json:"local"`
	Public string `json:"public,omitempty"`
	// State is "up", "pending" (the server keeps trying: its port is
	// held) or "down" (no session, or refused).
	State            string            `json:"state"`
	Pending          string            `json:"pending,omitempty"`
	Connections      uint64            `json:"connections"`
	ConnectionsTotal uint64            `json:"connections_total"`
	BytesIn          uint64            `json:"bytes_in"`  // from the public, to the local service
	BytesOut         uint64            `json:"bytes_out"` // from the local service, to the public
	DialFailed       map[string]uint64 `json:"dial_failed,omitempty"`
}

// Report reads the client's state and counts.
func (c *Client) Report(version string) Report {
	st := c.Status()
	cfg := c.config()
	c.mu.Lock()
	ys, since, lastErr := c.ys, c.since, c.lastErr
	c.mu.Unlock()
	r := Report{Version: version, Started: c.started, Client: cfg.Name, Server: cfg.Server, Connected: st.Connected, Session: st.Session,
		Sessions: st.Sessions, Resumes: st.Resumes, LastError: lastErr, Tunnels: []TunnelReport{}}
	if st.Connected {
		r.Since = &since
		if ys != nil {
			r.RTTMillis = float64(ys.RTT().Microseconds()) / 1000
		}
	}
	for _, name := range cfg.TunnelNames() {
		t := cfg.Tunnels[name]
		tr := TunnelReport{Name: name, Local: t.Local, State: "down"}
		switch {
		case st.Public[name] != "":
			tr.State, tr.Public = "up", st.Public[name]
		case st.Pending[name] != "":
			tr.State, tr.Pending = "pending", st.Pending[name]
		}
		ts := c.stats(name)
		n := ts.Read(nil)
		tr.Connections, tr.ConnectionsTotal, tr.BytesIn, tr.BytesOut = n.Open, n.Total, n.AToB, n.BToA
		if f := ts.failures(); len(f) > 0 {
			tr.DialFailed = f
		}
		r.Tunnels = append(r.Tunnels, tr)
	}
	sort.Slice(r.Tunnels, func(i, j int) bool { return r.Tunnels[i].Name < r.Tunnels[j].Name })
	return r
}

// StatusLine is the live state in a few words, for systemd's STATUS=.
func (c *Client) StatusLine() string {
	st := c.Status()
	cfg := c.config()
	if !st.Connected {
		c.mu.Lock()
		why := c.lastErr
		c.mu.Unlock()
		if why == "" {
			return "connecting to " + cfg.Server
		}
		return fmt.Sprintf("connecting to %s (last: %s)", cfg.Server, why)
	}
	var conns uint64
	for _, name := range cfg.TunnelNames() {
		conns += c.stats(name).Read(nil).Open
	}
	line := fmt.Sprintf("connected to %s, %s, %s", cfg.Server, count(len(st.Public), "tunnel"), count(int(conns), "connection"))
	if len(st.Pending) > 0 {
		line += fmt.Sprintf(", %d tunnels waiting for their port", len(st.Pending))
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

// ServeAdmin registers the client's admin API on a: status and the
// probes (ready: a session is up).
func (c *Client) ServeAdmin(a *admin.Server, version string) {
	a.Handle("GET /v1/status", func(*http.Request) (any, error) { return c.Report(version), nil })
	c.serveMetrics(a)
	a.Probes(func() error { c.Status(); return nil }, func() error {
		if !c.Status().Connected {
			c.mu.Lock()
			why := c.lastErr
			c.mu.Unlock()
			if why == "" {
				why = "connecting"
			}
			return errors.New("no session to the server: " + why)
		}
		return nil
	})
}
