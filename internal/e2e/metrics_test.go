package e2e

import (
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// scrape fetches /metrics over a unix socket and parses it.
func scrape(t *testing.T, sock string) map[string]*dto.MetricFamily {
	t.Helper()
	hc := tt.UnixHTTP(t, sock)
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://admin/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// value is the sample of family name whose labels include want ("" for
// a metric without labels); -1 when there is none.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.Metric {
		got := map[string]string{}
		for _, l := range m.Label {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
}

// Scraped during a transfer and after it, tunneld's metrics count what
// the test moved, per tunnel and direction; the session, handshake and
// runtime series are there.
func TestServerMetricsCountATransfer(t *testing.T) {
	tt.CheckLeaks(t)
	r := newAdminRig(t, nil)
	c := tt.Dial(t, r.pub["echo"])
	const up, down = 2<<20 + 7, 2<<20 + 7
	buf := make([]byte, up)
	rand.Read(buf)
	go c.Write(buf)
	if _, err := io.ReadFull(c, make([]byte, down)); err != nil {
		t.Fatal(err)
	}
	tun := map[string]string{"client": "test-client", "tunnel": "echo"}
	// Each count is added as its write returns, a moment after the
	// bytes arrive.
	var m map[string]*dto.MetricFamily
	tt.Eventually(t, 5*time.Second, "the bytes counted", func() bool {
		m = scrape(t, r.sock)
		return value(m, "tunneld_bytes_total", map[string]string{"tunnel": "echo", "direction": "out"}) == down
	})
	for name, want := range map[string]float64{
		"tunneld_connections_active": 1, "tunneld_connections_total": 1,
	} {
		if got := value(m, name, tun); got != want {
			t.Errorf("mid-transfer %s = %v, want %v", name, got, want)
		}
	}
	if in, out := value(m, "tunneld_bytes_total", map[string]string{"tunnel": "echo", "direction": "in"}),
		value(m, "tunneld_bytes_total", map[string]string{"tunnel": "echo", "direction": "out"}); in != up || out != down {
		t.Errorf("mid-transfer bytes in %v out %v, want %d each", in, out, up)
	}
	if got := value(m, "tunneld_sessions", map[string]string{"state": "up"}); got != 1 {
		t.Errorf("tunneld_sessions{state=up} = %v", got)
	}
	if got := value(m, "tunneld_tunnels", map[string]string{"state": "up"}); got != 2 {
		t.Errorf("tunneld_tunnels{state=up} = %v", got)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "tunneld_session_rtt_seconds", "tunneld_handshake_failures_total"} {
		if m[name] == nil {
			t.Errorf("no %s", name)
		}
	}
	c.Close()
	// A refused handshake is counted by its reason.
	bad, err := net.Dial("tcp", r.srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(bad, "GET / HTTP/1.0\r\n\r\n")
	io.Copy(io.Discard, bad)
	bad.Close()
	tt.Eventually(t, 5*time.Second, "the closed connection and the refusal counted", func() bool {
		m = scrape(t, r.sock)
		return value(m, "tunneld_connections_active", tun) == 0 && value(m, "tunneld_handshake_failures_total", map[string]string{"reason": "tls"}) == 1
	})
	if got := value(m, "tunneld_connections_total", tun); got != 1 {
		t.Errorf("after close: tunneld_connections_total = %v", got)
	}
	// A kick ends the session by that cause; the client's next session
	// replaces nothing (the old one is gone).
	if err := r.api.Post(r.ctx, "/v1/sessions/test-client/kick", nil, nil); err != nil {
		t.Fatal(err)
	}
	tt.Eventually(t, 10*time.Second, "the kick counted and the client back", func() bool {
		m = scrape(t, r.sock)
		return value(m, "tunneld_sessions_ended_total", map[string]string{"cause": "kicked"}) == 1 && value(m, "tunneld_sessions", map[string]string{"state": "up"}) == 1
	})
	// Totals survive the client's new session.
	if in := value(m, "tunneld_bytes_total", map[string]string{"tunnel": "echo", "direction": "in"}); in != up {
		t.Errorf("bytes in after the client's new session: %v, want %d", in, up)
	}
}
