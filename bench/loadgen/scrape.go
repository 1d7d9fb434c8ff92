package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// runScrape fetches /metrics from admin endpoints on unix sockets every
// -every until it is stopped, as a Prometheus server would (more often
// than one usually does): the load whose cost the tunnel-metrics system
// measures. Failed scrapes are counted on stderr.
func runScrape(args []string) error {
	fs := flag.NewFlagSet("scrape", flag.ExitOnError)
	socks := fs.String("socks", "", "comma-separated unix socket paths of admin endpoints")
	every := fs.Duration("every", time.Second, "scrape interval")
	_ = fs.Parse(args)
	if *socks == "" {
		return fmt.Errorf("-socks is required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var clients []*http.Client
	for _, p := range strings.Split(*socks, ",") {
		path := p
		clients = append(clients, &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", path)
			}}})
	}
	t := time.NewTicker(*every)
	defer t.Stop()
	n, failed := 0, 0
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintf(os.Stderr, "scrape: %d scrapes, %d failed\n", n, failed)
			return nil
		case <-t.C:
		}
		for _, c := range clients {
			n++
			resp, err := c.Get("http://admin/metrics")
			if err != nil {
				failed++
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				failed++
			}
		}
	}
}
