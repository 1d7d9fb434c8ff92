package server

// Prometheus metrics. Nothing on the data path touches them: per-tunnel
// connections and bytes are read from the tallies when scraped (a web
// tunnel's requests from one atomic add per request), and the counters
// below move at events that are rare next to the data (a handshake, a
// session's end, a monitor's RTT sample every few seconds, a visitor the
// shared ports turn away).
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

// Why a shared port answered a visitor itself (a page, a TLS alert, or a
// close) instead of passing the connection or request to a tunnel.
const (
	WebHeaderTooLarge = "header_too_large"    // 431
	WebBadRequest     = "bad_request"         // 400: not a readable request
	WebNoHost         = "no_host"             // 400
	WebNoRequest      = "no_request"          // closed before a request
	WebHeaderTimeout  = "header_timeout"      // a request's headers still incomplete at header_timeout
	WebUnknownHost    = "unknown_host"        // 404
	WebOffline        = "offline"             // 502: the tunnel's client is gone
	WebDraining       = "draining"            // 503, or unrecognized_name for https
	WebAtLimit        = "at_limit"            // 503: the tunnel's connection limit
	WebUnauthorized   = "unauthorized"        // 401: basic auth
	WebUnreachable    = "service_unreachable" // 502: the client could not reach its service
	WebNotTLS         = "not_tls"             // https port: no ClientHello (not TLS, cut short, too large or slow)
	WebUnknownName    = "unknown_name"        // https port: no server name, or one no tunnel has
	WebTLSHandshake   = "tls_handshake"       // https terminated here: the handshake failed
)

var (
	webHTTPReasons = []string{WebHeaderTooLarge, WebBadRequest, WebNoHost, WebNoRequest, WebHeaderTimeout, WebUnknownHost, WebOffline,
		WebDraining, WebAtLimit, WebUnauthorized, WebUnreachable}
	webTLSReasons = []string{WebNotTLS, WebUnknownName, WebTLSHandshake}
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
	web        *prometheus.CounterVec
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
		web: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tunneld_web_refused_total",
			Help: "Visitors of the shared HTTP and HTTPS ports answered by tunneld itself (a page, a TLS alert or a close) rather than a tunnel, by port and reason."},
			[]string{"port", "reason"}),
	}
	// Every label value exists from the start, so a rate over a reason
	// never seen is 0 rather than absent.
	for _, r := range handshakeReasons {
		m.handshakes.WithLabelValues(r)
	}
	for _, k := range append([]string{EndShutdown, EndReplaced, EndKicked, EndGoodbye, EndClientClosed, EndResumeExpired, EndRevoked}, mux.Kinds...) {
		m.ended.WithLabelValues(k)
	}
	for _, r := range webHTTPReasons {
		m.web.WithLabelValues("http", r)
		m.web.WithLabelValues("https", r)
	}
	for _, r := range webTLSReasons {
		m.web.WithLabelValues("https", r)
	}
	m.reg.MustRegister(m.handshakes, m.ended, m.resumed, m.rtt, m.web, &serverCollector{s: s},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *serverMetrics) handshakeFailed(reason string) { m.handshakes.WithLabelValues(reason).Inc() }
func (m *serverMetrics) sessionEnded(kind string)      { m.ended.WithLabelValues(kind).Inc() }

// webRefused counts a visitor of shared port ("http" or "https") that
// tunneld answered itself, and why.
func (m *serverMetrics) webRefused(port, reason string) { m.web.WithLabelValues(port, reason).Inc() }

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
	descRequests = prometheus.NewDesc("tunneld_http_requests_total",
		"HTTP requests passed to the service, for tunnels whose requests tunneld reads (http, and https terminated here).", []string{"client", "tunnel"}, nil)
)

func (c *serverCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSessions, descTunnels, descActive, descConns, descBytes, descRefused, descDial, descRequests} {
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
		if st.web.Load() {
			ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(st.requests.Load()), st.client, st.name)
		}
	}
}
