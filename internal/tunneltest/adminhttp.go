//go:build linux

package tunneltest

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
)

// UnixHTTP is an HTTP client that sends every request to the unix socket
// sock, whatever the URL's host (as curl --unix-socket): a daemon's admin
// endpoint. Its idle connections are closed when the test ends.
func UnixHTTP(t testing.TB, sock string) *http.Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// GetText fetches url with hc and returns the status and the body; a
// request that reaches nobody fails the test.
func GetText(t testing.TB, hc *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}
