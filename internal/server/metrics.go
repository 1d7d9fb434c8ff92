package server

// Prometheus metrics. Nothing on the data path touches them: per-tunnel
// connections and bytes are read from the tallies when scraped, and the
// counters below move at events that are rare next to the data (a
// handshake, a session's end, a monitor's RTT sample every few seconds).
// Labels are bounded: client and tunnel names (at most max_tunnels per
// client; a tunnel's series go an hour after it was last used), and
// reasons and kinds from fixed sets. No per-connection or per-address
// label.

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tunnel-dev/tunnel/internal/mux"
)

// How a session ended, beside the mux kinds of a lost one.
const (
	EndShutdown      = "shutdown"       // tunneld stopping
	EndReplaced      = "replaced"       // a newer session of the same client took over
	EndKicked        = "kicked"         // the operator
	EndGoodbye       = "client_goodbye" // the client left on purpose
	EndClientClosed  = "client_closed"  // the client closed its control stream
	EndResumeExpired = "resume_expired" // lost, and not resumed within resume_window
	EndRevoked       = "revoked"        // its access was removed by a reload
)

// handshakeReasons are the labels of failed handshakes.
var handshakeReasons = []string{"tls", "no_control_stream", "protocol", "bad_hello", "limited",
	"auth", "version", "bad_request", "resume", "banned", "internal"}

type serverMetrics struct {
	reg        *prometheus.Registry
	handshakes *prometheus.CounterVec
	ended      *prometheus.CounterVec
	resumed    prometheus.Counter
	rtt        prometheus.Histogram
}

// rttBuckets span a loopback round trip to a bad satellite link.
var rttBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}

func newServerMetrics(s *Server) *serverMetrics {
	m := &serverMetrics{
		reg: prometheus.NewRegistry(),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tunneld_handshake_failures_total",
			Help: "Session handshakes refused or failed, by reason (limited: closed at accept by the handshake limits)."}, []string{"reason"}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tunneld_sessions_ended_total",
			Help: "Sessions ended, by cause."}, []string{"cause"}),
		resumed: prometheus.NewCounter(prometheus.CounterOpts{Name: "tunneld_sessions_resumed_total",
			Help: "Sessions lost and resumed by their client within resume_window."}),
		rtt: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tunneld_session_rtt_seconds",
			Help: "Smoothed TCP round trip of session sockets, sampled every few seconds per session.", Buckets: rttBuckets}),
	}
	// Every label value exists from the start, so a rate over a reason
	// never seen is 0 rather than absent.
	for _, r := range handshakeReasons {
		m.handshakes.WithLabelValues(r)
	}
	for _, k := range append([]string{EndShutdown, EndReplaced, EndKicked, EndGoodbye, EndClientClosed, EndResumeExpired, EndRevoked}, mux.Kinds...) {
		m.ended.WithLabelValues(k)
	}
	m.reg.MustRegister(m.handshakes, m.ended, m.resumed, m.rtt, &serverCollector{s: s},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *serverMetrics) handshakeFailed(reason string) { m.handshakes.WithLabelValues(reason).Inc() }
func (m *serverMetrics) sessionEnded(kind string)      { m.ended.WithLabelValues(kind).Inc() }

// Registry is what /metrics serves.
func (s *Server) Registry() *prometheus.Registry { return s.met.reg }

// serverCollector reads sessions and tallies at scrape time.
type serverCollector struct{ s *Server }

var (
	descSessions = prometheus.NewDesc("tunneld_sessions", "Sessions by state (away: lost, held for the client to resume).", []string{"state"}, nil)
	descTunnels  = prometheus.NewDesc("tunneld_tunnels", "Tunnels by state.", []string{"state"}, nil)
	descActive   = prometheus.NewDesc("tunneld_connections_active", "Open public connections.", []string{"client", "tunnel"}, nil)
	descConns    = prometheus.NewDesc("tunneld_connections_total", "Public connections carried.", []string{"client", "tunnel"}, nil)
	descBytes    = prometheus.NewDesc("tunneld_bytes_total", "Bytes carried; in: from the public to the client's service, out: back.",
		[]string{"client", "tunnel", "direction"}, nil)
	descRefused = prometheus.NewDesc("tunneld_connections_refused_total",
		"Public connections refused at a connection limit, or while the client was away past resume_hold.", []string{"client", "tunnel"}, nil)
	descDial = prometheus.NewDesc("tunneld_local_dial_failures_total",
		"Public connections reset because the client could not reach its local service.", []string{"client", "tunnel"}, nil)
)

func (c *serverCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSessions, descTunnels, descActive, descConns, descBytes, descRefused, descDial} {
		ch <- d
	}
}

func (c *serverCollector) Collect(ch chan<- prometheus.Metric) {
	sessions := map[string]int{"up": 0, "away": 0}
	tunnels := map[string]int{"up": 0, "draining": 0, "pending": 0}
	for _, ss := range c.s.allSessions() {
		if ss.carrier() == nil {
			sessions["away"]++
		} else {
			sessions["up"]++
		}
		for _, pl := range ss.publicListeners() {
			if pl.draining.Load() {
				tunnels["draining"]++
			} else {
				tunnels["up"]++
			}
		}
		tunnels["pending"] += len(ss.pendingReasons())
	}
	for state, n := range sessions {
		ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(n), state)
	}
	for state, n := range tunnels {
		ch <- prometheus.MustNewConstMetric(descTunnels, prometheus.GaugeValue, float64(n), state)
	}
	for _, st := range c.s.allStats("", "") {
		n := st.Read(nil)
		ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(n.Open), st.client, st.name)
		ch <- prometheus.MustNewConstMetric(descConns, prometheus.CounterValue, float64(n.Total), st.client, st.name)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(n.AToB), st.client, st.name, "in")
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(n.BToA), st.client, st.name, "out")
		ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(st.refused.Load()), st.client, st.name)
		ch <- prometheus.MustNewConstMetric(descDial, prometheus.CounterValue, float64(st.dialFailed.Load()), st.client, st.name)
	}
}
