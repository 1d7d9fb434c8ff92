package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/tunnel-dev/tunnel/internal/config"
)

// Client asks a running daemon's admin endpoint, for the commands.
type Client struct {
	cfg  config.Admin
	http *http.Client
	base string
}

// ErrUnreachable is the cause of a Client's error when nothing answers
// at the endpoint (no daemon, or one without it).
var ErrUnreachable = errors.New("admin endpoint unreachable")

// Dial returns a client for cfg's endpoint; it connects per request.
func Dial(cfg config.Admin) *Client {
	tr := &http.Transport{MaxIdleConns: 1, IdleConnTimeout: 5 * time.Second}
	base := "http://" + cfg.Address
	if cfg.Socket != "" {
		base = "http://tunnel-admin"
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", cfg.Socket)
		}
	}
	return &Client{cfg: cfg, http: &http.Client{Transport: tr, Timeout: 30 * time.Second}, base: base}
}

// Close drops the connection kept for the next request.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Get fetches path into out (JSON).
func (c *Client) Get(ctx context.Context, path string, out any) error {
	return c.do(ctx, http.MethodGet, path, nil, out)
}

// Post sends body (JSON, nil for none) to path and decodes the answer
// into out (nil to drop it).
func (c *Client) Post(ctx context.Context, path string, body, out any) error {
	return c.do(ctx, http.MethodPost, path, body, out)
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.cfg.Token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return c.explain(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("admin endpoint %s: %w", c.cfg.Where(), err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = string(bytes.TrimSpace(data))
		}
		return &Error{Status: resp.StatusCode, Msg: e.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("admin endpoint %s: bad answer: %w", c.cfg.Where(), err)
	}
	return nil
}

// explain says what to do about a request that reached nobody.
func (c *Client) explain(err error) error {
	switch {
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("%s: permission denied: the socket is the daemon user's (mode 0600); run this as that user or root", c.cfg.Socket)
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("%w: nothing answers at %s: is the daemon running, with this config's [admin]? (%v)", ErrUnreachable, c.cfg.Where(), err)
	}
	return fmt.Errorf("admin endpoint %s: %w", c.cfg.Where(), err)
}
