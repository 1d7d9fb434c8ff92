package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/internal/config"
	tt "github.com/tunnel-dev/tunnel/internal/tunneltest"
)

// BenchmarkWebTunnel (make bench-web): HTTP requests per second with
// keep-alive over 32 connections, through an http tunnel (the front
// parses and rewrites every request) and through a tcp tunnel to the
// same service, alternating, medians of 5 rounds of 3 s; both daemons in
// this process. The ratio is what the http front costs.
func BenchmarkWebTunnel(b *testing.B) {
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	}))
	defer svc.Close()
	local := strings.TrimPrefix(svc.URL, "http://")
	srv := webServer(b, nil)
	cl := tt.StartClient(b, tt.ClientConfig(b, srv.Addr().String(), map[string]*config.Tunnel{
		"raw": {Local: local},
		"web": {Type: "http", Local: local, Subdomain: "web"},
	}, func(c *config.Client) { c.Log.Level = "warn" }))
	pub := cl.WaitUp(b, 5*time.Second)
	targets := map[string]string{"tcp": pub["raw"], "http": srv.HTTPAddr().String()}
	const conns, round, rounds = 32, 3 * time.Second, 5
	run := func(addr string) float64 {
		tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			}}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr}
		var n atomic.Int64
		var wg sync.WaitGroup
		stop := time.Now().Add(round)
		for range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(stop) {
					req, _ := http.NewRequest("GET", "http://web.tunnel.test/", nil)
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					n.Add(1)
				}
			}()
		}
		wg.Wait()
		return float64(n.Load()) / round.Seconds()
	}
	res := map[string][]float64{}
	for i := range rounds {
		order := []string{"tcp", "http"}
		if i%2 == 1 {
			order = []string{"http", "tcp"}
		}
		for _, mode := range order {
			res[mode] = append(res[mode], run(targets[mode]))
		}
	}
	median := func(v []float64) float64 { sort.Float64s(v); return v[len(v)/2] }
	t, h := median(res["tcp"]), median(res["http"])
	b.ReportMetric(t, "tcp_req/s")
	b.ReportMetric(h, "http_req/s")
	b.ReportMetric(h/t, "http/tcp")
	fmt.Printf("web tunnel: tcp %.0f req/s, http %.0f req/s, ratio %.2f (rounds tcp %v, http %v)\n", t, h, h/t, res["tcp"], res["http"])
}
