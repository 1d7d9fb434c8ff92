package client

// Prometheus metrics, read at scrape time from the status and the
// tallies; the counters below move at events (a session's start and end,
// a reconnect, an RTT sample), never per byte. Labels: tunnel names from
// the config, reasons and kinds from fixed sets.

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tunnel-dev/tunnel/internal/admin"
	"github.com/tunnel-dev/tunnel/internal/mux"
)

// How a session ended, beside the mux kinds of a lost one.
const (
	EndServerClosed = "server_closed"    // the server said goodbye (a shutdown, a kick, a takeover)
	EndRefused      = "refused"          // the server refused the hello, or every tunnel
	EndUnreachable  = "unreachable"      // no session: the server could not be reached
	EndHandshake    = "handshake_failed" // reached, but no welcome (TLS, a peer that is not tunneld)
	EndShutdown     = "shutdown"         // tunnelc stopping
)

type clientMetrics struct {
	reg        *prometheus.Registry
	reconnects prometheus.Counter
	ended      *prometheus.CounterVec
	rtt        prometheus.Histogram
}

func newClientMetrics(c *Client) *clientMetrics {
	m := &clientMetrics{
		reg: prometheus.NewRegistry(),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: "tunnelc_reconnect_attempts_total",
			Help: "Attempts to establish a session after the first."}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tunnelc_sessions_ended_total",
			Help: "Sessions ended or attempts failed, by cause."}, []string{"cause"}),
		rtt: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tunnelc_session_rtt_seconds",
			Help:    "Smoothed TCP round trip of the session socket, sampled every few seconds.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}),
	}
	for _, k := range append([]string{EndServerClosed, EndRefused, EndUnreachable, EndHandshake, EndShutdown}, mux.Kinds...) {
		m.ended.WithLabelValues(k)
	}
	m.reg.MustRegister(m.reconnects, m.ended, m.rtt, &clientCollector{c: c},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

type clientCollector struct{ c *Client }

var (
	descConnected = prometheus.NewDesc("tunnelc_connected", "1 while a session to the server is up.", nil, nil)
	descSessions  = prometheus.NewDesc("tunnelc_sessions_total", "Sessions established, resumed ones included.", nil, nil)
	descResumes   = prometheus.NewDesc("tunnelc_sessions_resumed_total", "Sessions that resumed a lost one.", nil, nil)
	descUp        = prometheus.NewDesc("tunnelc_tunnel_up", "1 while the tunnel is served on its public port.", []string{"tunnel"}, nil)
	descActive    = prometheus.NewDesc("tunnelc_connections_active", "Open connections.", []string{"tunnel"}, nil)
	descConns     = prometheus.NewDesc("tunnelc_connections_total", "Connections carried to the local service.", []string{"tunnel"}, nil)
	descBytes     = prometheus.NewDesc("tunnelc_bytes_total", "Bytes carried; in: from the public to the local service, out: back.",
		[]string{"tunnel", "direction"}, nil)
	descDial = prometheus.NewDesc("tunnelc_local_dial_failures_total", "Failed dials of the local service, by reason.", []string{"tunnel", "reason"}, nil)
)

func (cc *clientCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConnected, descSessions, descResumes, descUp, descActive, descConns, descBytes, descDial} {
		ch <- d
	}
}

func (cc *clientCollector) Collect(ch chan<- prometheus.Metric) {
	c := cc.c
	st := c.Status()
	connected := 0.0
	if st.Connected {
		connected = 1
	}
	ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, connected)
	ch <- prometheus.MustNewConstMetric(descSessions, prometheus.CounterValue, float64(st.Sessions))
	ch <- prometheus.MustNewConstMetric(descResumes, prometheus.CounterValue, float64(st.Resumes))
	for _, name := range c.config().TunnelNames() {
		up := 0.0
		if st.Public[name] != "" {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, name)
		ts := c.stats(name)
		n := ts.Read(nil)
		ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(n.Open), name)
		ch <- prometheus.MustNewConstMetric(descConns, prometheus.CounterValue, float64(n.Total), name)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(n.AToB), name, "in")
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(n.BToA), name, "out")
		f := ts.failures()
		for _, r := range DialReasons {
			ch <- prometheus.MustNewConstMetric(descDial, prometheus.CounterValue, float64(f[r]), name, r)
		}
	}
}

func (m *clientMetrics) sessionEnded(kind string) { m.ended.WithLabelValues(kind).Inc() }

// serveMetrics puts /metrics on a.
func (c *Client) serveMetrics(a *admin.Server) {
	a.HandleHTTP("GET /metrics", promhttp.HandlerFor(c.met.reg, promhttp.HandlerOpts{}))
}
